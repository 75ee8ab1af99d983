"""pipelines/configs: every model config is complete, and with the shipped routing rules the
series each phantom kind writes go to exactly the models that fit them."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluate import parse_rule
from pipelines.make import CONFIGS
from pipelines.synth.chest import chest_ct
from pipelines.synth.generate import KINDS, generate
from pipelines.synth.write import write_study
from pipelines.train import input_spec, load_config
from triage.dicom import scan_study
from triage.routing import Router, SeriesMatch

NAMES = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("name", NAMES)
def test_config_is_complete(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg["name"] == name and cfg["phantom"] in KINDS and cfg["reads"]
    input_spec(cfg)  # validates shape and window
    SeriesMatch.from_dict(cfg["applies_to"], name)
    assert {"train", "val", "test"} <= set(cfg["data"])
    seeds = [cfg["data"][s]["seed"] for s in ("train", "val", "test")]
    assert len(set(seeds)) == 3  # disjoint splits
    assert {"auc", "sensitivity", "specificity"} <= set(cfg["targets"]) and cfg["reproduce"]
    assert "default" in cfg["operating_points"]
    for rule in cfg["operating_points"].values():
        parse_rule(rule)
    bins = cfg.get("size_bins_ml", [0, 1])  # finding size bins for the evaluation: ascending from 0
    assert bins[0] == 0 and all(a < b for a, b in zip(bins, bins[1:]))


def test_no_two_configs_share_a_seed():
    seeds = [load_config(CONFIGS / f"{n}.yaml")["data"][s]["seed"] for n in NAMES for s in ("train", "val", "test")]
    assert len(seeds) == len(set(seeds))


@pytest.fixture(scope="module")
def router():
    return Router.from_file(None, {n: SeriesMatch.from_dict(load_config(CONFIGS / f"{n}.yaml")["applies_to"], n)
                                   for n in NAMES})


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory):
    root = tmp_path_factory.mktemp("routing")
    series = {}
    for kind in ("head_ct", "head_cta", "chest_ct_pneumothorax", "ctpa_pe", "chest_radiograph_pneumothorax",
                 "head_ct_v2", "head_cta_v2", "chest_ct_pneumothorax_v2", "ctpa_pe_v2", "chest_radiograph_pneumothorax_v2"):
        rows = generate(kind, 1, 61, root / kind, matrix=32, progress=False, workers=1)
        (series[kind],) = scan_study(root / kind / "studies" / rows[0]["study_id"])
    # a thick (5 mm) contrast chest CT: too coarse for the pulmonary embolism model
    thick = chest_ct(np.random.default_rng(62), False, finding="pe", matrix=32, thickness=5.0)
    write_study(thick, root / "thick", "thick", 62)
    (series["thick_cta"],) = scan_study(root / "thick" / "studies" / "thick")
    return series


@pytest.mark.parametrize("kind, models", [
    ("head_ct", {"ich", "skull_fracture"}),
    ("head_cta", {"lvo"}),
    ("chest_ct_pneumothorax", {"pneumothorax", "pericardial_effusion"}),  # no contrast: never pe
    ("ctpa_pe", {"pneumothorax", "pe", "aortic_dissection"}),
    ("thick_cta", {"pneumothorax"}),  # 5 mm: too thick for the angiography models
    ("chest_radiograph_pneumothorax", {"pneumothorax_cxr"}),
    # generator v2: the same routing, whatever its variation
    ("head_ct_v2", {"ich", "skull_fracture"}),
    ("head_cta_v2", {"lvo"}),
    ("chest_ct_pneumothorax_v2", {"pneumothorax", "pericardial_effusion"}),
    ("ctpa_pe_v2", {"pneumothorax", "pe", "aortic_dissection"}),
    ("chest_radiograph_pneumothorax_v2", {"pneumothorax_cxr"}),
])
def test_each_series_goes_to_exactly_the_models_that_fit_it(router, phantom_series, kind, models):
    assert {r.model for r in router.route([phantom_series[kind]])} == models
