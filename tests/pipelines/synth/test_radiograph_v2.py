"""pipelines/synth/radiograph_v2: films stored as X-ray rooms store them (12-16 bits, MONOCHROME1
or 2, with a window or none) decode onto one scale, and a pneumothorax darkens its film."""
from __future__ import annotations

import numpy as np

from pipelines.synth.generate import generate


def test_v2_films_vary_in_storage_and_read_alike(tmp_path):
    from tests.helpers import read_films

    rows = generate("chest_radiograph_pneumothorax_v2", 8, 71, tmp_path / "cxr", matrix=96, progress=False)
    stored = set()
    for row, storage, mediastinum, lungs in read_films(tmp_path / "cxr", rows):
        stored.add(storage)
        assert mediastinum > lungs + 300, (row["study_id"], mediastinum, lungs)  # dense is bright, whatever the storage
    assert len({b for b, _ in stored}) >= 2 and len({p for _, p in stored}) == 2, stored


def test_a_v2_pneumothorax_darkens_the_film_where_its_mask_is():
    from pipelines.synth.radiograph_v2 import chest_radiograph_v2

    for i in range(3):
        pos = chest_radiograph_v2(np.random.default_rng([72, i]), True, matrix=96)
        neg = chest_radiograph_v2(np.random.default_rng([72, i]), False, matrix=96)
        assert pos.mask.any() and not neg.mask.any() and pos.extra["projected_area_cm2"] > 0
        # the same chest, exposure and storage (the finding has its own stream): where the air is,
        # less is attenuated
        sign = -1.0 if pos.extra["photometric"] == "MONOCHROME1" else 1.0
        darker = sign * (float(np.median(neg.hu[pos.mask])) - float(np.median(pos.hu[pos.mask])))
        assert darker > 0, (i, darker)


def test_the_mask_is_where_the_film_shows_the_air_and_noise_is_far_below_it():
    """Mass is kept: rays through pleural air in front of the collapsed lung darken little, rays
    through air alone (the apex, the lateral rim) darken by the lung's attenuation; the mask is
    those, and a pixel's quantum noise (what a pixel of this size holds) is far below the step."""
    from pipelines.synth.radiograph_v2 import chest_radiograph_v2

    for i in range(3):
        pos = chest_radiograph_v2(np.random.default_rng([73, i]), True, matrix=128)
        neg = chest_radiograph_v2(np.random.default_rng([73, i]), False, matrix=128)
        full = float((1 << pos.extra["bits_stored"]) - 1)
        sign = -1.0 if pos.extra["photometric"] == "MONOCHROME1" else 1.0
        drop = sign * (neg.hu[0] - pos.hu[0]) / full  # how much darker the positive film is
        mask = pos.mask[0]
        changed = np.abs(drop) > 0.002
        noise = float(np.abs(drop[~mask & ~changed]).mean())  # the films differ by noise alone there
        inside = float(np.median(drop[mask]))
        assert inside > 0.005 and inside > 10 * noise, (i, inside, noise)
        # rays darkened a little, outside the mask: the air in front of the lung
        assert np.median(drop[~mask & changed]) < 0.5 * inside, i
