"""pipelines/synth: phantom studies are valid DICOM, decode with the right geometry and values,
read back with SimpleITK, and are reproducible from their seed."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.synth.generate import generate
from pipelines.synth.head import head_ct, head_cta, head_ct_fracture
from tests.helpers import dciodvfy_errors
from triage.dicom import decode_series, scan_study


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    ct = generate("head_ct", 3, 21, root / "ct", positive_fraction=0.7, matrix=64, progress=False)
    cta = generate("head_cta", 2, 22, root / "cta", positive_fraction=0.5, matrix=64, progress=False)
    return root, ct, cta


def test_labels_csv_describes_every_study(datasets):
    root, ct, _ = datasets
    with open(root / "ct" / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["study_id"] for r in rows] == [r["study_id"] for r in ct]
    for r in rows:
        assert (root / "ct" / "studies" / r["study_id"]).is_dir()
        assert (r["label"] == "1") == bool(r["mask"]) and r["finding"] == "ich"


def test_phantoms_decode_with_their_geometry_and_hounsfield_values(datasets):
    root, ct, _ = datasets
    for row in ct:
        (series,) = scan_study(root / "ct" / "studies" / row["study_id"])
        assert series.modality == "CT" and series.body_part == "HEAD" and not series.contrast
        vol = decode_series(series)
        assert vol.spacing_zyx[0] == pytest.approx(float(row["slice_thickness_mm"]))
        assert vol.array.min() == -1000 or vol.array.min() < -900  # air
        assert vol.array.max() > 700  # bone
        itk = sitk.GetArrayFromImage(sitk.ReadImage(sorted(str(p) for p in (root / "ct" / "studies" / row["study_id"]).glob("*.dcm"))))
        assert np.array_equal(itk.astype(np.float32), vol.array)  # SimpleITK reads the same volume
        if row["mask"]:
            mask = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "ct" / row["mask"]))).astype(bool)
            assert mask.shape == vol.shape
            blood = vol.array[mask]
            assert 40 < np.median(blood) < 100  # 50-90 HU plus scanner noise


def test_cta_is_marked_as_contrast_and_shows_arteries(datasets):
    root, _, cta = datasets
    for row in cta:
        (series,) = scan_study(root / "cta" / "studies" / row["study_id"])
        assert series.contrast and series.description.startswith("CTA HEAD")


def test_same_seed_same_study_and_different_seeds_differ():
    a = head_ct(np.random.default_rng(5), True, matrix=48)
    b = head_ct(np.random.default_rng(5), True, matrix=48)
    c = head_ct(np.random.default_rng(6), True, matrix=48)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.mask, b.mask)
    assert a.hu.shape != c.hu.shape or not np.array_equal(a.hu, c.hu)


@pytest.mark.parametrize("make", [head_ct, head_cta, head_ct_fracture])
def test_negatives_have_no_lesion_and_positives_do(make):
    rng = np.random.default_rng(9)
    assert not make(rng, False, matrix=48).mask.any()
    pos = make(rng, True, matrix=48)
    assert pos.mask.any() and pos.lesion_ml > 0


def test_dciodvfy_finds_no_errors_in_the_ct_iod(datasets):
    root, _, _ = datasets
    for kind in ("ct", "cta"):
        first = sorted((root / kind / "studies").iterdir())[0]
        assert dciodvfy_errors(sorted(first.glob("*.dcm"))[0]) == []


def test_a_dataset_is_the_same_whatever_the_worker_count(tmp_path):
    one = generate("head_ct", 4, 31, tmp_path / "one", matrix=32, progress=False, workers=1)
    two = generate("head_ct", 4, 31, tmp_path / "two", matrix=32, progress=False, workers=2)
    assert one == two
    assert (tmp_path / "one" / "labels.csv").read_text() == (tmp_path / "two" / "labels.csv").read_text()
    for row in one:
        a, b = (decode_series(scan_study(tmp_path / d / "studies" / row["study_id"])[0]).array for d in ("one", "two"))
        assert np.array_equal(a, b)


def test_a_skull_fracture_is_a_soft_tissue_gap_through_the_bone():
    for i in range(3):
        ph = head_ct_fracture(np.random.default_rng([12, i]), True, matrix=96, thickness=1.25)
        gap = ph.hu[ph.mask]
        assert ph.mask.sum() > 10 and np.median(gap) < 100  # 20-60 HU plus noise, where bone was
        # the same head without the fracture (same seed): what the gap replaced was bone
        intact = head_ct_fracture(np.random.default_rng([12, i]), False, matrix=96, thickness=1.25)
        assert np.median(intact.hu[ph.mask]) > 500


def test_subarachnoid_blood_fills_csf_spaces_more_than_brain():
    fractions = []
    for i in range(4):
        ph = head_ct(np.random.default_rng([13, i]), True, matrix=96, kind="subarachnoid")
        # the same head without blood (same seed): what the blood replaced was CSF (~6 HU) or brain
        clear = head_ct(np.random.default_rng([13, i]), False, matrix=96)
        fractions.append(np.mean(clear.hu[ph.mask] < 18))
    assert np.mean(fractions) > 0.5, fractions  # sulci, fissures and cisterns, not a band over the cortex


def test_non_contrast_head_phantoms_share_one_head_csf_spaces_included():
    # ich reads the fracture phantoms too: a head without sulci and cisterns would be one it never
    # saw in training. Same seed, no finding: the same head, voxel for voxel.
    for i in range(3):
        bone = head_ct_fracture(np.random.default_rng([14, i]), False, matrix=64)
        plain = head_ct(np.random.default_rng([14, i]), False, matrix=64)
        assert np.array_equal(bone.hu, plain.hu)
