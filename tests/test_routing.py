"""triage/routing.py: which series go to which models."""
from __future__ import annotations

from pathlib import Path

import pytest

from triage.dicom.scan import SeriesInfo
from triage.errors import ConfigError
from triage.routing import DEFAULT_RULES, Router, SeriesMatch, load_rules


def series(modality="CT", body="HEAD", desc="", contrast=False, thickness=5.0, n=32) -> SeriesInfo:
    return SeriesInfo(series_instance_uid=f"1.2.{abs(hash((modality, body, contrast, thickness, n))) % 10**8}",
                      modality=modality, body_part=body, description=desc, contrast=contrast,
                      slice_thickness=thickness, n_slices=n, rows=512, columns=512, root=Path("."))


APPLIES = {
    "ich": SeriesMatch.from_dict({"modality": "CT", "contrast": False, "slice_thickness_mm": [0.5, 5.0]}, "ich"),
    "lvo": SeriesMatch.from_dict({"modality": "CT", "contrast": True}, "lvo"),
    "pe": SeriesMatch.from_dict({"modality": "CT", "contrast": True, "series_description": "PE|pulmonary|CTPA"}, "pe"),
    "pneumothorax": SeriesMatch.from_dict({"modality": "CT", "min_slices": 16}, "pneumothorax"),
    "pneumothorax_cxr": SeriesMatch.from_dict({"modality": ["DX", "CR"]}, "pneumothorax_cxr"),
}
ROUTER = Router.from_file(DEFAULT_RULES, APPLIES)

TABLE = [
    (series("CT", "HEAD", contrast=False), ["ich"]),
    (series("CT", "BRAIN", contrast=False, thickness=0.625), ["ich"]),
    (series("CT", "HEAD", contrast=False, thickness=10.0), []),  # the model's guard: too thick
    (series("CT", "HEAD", contrast=True), ["lvo"]),
    (series("CT", "CHEST", contrast=False), ["pneumothorax"]),  # non-contrast chest never goes to pe
    (series("CT", "CHEST", desc="CTPA pulmonary", contrast=True), ["pneumothorax", "pe"]),
    (series("CT", "CHEST", desc="arterial", contrast=True), ["pneumothorax"]),
    (series("CT", "CHEST", contrast=False, n=10), []),  # too few slices for the model
    (series("CR", "CHEST", n=1), ["pneumothorax_cxr"]),
    (series("DX", "CHEST", n=1), ["pneumothorax_cxr"]),
    (series("DX", "HAND", n=1), []),
    (series("MR", "HEAD"), []),
    (series("CT", "", contrast=False), []),  # no body part: no rule matches
]


@pytest.mark.parametrize("s,expected", TABLE, ids=[f"{s.modality}-{s.body_part}-{s.contrast}-{s.slice_thickness}-{s.n_slices}" for s, _ in TABLE])
def test_routing_table(s, expected):
    assert [r.model for r in ROUTER.route([s])] == expected


def test_study_with_several_series_routes_each():
    routes = ROUTER.route([series("CT", "HEAD"), series("CR", "CHEST", n=1), series("MR", "HEAD")])
    assert sorted(r.model for r in routes) == ["ich", "pneumothorax_cxr"]


def test_uninstalled_models_named_in_rules_are_skipped():
    router = Router.from_file(DEFAULT_RULES, {})
    assert router.route([series("CT", "HEAD")]) == []


def test_why_not_names_the_failed_condition():
    assert APPLIES["lvo"].why_not(series(contrast=False)) == "without contrast"
    assert APPLIES["ich"].why_not(series(thickness=7.0)) == "slice thickness 7.0"


@pytest.mark.parametrize("text,message", [
    ("rules: [{name: x, models: [a], match: {colour: red}}]", "unknown match key"),
    ("rules: [{name: x, models: a}]", "'models' must be a list"),
    ("rules: [{name: x, models: [a], match: {series_description: '('}}]", "invalid match"),
    ("nothing: here", "top-level 'rules' list"),
])
def test_invalid_rules_are_refused_with_the_file_named(tmp_path, text, message):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_rules(path)
    assert "rules.yaml" in str(err.value)
