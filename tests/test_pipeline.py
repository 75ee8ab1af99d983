"""triage/pipeline.py: one study end to end, on real files and a test-time model."""
from __future__ import annotations

import shutil

import pytest

from tests.helpers import make_model_dir, ref, rules_file, write_series
from triage.events import STUDY_SCHEMA, Status, now_iso, parse_study_event
from triage.pipeline import Pipeline
from triage.settings import Settings


def study(folder, **extra):
    return parse_study_event({"schema": STUDY_SCHEMA, "study_instance_uid": "1.2.826.0.1.99",
                              "source": {"uri": folder.resolve().as_uri()}, "received_at": now_iso(), **extra})


@pytest.fixture
def pipeline(tmp_path):
    models = tmp_path / "models"
    # CT_small's values reach ~1100 HU: window 0..2000 puts its max near 0.55 → probability ≈ 0.7
    make_model_dir(models, "brightspot", window=(0, 2000), shape=(4, 128, 128), threshold=0.5)
    rules = rules_file(tmp_path / "rules.yaml", [{"name": "ct", "match": {"modality": "CT"}, "models": ["brightspot"]}])
    return Pipeline.from_settings(Settings(models_dir=models, rules=rules))


def test_scored_study_has_findings_key_slice_and_reasons(tmp_path, pipeline):
    write_series(tmp_path / "s", 6)
    out = pipeline.process(study(tmp_path / "s", requested_priority="ROUTINE", patient_class="emergency"))
    e = out.event
    assert out.error is None and e.status is Status.SCORED
    (f,) = e.findings
    assert f.code == "brightspot" and f.positive and f.key_slice is not None and 0 <= f.key_slice < 6
    assert e.priority.level.value == "STAT"  # critical severity, positive
    assert any(r.startswith("brightspot positive") for r in e.priority.reasons)
    assert e.timings_ms.total >= e.timings_ms.decode


def test_event_id_is_deterministic_for_the_same_input(tmp_path, pipeline):
    write_series(tmp_path / "s", 4)
    a = pipeline.process(study(tmp_path / "s")).event
    b = pipeline.process(study(tmp_path / "s")).event
    assert a.event_id == b.event_id and a.produced_at <= b.produced_at
    write_series(tmp_path / "t", 5)
    assert pipeline.process(study(tmp_path / "t")).event.event_id != a.event_id


def test_no_applicable_model_keeps_order_priority(tmp_path, pipeline):
    (tmp_path / "mr").mkdir()
    shutil.copy(ref("MR_small.dcm"), tmp_path / "mr")
    e = pipeline.process(study(tmp_path / "mr", requested_priority="STAT")).event
    assert e.status is Status.NO_APPLICABLE_MODEL and e.findings == []
    assert e.priority.level.value == "STAT"
    assert "no model applies to 1 series (MR)" in e.priority.reasons


def test_failed_study_carries_kind_and_file(tmp_path, pipeline):
    write_series(tmp_path / "s", 6)
    (tmp_path / "s" / "slice002.dcm").unlink()
    out = pipeline.process(study(tmp_path / "s", requested_priority="HIGH"))
    assert out.event.status is Status.FAILED
    assert out.event.error.kind == "uneven_spacing" and "slice003.dcm" in out.event.error.message
    assert out.event.priority.level.value == "URGENT"  # a HIGH order stays at least URGENT
    assert out.error is not None and not out.error.retriable


def test_missing_source_is_retriable(tmp_path, pipeline):
    out = pipeline.process(study(tmp_path / "not-here-yet"))
    assert out.event.status is Status.FAILED and out.event.error.kind == "source_unavailable"
    assert out.error.retriable


def test_unexpected_exception_becomes_a_failed_event(tmp_path, pipeline, monkeypatch):
    write_series(tmp_path / "s", 4)
    monkeypatch.setattr(pipeline.registry, "infer", lambda *a: 1 / 0)
    out = pipeline.process(study(tmp_path / "s"))
    assert out.event.status is Status.FAILED and out.event.error.kind == "internal"
    assert "ZeroDivisionError" in out.event.error.message


def _pipeline(root, *, threshold=0.5, version=None, rule_name="ct", weight=None):
    import yaml

    from triage.priority import DEFAULT_POLICY

    models = root / "models"
    folder = make_model_dir(models, "brightspot", window=(0, 2000), shape=(4, 64, 64), threshold=threshold)
    if version:
        doc = yaml.safe_load((folder / "manifest.yaml").read_text())
        doc["version"] = version
        (folder / "manifest.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    rules = rules_file(root / "rules.yaml", [{"name": rule_name, "match": {"modality": "CT"}, "models": ["brightspot"]}])
    policy = yaml.safe_load(DEFAULT_POLICY.read_text())
    if weight is not None:
        policy["severities"]["critical"]["weight"] = weight
    (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    return Pipeline.from_settings(Settings(models_dir=models, rules=rules, policy=root / "policy.yaml"))


def test_event_id_changes_with_every_input_that_can_change_the_priority(tmp_path):
    write_series(tmp_path / "s", 4)
    write_series(tmp_path / "t", 5)
    base = dict(requested_priority="LOW", patient_class="outpatient")

    def event_id(variant="base", pipeline_args=None, folder="s", **order):
        p = _pipeline(tmp_path / variant, **(pipeline_args or {}))
        e = p.process(study(tmp_path / folder, **{**base, **order})).event
        return e.event_id

    reference = event_id()
    assert event_id("again") == reference  # the same inputs give the same id, in a new pipeline and folder
    variants = {
        "requested priority": event_id(requested_priority="STAT"),
        "requested priority absent": event_id(requested_priority=None),
        "patient class": event_id(patient_class="emergency"),
        "input instances": event_id(folder="t"),
        "threshold": event_id("thr", {"threshold": 0.6}),
        "model version": event_id("ver", {"version": "0.0.2-test"}),
        "routing rules": event_id("rules", {"rule_name": "ct-renamed"}),
        "policy": event_id("policy", {"weight": 90}),
        "status": event_id(folder="absent"),
    }
    changed = {name for name, value in variants.items() if value != reference}
    assert changed == set(variants)
    assert len(set(variants.values())) == len(variants)


def test_a_failed_invalid_event_carries_every_code_of_its_order(tmp_path, pipeline):
    from triage.errors import SchemaError
    from triage.events import salvage_study_event

    salvaged = salvage_study_event(b'{"study_instance_uid": "1.2.3", "requested_priority": "STAT", "source": 7}')
    e = pipeline.failed_event(salvaged, SchemaError("source: expected an object"))
    assert (e.priority.level.value, e.priority.dicom_ups.value, e.priority.fhir.value) == ("STAT", "HIGH", "stat")


def test_the_configuration_part_of_event_ids_is_the_same_in_every_process():
    import subprocess
    import sys

    code = ("from triage.pipeline import Pipeline; from triage.settings import Settings; "
            "print(Pipeline.from_settings(Settings())._config_id)")
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**__import__("os").environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2)}
    assert len(ids) == 1


def _shadow_setup(root, *, by):
    """A live model that reads this CT as negative, and a critical one that reads it as positive,
    marked shadow by its manifest or by the routing rule."""
    import yaml

    models = root / "models"
    make_model_dir(models, "quiet", window=(0, 20000), shape=(4, 64, 64), severity="high", threshold=0.9)
    loud = make_model_dir(models, "loud", window=(0, 2000), shape=(4, 64, 64), severity="critical")
    rule = {"name": "ct", "match": {"modality": "CT"}, "models": ["quiet", "loud"]}
    if by == "manifest":
        doc = yaml.safe_load((loud / "manifest.yaml").read_text())
        doc["mode"] = "shadow"
        (loud / "manifest.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    elif by == "rule":
        rule["shadow"] = ["loud"]
    else:
        shutil.rmtree(loud)
        rule["models"] = ["quiet"]
    return Pipeline.from_settings(Settings(models_dir=models, rules=rules_file(root / "rules.yaml", [rule])))


@pytest.mark.parametrize("by", ["manifest", "rule"])
def test_a_shadow_model_is_recorded_and_never_moves_the_priority(tmp_path, by):
    from triage import metrics
    from triage.events import to_dict

    write_series(tmp_path / "s", 4)
    order = dict(requested_priority="ROUTINE", patient_class="outpatient")
    without = _shadow_setup(tmp_path / "without", by=None).process(study(tmp_path / "s", **order)).event
    shadowed = _shadow_setup(tmp_path / by, by=by).process(study(tmp_path / "s", **order)).event
    assert shadowed.priority == without.priority and shadowed.priority.level.value == "ROUTINE"
    assert without.timings_ms.shadow is None and shadowed.timings_ms.shadow > 0  # its time, apart from infer
    assert [f.code for f in shadowed.findings] == ["quiet"] and shadowed.status is Status.SCORED
    (shadow,) = shadowed.shadow_findings
    assert shadow.code == "loud" and shadow.positive  # a critical positive, which would have made it STAT
    assert "shadow_findings" not in to_dict(without) and to_dict(shadowed)["shadow_findings"][0]["code"] == "loud"
    before = metrics.SHADOW_FINDINGS.labels("loud", "true")._value.get()
    metrics.observe_event(shadowed)
    assert metrics.SHADOW_FINDINGS.labels("loud", "true")._value.get() == before + 1


def test_a_study_only_shadow_models_read_has_no_applicable_model(tmp_path):
    import yaml

    make_model_dir(tmp_path / "models", "loud", window=(0, 2000), shape=(4, 64, 64))
    doc = yaml.safe_load((tmp_path / "models" / "loud" / "manifest.yaml").read_text())
    (tmp_path / "models" / "loud" / "manifest.yaml").write_text(yaml.safe_dump({**doc, "mode": "shadow"}))
    rules = rules_file(tmp_path / "rules.yaml", [{"name": "ct", "match": {"modality": "CT"}, "models": ["loud"]}])
    write_series(tmp_path / "s", 4)
    e = Pipeline.from_settings(Settings(models_dir=tmp_path / "models", rules=rules)).process(study(tmp_path / "s")).event
    assert e.status is Status.NO_APPLICABLE_MODEL and e.priority.level.value == "ROUTINE"
    assert e.shadow_findings[0].positive


def test_pe_ships_in_shadow():
    from triage.inference.manifest import load_manifest
    from tests.helpers import ROOT

    assert load_manifest(ROOT / "models" / "pe").mode == "shadow"  # it misses all three of its targets


@pytest.mark.parametrize("met", [True, False])
def test_registration_puts_a_model_that_misses_a_target_in_shadow(tmp_path, met):
    import json

    import yaml

    from pipelines.register import register
    from tests.helpers import ROOT
    from triage.inference.manifest import load_manifest

    cfg = yaml.safe_load((ROOT / "pipelines" / "configs" / "ich.yaml").read_text())
    result = json.loads((ROOT / "models" / "ich" / "eval.json").read_text())
    result["targets"] = [{"target": "ROC AUC", "required": 0.97, "measured": 0.99 if met else 0.90, "met": met}]
    folder = register(cfg, ROOT / "models" / "ich" / "model.onnx", ROOT / "models" / "ich", tmp_path, result)
    assert load_manifest(folder).mode == ("live" if met else "shadow")
