"""Chest radiographs with normal variation and acquisition physics (generator v2, issue 23).

Projected, as :mod:`pipelines.synth.radiograph` does, from the v2 chest (:class:`VariedChest`:
airways, bowel gas, bullae, effusion, breasts, arms...), then what an X-ray room and its
software do to a film, each drawn per study:
- projection: PA erect or AP supine (more rotation, the arms in the field), patient rotation;
- scatter: a broad blur of the primary beam added back, less with an anti-scatter grid, whose
  lines may show as a fine stripe pattern;
- the detector: quantum and electronic noise, then the vendor's processing: edge enhancement
  (unsharp masking) and a tone curve;
- collimation: beyond the shutters the film is unexposed; a lead side marker in a corner;
- storage: 12-, 14-, 15- or 16-bit, MONOCHROME1 or MONOCHROME2, with a full-range window, one
  fitted to the anatomy, or none (the decoder reads each film on its declared range).
"""
from __future__ import annotations

import numpy as np

from pipelines.synth.chest import draw_finding
from pipelines.synth.chest_v2 import VariedChest
from pipelines.synth.common import Phantom, grid
from pipelines.synth.physics import blur
from pipelines.synth.radiograph import FULL_SCALE, MU_WATER
from triage.preprocess import resample


def _processed(rng: np.random.Generator, path: np.ndarray, pixel: float) -> np.ndarray:
    """A line-integral image [rows, cols] as a detector records it and its software shows it:
    0 (no attenuation) .. 1 (the full scale), bright = dense."""
    # quanta reaching a pixel with nothing in the way: a chest film's dose gives about 1e5-1e6 per mm²
    # of detector, so a pixel of this size (1.6-1.9 mm at matrix 256) holds hundreds of thousands;
    # behind the mediastinum, e^-4 of that
    photons = float(np.exp(rng.uniform(np.log(3e4), np.log(3e5)))) * pixel * pixel
    primary = photons * np.exp(-path)
    gridded = rng.random() < 0.7
    ratio = rng.uniform(0.1, 0.3) if gridded else rng.uniform(0.4, 1.0)  # scatter to primary
    sigma = rng.uniform(20, 60)
    scatter = ratio * blur(primary, (pixel, pixel), (sigma, sigma))
    # the noise on its own stream: a Poisson draw takes as many numbers as its counts need
    noise = np.random.default_rng(rng.integers(1 << 62))
    counts = noise.poisson(primary + scatter).astype(np.float32) + noise.normal(0, rng.uniform(0.5, 3), path.shape)
    measured = -np.log(np.maximum(counts, 1.0) / photons).astype(np.float32)
    if gridded and rng.random() < 0.4:  # grid lines the processing did not suppress
        cols = np.arange(path.shape[1], dtype=np.float32)
        measured += np.float32(rng.uniform(0.01, 0.05)) * np.sin(2 * np.pi * cols / rng.uniform(2.1, 3.5))[None, :]
    detail = rng.uniform(0.0, 1.2)  # edge enhancement: unsharp masking
    smooth = blur(measured, (pixel, pixel), (rng.uniform(3, 12),) * 2)
    measured = measured + np.float32(detail) * (measured - smooth)
    return np.clip(measured / FULL_SCALE, 0, 1) ** np.float32(rng.uniform(0.7, 1.3))  # the tone curve


def _collapse(lung: np.ndarray, air: np.ndarray, hu: np.ndarray) -> None:
    """The lung a pneumothorax leaves keeps its tissue in less volume: denser, so its edge (where
    the visceral pleura lies) stands against the pleural air."""
    kept = int(lung.sum())
    if not kept or not air.any():
        return
    squeeze = (kept + int(air.sum())) / kept
    hu[lung] = np.minimum(-1000.0 + (hu[lung] + 1000.0) * np.float32(squeeze), 0.0)


def chest_radiograph_v2(rng: np.random.Generator, positive: bool, *, finding: str = "pneumothorax",
                        matrix: int = 256, thickness: float | None = None) -> Phantom:
    """A chest radiograph ``matrix`` pixels wide; positive studies have a pneumothorax (mask = the
    pleural air, projected)."""
    if finding != "pneumothorax":
        raise ValueError(f"chest radiographs carry a pneumothorax only, not {finding!r}")
    supine = rng.random() < 0.3
    coords, spacing = grid(rng, thickness or 3.0, 128, fov_mm=float(rng.uniform(400, 480)),
                           coverage_mm=(330.0, 400.0), tilt_deg=(10.0, 12.0) if supine else (5.0, 6.0), shift_mm=25.0)
    chest = VariedChest(rng, coords)
    hu = chest.hu(rng, contrast=False)
    lesion_rng = np.random.default_rng(rng.integers(1 << 62))  # its own stream: the rest of the film is the same
    air = np.zeros(hu.shape, bool)
    kind = "none"
    if positive:
        air, kind = draw_finding(lesion_rng, chest, hu, "pneumothorax", spare=chest.pleural_fluid)
        _collapse(chest.lungs[kind] & ~air, air, hu)
    mu = MU_WATER * np.clip(1.0 + hu / 1000.0, 0.0, None)
    path = (mu.sum(axis=1) * spacing[1])[::-1]  # along y (front to back); rows from the head down
    # the film shows pleural air where little lung lies behind it (the apex, the lateral rim): a ray
    # through air in front of a full depth of lung darkens no more than normal variation does
    air_depth = air.sum(axis=1)[::-1]
    lung_depth = (chest.lungs[kind] & ~air).sum(axis=1)[::-1] if positive else np.zeros(air_depth.shape, int)
    projected_air = (air_depth > 0) & (lung_depth <= air_depth)
    if not projected_air.any():
        projected_air = air_depth > 0
    nz, nx = path.shape
    pixel = nx * spacing[2] / matrix
    shape = (1, max(8, int(round(nz * spacing[0] / pixel))), matrix)
    path = resample(path[np.newaxis], (1.0, spacing[0], spacing[2]), shape)[0]
    air2d = resample(projected_air[np.newaxis].astype(np.float32), (1.0, spacing[0], spacing[2]), shape)[0] > 0.5
    image = _processed(rng, path, pixel)
    rows, cols = image.shape
    if rng.random() < 0.6:  # collimation: unexposed (white) beyond the shutters
        top, bottom = int(rng.integers(0, rows // 10 + 1)), rows - int(rng.integers(0, rows // 10 + 1))
        left, right = int(rng.integers(0, cols // 12 + 1)), cols - int(rng.integers(0, cols // 12 + 1))
        shutter = np.ones(image.shape, bool)
        shutter[top:bottom, left:right] = False
        image[shutter] = 1.0
        air2d &= ~shutter  # air behind a shutter is not on the film
    if rng.random() < 0.7:  # a lead side marker near a top corner
        r0, c0 = int(rng.integers(4, max(5, rows // 8))), int(rng.choice([rng.integers(4, cols // 8), cols - cols // 8]))
        image[r0:r0 + 8, c0:c0 + 6] = 1.0
    bits = int(rng.choice([12, 14, 15, 16]))
    full = (1 << bits) - 1
    stored = image * np.float32(full)
    lo, hi = np.percentile(stored, [1, 99])
    window = [(full / 2, full), (float((lo + hi) / 2), float(hi - lo)), None][int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
    photometric = "MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2"
    if photometric == "MONOCHROME1":  # low values bright; a window is on the stored values
        stored = full - stored
        window = (full - window[0], window[1]) if window else None
    return Phantom(hu=stored[np.newaxis].astype(np.float32), spacing_zyx=(1.0, pixel, pixel), mask=air2d[np.newaxis],
                   label=int(positive), finding="pneumothorax", kind=kind, contrast=False,
                   description="CHEST AP" if supine else "CHEST PA",
                   lesion_ml=float(air.sum() * np.prod(spacing) / 1000), body_part="CHEST", modality="DX",
                   extra={"projected_area_cm2": float(air2d.sum() * pixel * pixel / 100), "bits_stored": bits,
                          "photometric": photometric, "window": window})
