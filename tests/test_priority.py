"""triage/priority.py: the shipped policy, as a table of cases."""
from __future__ import annotations

from pathlib import Path

import pytest

from triage.errors import ConfigError
from triage.events import Finding, Level, ModelRef, PatientClass, RequestedPriority
from triage.priority import DEFAULT_POLICY, Policy

POLICY = Policy.from_file()
SEV = {"ich": "critical", "ptx": "high", "eff": "moderate"}


def f(code, p, threshold=0.5, series="1.2.3"):
    return Finding(code=code, label=code, probability=p, threshold=threshold, positive=p >= threshold,
                   model=ModelRef(code, "1", "0" * 64), series_instance_uid=series)


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
    ([], RequestedPriority.HIGH, None, Level.URGENT, "MEDIUM", "asap", (40, 40)),  # HIGH: below STAT on every code
    ([], RequestedPriority.MEDIUM, None, Level.ROUTINE, "MEDIUM", "urgent", (10, 10)),  # above routine on UPS and FHIR
    ([], RequestedPriority.ROUTINE, None, Level.ROUTINE, "LOW", "routine", (0, 0)),
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


BANDS = [{"min_score": 80, "level": "STAT", "dicom_ups": "HIGH", "fhir": "stat"},
         {"min_score": 40, "level": "URGENT", "dicom_ups": "MEDIUM", "fhir": "urgent"},
         {"min_score": 0, "level": "ROUTINE", "dicom_ups": "LOW", "fhir": "routine"}]
STAT_FLOOR = {"level": "STAT", "dicom_ups": "HIGH", "fhir": "stat"}


@pytest.mark.parametrize("doc,message", [
    ({"severities": {}, "bands": BANDS}, "no floor for STAT and HIGH orders"),
    ({"severities": {}, "bands": BANDS, "order_floor": {"STAT": STAT_FLOOR}}, "no floor for HIGH orders"),
    ({"severities": {}, "bands": BANDS, "order_floor": {"STAT": "URGENT", "HIGH": "URGENT"}},
     r"a STAT order must guarantee STAT \(UPS HIGH, FHIR stat\)"),
    ({"severities": {}, "bands": BANDS, "order_floor": {"STAT": {**STAT_FLOOR, "fhir": "asap"}, "HIGH": "URGENT"}},
     "a STAT order must guarantee"),
    ({"severities": {}, "bands": [{**BANDS[0], "dicom_ups": "MEDIUM"}, {**BANDS[1], "dicom_ups": "HIGH"}, BANDS[2]]},
     "never lower a code"),
    ({"severities": {"critical": {"weight": 150}}, "bands": []}, "bands must include"),
    ({"severities": {}, "bands": [{"min_score": 0, "level": "ROUTINE", "dicom_ups": "LOW", "fhir": "routine"}]}, "no band gives level"),
    ({"severities": {}, "bands": [{"min_score": 0, "level": "SOON", "dicom_ups": "LOW", "fhir": "routine"}]}, "invalid priority policy"),
])
def test_invalid_policies_are_refused(doc, message):
    with pytest.raises(ConfigError, match=message):
        Policy.from_dict(doc)


def test_the_shipped_policy_refuses_nothing_it_should_not():
    assert set(POLICY.order_floor) == set(RequestedPriority)


# -- a finding counts once -----------------------------------------------------------------
def test_copies_of_one_series_are_one_piece_of_evidence():
    one = POLICY.score([f("ich", 0.40, series="1.2.1")], SEV, None, None)
    three = POLICY.score([f("ich", 0.40, series=f"1.2.{i}") for i in range(3)], SEV, None, None)
    assert one.level is three.level is Level.ROUTINE and one.score == three.score


def test_the_highest_series_counts_and_the_reason_names_it():
    p = POLICY.score([f("ptx", 0.55, series="1.2.1"), f("ptx", 0.85, series="1.2.2"), f("ptx", 0.2, series="1.2.3")],
                     SEV, None, None)
    assert p.score == POLICY.score([f("ptx", 0.85)], SEV, None, None).score
    assert p.reasons[0] == "ptx positive (p=0.85 ≥ 0.50, ptx, series 1.2.2, highest of 3)"


def test_different_findings_still_combine():
    both = POLICY.score([f("ptx", 0.9, series="1.2.1"), f("eff", 0.9, series="1.2.2")], SEV, None, None)
    assert both.score > POLICY.score([f("ptx", 0.9)], SEV, None, None).score


def test_a_positive_from_one_model_keeps_its_floor_though_another_reads_higher_below_its_threshold():
    p = POLICY.score([f("ich", 0.45, threshold=0.4, series="1.2.1"), f("ich", 0.55, threshold=0.6, series="1.2.2")],
                     SEV, None, None)
    assert p.level is Level.STAT and p.reasons[0].startswith("ich positive (p=0.45 ≥ 0.40")


# -- the table: every order context x findings x series copies -------------------------------
TABLE_SEV = {"crit": "critical", "hi": "high", "mod": "moderate", "lo": "low"}
FINDING_SETS = {
    "none": [], "one below threshold": [("crit", 0.30)],
    "critical": [("crit", 0.70)], "high": [("hi", 0.70)], "moderate": [("mod", 0.70)], "low": [("lo", 0.70)],
    "several": [("crit", 0.55), ("hi", 0.95), ("mod", 0.20), ("lo", 0.60)],
}
# what each order asks for, from the DICOM and FHIR definitions (policy.yaml explains them)
ORDER_ASKS = {None: ("ROUTINE", "LOW", "routine"), RequestedPriority.LOW: ("ROUTINE", "LOW", "routine"),
              RequestedPriority.ROUTINE: ("ROUTINE", "LOW", "routine"),
              RequestedPriority.MEDIUM: ("ROUTINE", "MEDIUM", "urgent"),
              RequestedPriority.HIGH: ("URGENT", "MEDIUM", "asap"), RequestedPriority.STAT: ("STAT", "HIGH", "stat")}
SEVERITY_ASKS = {"crit": ("STAT", "HIGH", "stat"), "hi": ("URGENT", "MEDIUM", "urgent")}
_RANKS = ({"ROUTINE": 0, "URGENT": 1, "STAT": 2}, {"LOW": 0, "MEDIUM": 1, "HIGH": 2},
          {"routine": 0, "urgent": 1, "asap": 2, "stat": 3})


def _ranks(p) -> tuple[int, int, int]:
    return tuple(r[c] for r, c in zip(_RANKS, (p.level.value, p.dicom_ups.value, p.fhir.value)))


def _asks(codes) -> tuple[int, int, int]:
    return tuple(r[c] for r, c in zip(_RANKS, codes))


def _findings(spec, copies):
    return [f(code, p, series=f"1.2.{k}") for code, p in spec for k in range(copies)]


CONTEXTS = [(r, c) for r in [None, *RequestedPriority] for c in [None, *PatientClass]]


@pytest.mark.parametrize("requested,patient", CONTEXTS)
@pytest.mark.parametrize("name", list(FINDING_SETS))
@pytest.mark.parametrize("copies", [1, 3])
def test_invariants_over_the_table(requested, patient, name, copies):
    findings = _findings(FINDING_SETS[name], copies)
    p = POLICY.score(findings, TABLE_SEV, requested, patient)
    # no code is ever below what the order asks for, nor below a positive finding's severity
    asks = [_asks(ORDER_ASKS[requested])] + [_asks(SEVERITY_ASKS[c]) for c, prob in FINDING_SETS[name]
                                             if prob >= 0.5 and c in SEVERITY_ASKS]
    for ask in asks:
        assert all(got >= want for got, want in zip(_ranks(p), ask)), (p, ask)
    # copies of a series change nothing
    single = POLICY.score(_findings(FINDING_SETS[name], 1), TABLE_SEV, requested, patient)
    assert (p.score, _ranks(p)) == (single.score, _ranks(single))
    # adding a positive finding of any severity never lowers any code, nor the score
    for code in TABLE_SEV:
        more = POLICY.score(findings + [f(code, 0.9, series="1.2.99")], TABLE_SEV, requested, patient)
        assert all(a >= b for a, b in zip(_ranks(more), _ranks(p))), (code, more, p)
        assert more.score >= p.score


def test_a_missing_severity_is_refused_when_the_pipeline_starts(tmp_path):
    from tests.helpers import make_model_dir, rules_file
    from triage.pipeline import Pipeline
    from triage.settings import Settings

    make_model_dir(tmp_path / "models", "brightspot", severity="critical")
    policy = tmp_path / "policy.yaml"
    doc = __import__("yaml").safe_load(Path(DEFAULT_POLICY).read_text())
    del doc["severities"]["critical"]
    policy.write_text(__import__("yaml").safe_dump(doc))
    rules = rules_file(tmp_path / "rules.yaml", [{"name": "ct", "match": {"modality": "CT"}, "models": ["brightspot"]}])
    with pytest.raises(ConfigError, match=r"no severity 'critical' \(brightspot/brightspot\)"):
        Pipeline.from_settings(Settings(models_dir=tmp_path / "models", rules=rules, policy=policy))
