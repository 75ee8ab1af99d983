"""pipelines/train.py: the margin term ranks a study by its highest voxel, as serving does."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pipelines.train import margin_loss  # noqa: E402


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
