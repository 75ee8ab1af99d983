"""The triage command, end to end, as a user runs it (subprocesses, real files)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT, make_model_dir, ref, rules_file, write_series


def triage(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "triage.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=240)


def test_score_scored_study_prints_event_and_exits_0(tmp_path):
    write_series(tmp_path / "study", 6)
    make_model_dir(tmp_path / "models", "brightspot", window=(0, 2000), shape=(4, 128, 128))
    rules = rules_file(tmp_path / "rules.yaml", [{"name": "ct", "match": {"modality": "CT"}, "models": ["brightspot"]}])
    r = triage("score", tmp_path / "study", "--models", tmp_path / "models", "--rules", rules,
               "--requested-priority", "ROUTINE", "--accession", "ACC1")
    assert r.returncode == 0, r.stderr
    event = json.loads(r.stdout)
    assert event["status"] == "scored" and event["accession_number"] == "ACC1"
    assert event["findings"][0]["positive"] is True and event["priority"]["level"] == "STAT"


@pytest.mark.parametrize("name", ["693_J2KR.dcm", "RG1_J2KI.dcm", "emri_small_jpeg_ls_lossless.dcm"])
def test_score_real_files_without_applicable_model_exits_0(tmp_path, name):
    (tmp_path / "s").mkdir()
    shutil.copy(ref(name), tmp_path / "s")
    (tmp_path / "no-models").mkdir()
    r = triage("score", tmp_path / "s", "--models", tmp_path / "no-models")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "no_applicable_model"


def test_score_failed_study_exits_1_with_one_line_and_no_traceback(tmp_path):
    write_series(tmp_path / "study", 5)
    cut = tmp_path / "study" / "slice002.dcm"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 3])  # a transfer that stopped part way
    r = triage("score", tmp_path / "study")
    assert r.returncode == 1
    assert json.loads(r.stdout)["status"] == "failed"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "slice002.dcm" in lines[0] and lines[0].startswith("triage: study failed (corrupt_file)")
    assert "Traceback" not in r.stderr


def test_score_missing_folder_is_a_failed_event_not_a_crash(tmp_path):
    r = triage("score", tmp_path / "nope")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert json.loads(r.stdout)["error"]["kind"] == "source_unavailable"


def test_bad_settings_are_one_line(tmp_path):
    r = triage("score", tmp_path, "--policy", tmp_path / "missing.yaml")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "policy" in r.stderr


def test_models_list_and_verify(tmp_path):
    make_model_dir(tmp_path, "brightspot")
    r = triage("models", "list", "--json", "--models", tmp_path)
    assert r.returncode == 0
    (row,) = json.loads(r.stdout)
    assert row["name"] == "brightspot" and row["ok"] and row["findings"] == ["brightspot"]
    assert row["mode"] == "live" and row["envelope"] == "n=1"
    listed = triage("models", "list", "--models", tmp_path).stdout.splitlines()
    assert listed[0].split() == ["NAME", "VERSION", "FORMAT", "FINDINGS", "MODE", "ENVELOPE", "STATUS"]
    assert listed[1].split()[:5] == ["brightspot", "0.0.1-test", "onnx", "brightspot", "live"]
    assert triage("models", "verify", "--models", tmp_path).returncode == 0
    (tmp_path / "brightspot" / "model.onnx").write_bytes(b"swapped")
    r = triage("models", "verify", "--models", tmp_path)
    assert r.returncode == 1 and "FAIL brightspot" in r.stdout and "does not match" in r.stdout


def test_committed_models_verify():
    r = triage("models", "verify")
    assert r.returncode == 0, r.stdout


def test_schemas_check_passes_on_the_committed_files():
    assert triage("schemas").returncode == 0


def test_help_explains_each_command():
    r = triage("--help")
    assert r.returncode == 0
    for cmd in ("score", "demo", "models", "worker", "submit"):
        assert cmd in r.stdout
    assert "not for diagnostic use" in r.stdout


def test_demo_scores_extra_study_folders(tmp_path):
    from pipelines.synth.generate import generate

    generate("head_ct", 2, 77, tmp_path / "phantoms", matrix=48, progress=False)
    (tmp_path / "no-models").mkdir()
    r = triage("demo", "--out", tmp_path / "out", "--studies", tmp_path / "phantoms" / "studies",
               "--models", tmp_path / "no-models", "--metrics-port", "0", "--no-progress")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in (tmp_path / "out" / "priority-events.jsonl").read_text().splitlines()]
    from triage.demo import SAMPLES

    assert len(events) == len(SAMPLES) + 2
    assert "DEMO0010" in r.stdout  # the phantoms are on the printed worklist


def test_demo_shows_a_not_assessable_finding_and_pe_in_shadow(tmp_path):
    """The committed models on the built-in samples (the real 15-bit chest CR among them) and
    one CT pulmonary angiogram phantom. Every committed model misses its targets beyond our own
    generator, so all of them run in shadow: their findings are shown, and none moves a priority."""
    from pipelines.synth.generate import generate

    generate("ctpa_pe", 1, 9013, tmp_path / "ctpa", progress=False)
    r = triage("demo", "--out", tmp_path / "out", "--studies", tmp_path / "ctpa" / "studies",
               "--metrics-port", "0", "--no-progress")
    assert r.returncode == 0, r.stderr
    header = next(line for line in r.stdout.splitlines() if line.startswith("#"))
    assert "SHADOW" in header and "FINDINGS" in header
    cr = next(line for line in r.stdout.splitlines() if " DEMO0002 " in line)  # the chest CR, the second sample
    assert "pneumothorax " in cr and "not assessed" in cr and "ROUTINE" in cr
    ctpa = next(line for line in r.stdout.splitlines() if "DEMO" in line and " pe 0." in line)
    assert "pe positive" not in ctpa  # in shadow: never a reason, never the priority
    assert "In shadow (recorded under SHADOW, never moving a priority): " in r.stdout
    events = [json.loads(line) for line in (tmp_path / "out" / "priority-events.jsonl").read_text().splitlines()]
    shadow = {f["model"]["name"] for e in events for f in e.get("shadow_findings") or []}
    assert {"pe", "pneumothorax_cxr", "aortic_dissection"} <= shadow
    assert not any(e["findings"] for e in events)  # no live model: no finding moves a priority
    assert not any(r.startswith(("Pneumothorax", "Pulmonary", "Aortic")) for e in events for r in e["priority"]["reasons"])


def test_worker_with_the_shipped_models_verifies_them_and_names_a_missing_broker():
    # no --models: the shipped models/ are verified (as the README's command runs it), then the
    # broker check says in one line that nothing answers
    done = triage("worker", "--bootstrap", "127.0.0.1:9", "--metrics-port", "0")
    assert done.returncode == 2, done.stderr
    assert "triage: no Kafka broker answered at 127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr
