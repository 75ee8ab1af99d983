"""Independent chest radiographs, for evaluation only (see ``pipelines/evalgen/__init__.py``).

Drawn in the projection itself, not projected from a 3-D phantom as the training generator's
are: each structure adds its own line integral of attenuation to the film, from an AP thickness
that follows the trunk's outline.
- anatomy: the trunk and neck; two lungs from the apices to the costophrenic angles, above two
  domes (the right higher); the heart (cardiothoracic ratio 0.38-0.55) and the mediastinum with
  the aortic knob; the spine with its discs; posterior and fainter anterior ribs with bright
  cortices; clavicles; the scapulae's medial borders over the upper lungs (a classic mimic of a
  pleural line); breasts; lung markings that branch from the hila and fade towards the periphery;
  skin folds (an edge over the lung, with markings beyond it: the other classic mimic);
- acquisition: scatter (a broad haze, less with an anti-scatter grid, whose lines then show),
  quantum noise, the vendor's edge enhancement and tone curve, collimation with the shutter
  black or white, a lead side marker, 10- to 16-bit storage, MONOCHROME1 or MONOCHROME2, with or
  without a VOI window in the header;
- the finding: a pneumothorax, pleural air between the chest wall and a thin visceral pleural
  line, with no lung markings beyond it; apical or lateral, from a rim of a few millimetres to a
  large one.
"""
from __future__ import annotations

import numpy as np

from pipelines.evalgen.scanner import pink

MU = 0.021  # soft tissue, 1/mm, at a chest film's effective energy
MU_BONE = 0.05


def _smooth(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """A Gaussian blur in the Fourier domain (wraps at the edges; used for broad, soft effects)."""
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.rfftfreq(image.shape[1])[None, :]
    gain = np.exp(-2 * (np.pi * sigma_px) ** 2 * (fy ** 2 + fx ** 2))
    return np.fft.irfft2(np.fft.rfft2(image) * gain, s=image.shape).astype(np.float32)


def _band(y, x, centre_y, half: float) -> np.ndarray:
    """How much of a band of half-width ``half`` (mm) around the curve ``centre_y`` each pixel
    lies in, as a chord length through a round bar (so its edges are bright, as a cortex is)."""
    d = np.abs(y - centre_y) / half
    return np.where(d < 1, np.sqrt(np.clip(1 - d ** 2, 0, 1)), 0.0).astype(np.float32)


def chest_radiograph(rng: np.random.Generator, positive: bool, *, matrix: int = 384) -> dict:
    """One PA chest radiograph: stored values ``[1, rows, cols]``, spacing, the pleural air mask and
    how it is stored (``extra``: bit depth, photometric interpretation, window). ``matrix`` 384 is
    a detector's own pitch (0.3-0.5 mm); a smaller one draws coarser, for quick tests."""
    u = rng.uniform
    width, height = u(350, 430), u(350, 430)
    pixel = u(0.3, 0.5) * 384 / matrix
    cols, rows = int(width / pixel), int(height / pixel)
    y = ((np.arange(rows) + 0.5) * pixel)[:, None].astype(np.float32)  # mm down from the top
    x = ((np.arange(cols) + 0.5) * pixel - width / 2 + u(-20, 20))[None, :].astype(np.float32)  # + is the patient's left
    ax = np.abs(x)
    trunk, depth = u(140, 185), u(180, 280)
    shoulder, apex = u(15, 50), u(45, 85)
    lung_h = u(220, 290)
    base = apex + lung_h  # the costophrenic angles
    half = np.where(y < shoulder, u(45, 65), trunk).astype(np.float32)
    body = ax < half
    thick = depth * np.sqrt(np.clip(1 - (x / half) ** 2, 0, 1))
    att = MU * thick
    # lungs: each from its apex to its dome, from the mediastinum to inside the chest wall
    wall = u(12, 25)
    lat = (trunk - wall) * np.sqrt(np.clip((y - apex) / (0.35 * lung_h), 0, 1)) ** 0.6
    med = u(22, 35) + np.clip((y - apex - 60) / 150, 0, 1) * u(0, 12)
    dome_r, dome_l = base - u(15, 40), base - u(0, 15)
    dome = np.where(x < 0, dome_r - ((x + 0.55 * trunk) ** 2) / u(500, 900), dome_l - ((x - 0.55 * trunk) ** 2) / u(500, 900))
    heart_c, heart_h = (u(5, 25), dome_l - u(40, 70)), u(45, 65)
    ctr = u(0.38, 0.55)
    heart_w = ctr * (trunk - wall)
    heart = ((x - heart_c[0]) / heart_w) ** 2 + ((y - heart_c[1]) / heart_h) ** 2 < 1
    lung = body & (ax > med) & (ax < lat) & (y > apex) & (y < dome)
    lung_share = u(0.55, 0.75) * np.sqrt(np.clip(1 - ((ax - (med + lat) / 2) / ((lat - med) / 2 + 1e-3)) ** 2, 0, 1))
    lung_depth = np.where(lung, thick * lung_share, 0.0)
    lung_depth = np.where(heart, lung_depth * u(0.2, 0.5), lung_depth)  # the heart fills most of the chest's depth
    knob = ((x - u(25, 40)) ** 2 + (y - apex - u(50, 80)) ** 2) < u(12, 20) ** 2
    lung_depth = np.where(knob, lung_depth * 0.3, lung_depth)
    # lung markings: vessels branching from the hila, fading outward
    ridges = np.exp(-(pink(rng, (rows, cols), 3.5) / u(0.08, 0.15)) ** 2)  # thin curved lines: the zero crossings
    hila = np.minimum(np.hypot(x + u(40, 60), y - apex - u(90, 120)), np.hypot(x - u(40, 60), y - apex - u(95, 125)))
    markings = ridges * np.exp(-hila / u(60, 110)) * u(10, 25)
    # the finding: pleural air from the chest wall inward to the visceral line
    air = np.zeros((rows, cols), bool)
    kind = "none"
    if positive:
        side = float(rng.choice([-1.0, 1.0]))
        peak_y = u(apex, apex + 0.6 * lung_h)  # apical to lateral
        rim = u(3, 60) * np.exp(-((y - peak_y) / u(40, 140)) ** 2)
        here = side * x > 0  # that lung only
        edge = np.where(here, np.minimum(lat - ax, (y - apex) * 1.5), np.inf)  # mm in from its wall and apex
        air = lung & (edge < rim) & (rim > 0.5)
        line = lung & (np.abs(edge - rim) < u(0.3, 0.8)) & (rim > 0.5)
        att = att + MU * u(3, 6) * line
        kind = "apical" if peak_y < apex + 0.25 * lung_h else "lateral"
    att = att - MU * 0.8 * lung_depth * np.where(air, 1.25, 1.0) + MU * markings * lung * ~air  # pleural air: no lung
    # bone: spine and discs, ribs, clavicles, scapulae
    spine = ax < u(18, 26)
    disc = np.cos(2 * np.pi * (y - u(0, 30)) / u(25, 30)) > 0.8
    att = att + MU_BONE * u(8, 15) * spine * body * np.where(disc, 0.7, 1.0)
    pitch, drop, curve = u(21, 27), u(0.25, 0.45), u(0.0015, 0.003)
    for i in range(11):
        y0 = apex - 15 + i * pitch
        centre = y0 + drop * (ax - 25) + curve * (ax - 25) ** 2  # posterior: out and down from the spine
        att = att + MU_BONE * u(6, 10) * _band(y, x, centre, u(4, 6)) * (ax > 20) * (ax < lat + wall * 0.7)
        front = y0 + 30 + 0.35 * (trunk - ax)  # anterior: fainter, down and in from the side
        att = att + MU_BONE * u(2, 4) * _band(y, x, front, u(5, 7)) * (ax > 40) * (ax < trunk - 10)
    for s in (-1, 1):
        clav = apex - u(5, 25) + 0.1 * (ax - 30) - 8 * np.sin(ax / 40)
        att = att + MU_BONE * u(8, 12) * _band(y, x, clav, u(5, 7)) * (s * x > 15) * (s * x < trunk - 5)
        border = trunk - u(15, 35) - (y - apex) * u(0.15, 0.35)  # the scapula's medial border, and lateral to it
        att = att + MU_BONE * u(2, 5) * ((s * x > border) & (y > apex - 20) & (y < apex + u(100, 160)) & body)
    if rng.random() < 0.4:  # breasts
        for s in (-1, 1):
            b = ((x - s * u(70, 100)) / u(60, 80)) ** 2 + ((y - dome_l + u(20, 50)) / u(50, 70)) ** 2
            att = att + MU * u(20, 50) * np.sqrt(np.clip(1 - b, 0, 1)) * (y > dome_l - u(80, 100))
    if rng.random() < 0.25:  # a skin fold: an edge across the lung, with markings either side
        s = float(rng.choice([-1.0, 1.0]))
        fold = lat - u(10, 40) - 0.1 * (y - apex)
        att = att + MU * u(3, 8) * ((s * x > fold) & (y > apex + 40) & (y < dome) & body)
    # the exposure: scatter, quantum noise, the vendor's processing
    grid = rng.random() < 0.5
    primary = np.exp(-att)
    scatter = _smooth(primary, u(20, 50) / pixel) * (u(0.05, 0.2) if grid else u(0.2, 0.5))
    photons = u(3e3, 3e4)
    signal = rng.poisson(photons * (primary + scatter)).astype(np.float32) / photons
    value = -np.log(np.maximum(signal, 1.0 / photons))
    if grid:
        value += u(0.005, 0.02) * np.cos(2 * np.pi * np.arange(cols) / u(2.5, 5.0))[None, :]
    value = value + u(0.3, 1.5) * (value - _smooth(value, u(3, 8) / pixel))  # edge enhancement
    lo, hi = np.percentile(value[body], [u(0.5, 3), u(97, 99.5)])
    tone = np.clip((value - lo) / (hi - lo), 0, 1) ** u(0.8, 1.25)
    bits = int(rng.choice([10, 12, 12, 14, 15, 16]))
    top_value = (1 << bits) - 1
    stored = tone * top_value
    # collimation and a lead marker
    m = [int(u(0, 0.08) * n) for n in (rows, rows, cols, cols)]
    shutter = np.ones((rows, cols), bool)
    shutter[m[0]:rows - m[1], m[2]:cols - m[3]] = False
    stored[shutter] = top_value if rng.random() < 0.5 else 0
    r0, c0 = m[0] + int(u(10, 30) / pixel), (m[2] if rng.random() < 0.5 else cols - m[3] - int(30 / pixel)) + int(u(5, 15) / pixel)
    stored[r0:r0 + int(12 / pixel), c0:c0 + int(8 / pixel)] = top_value
    photometric = "MONOCHROME1" if rng.random() < 0.35 else "MONOCHROME2"
    if photometric == "MONOCHROME1":
        stored = top_value - stored
    window = None
    if rng.random() < 0.6:
        wlo, whi = np.percentile(stored[body & ~shutter], [1, 99])
        window = (round(float(wlo + whi) / 2), round(float(whi - wlo) * u(1.0, 1.3)))
    air &= ~shutter
    area_mm2 = float(air.sum() * pixel * pixel)
    return {"hu": np.rint(stored)[np.newaxis].astype(np.float32), "spacing_zyx": (1.0, pixel, pixel),
            "mask": air[np.newaxis], "label": int(positive and air.any()), "kind": kind if air.any() else "none",
            # the pleural air's volume, estimated from its area and a third of the chest's depth
            "lesion_ml": area_mm2 * depth / 3 / 1000, "modality": "DX",
            "extra": {"bits_stored": bits, "photometric": photometric, "window": window}}
