"""Acquisition physics for CT phantoms: what a scanner does to the anatomy before anyone reads it.

The anatomy is drawn as point samples at voxel centres; :func:`acquire` then applies, each drawn
at random per study:
- the point-spread function of the reconstruction kernel (sharp to smooth) and the slice
  profile, which make every edge a partial-volume ramp (the skull's inner table becomes the
  thin bright rim against the brain that a model must not call blood);
- correlated noise (white noise through a kernel-like filter), at a level from low-dose to clean,
  stated for a reference voxel and scaled to the phantom's own (:func:`noise_sd`);
- drift of the HU scale: an offset and a gain about water (0 HU), as scanners are calibrated;
- the reconstruction circle, outside which scanners write -1024, -2000 or -3024;
- beam-hardening streaks near dense bone, and metal with its bright and dark streaks (some studies).

Table, head holder and clothing are anatomy-like objects drawn by the body generators with
:func:`support` before this runs. Everything here is for the training generator only; the
evaluation generator (``pipelines/evalgen``) has its own, written apart.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

PADDING = (-1024.0, -2000.0, -3024.0)
# Noise levels are drawn for a 0.5 x 0.5 x 5 mm voxel, the grid a head CT is read on: 2.5 HU
# (a clean standard dose) to 8 HU (low dose).
REFERENCE_VOXEL_MM3 = 0.5 * 0.5 * 5.0
NOISE_HU = (2.5, 8.0)


def noise_sd(level_hu: float, spacing_zyx) -> float:
    """The noise SD, in HU, on a voxel of ``spacing_zyx`` of a scan whose noise is ``level_hu``
    on the reference voxel. At one dose, noise variance falls as the voxel's volume grows, so a
    phantom sampled every 2 mm carries a fraction of the noise of the same scan read at 0.5 mm;
    drawn at the reference level on the phantom's coarse grid (as before), a head's noise was
    several times what any scanner leaves at that voxel size, and buried bleeds of 20 HU
    contrast that a reader sees."""
    volume = float(np.prod([float(v) for v in spacing_zyx]))
    return float(level_hu) * float(np.sqrt(REFERENCE_VOXEL_MM3 / volume))


def blur(hu: np.ndarray, spacing_zyx, sigma_mm) -> np.ndarray:
    """Gaussian blur with a per-axis sigma in mm (``sigma_mm`` [z, y, x])."""
    img = sitk.GetImageFromArray(hu.astype(np.float32, copy=False))
    img.SetSpacing(tuple(float(v) for v in reversed(spacing_zyx)))
    sig = [max(float(s), 1e-3) for s in reversed(sigma_mm)]
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(img, sig)).astype(np.float32)


def correlated_noise(rng: np.random.Generator, shape, spacing_zyx, level_hu: float, grain_mm: float) -> np.ndarray:
    """Noise with a grain of about ``grain_mm`` in-plane (a kernel's texture), ``level_hu`` SD."""
    white = rng.standard_normal(shape).astype(np.float32)
    grain = blur(white, spacing_zyx, (0.3 * spacing_zyx[0], grain_mm, grain_mm))
    sd = float(grain.std()) or 1.0
    return grain * np.float32(level_hu / sd)


def support(rng: np.random.Generator, coords, below_mm: float, kind: str = "head") -> np.ndarray:
    """HU of the patient's support outside the body: a curved head holder (or flat table) below
    the patient (+y is posterior), with a foam pad between; -1000 (air) elsewhere.
    ``below_mm``: how far behind the isocentre the patient's back (or occiput) lies."""
    z, y, x = coords
    out = np.full(z.shape, -1000.0, np.float32)
    gap = rng.uniform(0.0, 8.0)
    if kind == "head" and rng.random() < 0.8:  # a cradle: an arc around the occiput
        radius = below_mm + gap + rng.uniform(4, 12)
        centre_y = rng.uniform(-10, 10)
        rr = np.sqrt(x ** 2 + (y - centre_y) ** 2)
        shell = (rr > radius) & (rr < radius + rng.uniform(3, 7)) & (y > centre_y + 0.3 * radius)
        out[shell] = rng.uniform(80, 400)
        pad = (rr > below_mm) & (rr <= radius) & (y > centre_y + 0.4 * radius)
        out[pad & (out < -900)] = rng.uniform(-250, -80)  # foam
    top = below_mm + gap + rng.uniform(15, 60)
    table = (y > top) & (y < top + rng.uniform(4, 12)) & (np.abs(x) < rng.uniform(180, 250))
    out[table] = rng.uniform(-200, 300)
    return out


def _streaks(rng: np.random.Generator, shape_yx, spacing_yx, source_yx, n: int, amplitude: float,
             width_mm: float) -> np.ndarray:
    """In-plane streaks radiating from ``source_yx`` (pixel indices), alternating bright and dark."""
    yy, xx = np.meshgrid(np.arange(shape_yx[0]) * spacing_yx[0], np.arange(shape_yx[1]) * spacing_yx[1],
                         indexing="ij")
    sy, sx = source_yx[0] * spacing_yx[0], source_yx[1] * spacing_yx[1]
    out = np.zeros(shape_yx, np.float32)
    for k in range(n):
        angle = rng.uniform(0, np.pi)
        d = np.abs((yy - sy) * np.cos(angle) - (xx - sx) * np.sin(angle))
        sign = 1.0 if k % 2 == 0 else -1.0
        out += sign * amplitude * rng.uniform(0.4, 1.0) * np.exp(-(d / width_mm) ** 2)
    return out


def acquire(rng: np.random.Generator, hu: np.ndarray, spacing_zyx, dense_mask: np.ndarray | None = None,
            metal_probability: float = 0.1) -> np.ndarray:
    """``hu`` (point-sampled anatomy, air -1000) as a scanner would reconstruct it."""
    dz, dy, dx = spacing_zyx
    nz, ny, nx = hu.shape
    # beam hardening: dark bands between dense bone, within the slices that hold a lot of it
    if dense_mask is not None and rng.random() < 0.7:
        per_slice = dense_mask.reshape(nz, -1).mean(axis=1)
        heavy = np.nonzero(per_slice > np.quantile(per_slice, 0.7))[0]
        amplitude = rng.uniform(8, 35)
        for k in heavy[:: max(1, len(heavy) // 6)]:
            cy, cx = np.argwhere(dense_mask[k]).mean(axis=0) if dense_mask[k].any() else (ny / 2, nx / 2)
            band = -np.abs(_streaks(rng, (ny, nx), (dy, dx), (cy, cx), 2, amplitude, rng.uniform(2, 5)))
            lo, hi = max(0, k - 2), min(nz, k + 3)
            hu[lo:hi] += band[None] * (hu[lo:hi] > -300)
    if rng.random() < metal_probability:  # a filling, a clip, a coil
        body = np.argwhere(hu > 0)
        if len(body):
            cz, cy, cx = body[rng.integers(len(body))]
            r = rng.uniform(1.5, 4.0)
            zz, yy, xx = np.ogrid[:nz, :ny, :nx]
            ball = ((zz - cz) * dz) ** 2 + ((yy - cy) * dy) ** 2 + ((xx - cx) * dx) ** 2 < r ** 2
            hu[ball] = rng.uniform(2500, 3071)
            streak = _streaks(rng, (ny, nx), (dy, dx), (cy, cx), int(rng.integers(4, 10)), rng.uniform(100, 400),
                              rng.uniform(1, 3))
            lo, hi = max(0, cz - 2), min(nz, cz + 3)
            hu[lo:hi] += streak[None]
    # the kernel's point-spread function and the slice profile: partial volume at every edge
    psf = rng.uniform(0.35, 1.1)
    profile = dz * rng.uniform(0.3, 0.5)
    hu = blur(hu, spacing_zyx, (profile, psf, psf))
    noise = noise_sd(rng.uniform(*NOISE_HU), spacing_zyx)
    hu += correlated_noise(rng, hu.shape, spacing_zyx, noise, rng.uniform(0.4, 1.2))
    # calibration drift: scanners are calibrated on water, so the scale turns about 0 HU (a gain
    # about air, -1000, would move brain and blood by ±30 HU, past what separates them)
    gain, offset = rng.uniform(0.97, 1.03), rng.uniform(-6, 6)
    hu = hu * np.float32(gain) + np.float32(offset)
    if rng.random() < 0.6:  # the reconstruction circle and the scanner's padding value beyond it
        yy, xx = np.ogrid[:ny, :nx]
        radius = min(ny, nx) / 2 * rng.uniform(0.97, 1.0)
        outside = ((yy - (ny - 1) / 2) ** 2 + (xx - (nx - 1) / 2) ** 2) > radius ** 2
        hu[:, outside] = float(rng.choice(PADDING))
    return hu.astype(np.float32)
