"""Series → models, from declarative rules.

A rules file (``triage/config/routing.yaml`` by default) lists rules; each has a
:class:`SeriesMatch` and the models to run on series that match. A model also states in
its manifest which series it was built for (``applies_to``, the same :class:`SeriesMatch`),
and a series goes to a model only when both agree: a site's rule can narrow what a model
sees, never widen it.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from triage.dicom.scan import SeriesInfo
from triage.errors import ConfigError
from triage.events import config_digest

log = logging.getLogger(__name__)

DEFAULT_RULES = Path(__file__).parent / "config" / "routing.yaml"
_MATCH_KEYS = {"modality", "body_part", "series_description", "contrast", "slice_thickness_mm", "min_slices"}


@dataclass(frozen=True)
class SeriesMatch:
    """Conditions on a series' headers; an unset condition matches anything."""

    modality: frozenset[str] | None = None
    body_part: frozenset[str] | None = None
    series_description: re.Pattern | None = None
    contrast: bool | None = None
    slice_thickness_mm: tuple[float, float] | None = None
    min_slices: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str) -> "SeriesMatch":
        data = data or {}
        if not isinstance(data, dict):
            raise ConfigError("match must be a mapping", path=where)
        unknown = set(data) - _MATCH_KEYS
        if unknown:
            raise ConfigError(f"unknown match key(s) {sorted(unknown)}; allowed: {sorted(_MATCH_KEYS)}", path=where)

        def upper_set(key: str) -> frozenset[str] | None:
            value = data.get(key)
            if value is None:
                return None
            values = [value] if isinstance(value, str) else list(value)
            return frozenset(str(v).upper() for v in values)

        try:
            pattern = data.get("series_description")
            thickness = data.get("slice_thickness_mm")
            return cls(
                modality=upper_set("modality"), body_part=upper_set("body_part"),
                series_description=re.compile(pattern, re.IGNORECASE) if pattern else None,
                contrast=None if data.get("contrast") is None else bool(data["contrast"]),
                slice_thickness_mm=(float(thickness[0]), float(thickness[1])) if thickness else None,
                min_slices=None if data.get("min_slices") is None else int(data["min_slices"]))
        except (re.error, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"invalid match ({exc})", path=where) from None

    def why_not(self, s: SeriesInfo) -> str | None:
        """``None`` when the series matches, else the first condition it fails."""
        if self.modality is not None and s.modality not in self.modality:
            return f"modality {s.modality or '?'}"
        if self.body_part is not None and s.body_part not in self.body_part:
            return f"body part {s.body_part or 'missing'}"
        if self.series_description is not None and not self.series_description.search(s.description):
            return "series description"
        if self.contrast is not None and s.contrast != self.contrast:
            return "with contrast" if s.contrast else "without contrast"
        if self.slice_thickness_mm is not None:
            lo, hi = self.slice_thickness_mm
            if s.slice_thickness is None or not lo <= s.slice_thickness <= hi:
                return f"slice thickness {s.slice_thickness}"
        if self.min_slices is not None and s.n_slices < self.min_slices:
            return f"{s.n_slices} slices"
        return None


@dataclass(frozen=True)
class Rule:
    name: str
    match: SeriesMatch
    models: tuple[str, ...]
    shadow: tuple[str, ...] = ()  # of ``models``, those this rule runs in shadow (recorded, never scored)


@dataclass(frozen=True)
class Route:
    series: SeriesInfo
    model: str
    shadow: bool = False


class Router:
    """Immutable once built; safe to share between threads."""

    def __init__(self, rules: Iterable[Rule], applies_to: dict[str, SeriesMatch]):
        self.rules = tuple(rules)
        self.applies_to = dict(applies_to)
        absent = sorted({m for rule in self.rules for m in rule.models if m not in self.applies_to})
        if absent:
            log.info("routing rules name models that are not installed (skipped): %s", ", ".join(absent))

    @classmethod
    def from_file(cls, path: str | Path | None, applies_to: dict[str, SeriesMatch]) -> "Router":
        return cls(load_rules(path or DEFAULT_RULES), applies_to)

    @property
    def fingerprint(self) -> str:
        """Identifies the rules; part of every event_id."""
        return config_digest(self.rules)

    def route(self, series: list[SeriesInfo]) -> list[Route]:
        routes: list[Route] = []
        for s in series:
            chosen: list[str] = []
            shadow: set[str] = set()
            for rule in self.rules:
                if rule.match.why_not(s) is not None:
                    continue
                for model in rule.models:
                    guard = self.applies_to.get(model)
                    if guard is not None and guard.why_not(s) is None:
                        if model not in chosen:
                            chosen.append(model)
                        if model in rule.shadow:
                            shadow.add(model)
            routes.extend(Route(series=s, model=m, shadow=m in shadow) for m in chosen)
        return routes


def load_rules(path: str | Path) -> list[Rule]:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read routing rules ({exc})", path=str(path)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise ConfigError("routing rules need a top-level 'rules' list", path=str(path))
    rules = []
    for i, item in enumerate(doc["rules"]):
        where = f"{path.name}: rules[{i}]"
        if not isinstance(item, dict) or "models" not in item:
            raise ConfigError("each rule needs 'name', 'match' and 'models'", path=where)
        models = item["models"]
        if isinstance(models, str) or not all(isinstance(m, str) for m in models):
            raise ConfigError("'models' must be a list of model names", path=where)
        shadow = item.get("shadow") or []
        if isinstance(shadow, str) or not set(shadow) <= set(models):
            raise ConfigError("'shadow' must list models that the rule's 'models' names", path=where)
        rules.append(Rule(name=str(item.get("name", f"rule{i}")),
                          match=SeriesMatch.from_dict(item.get("match"), where), models=tuple(models),
                          shadow=tuple(shadow)))
    return rules
