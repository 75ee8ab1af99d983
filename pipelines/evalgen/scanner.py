"""The independent generator's scanner model, shared by its body parts: band-limited texture,
an in-plane MTF, and noise with a CT-like (ramp-shaped) noise power spectrum. Evaluation only
(see ``pipelines/evalgen/__init__.py``)."""
from __future__ import annotations

import numpy as np


def pink(rng: np.random.Generator, shape, beta: float, cutoff: float = 0.0) -> np.ndarray:
    """Zero-mean, unit-SD noise whose power falls as 1/f^beta (frequencies in cycles/voxel)."""
    freqs = np.meshgrid(*[np.fft.fftfreq(n) for n in shape[:-1]], np.fft.rfftfreq(shape[-1]), indexing="ij")
    f = np.sqrt(sum(g ** 2 for g in freqs))
    f[(0,) * len(shape)] = 1.0
    amp = f ** (-beta / 2)
    if cutoff:
        amp *= np.exp(-(f / cutoff) ** 2)
    amp[(0,) * len(shape)] = 0.0
    spec = (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)) * amp
    out = np.fft.irfftn(spec, s=shape).astype(np.float32)
    return out / (out.std() or 1.0)


def mtf(image: np.ndarray, pixel_mm: float, f50: float) -> np.ndarray:
    """In-plane blur: a Lorentzian MTF that falls to one half at ``f50`` cycles/mm."""
    fy = np.fft.fftfreq(image.shape[-2], d=pixel_mm)[:, None]
    fx = np.fft.rfftfreq(image.shape[-1], d=pixel_mm)[None, :]
    gain = 1.0 / (1.0 + (np.sqrt(fy ** 2 + fx ** 2) / f50) ** 2)
    return np.fft.irfft2(np.fft.rfft2(image) * gain, s=image.shape[-2:]).astype(np.float32)


def ramp_noise(rng: np.random.Generator, shape_yx, pixel_mm: float, peak: float) -> np.ndarray:
    """One slice of CT noise: white noise shaped by a ramp times an apodising window (an NPS
    that peaks near ``peak`` cycles/mm), unit SD."""
    fy = np.fft.fftfreq(shape_yx[0], d=pixel_mm)[:, None]
    fx = np.fft.rfftfreq(shape_yx[1], d=pixel_mm)[None, :]
    f = np.sqrt(fy ** 2 + fx ** 2)
    nps = f * np.exp(-(f / peak) ** 2)
    white = rng.standard_normal(shape_yx)
    out = np.fft.irfft2(np.fft.rfft2(white) * np.sqrt(nps), s=shape_yx).astype(np.float32)
    return out / (out.std() or 1.0)
