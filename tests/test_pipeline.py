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
