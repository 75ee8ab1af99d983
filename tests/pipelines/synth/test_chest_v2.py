"""pipelines/synth/chest_v2: the v2 chest's negatives carry the normal anatomy that mimics each
finding, unlabelled, and its positives carry the finding where a reader would look."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.synth.chest_v2 import VariedChest, chest_ct_v2
from pipelines.synth.common import grid, tube


def chests(n: int, seed: int = 61):
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        coords, _ = grid(rng, 5.0, 64, fov_mm=420.0, coverage_mm=(260.0, 300.0))
        chest = VariedChest(rng, coords)
        yield chest, chest.hu(rng, contrast=False)


def test_negatives_hold_air_that_is_no_pneumothorax_and_fluid_that_is_no_pericardial_effusion():
    airway, gut, bullae, pleural = [], [], [], []
    for chest, hu in chests(8):
        assert chest.airway.any() and (hu[chest.airway] == -1000.0).all()  # trachea and bronchi read as air
        airway.append(int(chest.airway.sum()))
        gut.append(int(((chest.stomach_gas | chest.bowel_gas) & (hu == -1000.0)).sum()))
        bullae.append(int((chest.bullae & (hu == -1000.0)).sum()))
        fluid = hu[chest.pleural_fluid]
        pleural.append(int(((fluid >= 0) & (fluid <= 20)).sum()))
    # each mimic is drawn in some studies of eight, not in one fixed place (the model must meet them)
    assert min(airway) > 0 and sum(g > 0 for g in gut) >= 4, (airway, gut)
    assert 1 <= sum(b > 0 for b in bullae) <= 7 and 1 <= sum(p > 0 for p in pleural) <= 7, (bullae, pleural)


@pytest.mark.parametrize("finding", ["pneumothorax", "pericardial_effusion", "pe", "aortic_dissection"])
def test_negatives_carry_no_mask_and_positives_the_finding(finding):
    for i in range(2):
        pos = chest_ct_v2(np.random.default_rng([62, i]), True, finding=finding, matrix=64, thickness=5.0)
        neg = chest_ct_v2(np.random.default_rng([63, i]), False, finding=finding, matrix=64, thickness=5.0)
        assert pos.mask.any() and not neg.mask.any() and pos.label == 1 and neg.label == 0
        assert pos.contrast == neg.contrast == (finding in ("pe", "aortic_dissection"))
        inside = float(np.median(pos.hu[pos.mask]))
        if finding == "pneumothorax":  # air, after the scanner's blur and noise
            assert inside < -850, inside
        elif finding == "pericardial_effusion":  # fluid
            assert -30 < inside < 60, inside


def test_contrast_timing_varies_which_arteries_are_brightest():
    brighter = set()
    for i in range(10):
        rng = np.random.default_rng([64, i])
        coords, _ = grid(rng, 5.0, 64, fov_mm=420.0, coverage_mm=(260.0, 300.0))
        chest = VariedChest(rng, coords)
        phase = ("pulmonary", "aortic")[i % 2]
        hu = chest.hu(rng, contrast=True, opacified_markings=True, phase=phase)
        pa, aorta = float(np.median(hu[chest.pa & ~chest.aorta])), float(np.median(hu[chest.aorta]))
        assert min(pa, aorta) > 90, (phase, pa, aorta)  # both opacified
        brighter.add((phase, "pa" if pa > aorta else "aorta"))
    assert brighter == {("pulmonary", "pa"), ("aortic", "aorta")}, brighter


def test_angiography_negatives_carry_the_mimics_of_a_dissection_unlabelled():
    """Vessel walls (a grey septum where two lumens touch), a dense vena cava in the early phases,
    and the aortic root's pulsation ghost: what a reader must not call a flap."""
    walls, dense_svc, ghosts = 0, 0, 0
    for i in range(8):
        rng = np.random.default_rng([65, i])
        coords, _ = grid(rng, 2.5, 96, fov_mm=380.0, coverage_mm=(260.0, 300.0))
        chest = VariedChest(rng, coords)
        hu = chest.hu(rng, contrast=True, phase="aortic")
        # the aorta's outer surface, within 0.9 mm, where it lies in the mediastinum (not against
        # the lung, an airway, a calcified plaque or another vessel): a 30-60 HU wall, not fat
        shell = np.zeros(hu.shape, bool)
        for p0, p1 in zip(chest.aorta_path, chest.aorta_path[1:]):
            shell |= tube(coords, p0, p1, chest.aorta_radius + 0.9)[0]
        others = chest.aorta | chest.pa | chest.svc | chest.chambers | chest.lung | chest.airway_wall | chest.calcium
        shell &= chest.cavity & ~others
        walls += int(((hu[shell] >= 30) & (hu[shell] <= 60)).mean() > 0.95)
        dense_svc += int(np.median(hu[chest.svc]) > 700)
        lumen = float(np.median(hu[chest.aorta]))
        ghosts += int((chest.aorta & ~chest.chambers & (hu < 0.75 * lumen) & (hu > 0.3 * lumen)).sum() > 5)
    assert walls == 8 and 1 <= dense_svc <= 7 and 1 <= ghosts <= 7, (walls, dense_svc, ghosts)
    neg = chest_ct_v2(np.random.default_rng([66, 0]), False, finding="aortic_dissection", matrix=64, thickness=5.0)
    assert not neg.mask.any() and neg.label == 0


def test_the_spine_is_vertebrae_with_discs_and_an_arch_round_the_canal():
    for chest, hu in chests(4, seed=67):
        cortex, discs, arch = chest.vertebral_cortex, chest.discs, chest.arch
        cancellous = chest.spine & ~cortex & ~discs
        assert cortex.any() and discs.any() and arch.any() and cancellous.any()
        assert np.median(hu[cortex]) > np.median(hu[cancellous]) + 200  # a grey body in a bright shell
        assert np.median(hu[discs]) < np.median(hu[cancellous])
        # discs come every vertebra (22-28 mm), not once
        levels = np.unique(np.round(chest.coords[0][discs] / 10))
        assert len(levels) >= 4, levels
        # bone rings the canal: from the canal's centre, every direction meets the arch or the body
        z, y, x = chest.coords
        ring = arch | chest.spine
        mid = np.abs(z) < 20
        centre_y = float(y[chest.canal & mid].mean())
        for angle in np.linspace(0, 2 * np.pi, 8, endpoint=False):
            ray = mid & (np.abs(np.arctan2(y - centre_y, x) - angle + np.pi) % (2 * np.pi) - np.pi < 0.2) & (
                np.hypot(x, y - centre_y) < 20)
            assert (ray & ring).any(), angle


def test_on_angiography_the_right_heart_fills_with_the_pulmonary_arteries_and_the_left_with_the_aorta():
    for i, phase in enumerate(("pulmonary", "aortic", "pulmonary", "aortic")):
        rng = np.random.default_rng([68, i])
        coords, _ = grid(rng, 5.0, 64, fov_mm=420.0, coverage_mm=(260.0, 300.0))
        chest = VariedChest(rng, coords)
        hu = chest.hu(rng, contrast=True, phase=phase)
        right = chest.chambers & chest.right_heart & ~chest.septum
        left = chest.chambers & ~chest.right_heart & ~chest.septum
        septum = chest.chambers & chest.septum
        assert right.any() and left.any() and septum.any()
        r, l, s = (float(np.median(hu[m])) for m in (right, left, septum))
        # the first pass fills the right heart; by the aortic phase the left is brighter
        assert (r > l + 30) if phase == "pulmonary" else (l > r + 30), (phase, r, l)
        assert s < min(r, l), (phase, s, r, l)


def test_arteries_branch_on_into_the_lung_instead_of_stopping_as_an_occlusive_clot_would():
    """A segmental artery that ends in mid-lung is the cut-off of an occlusive clot; in a normal
    angiogram the opacified artery carries on, narrower, past where the segmental one ends."""
    ends = carried_on = 0
    for i in range(4):
        rng = np.random.default_rng([69, i])
        coords, _ = grid(rng, 2.5, 96, fov_mm=380.0, coverage_mm=(260.0, 300.0))
        chest = VariedChest(rng, coords)
        hu = chest.hu(rng, contrast=True, phase="pulmonary")
        for level, p0, p1, radius in chest.pa_segments:
            if level != "segmental":
                continue
            p0, p1 = np.asarray(p0), np.asarray(p1)
            direction = (p1 - p0) / np.linalg.norm(p1 - p0)
            rel = [c - e for c, e in zip(coords, p1)]
            dist = np.sqrt(rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2)
            ahead = rel[0] * direction[0] + rel[1] * direction[1] + rel[2] * direction[2]
            if (chest.lung & (dist < 8)).sum() < 0.5 * (dist < 8).sum():
                continue  # it ends outside the lung (in the hilum, past the pleura)
            ends += 1
            beyond = chest.lung & (ahead > 5) & (dist < 30) & ~tube(coords, p0, p1, radius + 3)[0]
            carried_on += bool((beyond & (hu > 150)).any())
    assert ends >= 20
    assert carried_on >= 0.7 * ends, f"{carried_on} of {ends} segmental arteries carry on into the lung"
