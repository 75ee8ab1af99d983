"""Chest radiographs (DX, 2-D) projected from the chest CT phantom: the same anatomy gives a CT and
a radiograph, with or without a pneumothorax.

A digitally reconstructed radiograph: attenuation (from HU, ~0.019/mm for water) is summed along
the antero-posterior rays, photons reach the detector with Poisson noise, and the image is the
log of the attenuation, as a processed radiograph is (bone and soft tissue bright, lung dark).
"""
from __future__ import annotations

import numpy as np

from pipelines.synth.chest import Chest, pleural_air
from pipelines.synth.common import Phantom, grid
from triage.preprocess import resample

MU_WATER = 0.019  # 1/mm, at a chest radiograph's effective energy
FULL_SCALE = 6.0  # attenuation (line integral) stored as the brightest value, 4095


def chest_radiograph(rng: np.random.Generator, positive: bool, *, finding: str = "pneumothorax",
                     matrix: int = 256, thickness: float | None = None) -> Phantom:
    """A PA chest radiograph ``matrix`` pixels wide; positive studies have a pneumothorax (mask =
    the pleural air, projected)."""
    if finding != "pneumothorax":
        raise ValueError(f"chest radiographs carry a pneumothorax only, not {finding!r}")
    coords, spacing = grid(rng, thickness or 3.0, 128, fov_mm=400.0, coverage_mm=(330.0, 380.0),
                           tilt_deg=(5.0, 5.0), shift_mm=15.0)
    chest = Chest(rng, coords)
    hu = chest.hu(rng, contrast=False)
    air = np.zeros(hu.shape, bool)
    kind = "none"
    if positive:
        air, kind = pleural_air(rng, chest)
        hu[air] = -1000.0
    mu = MU_WATER * np.clip(1.0 + hu / 1000.0, 0.0, None)
    path = mu.sum(axis=1) * spacing[1]  # along y (antero-posterior): [z, x]
    projected_air = air.any(axis=1)
    # rows from the head down; columns from the patient's right to left, as a PA film is read
    path, projected_air = path[::-1], projected_air[::-1]
    nz, nx = path.shape
    pixel = nx * spacing[2] / matrix
    shape = (1, max(8, int(round(nz * spacing[0] / pixel))), matrix)
    path = resample(path[np.newaxis], (1.0, spacing[0], spacing[2]), shape)[0]
    air2d = resample(projected_air[np.newaxis].astype(np.float32), (1.0, spacing[0], spacing[2]), shape)[0] > 0.5
    photons = float(rng.uniform(2e3, 2e4))
    counts = rng.poisson(photons * np.exp(-path)).astype(np.float32)
    measured = -np.log(np.maximum(counts, 1.0) / photons)
    image = np.clip(measured / FULL_SCALE, 0, 1) * 4095.0
    return Phantom(hu=image[np.newaxis].astype(np.float32), spacing_zyx=(1.0, pixel, pixel), mask=air2d[np.newaxis],
                   label=int(positive), finding="pneumothorax", kind=kind, contrast=False,
                   description="CHEST PA", lesion_ml=float(air.sum() * np.prod(spacing) / 1000), body_part="CHEST",
                   modality="DX", extra={"projected_area_cm2": float(air2d.sum() * pixel * pixel / 100)})
