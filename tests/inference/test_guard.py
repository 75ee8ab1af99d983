"""triage/inference/guard.py: findings outside a model's training envelope are reported, never
positive, and never raise a priority; held-out phantoms stay assessable."""
from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from tests.helpers import ROOT, make_model_dir, promoted_models, ref, rules_file, write_series
from triage import metrics
from triage.events import STUDY_SCHEMA, Status, now_iso, parse_priority_event, parse_study_event, to_dict
from triage.pipeline import Pipeline
from triage.settings import Settings


def study(folder, **extra):
    return parse_study_event({"schema": STUDY_SCHEMA, "study_instance_uid": "1.2.826.0.1.77",
                              "source": {"uri": folder.resolve().as_uri()}, "received_at": now_iso(), **extra})


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The committed models, promoted to live, with the shipped rules and policy."""
    return Pipeline.from_settings(Settings(models_dir=promoted_models(tmp_path_factory.mktemp("served") / "models")))


def phantom(out, kind: str, seed: int, positive: bool = False, matrix: int = 128, index: int = 0):
    """One study of ``kind`` from the phantom generator, as its DICOM files."""
    from pipelines.synth.generate import KINDS
    from pipelines.synth.write import write_study

    ph = KINDS[kind](np.random.default_rng([seed, index]), positive, matrix=matrix)
    write_study(ph, out, f"s{seed}-{index}", seed)
    return out / "studies" / f"s{seed}-{index}"


def retag(folder, **values):
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        for key, value in values.items():
            setattr(ds, key, value)
        ds.save_as(path)


def by_model(event, name):
    return next(f for f in event.findings + (event.shadow_findings or []) if f.model.name == name)


def test_a_real_15_bit_radiograph_is_read_but_not_assessed(tmp_path, served):
    """pydicom-data's chest CR: 15 bits stored, MONOCHROME1, PixelSpacing 0\\0."""
    (tmp_path / "cr").mkdir()
    shutil.copy(ref("RG1_UNCR.dcm"), tmp_path / "cr")
    e = served.process(study(tmp_path / "cr", requested_priority="ROUTINE", patient_class="outpatient")).event
    assert e.status is Status.SCORED
    f = by_model(e, "pneumothorax_cxr")
    assert f.assessable is False and not f.positive and 0.0 <= f.probability <= 1.0
    assert "outside pneumothorax_cxr's training envelope" in f.not_assessable_reason
    assert "pixel spacing not stated" in f.not_assessable_reason
    # read on its own declared range (window 15000/30000), not through a 12-bit window: a film
    # processed as real ones are is still far from the phantoms the model learnt
    assert "clipped by the input window" not in f.not_assessable_reason
    assert "body intensity" in f.not_assessable_reason
    assert e.priority.level.value == "ROUTINE"
    assert any(r.startswith("Pneumothorax not assessed: outside") for r in e.priority.reasons)


def test_a_non_contrast_chest_ct_tagged_as_angiography_is_not_assessed_for_contrast_findings(tmp_path, served):
    folder = phantom(tmp_path, "chest_ct_pneumothorax", seed=4242)
    retag(folder, ContrastBolusAgent="IODINE", ContrastBolusRoute="IV", SeriesDescription="CTA CHEST")
    e = served.process(study(folder, requested_priority="ROUTINE", patient_class="outpatient")).event
    for name in ("aortic_dissection", "pe"):  # pe runs in shadow
        f = by_model(e, name)
        assert f.assessable is False and not f.positive
        assert f.not_assessable_reason.startswith("tagged contrast, brightest vessels")
        hu = float(f.not_assessable_reason.split()[-2])
        assert hu < 100  # unenhanced blood and muscle, 40 HU in this phantom
    assert any(r.startswith("Aortic dissection not assessed: tagged contrast") for r in e.priority.reasons)
    assert e.priority.level.value == "ROUTINE"


def test_held_out_phantoms_are_assessable(tmp_path, served):
    """One study of each kind from the models' test-split seeds: inside every envelope."""
    cases = [("head_ct", 303, ("ich",)), ("head_ct_fracture", 556, ("skull_fracture",)),
             ("head_cta", 313, ("lvo",)), ("ctpa_pe", 524, ("pe",)),
             ("cta_aortic_dissection", 534, ("aortic_dissection",)),
             ("chest_ct_pericardial_effusion", 513, ("pericardial_effusion", "pneumothorax")),
             ("chest_radiograph_pneumothorax", 545, ("pneumothorax_cxr",))]
    for kind, seed, models in cases:
        folder = phantom(tmp_path / kind, kind, seed, matrix=256 if "radiograph" in kind else 128)
        e = served.process(study(folder)).event
        for name in models:
            f = by_model(e, name)
            assert f.assessable is True and f.not_assessable_reason is None, (kind, name, f.not_assessable_reason)


def test_a_field_of_view_far_outside_the_envelope(tmp_path, served):
    folder = phantom(tmp_path, "head_ct", seed=303)
    for path in sorted(folder.glob("*.dcm")):  # the same head, stated at twice its pixel size: a 450 mm field
        ds = pydicom.dcmread(path)
        ds.PixelSpacing = [2 * float(v) for v in ds.PixelSpacing]
        ds.save_as(path)
    e = served.process(study(folder, requested_priority="ROUTINE")).event
    f = by_model(e, "ich")
    assert f.assessable is False and not f.positive
    assert "outside ich's training envelope: field of view" in f.not_assessable_reason


def _loud(root, envelope):
    """A critical test model that reads CT_small as positive (p≈0.7), with the given envelope."""
    kw = {} if envelope == "open" else {"envelope": envelope}
    models = root / "models"
    make_model_dir(models, "loud", window=(0, 2000), shape=(4, 64, 64), severity="critical", **kw)
    rules = rules_file(root / "rules.yaml", [{"name": "ct", "match": {"modality": "CT"}, "models": ["loud"]}])
    return Pipeline.from_settings(Settings(models_dir=models, rules=rules))


def test_an_unassessable_positive_never_raises_the_priority(tmp_path):
    from tests.helpers import OPEN_ENVELOPE

    write_series(tmp_path / "s", 4)
    order = dict(requested_priority="ROUTINE", patient_class="outpatient")
    inside = _loud(tmp_path / "open", "open").process(study(tmp_path / "s", **order)).event
    assert inside.findings[0].positive and inside.priority.level.value == "STAT"
    narrow = {**OPEN_ENVELOPE, "field_mm": {"z": [0.0, 1e5], "y": [400.0, 420.0], "x": [400.0, 420.0]}}
    outside = _loud(tmp_path / "narrow", narrow).process(study(tmp_path / "s", **order)).event
    (f,) = outside.findings
    assert f.assessable is False and not f.positive and f.probability == inside.findings[0].probability
    assert "field of view" in f.not_assessable_reason
    assert outside.priority.level.value == "ROUTINE" and outside.priority.score < inside.priority.score
    assert "no finding could be assessed; read in order priority" in outside.priority.reasons
    doc = to_dict(outside)
    assert doc["findings"][0]["assessable"] is False and parse_priority_event(doc) == outside
    kind = "field_of_view"
    before = metrics.NOT_ASSESSABLE.labels("loud", kind)._value.get()
    metrics.observe_event(outside)
    assert metrics.NOT_ASSESSABLE.labels("loud", kind)._value.get() == before + 1


def test_a_model_without_an_envelope_is_never_assessable(tmp_path):
    write_series(tmp_path / "s", 4)
    e = _loud(tmp_path, None).process(study(tmp_path / "s", requested_priority="HIGH")).event
    (f,) = e.findings
    assert f.assessable is False and f.not_assessable_reason == "loud has no training envelope" and not f.positive
    assert e.priority.level.value == "URGENT"  # the order's floor, nothing more


def test_an_event_from_before_the_guard_still_parses(tmp_path):
    write_series(tmp_path / "s", 4)
    doc = to_dict(_loud(tmp_path, "open").process(study(tmp_path / "s")).event)
    assert doc["findings"][0]["assessable"] is True and "not_assessable_reason" not in doc["findings"][0]
    for f in doc["findings"]:
        del f["assessable"]
    assert parse_priority_event(doc).findings[0].assessable is None


def test_every_committed_model_carries_its_envelope():
    from triage.inference.registry import check_models

    checks = check_models(ROOT / "models")
    assert checks and all(c.ok for c in checks)
    for c in checks:
        env = c.manifest.envelope
        assert env is not None and env.n_studies >= 100, c.folder
        assert (env.vessel_hu is not None) == bool(c.manifest.applies_to.contrast), c.folder


def test_an_envelope_survives_the_manifest_and_a_broken_one_is_refused(tmp_path):
    import yaml

    from tests.helpers import OPEN_ENVELOPE
    from triage.errors import ManifestError
    from triage.inference.guard import Envelope
    from triage.inference.manifest import load_manifest

    env = Envelope.from_dict(OPEN_ENVELOPE, "test")
    assert Envelope.from_dict(env.to_dict(), "test") == env
    folder = make_model_dir(tmp_path, "m")
    doc = yaml.safe_load((folder / "manifest.yaml").read_text())
    for broken in ({**OPEN_ENVELOPE, "saturated_fraction": [0.5, 0.1]},
                   {k: v for k, v in OPEN_ENVELOPE.items() if k != "field_mm"}, "wide"):
        (folder / "manifest.yaml").write_text(yaml.safe_dump({**doc, "envelope": broken}))
        with pytest.raises(ManifestError, match="envelope"):
            load_manifest(folder)


def test_a_head_in_its_holder_is_no_chest():
    """A head lying in a cradle, with air between them and a holder brighter than unenhanced
    blood: the air is no lung and the holder no vessel. Its vessels read as they are, with
    contrast and without."""
    from triage.inference.guard import measure

    head = np.full((20, 96, 96), -1000.0, np.float32)
    yy, xx = np.ogrid[:96, :96]
    r = np.hypot(yy - 40, xx - 48)
    head[:, r < 28] = 1200.0  # the skull
    head[:, r < 24] = 35.0  # brain
    cradle = (r < 40) & (r >= 36) & (yy > 40)
    head[:, cradle] = 250.0  # a plastic holder, under and beside the head
    head[:, (r >= 28) & (r < 36) & (yy > 40)] = -1000.0  # the air between them, open at the sides
    plain = measure(head, (2.5, 2.0, 2.0), "CT").vessel_hu
    assert plain < 80  # the brain's own, not the holder's 250 or the chest branch's guess
    head[:, 30:33, 40:56] = 300.0  # opacified arteries, away from the bone
    assert measure(head, (2.5, 2.0, 2.0), "CT").vessel_hu == pytest.approx(300.0)


def test_the_measures_are_the_image_own():
    """A chest CT's blood reads as its HU, and so do a head's arteries with air in its mastoids; a
    radiograph's clipping is the share outside the window."""
    from triage.inference.guard import measure

    chest = np.full((20, 64, 64), -1000.0, np.float32)
    chest[:, 8:56, 8:56] = 40.0  # body
    chest[:, 16:48, 12:26] = chest[:, 16:48, 38:52] = -850.0  # two lungs
    chest[:, 20:30, 28:36] = 300.0  # enhanced blood between them, in front
    m = measure(chest, (2.5, 6.0, 6.0), "CT")
    assert m.in_hu and not m.planar and m.field_mm == (50.0, 384.0, 384.0)
    assert m.vessel_hu == pytest.approx(300.0)
    chest[:, 20:30, 28:36] = 40.0  # the same chest without contrast
    assert measure(chest, (2.5, 6.0, 6.0), "CT").vessel_hu == pytest.approx(40.0)
    head = np.full((20, 64, 64), -1000.0, np.float32)
    yy, xx = np.ogrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    head[:, r < 28] = 1200.0  # the skull
    head[:, r < 24] = 35.0  # brain
    head[:, 40:44, 8:12] = head[:, 40:44, 52:56] = -1000.0  # air in both mastoids, at the back
    head[:, 14:17, 24:40] = 300.0  # opacified arteries in front of them, away from the bone
    assert measure(head, (2.5, 3.5, 3.5), "CT").vessel_hu == pytest.approx(300.0)  # not the brain between the mastoids
    film = np.full((1, 100, 100), 1000.0, np.float32)
    film[0, :25] = 20000.0
    r = measure(film, (1.0, 0.2, 0.2), "DX")
    assert r.planar and r.vessel_hu is None and r.saturated((0, 4095)) == pytest.approx(0.25)
