"""triage/priority.py: the shipped policy, as a table of cases."""
from __future__ import annotations

import pytest

from triage.errors import ConfigError
from triage.events import Finding, Level, ModelRef, PatientClass, RequestedPriority
from triage.priority import Policy

POLICY = Policy.from_file()
SEV = {"ich": "critical", "ptx": "high", "eff": "moderate"}


def f(code, p, threshold=0.5):
    return Finding(code=code, label=code, probability=p, threshold=threshold, positive=p >= threshold,
                   model=ModelRef(code, "1", "0" * 64), series_instance_uid="1.2.3")


CASES = [
    # findings, requested, patient class -> level, ups, fhir, score range
    ([], None, None, Level.ROUTINE, "LOW", "routine", (0, 0)),
    ([f("ich", 0.95)], None, None, Level.STAT, "HIGH", "stat", (90, 91)),
    ([f("ich", 0.3)], None, None, Level.ROUTINE, "LOW", "routine", (28, 29)),  # negative: weight x p only
    ([f("ich", 0.52)], None, PatientClass.OUTPATIENT, Level.STAT, "HIGH", "stat", (80, 80)),  # floor: critical positive
    ([f("ptx", 0.6)], None, None, Level.URGENT, "MEDIUM", "urgent", (45, 45)),
    ([f("ptx", 0.6)], None, PatientClass.EMERGENCY, Level.URGENT, "MEDIUM", "asap", (65, 65)),
    ([f("eff", 0.9)], None, None, Level.URGENT, "MEDIUM", "urgent", (45, 45)),
    ([f("eff", 0.1)], None, None, Level.ROUTINE, "LOW", "routine", (5, 5)),
    ([], RequestedPriority.STAT, None, Level.STAT, "HIGH", "stat", (80, 80)),  # a STAT order stays STAT
    ([f("eff", 0.05)], RequestedPriority.STAT, PatientClass.OUTPATIENT, Level.STAT, "HIGH", "stat", (80, 80)),
    ([], RequestedPriority.HIGH, None, Level.URGENT, "MEDIUM", "urgent", (40, 40)),
    ([], RequestedPriority.LOW, PatientClass.EMERGENCY, Level.ROUTINE, "LOW", "routine", (20, 20)),
    ([f("ptx", 0.9), f("eff", 0.9)], None, None, Level.STAT, "HIGH", "stat", (82, 83)),  # two findings combine (noisy-OR)
    ([f("ich", 0.99), f("ptx", 0.99)], RequestedPriority.STAT, PatientClass.EMERGENCY, Level.STAT, "HIGH", "stat", (100, 100)),
]


@pytest.mark.parametrize("findings,requested,patient,level,ups,fhir,score", CASES)
def test_policy_table(findings, requested, patient, level, ups, fhir, score):
    p = POLICY.score(findings, SEV, requested, patient)
    assert p.level is level
    assert p.dicom_ups.value == ups and p.fhir.value == fhir
    assert score[0] <= p.score <= score[1]
    assert p.reasons


def test_priority_never_drops_below_the_order():
    for requested, floor in ((RequestedPriority.STAT, Level.STAT), (RequestedPriority.HIGH, Level.URGENT)):
        p = POLICY.score([f("eff", 0.0)], SEV, requested, PatientClass.OUTPATIENT)
        assert p.level is floor


def test_reasons_name_positive_findings_and_context():
    p = POLICY.score([f("ich", 0.91)], SEV, RequestedPriority.ROUTINE, PatientClass.EMERGENCY)
    assert p.reasons[0].startswith("ich positive (p=0.91")
    assert "patient class emergency" in p.reasons


def test_several_positive_findings_each_give_a_reason_most_severe_first():
    p = POLICY.score([f("eff", 0.9), f("ptx", 0.8), f("ich", 0.2)], SEV, None, None)
    positive = [r for r in p.reasons if " positive (" in r]
    assert [r.split()[0] for r in positive] == ["ptx", "eff"]  # high before moderate, whatever p; ich negative
    assert p.level is Level.STAT  # two positives together outrank either alone (both are URGENT alone)


def test_more_findings_never_lower_the_score():
    one = POLICY.score([f("ptx", 0.7)], SEV, None, None).score
    two = POLICY.score([f("ptx", 0.7), f("eff", 0.2)], SEV, None, None).score
    assert two >= one


@pytest.mark.parametrize("doc,message", [
    ({"severities": {"critical": {"weight": 150}}, "bands": []}, "bands must include"),
    ({"severities": {}, "bands": [{"min_score": 0, "level": "ROUTINE", "dicom_ups": "LOW", "fhir": "routine"}]}, "no band gives level"),
    ({"severities": {}, "bands": [{"min_score": 0, "level": "SOON", "dicom_ups": "LOW", "fhir": "routine"}]}, "invalid priority policy"),
])
def test_invalid_policies_are_refused(doc, message):
    with pytest.raises(ConfigError, match=message):
        Policy.from_dict(doc)
