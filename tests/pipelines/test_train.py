"""pipelines/train.py: the margin term ranks a study by its highest voxel, as serving does; training
patches."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from pipelines.dataset import Item  # noqa: E402
from pipelines.train import lookalike_centres, margin_loss, patch_sampler, visible_lesion  # noqa: E402


def volume(fill: float) -> torch.Tensor:
    return torch.full((1, 1, 4, 8, 8), fill)


def test_a_bright_voxel_away_from_the_lesion_costs_more_than_one_on_it():
    mask = volume(0.0)
    mask[0, 0, 2, 2, 2] = 1.0
    on_lesion, off_lesion = volume(-5.0), volume(-5.0)
    on_lesion[0, 0, 2, 2, 2] = 5.0
    off_lesion[0, 0, 2, 6, 6] = 5.0  # the skull-rim false positive the term is for
    assert margin_loss(off_lesion, mask) > margin_loss(on_lesion, mask) + 5


def test_the_lesion_rim_is_not_counted_as_background():
    mask = volume(0.0)
    mask[0, 0, 2, 2, 2] = 1.0
    rim = volume(-5.0)
    rim[0, 0, 2, 2, 2] = 5.0
    rim[0, 0, 2, 2, 3] = 5.0  # next to the lesion: partial volume, neither lesion nor background
    far = rim.clone()
    far[0, 0, 2, 2, 3] = -5.0
    assert margin_loss(rim, mask) == pytest.approx(float(margin_loss(far, mask)))


def test_a_negative_study_is_judged_on_its_highest_voxel_only():
    quiet, one_hot = volume(-5.0), volume(-5.0)
    one_hot[0, 0, 1, 1, 1] = 3.0
    assert margin_loss(one_hot, volume(0.0)) > margin_loss(quiet, volume(0.0)) + 2


def test_training_patches_have_the_configured_size_and_about_half_hold_the_lesion():
    sampler = patch_sampler([8, 16, 16], [16, 32, 32])
    sampler.set_random_state(0)
    image = np.random.default_rng(0).random((1, 16, 32, 32), dtype=np.float32)
    mask = np.zeros_like(image)
    mask[0, 2:4, 3:5, 25:27] = 1.0  # a small lesion in a corner
    image[mask > 0] = 5.0
    holding = 0
    for _ in range(60):
        patch = sampler({"image": image, "mask": mask})[0]
        crop, crop_mask = np.asarray(patch["image"]), np.asarray(patch["mask"])
        assert crop.shape == crop_mask.shape == (1, 8, 16, 16)
        assert np.array_equal(crop >= 5.0, crop_mask > 0)  # image and mask are cut from the same place
        holding += bool(crop_mask.any())
    # lesion-centred half the time; a background-centred patch holds it only by chance
    assert 25 <= holding <= 50


@pytest.mark.filterwarnings("ignore:Num foregrounds 0")  # no lesion: MONAI says it centres on background
def test_a_patch_is_never_larger_than_the_input_and_no_patch_means_whole_volumes():
    image = np.zeros((1, 16, 32, 32), np.float32)
    patch = patch_sampler([48, 96, 96], [16, 32, 32])({"image": image, "mask": image.copy()})[0]
    assert tuple(patch["image"].shape) == (1, 16, 32, 32)
    assert patch_sampler(None, [16, 32, 32]) is None


def test_with_mirror_a_patch_must_span_the_full_width():
    # the mirrored channel of a narrower patch would be the patch flipped about its own centre,
    # not the other side of the patient, as it is when the whole volume is served
    with pytest.raises(ValueError, match="full width"):
        patch_sampler([8, 16, 16], [16, 32, 32], mirror=True)
    image = np.zeros((1, 16, 32, 32), np.float32)
    image[0, 4:6, 10:12, 3:5] = 1.0
    patch = patch_sampler([8, 16, 32], [16, 32, 32], mirror=True)({"image": image, "mask": image.copy()})[0]
    assert tuple(patch["image"].shape) == (1, 8, 16, 32)


def test_a_study_score_with_evidence_needs_a_lesion_not_one_bright_voxel():
    """The issue's false positives: one faintly raised voxel (a rim, a spike) made p≈1."""
    from pipelines.model import Triager, study_logit

    spike, lesion = volume(-6.0), volume(-6.0)
    spike[0, 0, 2, 4, 4] = 6.0
    lesion[0, 0, 1:3, 3:5, 3:5] = 6.0  # 8 voxels
    assert float(study_logit(spike, 1)) == pytest.approx(6.0)  # the highest voxel: as bad as a lesion
    assert float(study_logit(spike, 8)) == pytest.approx(-4.5)
    assert float(study_logit(lesion, 8)) == pytest.approx(6.0)

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    model = Triager(Identity(), evidence=8)
    p_spike, slices = model(spike)
    p_lesion, _ = model(lesion)
    assert float(p_spike) < 0.05 and float(p_lesion) > 0.99
    assert slices.shape == (1, 1, 4) and int(slices[0, 0].argmax()) == 2  # the key slice still finds the spike


def test_the_margin_term_with_evidence_ignores_one_bright_voxel_but_not_a_bright_patch():
    quiet, spike, patch = volume(-5.0), volume(-5.0), volume(-5.0)
    spike[0, 0, 1, 1, 1] = 5.0
    patch[0, 0, 1:3, 1:3, 1:3] = 5.0
    empty = volume(0.0)
    assert margin_loss(spike, empty, evidence=8) < margin_loss(quiet, empty, evidence=8) + 0.5
    assert margin_loss(patch, empty, evidence=8) > margin_loss(quiet, empty, evidence=8) + 3


def test_a_lesion_trains_only_where_the_input_shows_it_not_on_the_bone_its_edge_reaches():
    # a subdural against the inner table: its resampled mask spans the blood and one voxel of bone
    image = np.full((1, 4, 8, 8), 0.3, np.float32)
    image[:, :, :, 0] = 1.0  # the skull, saturated in a blood window
    image[:, :, :, 1:3] = 0.7  # the blood
    mask = np.zeros_like(image)
    mask[:, :, :, 0:3] = 1.0
    positive = Item("p", 1, image, mask, 2.0, 2.5, 40)
    negative = Item("n", 0, image, np.zeros_like(image), 0.0, 2.5, 40)
    (p, n) = visible_lesion([positive, negative], [0.4, 0.95])
    assert p.mask[..., 0].sum() == 0 and p.mask[..., 1:3].all() and p.mask[..., 3:].sum() == 0
    assert n is negative and visible_lesion([positive], None)[0] is positive


def test_hard_negative_patches_centre_on_what_reads_like_a_lesion_and_never_on_or_beside_one():
    image = np.full((1, 4, 16, 16), 0.3, np.float32)  # brain
    image[:, :, 2, 2] = 0.8  # a calcification's rim: reads like blood
    image[:, 1:3, 10:12, 10:12] = 0.7  # the bleed
    mask = np.zeros_like(image)
    mask[:, 1:3, 10:12, 10:12] = 1.0
    rng = np.random.default_rng(0)
    centres = lookalike_centres({"image": image, "mask": mask}, [0.4, 0.95], 1.0, rng)
    zyx = np.array(np.unravel_index(centres["bg"], image.shape[1:])).T
    assert len(zyx) == 4 and (zyx[:, 1:] == 2).all()  # the rim, in every slice; not the bleed
    assert set(centres["fg"]) == set(np.flatnonzero(mask[0]))
    # share 0 (or no window): background centres anywhere off the lesion, as MONAI would draw
    for share, window in ((0.0, [0.4, 0.95]), (1.0, None)):
        plain = lookalike_centres({"image": image, "mask": mask}, window, share, rng)
        assert len(plain["bg"]) == mask[0].size - mask.sum()
    # a patch centred there holds the mimic, and the crop consumes the centre keys
    sampler = patch_sampler([2, 4, 4], [4, 16, 16])
    image[:, 1:3, 10:12, 10:12] = 0.3  # a negative study: the rim is all that reads like blood
    for _ in range(8):
        sampler.set_random_state(int(rng.integers(1 << 16)))
        pair = lookalike_centres({"image": image, "mask": np.zeros_like(mask)}, [0.4, 0.95], 1.0, rng)
        patch = sampler(pair)[0]
        assert float(np.asarray(patch["image"]).max()) == np.float32(0.8) and "bg" not in patch
