"""Independent head CTs, for evaluation only (see ``pipelines/evalgen/__init__.py``).

Its own anatomy model, designed apart from the training generator's:
- the head is a superellipse in-plane whose radii follow a dome from the skull base to the
  vertex; the vault's thickness varies with direction through low-order harmonics;
- the cortex is a ribbon measured inward from the inner table, folded by band-limited noise
  (sulci, wider with age); the ventricles are a butterfly of two tilted ellipsoids with
  occipital horns;
- texture is 1/f noise made in the Fourier domain; scanner noise has a ramp-shaped noise power
  spectrum and rises towards the centre of the head, as it does in CT;
- the system's blur is a Lorentzian MTF applied in the Fourier domain; each slice is the mean of
  sub-slices across its thickness (the slice profile);
- mimics: dense dural sinuses and falx, calcified pineal and choroid plexus, air in the frontal
  sinuses and mastoids, dark beam-hardening bands between the petrous bones, a headrest, the
  reconstruction circle padded with -2000 or -3024;
- bleeds: intraparenchymal (lumpy), subdural (crescent), epidural (lens), subarachnoid (in the
  sulci), intraventricular (layering in the occipital horns); 45–85 HU, down to a few tenths of
  a millilitre.
"""
from __future__ import annotations

import numpy as np

from pipelines.evalgen.scanner import mtf, pink, ramp_noise

BLEEDS = ("intraparenchymal", "subdural", "epidural", "subarachnoid", "intraventricular")


class _Head:
    """The head's geometry in mm, head frame (z up from the skull base, y anterior-negative)."""

    def __init__(self, rng: np.random.Generator):
        self.rx, self.ry = rng.uniform(64, 79), rng.uniform(82, 99)
        self.height = rng.uniform(120, 150)  # skull base to vertex
        self.power = rng.uniform(2.1, 2.7)
        self.thick = rng.uniform(4.0, 9.0)
        self.harm = rng.normal(0, 0.18, size=4)
        self.age = rng.uniform(0, 1)

    def radial(self, z, y, x):
        """(rho, theta): rho = 1 on the outer surface of the skull, in this head's own metric."""
        t = np.clip(z / self.height, -0.3, 1.0)
        dome = np.sqrt(np.clip(1.0 - np.clip(t - 0.35, 0, None) ** 2 / 0.65 ** 2, 1e-4, None))
        theta = np.arctan2(y, x)
        rho = ((np.abs(x) / (self.rx * dome)) ** self.power + (np.abs(y) / (self.ry * dome)) ** self.power) ** (1 / self.power)
        return rho, theta, dome

    def thickness(self, theta):
        h = self.harm
        return self.thick * (1 + h[0] * np.cos(theta) + h[1] * np.sin(2 * theta) + h[2] * np.cos(3 * theta) + h[3])


def head_ct(rng: np.random.Generator, positive: bool, *, matrix: int = 384) -> dict:
    """One head CT: HU ``[z, y, x]``, spacing, the bleed mask and what it holds."""
    head = _Head(rng)
    fov = rng.uniform(210, 300)
    pixel = fov / matrix
    thickness = float(rng.choice([2.0, 2.5, 3.0, 5.0]))
    coverage = rng.uniform(head.height + 5, head.height + 45)
    nz = int(round(coverage / thickness))
    sub = 2
    z_mm = (np.arange(nz * sub) + 0.5) * thickness / sub - (coverage - head.height) * rng.uniform(0.6, 1.0)
    yx = (np.arange(matrix) - (matrix - 1) / 2) * pixel
    off_y, off_x = rng.uniform(-15, 15, size=2)
    roll = np.radians(rng.uniform(-8, 8))
    y2, x2 = np.meshgrid(yx - off_y, yx - off_x, indexing="ij")
    ys, xs = y2 * np.cos(roll) - x2 * np.sin(roll), y2 * np.sin(roll) + x2 * np.cos(roll)
    theta2 = np.arctan2(ys, xs)
    thick_map = head.thickness(theta2)
    half = (matrix + 1) // 2  # texture is drawn at half resolution, then doubled (an odd matrix too)
    tex = pink(rng, (nz * sub // 2 + 1, half, half), 2.0)
    folds = pink(rng, (nz * sub // 2 + 1, half, half), 3.0)
    kind = str(rng.choice(BLEEDS)) if positive else "none"
    bleed_hu = rng.uniform(45, 85)
    grey, white, csf = rng.uniform(34, 42), rng.uniform(23, 30), rng.uniform(0, 9)
    vent_scale = 0.8 + 1.2 * head.age * rng.uniform(0.5, 1)
    sulcus_width = 0.06 + 0.18 * head.age
    # the bleed's own geometry
    side = rng.choice([-1.0, 1.0])
    centre = np.array([rng.uniform(35, 95), rng.uniform(-45, 45), side * rng.uniform(10, 45)])
    lumps = [(centre + rng.normal(0, 4, 3), rng.uniform(2.5, 13) * s) for s in (1.0, 0.7, 0.6)[: rng.integers(1, 4)]]
    arc, arc_width = rng.uniform(-np.pi, np.pi), rng.uniform(0.3, 1.2)
    z_band = (rng.uniform(30, 90), rng.uniform(8, 35))
    layer = rng.uniform(2, 12)  # mm of a subdural's or epidural's depth
    scalp_mm, cortex_mm, sinus_hu, hardening = rng.uniform(3, 6), rng.uniform(4, 6), rng.uniform(50, 70), rng.uniform(10, 30)
    rest_hu = rng.uniform(-150, 150)
    hu = np.empty((nz * sub, matrix, matrix), np.float32)
    mask = np.zeros((nz * sub, matrix, matrix), bool)
    for k, z in enumerate(z_mm):
        rho, theta, dome = head.radial(np.float32(z), ys, xs)
        r_out = np.maximum(head.rx, head.ry) * dome  # a scale to turn rho into mm
        depth = (1.0 - rho) * r_out  # mm inward from the outer table
        s = np.full((matrix, matrix), -1000.0, np.float32)
        if -0.3 * head.height < z < head.height * 1.02:
            scalp = (depth > -scalp_mm) & (rho < 1.08)
            s[scalp] = 40.0
            bone = (depth >= 0) & (depth < thick_map)
            s[bone] = 1800 - 700 * np.sin(np.pi * np.clip(depth / thick_map, 0, 1))[bone]
            inner = depth - thick_map  # mm inward from the inner table
            brain = inner >= 0
            kz = min(k // 2, tex.shape[0] - 1)
            t = np.kron(tex[kz], np.ones((2, 2), np.float32))[:matrix, :matrix]
            fo = np.kron(folds[kz], np.ones((2, 2), np.float32))[:matrix, :matrix]
            cortex = brain & (inner < cortex_mm + 2 * fo)
            s[brain] = white + 1.5 * t[brain]
            s[cortex] = grey + 1.5 * t[cortex]
            sulci = brain & (np.abs(fo) < sulcus_width) & (inner < 14)
            s[sulci | (brain & (inner < 0.8 + 2.5 * head.age))] = csf
            vz = z - 70
            for sd in (-1, 1):
                a = ((xs - sd * 8 * vent_scale) * np.cos(0.3 * sd) - (ys + 4) * np.sin(0.3 * sd)) / (5 * vent_scale)
                b = ((xs - sd * 8 * vent_scale) * np.sin(0.3 * sd) + (ys + 4) * np.cos(0.3 * sd)) / (22 * vent_scale ** 0.5)
                horn = ((xs - sd * 14 * vent_scale) / (4 * vent_scale)) ** 2 + ((ys - 26) / 9) ** 2
                vent = (a ** 2 + b ** 2 + (vz / 12) ** 2 < 1) | (horn + (vz / 8) ** 2 < 1)
                s[vent & brain] = csf
                if kind == "intraventricular" and positive:
                    pool = vent & brain & (horn + (vz / 8) ** 2 < 1) & (ys > 26 + rng.uniform(-2, 3))
                    s[pool] = bleed_hu
                    mask[k] |= pool
            sinus = brain & (inner < 3) & (np.abs(xs) < 3.5) & (z > 50)
            s[sinus] = sinus_hu
            falx = brain & (np.abs(xs) < 0.8) & (ys < 40) & (inner > 3)
            s[falx] = 45.0
            if 60 < z < 68:
                s[((xs ** 2 + (ys - 14) ** 2) < 9) & brain] = 250.0  # pineal
            if 66 < z < 74:
                for sd in (-1, 1):
                    s[(((xs - sd * 15 * vent_scale) ** 2 + (ys - 24) ** 2) < 6) & brain] = 180.0  # choroid
            if 0 < z < 25:  # skull base: mastoid air and beam hardening between the petrous bones
                for sd in (-1, 1):
                    mast = ((xs - sd * head.rx * 0.8) / 9) ** 2 + ((ys - head.ry * 0.15) / 11) ** 2 < 1
                    s[mast & (depth > -2)] = np.where(fo[mast & (depth > -2)] > 0, -950.0, 700.0)
                band = np.abs(ys - head.ry * 0.1) < 3
                s[band & brain] -= hardening
            if 15 < z < 45:  # frontal sinuses
                fs = ((xs / 14) ** 2 + ((ys + head.ry * 0.85) / 7) ** 2) < 1
                s[fs & (depth > -1)] = -1000.0
            if positive:
                b = np.zeros((matrix, matrix), bool)
                if kind == "intraparenchymal":
                    for c, r in lumps:
                        b |= (z - c[0]) ** 2 + (ys - c[1]) ** 2 + (xs - c[2]) ** 2 < r ** 2
                    b &= brain & (inner > 8)
                elif kind in ("subdural", "epidural"):
                    in_arc = np.abs(np.angle(np.exp(1j * (theta - arc)))) < arc_width / 2
                    in_z = abs(z - z_band[0]) < z_band[1]
                    if kind == "subdural":
                        b = brain & in_arc & (inner < layer * 0.6) & in_z
                    else:  # a lens: deepest in the middle of its arc
                        frac = 1 - (np.angle(np.exp(1j * (theta - arc))) / (arc_width / 2)) ** 2
                        b = brain & in_arc & (inner < layer * np.clip(frac, 0, 1)) & in_z
                elif kind == "subarachnoid":
                    near = np.abs(np.angle(np.exp(1j * (theta - arc)))) < arc_width
                    b = sulci & near & (abs(z - z_band[0]) < z_band[1])
                s[b] = bleed_hu
                mask[k] |= b
        hu[k] = s
    # the headrest, below the occiput
    rest = (ys > head.ry + rng.uniform(8, 20)) & (ys < head.ry + rng.uniform(25, 35)) & (np.abs(xs) < 90)
    hu[:, rest] = np.where(hu[:, rest] < -900, rest_hu, hu[:, rest])
    # scanner: MTF in-plane, slice profile (mean of sub-slices), noise rising to the centre
    f50 = rng.uniform(0.25, 0.6)
    out = np.empty((nz, matrix, matrix), np.float32)
    r_centre = np.sqrt(ys ** 2 + xs ** 2)
    gain = 1.0 + 0.6 * np.exp(-(r_centre / 60) ** 2)
    sd = rng.uniform(3, 12)
    peak = rng.uniform(0.2, 0.5)
    for k in range(nz):
        slab = hu[k * sub:(k + 1) * sub].mean(axis=0)
        out[k] = mtf(slab, pixel, f50) + sd * gain * ramp_noise(rng, (matrix, matrix), pixel, peak)
    lesion = mask.reshape(nz, sub, matrix, matrix).mean(axis=1) >= 0.5
    if rng.random() < 0.7:  # the reconstruction circle, in the scanner's frame
        out[:, np.sqrt(yx[:, None] ** 2 + yx[None, :] ** 2) > fov / 2 * 0.98] = float(rng.choice([-2000.0, -3024.0]))
    voxel_ml = thickness * pixel * pixel / 1000
    return {"hu": out, "spacing_zyx": (thickness, pixel, pixel), "mask": lesion, "label": int(positive and lesion.any()),
            "kind": kind if positive and lesion.any() else "none", "lesion_ml": float(lesion.sum() * voxel_ml)}
