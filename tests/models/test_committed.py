"""models/: the committed models verify, their cards say what they are, and they do on fresh
phantoms (seeds never used in training) what their evaluation files claim, through the runtime."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from pipelines.synth.generate import generate
from tests.helpers import ROOT
from triage.events import STUDY_SCHEMA, now_iso, parse_study_event
from triage.inference.manifest import load_manifest
from triage.pipeline import Pipeline
from triage.settings import Settings

MODELS = ROOT / "models"
COMMITTED = sorted(p.name for p in MODELS.iterdir() if (p / "manifest.yaml").exists())


def phantom_kind(name: str) -> str:
    """The phantom kind the committed model was evaluated on (its config may since name a newer one)."""
    split = json.loads((MODELS / name / "eval.json").read_text()).get("test_split", {})
    return split.get("phantom") or yaml.safe_load((ROOT / "pipelines" / "configs" / f"{name}.yaml").read_text())["phantom"]


def test_models_verify_passes_on_the_committed_models():
    out = subprocess.run([sys.executable, "-m", "triage.cli", "models", "verify"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert COMMITTED, "no model is committed"
    for name in COMMITTED:
        assert f"OK   {name}: manifest valid, sha256 verified" in out.stdout, out.stdout


@pytest.mark.parametrize("name", COMMITTED)
def test_card_and_evaluation_files_say_what_the_model_is(name):
    folder = MODELS / name
    card = (folder / "card.md").read_text()
    assert "Trained on synthetic phantoms only" in card and "Not for diagnostic use" in card
    evaluation = json.loads((folder / "eval.json").read_text())
    assert f"ROC AUC {evaluation['auc']:.3f}" in card  # the card quotes the committed evaluation
    assert evaluation["parity_max_abs_diff"] <= 1e-4
    assert evaluation["targets"], "evaluation checks the config's targets"
    for target in evaluation["targets"]:  # the card states each target and whether it was met
        assert f"| {target['target']} |" in card and ("yes" if target["met"] else "**no**") in card
    manifest = load_manifest(folder)
    assert manifest.threshold(manifest.findings[0]) == pytest.approx(
        evaluation["operating_points"]["default"]["threshold"], abs=1e-6)
    assert (folder / "roc.png").stat().st_size > 1000 and (folder / "weights.pt").exists()
    guard = evaluation["guard"]  # measured as served, through the input guard, on the same test split
    assert guard["n"] == evaluation["n_test"] and guard["assessable_rate"] >= 0.95, guard
    assert f"{guard['assessable_rate']:.1%} of {guard['n']}" in card and "## Input guard" in card
    assert manifest.envelope is not None and manifest.envelope.n_studies >= 100


@pytest.mark.parametrize("name", COMMITTED)
def test_model_separates_fresh_phantoms_through_the_runtime(name, tmp_path):
    rows = generate(phantom_kind(name), 12, 424242, tmp_path, positive_fraction=0.5, progress=False, workers=1)
    pipeline = Pipeline.from_settings(Settings(models_dir=MODELS))
    scores, labels = [], []
    for i, row in enumerate(rows):
        study = tmp_path / "studies" / row["study_id"]
        event = pipeline.process(parse_study_event({"schema": STUDY_SCHEMA, "study_instance_uid": f"2.25.9{i}",
                                                    "source": {"uri": study.as_uri()}, "received_at": now_iso()})).event
        # a model in shadow is read from the event's shadow findings; it is scored all the same, and a
        # study that only shadow models read is, for the worklist, one no model applies to
        assert event.error is None and event.status.value in ("scored", "no_applicable_model"), event.error
        (finding,) = [f for f in event.findings + (event.shadow_findings or []) if f.model.name == name]
        assert finding.key_slice is not None and 0 <= finding.key_slice < len(list(study.glob("*.dcm")))
        scores.append(finding.probability)
        labels.append(int(row["label"]))
    scores, labels = np.array(scores), np.array(labels)
    assert 0 < labels.sum() < len(labels)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs_ranked = (pos[:, None] > neg[None, :]).mean()
    # twelve studies measure the AUC to about ±0.13 (one SD for a model near 0.88), so the bar
    # follows the held-out AUC its eval.json claims, never above 0.75
    claimed = json.loads((MODELS / name / "eval.json").read_text())["auc"]
    bar = min(0.75, claimed - 0.25)
    assert pairs_ranked >= bar, (f"{name}: positives outrank negatives in only {pairs_ranked:.0%} of pairs "
                                 f"(held-out AUC {claimed:.3f}, bar {bar:.2f})")
