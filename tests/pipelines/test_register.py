"""pipelines/register and the targets beyond our own generator: a model that meets its held-out
targets but misses on the independent generator or on a real study runs in shadow."""
from __future__ import annotations

import shutil

from pipelines.evaluate import external_report, external_targets
from pipelines.register import _BEYOND, demote_to_shadow, update_manifest
from triage.inference.manifest import load_manifest
from triage.inference.registry import DEFAULT_MODELS


def _external(sensitivity, specificity, real_positive=0):
    return {"independent": {"n": 60, "auc": 0.9, "sensitivity": sensitivity, "specificity": specificity,
                            "sensitivity_without_guard": sensitivity, "specificity_without_guard": specificity,
                            "assessable_rate": 1.0, "split": "independent generator"},
            "real_studies": {"files": [], "n_routed": real_positive, "n_positive": real_positive, "note": ""}}


def test_targets_beyond_our_generator_are_met_only_at_0_90_and_no_real_positive():
    assert all(t["met"] for t in external_targets(_external(0.95, 0.92)))
    missed = [t["target"] for t in external_targets(_external(0.95, 0.40, real_positive=1)) if not t["met"]]
    assert missed == ["independent generator specificity", "real studies positive"]
    assert "registered in shadow" in external_report(_external(0.95, 0.40))
    assert "registered in shadow" not in external_report(_external(0.95, 0.92))
    # a finding the independent generator does not draw yet: only the real studies hold it
    assert [t["target"] for t in external_targets({**_external(0, 0), "independent": None})] == ["real studies positive"]


def test_demotion_puts_a_live_model_in_shadow_and_keeps_its_verified_artifact(tmp_path):
    folder = tmp_path / "aortic_dissection"  # one that meets every target on our own held-out phantoms
    shutil.copytree(DEFAULT_MODELS / "aortic_dissection", folder)
    update_manifest(folder, mode="live")  # as registered from its held-out figures alone
    card = folder / "card.md"
    card.write_text(card.read_text().replace(_BEYOND, ""))
    before = load_manifest(folder)
    assert before.mode == "live"
    demote_to_shadow(folder)
    after = load_manifest(folder)  # validates and verifies the sha256 again
    assert after.mode == "shadow" and after.sha256 == before.sha256 and after.envelope == before.envelope
    # the card's first line about targets no longer reads as if the model were live
    status = next(line for line in (folder / "card.md").read_text().splitlines() if line.startswith("Meets all"))
    assert "runs in shadow" in status and "beyond our own generator" in status
    demote_to_shadow(folder)  # twice: said once
    assert (folder / "card.md").read_text().count("runs in shadow") == 1


def test_recheck_measures_a_registered_model_beyond_our_generator_and_says_where_it_runs(tmp_path):
    """`python -m pipelines.make <name> --recheck`: no training; the independent figures go into the
    card and eval.json, and the mode follows them."""
    import json
    import subprocess
    import sys

    from tests.helpers import ROOT

    models = tmp_path / "models"
    shutil.copytree(DEFAULT_MODELS / "pneumothorax_cxr", models / "pneumothorax_cxr")
    update_manifest(models / "pneumothorax_cxr", mode="live")
    done = subprocess.run([sys.executable, "-m", "pipelines.make", "pneumothorax_cxr", "--recheck", "--independent-n", "4",
                           "--models", models, "--work", tmp_path / "work"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    evaluation = json.loads((models / "pneumothorax_cxr" / "eval.json").read_text())
    assert evaluation["independent"]["n"] == 4 and "chest_radiograph" in evaluation["independent"]["split"]
    missed = not all(t["met"] for t in evaluation["targets_beyond"])
    assert load_manifest(models / "pneumothorax_cxr").mode == ("shadow" if missed else "live")
    assert ("in shadow" in done.stdout) == missed
    assert "4 studies, as served" in (models / "pneumothorax_cxr" / "card.md").read_text()
