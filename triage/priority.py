"""Findings + order context → priority, from a declarative policy (YAML).

score = noisy-OR over finding codes of (severity weight × calibrated probability)
        + points for the patient class + points for the requested priority, capped at 100.

A finding code counts once per study, at its highest probability over series and models:
three copies of one head CT are one piece of evidence, not three.

The score maps to a band (level, DICOM UPS and FHIR codes). Floors then apply to each of
the three codes, so a priority is never lowered below what someone already said: the
order's requested priority (a STAT order is STAT, UPS HIGH and FHIR stat) and the floor
of each positive finding's severity. Immutable once built; safe to share.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from triage.errors import ConfigError
from triage.events import (FhirPriority, Finding, Level, PatientClass, Priority, RequestedPriority,
                           UpsPriority, config_digest)

DEFAULT_POLICY = Path(__file__).parent / "config" / "policy.yaml"
_LEVEL_RANK = {Level.ROUTINE: 0, Level.URGENT: 1, Level.STAT: 2}
_UPS_RANK = {UpsPriority.LOW: 0, UpsPriority.MEDIUM: 1, UpsPriority.HIGH: 2}
_FHIR_RANK = {FhirPriority.ROUTINE: 0, FhirPriority.URGENT: 1, FhirPriority.ASAP: 2, FhirPriority.STAT: 3}
REQUIRED_ORDER_FLOORS = (RequestedPriority.STAT, RequestedPriority.HIGH)


@dataclass(frozen=True)
class Codes:
    """The three codes an event carries: what a band gives, or the least a floor guarantees."""

    level: Level
    dicom_ups: UpsPriority
    fhir: FhirPriority

    def ranks(self) -> tuple[int, int, int]:
        return _LEVEL_RANK[self.level], _UPS_RANK[self.dicom_ups], _FHIR_RANK[self.fhir]

    def at_least(self, floor: "Codes") -> "Codes":
        """Each code raised to the floor's where it is below it; never lowered."""
        return Codes(max(self.level, floor.level, key=_LEVEL_RANK.__getitem__),
                     max(self.dicom_ups, floor.dicom_ups, key=_UPS_RANK.__getitem__),
                     max(self.fhir, floor.fhir, key=_FHIR_RANK.__getitem__))

    def covers(self, floor: "Codes") -> bool:
        return all(a >= b for a, b in zip(self.ranks(), floor.ranks()))

    def describe(self) -> str:
        return f"{self.level.value} (UPS {self.dicom_ups.value}, FHIR {self.fhir.value})"


STAT_CODES = Codes(Level.STAT, UpsPriority.HIGH, FhirPriority.STAT)


@dataclass(frozen=True)
class Band:
    min_score: float
    codes: Codes


@dataclass(frozen=True)
class Severity:
    weight: float
    floor: Codes | None  # the codes a positive finding of this severity guarantees


@dataclass(frozen=True)
class Policy:
    severities: dict[str, Severity]
    patient_class: dict[PatientClass, float]
    requested_priority: dict[RequestedPriority, float]
    order_floor: dict[RequestedPriority, Codes]
    bands: tuple[Band, ...]  # sorted by min_score, highest first

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> "Policy":
        path = Path(path or DEFAULT_POLICY)
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read priority policy ({exc})", path=str(path)) from None
        return cls.from_dict(doc, path.name)

    @classmethod
    def from_dict(cls, doc: Any, where: str = "policy") -> "Policy":
        if not isinstance(doc, dict):
            raise ConfigError("policy must be a mapping", path=where)
        try:
            bands = tuple(sorted((Band(min_score=float(b["min_score"]), codes=_codes(b))
                                  for b in doc["bands"]), key=lambda b: -b.min_score))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"invalid priority policy ({type(exc).__name__}: {exc})", path=where) from None
        if not bands or bands[-1].min_score > 0:
            raise ConfigError("bands must include one with min_score 0", path=where)
        for level in Level:
            if not any(b.codes.level == level for b in bands):
                raise ConfigError(f"no band gives level {level.value}", path=where)
        for higher, lower in zip(bands, bands[1:]):
            if not higher.codes.covers(lower.codes):
                raise ConfigError(f"the band from {higher.min_score:g} gives a code below the band from "
                                  f"{lower.min_score:g}; a higher score must never lower a code", path=where)

        def floor(value: Any) -> Codes:
            if isinstance(value, str):  # a level: the codes of the lowest band that gives it
                level = Level(value)
                return min((b for b in bands if b.codes.level == level), key=lambda b: b.min_score).codes
            return _codes(value)

        try:
            severities = {str(k): Severity(weight=float(v["weight"]),
                                           floor=floor(v["floor"]) if v.get("floor") else None)
                          for k, v in doc["severities"].items()}
            patient = {PatientClass(k): float(v) for k, v in (doc.get("patient_class") or {}).items()}
            requested = {RequestedPriority(k): float(v) for k, v in (doc.get("requested_priority") or {}).items()}
            floors = {RequestedPriority(k): floor(v) for k, v in (doc.get("order_floor") or {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"invalid priority policy ({type(exc).__name__}: {exc})", path=where) from None
        if any(not 0 <= s.weight <= 100 for s in severities.values()):
            raise ConfigError("severity weights must lie in [0, 100]", path=where)
        missing = [r.value for r in REQUIRED_ORDER_FLOORS if r not in floors]
        if missing:
            raise ConfigError(f"order_floor gives no floor for {' and '.join(missing)} orders; without one they "
                              "could come out below what they asked for", path=where)
        if not floors[RequestedPriority.STAT].covers(STAT_CODES):
            raise ConfigError(f"a STAT order must guarantee {STAT_CODES.describe()}", path=where)
        return cls(severities, patient, requested, floors, bands)

    @property
    def fingerprint(self) -> str:
        """Identifies the policy; part of every event_id."""
        return config_digest(self)

    def check_severities(self, needed: dict[str, str]) -> None:
        """Refuse, at start-up, a policy that lacks a severity a model's finding names
        (``needed`` maps ``model/finding`` to its severity)."""
        missing = sorted(f"{sev!r} ({who})" for who, sev in needed.items() if sev not in self.severities)
        if missing:
            raise ConfigError(f"the priority policy has no severity {', '.join(missing)}; add it to the policy")

    def _band_for_score(self, score: float) -> Band:
        return next(b for b in self.bands if score >= b.min_score)

    def _lowest_band(self, level: Level) -> Band:
        return min((b for b in self.bands if b.codes.level == level), key=lambda b: b.min_score)

    def score(self, findings: list[Finding], severities: dict[str, str],
              requested: RequestedPriority | None, patient_class: PatientClass | None,
              extra_reasons: list[str] | None = None) -> Priority:
        """Priority for a study; ``severities`` maps finding code to its manifest severity. A
        finding that is not assessable (outside its model's training envelope) weighs nothing:
        it never raises the score, the level or the codes."""
        reasons: list[str] = []
        unassessed = bool(findings) and all(f.assessable is False for f in findings)
        findings = [f for f in findings if f.assessable is not False]
        miss = 1.0
        floors: list[Codes] = []
        weighed = []
        by_code: dict[str, list[Finding]] = {}
        for f in findings:
            by_code.setdefault(f.code, []).append(f)
        for code, group in by_code.items():
            sev = self.severities.get(severities.get(code, ""))
            if sev is None:
                raise ConfigError(f"policy has no severity {severities.get(code)!r} (finding {code})")
            top = max(group, key=lambda f: f.probability)  # the first of equals: stable
            weighed.append((sev.weight / 100.0 * top.probability, top, sev, group))
        # reasons in order of what each finding adds: a critical finding before a moderate one
        for share, top, sev, group in sorted(weighed, key=lambda t: -t[0]):
            miss *= 1.0 - share
            positive = [f for f in group if f.positive]
            if positive:
                shown = max(positive, key=lambda f: f.probability)
                series = {f.series_instance_uid for f in group}
                where = f", series {shown.series_instance_uid}, highest of {len(series)}" if len(series) > 1 else ""
                reasons.append(f"{shown.code} positive (p={shown.probability:.2f} ≥ {shown.threshold:.2f}, "
                               f"{shown.model.name}{where})")
                if sev.floor is not None:
                    floors.append(sev.floor)
        if findings and not reasons:
            top = max(findings, key=lambda f: f.probability)
            reasons.append(f"no positive finding (highest {top.code} p={top.probability:.2f})")
        elif unassessed:
            reasons.append("no finding could be assessed; read in order priority")
        score = 100.0 * (1.0 - miss)
        if patient_class is not None and self.patient_class.get(patient_class):
            score += self.patient_class[patient_class]
            reasons.append(f"patient class {patient_class.value}")
        if requested is not None and self.requested_priority.get(requested):
            score += self.requested_priority[requested]
            reasons.append(f"requested priority {requested.value}")
        if requested is not None and requested in self.order_floor:
            floors.append(self.order_floor[requested])
        score = min(100.0, max(0.0, score))
        codes = self._band_for_score(score).codes
        raised = codes
        for floor in floors:
            raised = raised.at_least(floor)
        if raised != codes:
            score = max(score, self._lowest_band(raised.level).min_score)
            raised = raised.at_least(self._band_for_score(score).codes)  # the codes never sit below the score's
            reasons.append(f"raised to {raised.describe()}: never below the order or a positive finding")
        reasons.extend(extra_reasons or [])
        if not findings and not reasons:
            reasons.append("no order context")
        return Priority(score=round(score, 2), level=raised.level, dicom_ups=raised.dicom_ups,
                        fhir=raised.fhir, reasons=reasons)


def _codes(value: Any) -> Codes:
    if not isinstance(value, dict):
        raise TypeError("expected a mapping with level, dicom_ups and fhir")
    return Codes(Level(value["level"]), UpsPriority(value["dicom_ups"]), FhirPriority(value["fhir"]))
