"""pipelines/: a tiny end-to-end run (phantoms → train → evaluate → export → parity → register)
into a temporary folder, which the runtime then loads and runs; and the evaluation arithmetic."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from pipelines.dataset import load_study, read_labels  # noqa: E402
from pipelines.evaluate import roc_auc, threshold_for, wilson  # noqa: E402
from pipelines.make import CONFIGS, SMALL, NotReproduced, compare_with_committed, run, small_overrides  # noqa: E402
from pipelines.train import input_spec, load_config, train  # noqa: E402
from triage.dicom import decode_series, scan_study  # noqa: E402
from triage.events import STUDY_SCHEMA, now_iso, parse_study_event  # noqa: E402
from triage.inference.manifest import load_manifest  # noqa: E402
from triage.pipeline import Pipeline  # noqa: E402
from triage.preprocess import preprocess  # noqa: E402
from triage.settings import Settings  # noqa: E402


def tiny_run(factory, name: str):
    """The whole lifecycle for ``name`` on a few tiny phantoms: (work folder, models folder, result)."""
    work, models = factory.mktemp(f"work-{name}"), factory.mktemp(f"models-{name}")
    return work, models, run(name, work, models, small=True, progress=False, keep_data=True)


def score_a_test_study(work, models):
    """The runtime's event for the first held-out study of a tiny run."""
    study = work / "data" / "test" / "studies" / read_labels(work / "data" / "test")[0]["study_id"]
    pipeline = Pipeline.from_settings(Settings(models_dir=models))
    return pipeline.process(parse_study_event({"schema": STUDY_SCHEMA, "study_instance_uid": "1.2.3.4",
                                               "source": {"uri": study.as_uri()}, "received_at": now_iso()})).event


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_run(tmp_path_factory, "ich")


def test_tiny_run_registers_a_verified_model_with_card_and_evaluation(tiny):
    work, models, result = tiny
    folder = models / "ich"
    m = load_manifest(folder)  # validates the manifest and verifies the sha256
    assert m.name == "ich" and m.format == "onnx" and m.findings[0].severity == "critical"
    assert set(m.findings[0].operating_points) == {"default", "high_sensitivity"}
    card = (folder / "card.md").read_text()
    assert "synthetic phantoms only" in card and "Not for diagnostic use" in card
    evaluation = json.loads((folder / "eval.json").read_text())
    assert {"auc", "operating_points", "sensitivity_by_lesion_size", "sensitivity_by_slice_thickness",
            "calibration"} <= set(evaluation)
    assert (folder / "roc.png").stat().st_size > 1000 and (folder / "eval.md").exists()
    assert result["parity_max_abs_diff"] <= 1e-4
    # the envelope of its training studies, and the held-out figures as served through the guard
    assert m.envelope is not None and m.envelope.n_studies == 6 and m.envelope.vessel_hu is None
    assert evaluation["guard"]["n"] == 4 and 0.0 <= evaluation["guard"]["assessable_rate"] <= 1.0
    assert "## Input guard" in card
    # beyond our own generator: the independent generator's studies and the real ones, as served
    assert evaluation["independent"]["n"] == 4 and "independent generator" in evaluation["independent"]["split"]
    assert evaluation["real_studies"]["n_routed"] == 0  # no real head CT series ships in our packages
    assert "## Beyond our own generator" in card and "## Beyond our own generator" in (folder / "eval.md").read_text()
    # its input is in physical space: the tiny run keeps the field of view, sampled coarsely
    assert m.input.physical and m.input.field_mm == (160.0, 240.0, 240.0) and m.input.shape == (16, 32, 32)


def _registered_findings(event, models, name):
    """The model's findings, where its mode puts them: a tiny run that misses a target of its
    config is registered in shadow, and then the event has no live finding of it."""
    shadow = load_manifest(models / name).mode == "shadow"
    assert event.status.value == ("no_applicable_model" if shadow else "scored"), event.error
    return (event.shadow_findings or []) if shadow else event.findings


def test_runtime_loads_and_runs_the_registered_model(tiny):
    work, models, result = tiny
    # below a target of its config, or beyond its own generator (independent phantoms, real studies)
    missed = any(not t["met"] for t in (result.get("targets") or []) + result["targets_beyond"])
    assert load_manifest(models / "ich").mode == ("shadow" if missed else "live")
    event = score_a_test_study(work, models)
    (finding,) = _registered_findings(event, models, "ich")
    assert finding.code == "ich" and finding.model.name == "ich" and finding.key_slice is not None


@pytest.fixture(scope="module")
def radiograph(tmp_path_factory):
    return tiny_run(tmp_path_factory, "pneumothorax_cxr")


def test_a_radiograph_model_trains_in_2d_and_scores_a_dx_study(radiograph):
    work, models, result = radiograph
    m = load_manifest(models / "pneumothorax_cxr")
    assert m.input.shape == (1, 32, 32) and result["parity_max_abs_diff"] <= 1e-4
    cfg = load_config(CONFIGS / "pneumothorax_cxr.yaml")
    # sensitivity by finding size in the bins of the model's own config (air volume, not bleed mL)
    bins = cfg["size_bins_ml"]
    assert list(result["sensitivity_by_lesion_size"]) == [f"{a:g}-{b:g} mL" for a, b in zip(bins, bins[1:])] + \
        [f">={bins[-1]:g} mL"]
    assert "by lesion size" in (models / "pneumothorax_cxr" / "eval.md").read_text()
    # the card states what the config says the phantom leaves out
    (limit,) = cfg["limits"]
    assert limit in (models / "pneumothorax_cxr" / "card.md").read_text()
    event = score_a_test_study(work, models)
    (finding,) = _registered_findings(event, models, "pneumothorax_cxr")  # the DX series went to it alone
    assert finding.model.name == "pneumothorax_cxr" and finding.code == "pneumothorax"
    assert finding.key_slice == 0


def test_a_resumed_run_judged_on_a_new_test_split_generates_that_split_and_keeps_the_rest(radiograph, tmp_path,
                                                                                            monkeypatch, capsys):
    work, models = tmp_path / "work", tmp_path / "models"
    shutil.copytree(radiograph[0], work)
    shutil.copytree(radiograph[1], models)
    kept = {split: (work / "data" / split / "labels.csv").stat().st_mtime_ns for split in ("train", "val")}
    monkeypatch.setitem(SMALL, "data.test", {"n": 4, "seed": 99})
    result = run("pneumothorax_cxr", work, models, small=True, resume=True, progress=False, keep_data=True)
    assert [r["study_id"][:4] for r in read_labels(work / "data" / "test")] == ["s99-"] * 4
    assert {split: (work / "data" / split / "labels.csv").stat().st_mtime_ns for split in kept} == kept
    assert result["n_test"] == 4
    assert "test 99)" in (models / "pneumothorax_cxr" / "card.md").read_text()
    # the registered figures came from test seed 3: not a reproduction to judge within tolerance
    assert result["test_split"]["seed"] == 99 and result["reproduction"] == []
    assert "not compared with" in capsys.readouterr().out


def test_a_finished_run_removes_the_phantoms_it_generated_and_keeps_the_model(radiograph, tmp_path):
    work, models = tmp_path / "work", tmp_path / "models"
    shutil.copytree(radiograph[0], work)
    shutil.copytree(radiograph[1], models)
    assert (work / "data" / "train" / "labels.csv").exists() and (work / "external" / "independent").is_dir()
    run("pneumothorax_cxr", work, models, small=True, resume=True, progress=False)
    assert not (work / "data").exists() and not (work / "external" / "independent").exists()
    assert (work / "eval" / "eval.json").exists() and any((work / "run").iterdir())
    assert load_manifest(models / "pneumothorax_cxr").name == "pneumothorax_cxr"


def test_reproduction_compares_figures_only_on_the_same_test_split(tmp_path):
    split = {"phantom": "head_ct", "n": 120, "seed": 303, "matrix": 128}
    committed = tmp_path / "eval.json"
    committed.write_text(json.dumps({"auc": 0.95, "operating_points": {"default": {"sensitivity": 0.9,
                                                                                     "specificity": 0.9}},
                                     "test_split": split}))
    result = {"auc": 0.96, "operating_points": {"default": {"sensitivity": 0.8, "specificity": 0.91}},
              "test_split": dict(split)}
    tolerance = {"auc": 0.02, "sensitivity": 0.08, "specificity": 0.08}
    rows = compare_with_committed(committed, result, tolerance)
    assert [(r["figure"], r["within"]) for r in rows] == [("auc", True), ("sensitivity", False),
                                                          ("specificity", True)]
    assert compare_with_committed(committed, {**result, "test_split": {**split, "seed": 304}}, tolerance) == []
    # a test split of one class has no AUC in either run: that is the same figure, not a miss
    committed.write_text(json.dumps({**json.loads(committed.read_text()), "auc": float("nan")}))
    assert compare_with_committed(committed, {**result, "auc": float("nan")}, tolerance)[0]["within"]
    assert not compare_with_committed(committed, result, tolerance)[0]["within"]


def test_a_run_that_misses_the_registered_figures_leaves_the_registered_model_alone(radiograph, tmp_path):
    work, models = tmp_path / "work", tmp_path / "models"
    shutil.copytree(radiograph[0], work)
    shutil.copytree(radiograph[1], models)
    folder = models / "pneumothorax_cxr"
    committed = json.loads((folder / "eval.json").read_text())
    committed["auc"] = 1.0 if committed["auc"] < 0.9 else 0.5  # a registered model this run cannot match
    (folder / "eval.json").write_text(json.dumps(committed))
    history = "## History\n### 0.0.1 (a run by hand)\nWhat an engineer wrote about an earlier run.\n"
    (folder / "card.md").write_text((folder / "card.md").read_text() + "\n" + history)
    before = {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()}
    with pytest.raises(NotReproduced, match="auc outside"):
        run("pneumothorax_cxr", work, models, small=True, resume=True, progress=False)
    assert {f.name: f.read_bytes() for f in folder.iterdir() if f.is_file()} == before
    assert (work / "model.onnx").exists() and (work / "data" / "train" / "labels.csv").exists()  # kept for --replace
    result = run("pneumothorax_cxr", work, models, small=True, resume=True, progress=False, replace=True)
    assert json.loads((folder / "eval.json").read_text())["auc"] == pytest.approx(result["auc"], nan_ok=True)
    card = (folder / "card.md").read_text()  # written afresh, with the History carried over, last
    assert card.endswith("\n\n" + history) and card.count("## History") == 1
    assert card.index("## Beyond our own generator") < card.index("## Known limits") < card.index("## History")


def test_validation_every_n_epochs_keeps_the_best_of_the_validated_ones(radiograph, tmp_path, capsys):
    work, _, _ = radiograph
    cfg = load_config(CONFIGS / "pneumothorax_cxr.yaml", {**SMALL, "input.shape": [1, 32, 32], "train.epochs": 3,
                                                         "train.val_every": 2})
    best = train(cfg, work / "data", tmp_path / "run", progress=False)
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert [line.startswith(f"epoch {n}: validation AUC") for n, line in enumerate(said, 1)] == [False, True, True]
    assert said[0] == "epoch 1: not validated (every 2 epochs)"
    assert torch.load(best, weights_only=False)["epoch"] in (1, 2)


def test_training_and_serving_preprocessing_give_identical_tensors(tiny):
    work, models, _ = tiny
    dataset = work / "data" / "test"
    row = read_labels(dataset)[0]
    cfg = load_config(CONFIGS / "ich.yaml", small_overrides(load_config(CONFIGS / "ich.yaml")))
    trained_on = load_study(dataset, row, input_spec(cfg)).image
    (series,) = scan_study(dataset / "studies" / row["study_id"])
    vol = decode_series(series)
    served = preprocess(vol.array, vol.spacing_zyx, load_manifest(models / "ich").input)[0]
    assert np.array_equal(trained_on, served)


def test_evaluation_arithmetic():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert roc_auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    lo, hi = wilson(9, 10)
    assert lo == pytest.approx(0.596, abs=1e-3) and hi == pytest.approx(0.982, abs=1e-3)
    scores = np.linspace(0, 1, 20)
    labels = np.r_[np.zeros(10), np.ones(10)].astype(int)
    t = threshold_for("specificity_0.9", labels, scores)
    assert (scores[labels == 0] < t).mean() >= 0.9
    t = threshold_for("sensitivity_0.9", labels, scores)
    assert (scores[labels == 1] >= t).mean() >= 0.9


def test_operating_points_on_separable_scores_sit_between_the_classes():
    # validation scores that separate perfectly: both points must catch every positive and no
    # negative, and "high sensitivity" must not end up less sensitive than "default"
    labels = np.r_[np.zeros(40), np.ones(40)].astype(int)
    scores = np.r_[np.linspace(0.0, 0.3, 40), np.linspace(0.6, 1.0, 40)]
    default = threshold_for("specificity_0.95", labels, scores)
    high_sens = threshold_for("sensitivity_0.98", labels, scores)
    for t in (default, high_sens, threshold_for("balanced", labels, scores)):
        assert (scores[labels == 1] >= t).all() and (scores[labels == 0] < t).all()
        assert t < 0.31  # as low as it goes: just above the highest negative, the most room for positives
    assert high_sens <= default


def test_operating_points_on_overlapping_scores_are_the_best_that_keep_their_target():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(100), np.ones(60)].astype(int)
    scores = np.r_[rng.normal(0.3, 0.15, 100), rng.normal(0.6, 0.15, 60)]

    def sens(t):
        return (scores[labels == 1] >= t).mean()

    def spec(t):
        return (scores[labels == 0] < t).mean()

    candidates = np.r_[scores, np.nextafter(scores, 2.0)]
    t = threshold_for("specificity_0.95", labels, scores)
    assert spec(t) >= 0.95 and sens(t) == max(sens(c) for c in candidates if spec(c) >= 0.95)
    t = threshold_for("sensitivity_0.98", labels, scores)
    assert sens(t) >= 0.98 and spec(t) == max(spec(c) for c in candidates if sens(c) >= 0.98)
    for typo in ("specifity_0.95", "sensitivity_95", "balanced_0.9"):  # a config typo is named, not guessed at
        with pytest.raises(ValueError, match=typo):
            threshold_for(typo, labels, scores)
    t = threshold_for("balanced", labels, scores)  # the best floor under both
    assert min(sens(t), spec(t)) == max(min(sens(c), spec(c)) for c in candidates)
    assert threshold_for("specificity_0.95", labels, scores) > t > threshold_for("sensitivity_0.98", labels, scores)
