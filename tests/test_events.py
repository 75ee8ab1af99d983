"""triage/events.py: typed events, published schemas, validation at the boundary."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from triage.errors import SchemaError, UnknownSchemaError
from triage.events import (PatientClass, RequestedPriority, parse_priority_event, parse_study_event,
                           published_schemas, to_dict, to_json)

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"

STUDY = {
    "schema": "triage.study/v1", "study_instance_uid": "1.2.840.113619.2.55.3",
    "accession_number": "A123", "source": {"uri": "file:///data/incoming/A123"},
    "requested_priority": "STAT", "patient_class": "emergency", "received_at": "2026-11-28T10:00:00Z",
}

PRIORITY = {
    "schema": "triage.priority/v1", "event_id": "0" * 32, "study_instance_uid": "1.2.3",
    "accession_number": None, "status": "scored",
    "priority": {"score": 91.5, "level": "STAT", "dicom_ups": "HIGH", "fhir": "stat", "reasons": ["ich positive"]},
    "findings": [{"code": "ich", "label": "Intracranial haemorrhage", "probability": 0.93, "threshold": 0.5,
                  "positive": True, "model": {"name": "ich", "version": "1.0.0", "sha256": "a" * 64},
                  "series_instance_uid": "1.2.3.4", "key_slice": 17}],
    "error": None, "timings_ms": {"decode": 120.0, "infer": 300.0, "score": 0.1, "total": 421.0},
    "produced_at": "2026-11-28T10:00:01.250Z",
}


@pytest.mark.parametrize("name", ["study-event.v1.json", "priority-event.v1.json"])
def test_published_schema_files_match_the_code(name):
    on_disk = json.loads((SCHEMAS / name).read_text())
    assert on_disk == published_schemas()[name], "run: triage schemas --write"


def test_study_event_round_trips_and_validates_against_the_file():
    event = parse_study_event(json.dumps(STUDY))
    assert event.requested_priority is RequestedPriority.STAT
    assert event.patient_class is PatientClass.EMERGENCY
    assert to_dict(event) == STUDY
    jsonschema.validate(to_dict(event), json.loads((SCHEMAS / "study-event.v1.json").read_text()))


def test_priority_event_round_trips_and_validates_against_the_file():
    event = parse_priority_event(PRIORITY)
    assert to_dict(event) == PRIORITY
    assert parse_priority_event(to_json(event)) == event
    jsonschema.validate(to_dict(event), json.loads((SCHEMAS / "priority-event.v1.json").read_text()))


def test_nullable_fields_may_be_omitted_in_study_events():
    minimal = {k: STUDY[k] for k in ("schema", "study_instance_uid", "source", "received_at")}
    event = parse_study_event(minimal)
    assert event.accession_number is None and event.requested_priority is None


def test_unknown_schema_value_is_a_clear_error():
    with pytest.raises(UnknownSchemaError, match=r"unknown schema 'triage.study/v2'; this worker reads 'triage.study/v1'"):
        parse_study_event({**STUDY, "schema": "triage.study/v2"})
    # a value that does not look like a schema name is never echoed: it may hold anything
    with pytest.raises(UnknownSchemaError, match=r"^unknown schema; this worker reads 'triage.study/v1'$"):
        parse_study_event({**STUDY, "schema": "Smith^John 1961-04-01"})


@pytest.mark.parametrize("change,message", [
    ({"requested_priority": "ASAP"}, r"requested_priority: not one of STAT, HIGH, ROUTINE, MEDIUM, LOW"),
    ({"study_instance_uid": "1.2 3"}, r"study_instance_uid: does not match"),
    ({"study_instance_uid": "1.2.3\n"}, r"study_instance_uid: does not match"),
    ({"study_instance_uid": "1." * 33}, r"study_instance_uid: does not match"),
    ({"source": {"uri": "ftp://x"}}, r"source.uri: does not match"),
    ({"received_at": "yesterday"}, r"received_at: not an ISO 8601 date-time"),
    ({"received_at": "2026-11-28T10:00:00"}, r"has no time zone"),
    ({"patient_class": 3}, r"patient_class: not one of"),
])
def test_invalid_study_events_name_the_field(change, message):
    with pytest.raises(SchemaError, match=message):
        parse_study_event({**STUDY, **change})


def test_error_messages_never_echo_field_values():
    with pytest.raises(SchemaError) as err:
        parse_study_event({**STUDY, "study_instance_uid": "Doe^Jane", "accession_number": "x" * 80})
    assert "Doe" not in str(err.value)


def test_missing_required_field_and_bad_json():
    broken = dict(STUDY)
    del broken["source"]
    with pytest.raises(SchemaError, match="source: required field is missing"):
        parse_study_event(broken)
    with pytest.raises(SchemaError, match="not valid JSON"):
        parse_study_event(b"{not json")


def test_probability_out_of_range_is_refused():
    bad = json.loads(json.dumps(PRIORITY))
    bad["findings"][0]["probability"] = 1.5
    with pytest.raises(SchemaError, match=r"findings\[0\].probability: 1.5 is above 1"):
        parse_priority_event(bad)


@pytest.mark.parametrize("uid,accepted", [
    ("1.2.840.113619.2.55.3", True), ("1.2.840.99.ABC", True), ("1.3.6-1_2+x", True), ("9" * 64, True),
    ("9" * 65, False), ("Doe^Jane", False), ("1.2 3", False), ("", False), ("1.2\\3", False),
])
def test_the_code_and_the_published_schema_accept_the_same_uids(uid, accepted):
    doc = {**STUDY, "study_instance_uid": uid}
    schema = json.loads((SCHEMAS / "study-event.v1.json").read_text())
    assert jsonschema.Draft202012Validator(schema).is_valid(doc) is accepted
    if accepted:
        assert parse_study_event(doc).study_instance_uid == uid
    else:
        with pytest.raises(SchemaError, match="study_instance_uid"):
            parse_study_event(doc)


def test_fields_from_a_newer_producer_are_ignored_by_the_code_and_the_schema():
    doc = {**STUDY, "priority_hint": {"x": 1}, "source": {"uri": STUDY["source"]["uri"], "token": "t"}}
    jsonschema.validate(doc, json.loads((SCHEMAS / "study-event.v1.json").read_text()))
    event = parse_study_event(doc)
    assert event.requested_priority is RequestedPriority.STAT and to_dict(event) == STUDY


@pytest.mark.parametrize("raw,message", [
    (None, "empty message"), (b"[" * 100_000, "nested too deeply"), (b"\xff{}", "not UTF-8 text"),
    (b"[]", "must be a JSON object"), (b'"x"', "must be a JSON object"),
    (b" " * (1 << 20) + b"{}", "over the 1048576 byte limit"),
])
def test_hostile_payloads_are_schema_errors_in_our_words(raw, message):
    with pytest.raises(SchemaError, match=message):
        parse_study_event(raw)


def test_salvage_keeps_the_order_fields_that_are_valid_and_nothing_else():
    from triage.events import salvage_study_event

    doc = {**STUDY, "requested_priority": "stat", "patient_class": "martian", "source": None}
    study = salvage_study_event(json.dumps(doc).encode())
    assert study.study_instance_uid == STUDY["study_instance_uid"]
    assert study.requested_priority is RequestedPriority.STAT and study.patient_class is None
    assert salvage_study_event(json.dumps({**STUDY, "study_instance_uid": "Doe^Jane"})) is None
    assert salvage_study_event(b"[" * 100_000) is None and salvage_study_event(None) is None
    # too large to parse: the UID is still found near the start
    big = b'{"study_instance_uid": "1.2.3.4", "pad": "' + b"x" * (17 << 20) + b'"}'
    assert salvage_study_event(big).study_instance_uid == "1.2.3.4"
