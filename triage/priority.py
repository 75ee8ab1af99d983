"""Findings + order context → priority, from a declarative policy (YAML).

score = noisy-OR over findings of (severity weight × calibrated probability)
        + points for the patient class + points for the requested priority, capped at 100.

The score maps to a band (level, DICOM UPS and FHIR codes). Two floors then apply, so a
priority is never lowered below what someone already said: the order's requested
priority (a STAT order stays STAT) and the floor of each positive finding's severity.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from triage.errors import ConfigError
from triage.events import (FhirPriority, Finding, Level, PatientClass, Priority, RequestedPriority,
                           UpsPriority)

DEFAULT_POLICY = Path(__file__).parent / "config" / "policy.yaml"
_LEVEL_RANK = {Level.ROUTINE: 0, Level.URGENT: 1, Level.STAT: 2}


@dataclass(frozen=True)
class Band:
    min_score: float
    level: Level
    dicom_ups: UpsPriority
    fhir: FhirPriority


@dataclass(frozen=True)
class Severity:
    weight: float
    floor: Level | None  # level a positive finding of this severity guarantees


@dataclass(frozen=True)
class Policy:
    severities: dict[str, Severity]
    patient_class: dict[PatientClass, float]
    requested_priority: dict[RequestedPriority, float]
    order_floor: dict[RequestedPriority, Level]
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
            severities = {str(k): Severity(weight=float(v["weight"]),
                                           floor=Level(v["floor"]) if v.get("floor") else None)
                          for k, v in doc["severities"].items()}
            patient = {PatientClass(k): float(v) for k, v in (doc.get("patient_class") or {}).items()}
            requested = {RequestedPriority(k): float(v) for k, v in (doc.get("requested_priority") or {}).items()}
            floors = {RequestedPriority(k): Level(v) for k, v in (doc.get("order_floor") or {}).items()}
            bands = tuple(sorted((Band(min_score=float(b["min_score"]), level=Level(b["level"]),
                                       dicom_ups=UpsPriority(b["dicom_ups"]), fhir=FhirPriority(b["fhir"]))
                                  for b in doc["bands"]), key=lambda b: -b.min_score))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"invalid priority policy ({type(exc).__name__}: {exc})", path=where) from None
        if not bands or bands[-1].min_score > 0:
            raise ConfigError("bands must include one with min_score 0", path=where)
        if any(not 0 <= s.weight <= 100 for s in severities.values()):
            raise ConfigError("severity weights must lie in [0, 100]", path=where)
        for level in Level:
            if not any(b.level == level for b in bands):
                raise ConfigError(f"no band gives level {level.value}", path=where)
        return cls(severities, patient, requested, floors, bands)

    def _band_for_score(self, score: float) -> Band:
        return next(b for b in self.bands if score >= b.min_score)

    def _lowest_band(self, level: Level) -> Band:
        return min((b for b in self.bands if b.level == level), key=lambda b: b.min_score)

    def score(self, findings: list[Finding], severities: dict[str, str],
              requested: RequestedPriority | None, patient_class: PatientClass | None,
              extra_reasons: list[str] | None = None) -> Priority:
        """Priority for a study; ``severities`` maps finding code to its manifest severity."""
        reasons: list[str] = []
        miss = 1.0
        floor = Level.ROUTINE
        weighed = []
        for f in findings:
            sev = self.severities.get(severities.get(f.code, ""))
            if sev is None:
                raise ConfigError(f"policy has no severity {severities.get(f.code)!r} (finding {f.code})")
            weighed.append((sev.weight / 100.0 * f.probability, f, sev))
        # reasons in order of what each finding adds: a critical finding before a moderate one
        for share, f, sev in sorted(weighed, key=lambda t: -t[0]):
            miss *= 1.0 - share
            if f.positive:
                reasons.append(f"{f.code} positive (p={f.probability:.2f} ≥ {f.threshold:.2f}, {f.model.name})")
                if sev.floor is not None and _LEVEL_RANK[sev.floor] > _LEVEL_RANK[floor]:
                    floor = sev.floor
        if findings and not reasons:
            top = max(findings, key=lambda f: f.probability)
            reasons.append(f"no positive finding (highest {top.code} p={top.probability:.2f})")
        score = 100.0 * (1.0 - miss)
        if patient_class is not None and self.patient_class.get(patient_class):
            score += self.patient_class[patient_class]
            reasons.append(f"patient class {patient_class.value}")
        if requested is not None and self.requested_priority.get(requested):
            score += self.requested_priority[requested]
            reasons.append(f"requested priority {requested.value}")
        order_floor = self.order_floor.get(requested) if requested else None
        if order_floor is not None and _LEVEL_RANK[order_floor] > _LEVEL_RANK[floor]:
            floor = order_floor
        score = min(100.0, max(0.0, score))
        band = self._band_for_score(score)
        if _LEVEL_RANK[band.level] < _LEVEL_RANK[floor]:
            band = self._lowest_band(floor)
            score = max(score, band.min_score)
            reasons.append(f"raised to {floor.value}: never below the order or a positive finding")
        reasons.extend(extra_reasons or [])
        if not findings and not reasons:
            reasons.append("no order context")
        return Priority(score=round(score, 2), level=band.level, dicom_ups=band.dicom_ups,
                        fhir=band.fhir, reasons=reasons)
