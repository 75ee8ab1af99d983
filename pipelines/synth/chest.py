"""Chest phantoms: CT with or without contrast, and a radiograph projected from the same anatomy.

One chest serves every chest finding. The body is an elliptic cylinder with a fat and muscle wall,
ribs, sternum and spine; two lungs (~-850 HU) with vessel markings; the mediastinum, heart,
aorta and pulmonary arteries (contrast-filled on angiography, ~250–400 HU). Size, position,
tilt, noise, slice thickness and field of view vary as the head phantoms' do.

Findings, one per positive study:
- ``pneumothorax``: air between the lung and the chest wall, with no lung markings, from a small
  apical-anterior rim to a large collapse;
- ``pe``: filling defects (20–60 HU) in contrast-filled pulmonary arteries, central to segmental;
- ``aortic_dissection``: an intimal flap splitting the aortic lumen into a true and a false lumen;
- ``pericardial_effusion``: a fluid rim (0–20 HU) around the heart, 5 mm (small) to 25 mm (large).
"""
from __future__ import annotations

import numpy as np

from pipelines.synth.common import Phantom, grid, smooth_noise, tube

THICKNESSES = (0.625, 1.25, 2.5, 5.0)
FINDINGS = ("pneumothorax", "pe", "aortic_dissection", "pericardial_effusion")
CONTRAST = {"pneumothorax": False, "pe": True, "aortic_dissection": True, "pericardial_effusion": False}
# Timed for the pulmonary arteries, CT pulmonary angiography fills the lung's vessels with contrast
# too: an artery a clot shuts off is the one grey vessel among bright ones. (The aortic CTA phantom
# keeps soft-tissue markings; its model was trained on them.)
OPACIFIED_LUNG_VESSELS = {"pe"}
DESCRIPTION = {"pneumothorax": "CT CHEST W/O CONTRAST", "pe": "CTA CHEST PE PROTOCOL",
               "aortic_dissection": "CTA CHEST AORTA", "pericardial_effusion": "CT CHEST W/O CONTRAST"}


class Chest:
    """The anatomy of one chest on one grid: tissue masks and the vessel trees, before values."""

    def __init__(self, rng: np.random.Generator, coords):
        z, y, x = coords
        self.coords = coords
        A, B = rng.uniform(130, 165), rng.uniform(90, 120)  # body half-axes: lateral, AP (+y posterior)
        self.A, self.B = A, B
        rb = np.sqrt((x / A) ** 2 + (y / B) ** 2)
        self.body = rb < 1.0
        self.fat = self.body & (rb >= 1.0 - rng.uniform(0.06, 0.16))
        self.cavity = rb < 0.84
        period, phase = rng.uniform(24, 30), rng.uniform(0, 2 * np.pi)
        self.ribs = (rb < 0.90) & (rb >= 0.84) & (np.cos(2 * np.pi * z / period + phase) > 0.55) & (np.abs(x) > 25)
        self.sternum = (np.abs(x) < 14) & (y < -B * 0.78) & (y > -B * 0.9)
        sy = B * rng.uniform(0.55, 0.62)
        self.spine = (x ** 2 + (y - sy) ** 2) < rng.uniform(16, 21) ** 2
        self.canal = (x ** 2 + (y - sy - 26) ** 2) < 8 ** 2
        apex = rng.uniform(80, 110)
        self.lungs = {}
        for side, s in (("R", -1), ("L", 1)):  # patient right is image -x
            cx, ax = s * A * 0.45, A * rng.uniform(0.33, 0.38)
            ay, az = B * rng.uniform(0.62, 0.72), rng.uniform(100, 125)
            self.lungs[side] = ((((x - cx) / ax) ** 2 + ((y + 5) / ay) ** 2 + ((z - apex + az) / az) ** 2) < 1.0)
        heart_c = np.array([rng.uniform(-45, -30), -B * rng.uniform(0.2, 0.3), A * rng.uniform(0.05, 0.15)])
        self.heart_axes = np.array([rng.uniform(45, 55), rng.uniform(40, 50), rng.uniform(50, 60)])
        self.heart_r = np.sqrt(((z - heart_c[0]) / self.heart_axes[0]) ** 2 + ((y - heart_c[1]) / self.heart_axes[1]) ** 2
                               + ((x - heart_c[2]) / self.heart_axes[2]) ** 2)
        self.heart = self.heart_r < 1.0
        self.chambers = self.heart_r < 0.78
        for lung in self.lungs.values():
            lung &= ~(self.heart_r < 1.15)
        # aorta: ascending from the heart, arch over the left hilum, descending beside the spine
        r_ao = rng.uniform(12, 16)
        top = rng.uniform(35, 50)
        self.aorta_path = [(heart_c[0] + 25, heart_c[1] + 10, 8.0), (top, -B * 0.15, 5.0), (top + 5, B * 0.1, 15.0),
                           (top - 5, sy - 10, 22.0), (-150, sy - 12, 24.0)]
        self.aorta_radius = r_ao
        self.aorta = np.zeros(z.shape, bool)
        for p0, p1 in zip(self.aorta_path, self.aorta_path[1:]):
            self.aorta |= tube(coords, p0, p1, r_ao)[0]
        # pulmonary arteries: trunk, left and right, then lobar and segmental branches into each lung
        self.pa_segments: list[tuple[str, tuple, tuple, float]] = []
        trunk0 = (heart_c[0] + 20, heart_c[1] - 5, A * 0.12)
        bif = (top - 25, -B * 0.05, A * 0.03)
        self.pa_segments.append(("central", trunk0, bif, rng.uniform(11, 14)))
        for side, s in (("R", -1), ("L", 1)):
            hilum = (bif[0] - 5, 0.0, s * A * 0.3)
            self.pa_segments.append(("central", bif, hilum, rng.uniform(8, 10)))
            for _ in range(4):  # lobar, each with two segmental branches
                d = rng.normal(size=3) * np.array([1.2, 0.8, 0.6])
                d[2] = s * abs(d[2]) + s * 0.6
                d /= np.linalg.norm(d)
                lobar_end = tuple(np.array(hilum) + d * rng.uniform(30, 45))
                self.pa_segments.append(("lobar", hilum, lobar_end, rng.uniform(4.5, 6)))
                for _ in range(2):
                    d2 = d + rng.normal(scale=0.5, size=3)
                    d2 /= np.linalg.norm(d2)
                    seg_end = tuple(np.array(lobar_end) + d2 * rng.uniform(30, 50))
                    self.pa_segments.append(("segmental", lobar_end, seg_end, rng.uniform(2.5, 3.5)))
        self.pa = np.zeros(z.shape, bool)
        for _, p0, p1, radius in self.pa_segments:
            self.pa |= tube(coords, p0, p1, radius)[0]
        self.lung = self.lungs["R"] | self.lungs["L"]
        self.markings = self.pa.copy()  # lung vessel markings: the arteries plus finer peripheral ones
        self.markings |= self.lung & (np.abs(smooth_noise(rng, z.shape, 5.0)) < 0.02)

    def hu(self, rng: np.random.Generator, contrast: bool, opacified_markings: bool = False) -> np.ndarray:
        z = self.coords[0]
        out = np.full(z.shape, -1000.0, np.float32)
        out[self.body] = 40.0  # muscle
        out[self.fat] = -100.0
        out[self.cavity] = -60.0  # mediastinal fat
        out[self.ribs | self.sternum] = rng.uniform(400, 900)
        out[self.spine] = rng.uniform(250, 450)
        out[self.canal] = 20.0
        out[self.lung] = -850.0 + 40 * smooth_noise(rng, z.shape, 3.0)[self.lung]
        blood = rng.uniform(250, 400) if contrast else 40.0
        out[self.heart] = 40.0  # myocardium
        out[self.chambers] = blood
        out[self.aorta] = blood
        arteries = blood * rng.uniform(0.85, 1.05) if contrast else 40.0
        out[self.pa] = arteries
        out[self.markings & self.lung & ~self.pa] = arteries if opacified_markings else rng.uniform(-100, 0)
        return out


def pleural_air(rng, chest: Chest) -> tuple[np.ndarray, str]:
    """Air between one lung and the chest wall: the lung shrinks towards the hilum, from the top
    and the front first (a supine patient's air rises)."""
    z, y, x = chest.coords
    side = str(rng.choice(["R", "L"]))
    lung = chest.lungs[side]
    size = float(np.exp(rng.uniform(np.log(0.04), np.log(0.45))))  # fraction of the lung's depth lost
    zs, ys = z[lung], y[lung]
    z_top, y_front = float(zs.max()), float(ys.min())
    depth_z, depth_y = (z_top - float(zs.min())) * size, (float(ys.max()) - y_front) * size
    edge_x = float(np.abs(x[lung]).max()) if lung.any() else 0.0
    lateral = (np.abs(x) > edge_x - 60 * size) if size > 0.15 else np.zeros(z.shape, bool)
    air = lung & ((z > z_top - depth_z) | (y < y_front + depth_y) | lateral)
    return air, side


def _pe(rng, chest: Chest) -> tuple[np.ndarray, str]:
    """One to three clots in pulmonary arteries: central, lobar or segmental. A central clot lets
    contrast past it; a lobar or segmental one is occlusive two times in five: it fills its artery,
    and the artery beyond it and its branches stay unopacified (they are part of the finding).
    Returns (clot, type): the level, with ``_occlusive`` when any clot is."""
    clot = np.zeros(chest.coords[0].shape, bool)
    level = str(rng.choice(["central", "lobar", "segmental"]))
    candidates = [s for s in chest.pa_segments if s[0] == level]
    kind = level
    for i in rng.choice(len(candidates), size=min(len(candidates), int(rng.integers(1, 4))), replace=False):
        _, p0, p1, radius = candidates[int(i)]
        occlusive = level != "central" and rng.random() < 0.4
        vessel, t = tube(chest.coords, p0, p1, radius if occlusive else radius * rng.uniform(0.5, 0.95))
        start = rng.uniform(0.1, 0.6)
        end = 1.0 if occlusive else start + rng.uniform(0.15, 0.4)
        clot |= vessel & (t > start) & (t <= end)
        if occlusive:
            kind = f"{level}_occlusive"
            for _, b0, b1, r in _branches(chest.pa_segments, p1):
                clot |= tube(chest.coords, b0, b1, r)[0]
    return clot & chest.pa, kind


def _branches(segments, start) -> list:
    """The arteries that leave from ``start``, and theirs in turn."""
    out = [s for s in segments if s[1] == start]
    return out + [b for s in out for b in _branches(segments, s[2])]


def _dissection(rng, chest: Chest) -> tuple[np.ndarray, np.ndarray, str]:
    """An intimal flap along the aorta (Stanford A from the ascending aorta, B from the
    descending), splitting it into a true and a false lumen. Returns (flap, false lumen, type)."""
    z, y, x = chest.coords
    stanford = str(rng.choice(["A", "B"]))
    segments = list(zip(chest.aorta_path, chest.aorta_path[1:]))
    segments = segments if stanford == "A" else segments[3:]
    extent = rng.uniform(0.4, 1.0)
    flap = np.zeros(z.shape, bool)
    false_lumen = np.zeros(z.shape, bool)
    angle = rng.uniform(0, np.pi)
    for p0, p1 in segments[: max(1, int(round(len(segments) * extent)))]:
        lumen, t = tube(chest.coords, p0, p1, chest.aorta_radius)
        p0, p1 = np.array(p0), np.array(p1)
        centre = [p0[i] + t * (p1[i] - p0[i]) for i in range(3)]
        axis = (p1 - p0) / np.linalg.norm(p1 - p0)
        u = np.cross(axis, [0.0, 0.0, 1.0] if abs(axis[2]) < 0.9 else [1.0, 0.0, 0.0])
        u /= np.linalg.norm(u)
        v = np.cross(axis, u)
        n = np.cos(angle) * u + np.sin(angle) * v  # the flap's normal, across the lumen
        offset = (z - centre[0]) * n[0] + (y - centre[1]) * n[1] + (x - centre[2]) * n[2]
        shift = chest.aorta_radius * rng.uniform(-0.3, 0.3)
        flap |= lumen & (np.abs(offset - shift) < rng.uniform(0.8, 1.3))
        false_lumen |= lumen & (offset - shift > 0)
    return flap, false_lumen & ~flap, stanford


def _effusion(rng, chest: Chest) -> np.ndarray:
    """Fluid around the heart inside the pericardium, thicker behind (it is dependent). From 5 mm
    (a small effusion; a thinner rim is the pericardium's normal fluid) to 25 mm (large)."""
    y = chest.coords[1]
    thickness = float(np.exp(rng.uniform(np.log(5.0), np.log(25.0))))  # mm
    scale = thickness / float(chest.heart_axes.mean())
    dependent = 1.0 + 0.5 * np.clip(y / chest.B, 0, 1)
    return (chest.heart_r >= 1.0) & (chest.heart_r < 1.0 + scale * dependent)


def draw_finding(rng, chest: Chest, hu: np.ndarray, finding: str, spare: np.ndarray | None = None
                 ) -> tuple[np.ndarray, str]:
    """Draw one ``finding`` into ``chest`` (its values written into ``hu``); returns its mask and
    kind. ``spare``: voxels a pneumothorax leaves alone (pleural fluid lies below the air)."""
    if finding == "pneumothorax":
        mask, kind = pleural_air(rng, chest)
        if spare is not None:
            mask &= ~spare
        hu[mask] = -1000.0  # no lung markings in the pleural air
        return mask, kind
    if finding == "pe":
        for _ in range(10):  # a segmental clot can fall between the voxels of a coarse grid
            mask, kind = _pe(rng, chest)
            if mask.sum() >= 3:
                break
        hu[mask] = rng.uniform(20, 60)
        return mask, kind
    if finding == "aortic_dissection":
        flap, false_lumen, kind = _dissection(rng, chest)
        hu[false_lumen] *= rng.uniform(0.5, 0.8)  # slower flow: less contrast
        hu[flap] = rng.uniform(60, 110)
        return flap | false_lumen, f"stanford_{kind}"
    mask = _effusion(rng, chest)
    hu[mask] = rng.uniform(0, 20)
    return mask, "pericardial_effusion"


def chest_ct(rng: np.random.Generator, positive: bool, *, finding: str, matrix: int = 128,
             thickness: float | None = None) -> Phantom:
    """A chest CT for one finding: with contrast for ``pe`` (CT pulmonary angiography) and
    ``aortic_dissection`` (CT angiography), without for the others. Mask = the finding."""
    if finding not in FINDINGS:
        raise ValueError(f"unknown chest finding {finding!r}; one of {', '.join(FINDINGS)}")
    contrast = CONTRAST[finding]
    thickness = thickness or float(rng.choice(THICKNESSES[:3] if contrast else THICKNESSES))  # angiography is thin
    coords, spacing = grid(rng, thickness, matrix, fov_mm=400.0, coverage_mm=(220.0, 300.0),
                           tilt_deg=(5.0, 5.0), shift_mm=15.0)
    chest = Chest(rng, coords)
    hu = chest.hu(rng, contrast, opacified_markings=finding in OPACIFIED_LUNG_VESSELS)
    mask, kind = draw_finding(rng, chest, hu, finding) if positive else (np.zeros(hu.shape, bool), "none")
    hu += rng.normal(0, rng.uniform(6, 18), hu.shape).astype(np.float32)
    lesion_ml = float(mask.sum() * np.prod(spacing) / 1000)
    return Phantom(hu=hu, spacing_zyx=spacing, mask=mask, label=int(positive), finding=finding, kind=kind,
                   contrast=contrast, description=f"{DESCRIPTION[finding]} {thickness:g}mm", lesion_ml=lesion_ml,
                   body_part="CHEST")
