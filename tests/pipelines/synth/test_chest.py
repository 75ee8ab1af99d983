"""pipelines/synth: chest CT phantoms (one anatomy, four findings) and the radiograph projected
from it are valid DICOM, route by their tags, and show each finding where its mask says."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pipelines.synth.chest import FINDINGS, Chest, _branches, chest_ct
from pipelines.synth.common import tube
from pipelines.synth.common import grid
from pipelines.synth.generate import generate
from pipelines.synth.radiograph import chest_radiograph
from tests.helpers import dciodvfy_errors
from triage.dicom import decode_series, scan_study

CT_KINDS = {"chest_ct_pneumothorax": False, "chest_ct_pericardial_effusion": False, "ctpa_pe": True,
            "cta_aortic_dissection": True}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("chest")
    rows = {kind: generate(kind, 2, 41, root / kind, positive_fraction=1.0, matrix=96, progress=False, workers=1)
            for kind in CT_KINDS}
    rows["chest_radiograph_pneumothorax"] = generate("chest_radiograph_pneumothorax", 2, 42, root / "cxr",
                                                     positive_fraction=0.5, matrix=128, progress=False, workers=1)
    return root, rows


@pytest.mark.parametrize("kind", sorted(CT_KINDS))
def test_chest_ct_decodes_as_a_chest_series_with_its_contrast_and_mask(datasets, kind):
    root, rows = datasets
    for row in rows[kind]:
        (series,) = scan_study(root / kind / "studies" / row["study_id"])
        assert series.modality == "CT" and series.body_part == "CHEST"
        assert series.contrast == CT_KINDS[kind]
        vol = decode_series(series)
        assert vol.spacing_zyx[0] == pytest.approx(float(row["slice_thickness_mm"]))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(root / kind / row["mask"]))).astype(bool)
        assert mask.shape == vol.shape and mask.any() and float(row["lesion_ml"]) > 0


def test_dciodvfy_finds_no_errors_in_chest_ct_and_dx(datasets):
    root, _ = datasets
    for folder in ("ctpa_pe", "cxr"):
        study = sorted((root / folder / "studies").iterdir())[0]
        assert dciodvfy_errors(sorted(study.glob("*.dcm"))[0]) == []


def test_the_radiograph_is_one_2d_dx_image_of_the_chest(datasets):
    root, rows = datasets
    for row in rows["chest_radiograph_pneumothorax"]:
        (series,) = scan_study(root / "cxr" / "studies" / row["study_id"])
        assert series.modality == "DX" and series.body_part == "CHEST" and not series.contrast
        vol = decode_series(series)
        assert vol.array.shape[0] == 1 and vol.array.shape[2] == 128
        assert row["slice_thickness_mm"] == ""


def test_each_finding_has_the_values_the_issue_names():
    values = {}
    for finding in FINDINGS:
        ph = chest_ct(np.random.default_rng([43, FINDINGS.index(finding)]), True, finding=finding, matrix=96,
                      thickness=2.5)
        values[finding] = float(np.median(ph.hu[ph.mask]))
    assert values["pneumothorax"] < -900  # air, no lung markings
    assert 0 < values["pe"] < 90  # 20-60 HU clot in a ~250-400 HU artery, plus noise
    assert 0 < values["aortic_dissection"] < 350  # flap and the less-opacified false lumen
    assert -20 < values["pericardial_effusion"] < 40  # 0-20 HU fluid


def test_heart_and_vessels_are_opacified_on_angiography_only():
    cta = chest_ct(np.random.default_rng(44), False, finding="pe", matrix=96, thickness=2.5)
    plain = chest_ct(np.random.default_rng(44), False, finding="pneumothorax", matrix=96, thickness=2.5)

    def iodine_range(hu):  # 200-450 HU: contrast-filled blood, and on a plain CT only some bone
        return float(np.mean((hu > 200) & (hu < 450)))

    assert iodine_range(cta.hu) > 2 * iodine_range(plain.hu)
    # the same chest on the aortic protocol: its lung markings are not opacified, so fewer bright voxels
    aortic = chest_ct(np.random.default_rng(44), False, finding="aortic_dissection", matrix=96, thickness=2.5)
    assert iodine_range(cta.hu) > iodine_range(aortic.hu) + 0.002


def test_on_pulmonary_angiography_the_lung_vessels_carry_contrast_and_elsewhere_do_not():
    # CT pulmonary angiography is timed for the arteries: the lung's finer vessels are bright too,
    # so an artery a clot shuts off is the grey one among them; on the aortic CTA phantom and on
    # plain CT they stay soft tissue
    rng = np.random.default_rng(48)
    coords, _ = grid(rng, 2.5, 64, fov_mm=400.0, coverage_mm=(220.0, 300.0))
    chest = Chest(rng, coords)
    peripheral = chest.markings & chest.lung & ~chest.pa
    assert peripheral.sum() > 100
    ctpa = chest.hu(np.random.default_rng(1), True, opacified_markings=True)
    assert (ctpa[peripheral] > 200).all() and (ctpa[chest.pa] > 200).all()
    for contrast in (True, False):
        assert (chest.hu(np.random.default_rng(1), contrast)[peripheral] <= 0).all()


def test_a_pneumothorax_darkens_the_radiograph_where_its_mask_is():
    # the same anatomy with and without the pleural air (the seed decides the anatomy)
    with_air = chest_radiograph(np.random.default_rng(45), True)
    without = chest_radiograph(np.random.default_rng(45), False)
    region = with_air.mask[0]
    assert region.sum() > 50
    # a small pneumothorax (this one is ~30 mL) is subtle: tens of grey levels over the region,
    # against a noise of ~1-2 on such a mean; the rest of the film is unchanged
    assert with_air.hu[0][region].mean() < without.hu[0][region].mean() - 10
    assert abs(with_air.hu[0][~region].mean() - without.hu[0][~region].mean()) < 5


def test_an_occlusive_clot_leaves_the_arteries_beyond_it_without_contrast():
    seeds = ([47, i] for i in range(60))
    seed, clotted = next((s, ph) for s in seeds
                         if (ph := chest_ct(np.random.default_rng(s), True, finding="pe", matrix=64,
                                            thickness=2.5)).kind == "lobar_occlusive")
    clear = chest_ct(np.random.default_rng(seed), False, finding="pe", matrix=64, thickness=2.5)  # same anatomy
    assert np.median(clear.hu[clotted.mask]) > 200  # opacified artery without the clot
    assert np.median(clotted.hu[clotted.mask]) < 90  # clot grey with it
    assert not (clotted.hu[clotted.mask] > 200).any()  # no contrast left anywhere beyond the clot


def test_the_arteries_beyond_an_artery_are_its_branches_and_theirs():
    trunk, hilum, lobar_end, other_end, seg1, seg2 = ((float(i), 0.0, 0.0) for i in range(6))
    tree = [("central", trunk, hilum, 10.0), ("lobar", hilum, lobar_end, 5.0), ("segmental", lobar_end, seg1, 3.0),
            ("segmental", lobar_end, seg2, 3.0), ("lobar", hilum, other_end, 5.0)]
    assert _branches(tree, lobar_end) == tree[2:4]
    assert _branches(tree, hilum) == [tree[1], tree[4], tree[2], tree[3]]
    assert _branches(tree, seg1) == []


def test_a_tube_on_a_tilted_grid_holds_exactly_the_voxels_near_its_axis():
    # the tube measures only the block of indices its bounding box can reach; on a tilted,
    # shifted grid that block must still hold every voxel a full-grid measurement finds
    coords, _ = grid(np.random.default_rng(5), 2.5, 48, fov_mm=200.0, coverage_mm=(90.0, 100.0))
    z, y, x = coords
    p0, p1, radius = np.array([-30.0, -40.0, 10.0]), np.array([25.0, 35.0, -20.0]), 6.0
    d = p1 - p0
    t = np.clip(((z - p0[0]) * d[0] + (y - p0[1]) * d[1] + (x - p0[2]) * d[2]) / (d @ d), 0, 1)
    full = ((z - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (x - p0[2] - t * d[2]) ** 2) < radius ** 2
    inside, along = tube(coords, p0, p1, radius)
    assert full.sum() > 100 and np.array_equal(inside, full)
    assert np.allclose(along[inside], t[inside], atol=1e-5)
