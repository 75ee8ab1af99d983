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

The same head, read two more ways (:func:`head_cta`, :func:`head_ct_fracture`):
- CT angiography: arteries as polylines with a radius from the neck to the cortical branches,
  opacified at 220–550 HU in an arterial phase; enhancing venous sinuses and choroid plexus,
  calcified carotid siphons, a hypoplastic A1 or a fetal posterior communicating artery as normal
  variants. A large-vessel occlusion is a thrombus in the ICA terminus, M1, proximal M2 or basilar
  artery, with the branches beyond it dark or faintly refilled through collaterals.
- the vault read for fractures: cranial sutures (sagittal, coronal, lambdoid; serrated, fusing
  with age), vascular grooves on the inner table and diploic venous lakes are the mimics; a
  fracture is a gap of 0.4–3 mm through the full thickness of the vault, 15–90 mm long, sometimes
  depressed, often under a scalp haematoma.
"""
from __future__ import annotations

import numpy as np

from pipelines.evalgen.scanner import mtf, pink, ramp_noise
from pipelines.evalgen.shapes import segment_distance

BLEEDS = ("intraparenchymal", "subdural", "epidural", "subarachnoid", "intraventricular")
# slice thickness (mm) by what the study is read for
THICKNESSES = {"ich": (2.0, 2.5, 3.0, 5.0), "lvo": (0.625, 1.0, 1.25, 2.0), "skull_fracture": (0.625, 1.25, 2.5, 5.0)}


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
    """One non-contrast head CT: HU ``[z, y, x]``, spacing, the bleed mask and what it holds."""
    return _head_study(rng, positive, matrix, "ich")


def head_cta(rng: np.random.Generator, positive: bool, *, matrix: int = 384) -> dict:
    """One head CT angiogram; a positive holds a large-vessel occlusion (mask: the dark vessel)."""
    return _head_study(rng, positive, matrix, "lvo")


def head_ct_fracture(rng: np.random.Generator, positive: bool, *, matrix: int = 384) -> dict:
    """One non-contrast head CT read for the vault; a positive holds a fracture (mask: its gap)."""
    return _head_study(rng, positive, matrix, "skull_fracture")


def _head_study(rng: np.random.Generator, positive: bool, matrix: int, finding: str) -> dict:
    head = _Head(rng)
    fov = rng.uniform(210, 300)
    pixel = fov / matrix
    thickness = float(rng.choice(THICKNESSES[finding]))
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
    kind = str(rng.choice(BLEEDS)) if positive and finding == "ich" else "none"
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
    extra = (_Arteries(rng, head, positive) if finding == "lvo" else
             _Fracture(rng, head, positive) if finding == "skull_fracture" else None)
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
            if positive and finding == "ich":
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
            if extra is not None:
                extra.draw(s, mask[k], np.float32(z), ys, xs, theta, depth, thick_map, sinus)
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
    if extra is not None:
        kind = extra.kind
    return {"hu": out, "spacing_zyx": (thickness, pixel, pixel), "mask": lesion, "label": int(positive and lesion.any()),
            "kind": kind if positive and lesion.any() else "none", "lesion_ml": float(lesion.sum() * voxel_ml)}


class _Arteries:
    """The contrast-filled arteries of a head CT angiogram, in the head's frame (mm), and what a
    large-vessel occlusion does to them."""

    SITES = ("ica_terminus", "m1", "m2", "basilar")

    def __init__(self, rng: np.random.Generator, head: _Head, positive: bool):
        u = rng.uniform
        self.hu = u(220, 550)
        self.sinus_hu = self.hu * u(0.25, 0.7)  # the veins fill after the arteries
        self.calcified = u(500, 1000) if rng.random() < 0.4 else 0.0
        cw = u(38, 50)  # the circle of Willis, mm above the skull base
        tip = (cw - u(2, 6), u(10, 16), u(-2, 2))
        origin = (u(-6, 4), u(16, 24), u(-2, 2))
        segs = [("basilar", origin, tip, u(1.4, 2.0))]
        hypoplastic = rng.choice([-1, 1]) if rng.random() < 0.15 else 0  # one thin A1
        fetal = rng.choice([-1, 1]) if rng.random() < 0.15 else 0  # a PCA fed from the carotid
        for s in (-1, 1):
            base = (u(-45, -25), u(5, 15), s * u(18, 24))
            siphon = (u(10, 22), u(-6, 4), s * u(14, 20))
            term = (cw, u(-4, 4), s * u(12, 17))
            m1 = (cw + u(0, 6), u(-8, 2), s * u(38, 48))
            sup, inf = (cw + u(15, 30), u(-25, -10), s * u(48, 58)), (cw + u(5, 15), u(5, 20), s * u(50, 60))
            a1 = (cw + u(2, 6), u(-14, -9), s * 1.5)
            pca = (cw + u(0, 8), u(35, 50), s * u(25, 38))
            segs += [(f"ica1{s}", base, siphon, u(2.2, 2.7)), (f"ica2{s}", siphon, term, u(2.0, 2.4)),
                     (f"m1{s}", term, m1, u(1.4, 1.9)),
                     (f"m2a{s}", m1, sup, u(1.0, 1.3)), (f"m3a{s}", sup, (sup[0] + u(20, 35), sup[1] - u(0, 15), s * u(50, 62)), u(0.6, 0.9)),
                     (f"m2b{s}", m1, inf, u(1.0, 1.3)), (f"m3b{s}", inf, (inf[0] + u(10, 25), inf[1] + u(10, 25), s * u(52, 62)), u(0.6, 0.9)),
                     (f"a1{s}", term, a1, u(0.9, 1.2) * (0.45 if hypoplastic == s else 1.0)),
                     (f"a2{s}", a1, (cw + u(25, 35), u(-40, -30), s * 1.5), u(0.9, 1.1)),
                     (f"a3{s}", (cw + u(25, 35), u(-40, -30), s * 1.5), (cw + u(55, 75), u(-20, 5), s * 1.5), u(0.7, 0.9)),
                     (f"pca{s}", tip, pca, u(0.9, 1.2) * (0.4 if fetal == s else 1.0)),
                     (f"pcom{s}", term, (tip[0], tip[1] - u(2, 5), s * u(9, 13)), u(0.9, 1.2) if fetal == s else u(0.3, 0.6)),
                     (f"va{s}", (u(-45, -25), u(20, 30), s * u(8, 14)), origin, u(1.3, 1.8))]
        self.segs = [(name, np.asarray(p0, np.float32), np.asarray(p1, np.float32), r) for name, p0, p1, r in segs]
        # an occlusion: from where along which segment the thrombus runs, and what lies beyond it
        self.state: dict[str, tuple[float, float, str]] = {}  # segment -> (from, to, "clot" | "dark" | "faint")
        self.faint = u(0.1, 0.5)  # collateral refilling of the branches beyond, as a share of the arteries' HU
        self.clot_hu = u(35, 60)
        self.kind = "none"
        if positive:
            site = str(rng.choice(self.SITES, p=[0.2, 0.4, 0.25, 0.15]))
            s = int(rng.choice([-1, 1]))
            beyond = "faint" if rng.random() < 0.5 else "dark"
            if site == "ica_terminus":
                self.state = {f"ica2{s}": (u(0.4, 0.8), 1.0, "clot"), f"m1{s}": (0.0, 1.0, "clot")}
                self.state.update({f"{b}{s}": (0.0, 1.0, beyond) for b in ("m2a", "m2b", "m3a", "m3b")})
            elif site == "m1":
                self.state = {f"m1{s}": (u(0.05, 0.6), 1.0, "clot")}
                self.state.update({f"{b}{s}": (0.0, 1.0, beyond) for b in ("m2a", "m2b", "m3a", "m3b")})
            elif site == "m2":
                b = str(rng.choice(["a", "b"]))
                self.state = {f"m2{b}{s}": (u(0.0, 0.4), 1.0, "clot"), f"m3{b}{s}": (0.0, 1.0, beyond)}
            else:
                self.state = {"basilar": (u(0.3, 0.7), 1.0, "clot")}
                self.state.update({f"pca{t}": (0.0, 1.0, beyond) for t in (-1, 1) if t != fetal})
            self.kind = site

    def draw(self, s, mask, z, ys, xs, theta, depth, thick_map, sinus) -> None:
        s[sinus] = self.sinus_hu
        for name, p0, p1, r in self.segs:
            if min(p0[0], p1[0]) - r - 1 > z or max(p0[0], p1[0]) + r + 1 < z:
                continue
            dist, t = segment_distance(z, ys, xs, p0, p1)
            lumen = dist < r
            if not lumen.any():
                continue
            if self.calcified and name.startswith("ica1"):
                s[(dist >= r) & (dist < r + 0.8) & (np.cos(3 * np.arctan2(ys - p0[1], xs - p0[2])) > 0.3)] = self.calcified
            s[lumen] = self.hu
            if name in self.state:
                t0, t1, what = self.state[name]
                part = lumen & (t >= t0) & (t <= t1)
                s[part] = self.clot_hu if what != "faint" else self.hu * self.faint
                if what != "faint":
                    mask |= part


class _Fracture:
    """The vault read for fractures: its normal seams (sutures, vascular grooves, diploic veins),
    and a fracture. Positions on the vault are (arc, height): mm around the head from an angle,
    and mm up from the skull base."""

    def __init__(self, rng: np.random.Generator, head: _Head, positive: bool):
        u = rng.uniform
        self.head = head
        self.width = u(0.3, 1.0) * (1.2 - 0.6 * head.age)  # sutures narrow and fuse with age
        self.fused = u(0.0, 0.8) * head.age
        self.amp, self.pitch, self.phase = u(0.8, 2.5), u(2.5, 5.0), u(0, 100)
        self.coronal = -head.ry * u(0.15, 0.35)
        self.lambda_z = head.height * u(0.7, 0.85)
        self.groove = (float(rng.choice([-1, 1])), u(-20, 10), u(0.3, 1.0), u(1.2, 2.5), u(0.6, 1.8))
        self.lakes = [(u(0.3, 0.9) * head.height, u(-np.pi, np.pi), u(2, 4.5), u(120, 400))
                      for _ in range(int(rng.integers(0, 5)))]
        self.kind = "none"
        if positive:
            self.kind = "depressed" if rng.random() < 0.25 else "linear"
            self.centre = (u(0.3, 0.85) * head.height, u(-np.pi, np.pi))
            self.angle, self.length, self.gap = u(0, np.pi), u(15, 90), u(0.4, 3.0)
            self.wiggle, self.wave = u(0, 3), u(5, 12)
            self.drop, self.radius = u(2, 8), u(8, 20)
            self.haematoma, self.haematoma_hu = (u(3, 12) if rng.random() < 0.6 else 0.0), u(45, 70)

    def _surface(self, z, theta, z0, theta0):
        """(arc, height) of each pixel from the point (z0, theta0) of the vault, in mm."""
        r = 0.5 * (self.head.rx + self.head.ry)
        return np.angle(np.exp(1j * (theta - theta0))) * r, z - z0

    def draw(self, s, mask, z, ys, xs, theta, depth, thick_map, sinus) -> None:
        head = self.head
        bone = (depth >= 0) & (depth < thick_map)
        serrate = self.amp * np.sin(self.phase + (ys + xs) / self.pitch)
        open_ = np.cos((ys - xs) / 11.0 + self.phase) > 2 * self.fused - 1
        seams = np.zeros(s.shape, bool)
        if z > 0.55 * head.height:  # sagittal, from the coronal suture back to lambda
            seams |= (np.abs(xs - serrate) < self.width / 2) & (ys > self.coronal) & (ys < head.ry * 0.7)
        if z > 0.4 * head.height:  # coronal, a band across the front of the vault
            seams |= np.abs(ys - self.coronal - 0.2 * (head.height - z) - serrate) < self.width / 2
        if z > 0.35 * head.height:  # lambdoid, an inverted V at the back
            seams |= (np.abs((z - self.lambda_z + 0.9 * np.abs(xs)) * 0.7 - serrate) < self.width / 2) & (ys > 0.3 * head.ry)
        s[seams & open_ & bone] = 35.0
        side, y0, slope, width, deep = self.groove  # the middle meningeal artery, on the inner table
        if 20 < z < 80:
            groove = (side * xs > 0.5 * head.rx) & (np.abs(ys - y0 - slope * (z - 30)) < width / 2)
            s[groove & bone & (depth > thick_map - deep)] = 40.0
        for z0, theta0, radius, value in self.lakes:  # diploic venous lakes, in the marrow
            arc, up = self._surface(z, theta, z0, theta0)
            s[bone & (arc ** 2 + up ** 2 < radius ** 2) & (np.abs(depth - thick_map / 2) < thick_map * 0.25)] = value
        if self.kind == "none":
            return
        arc, up = self._surface(z, theta, *self.centre)
        along = arc * np.cos(self.angle) + up * np.sin(self.angle)
        across = -arc * np.sin(self.angle) + up * np.cos(self.angle) + self.wiggle * np.sin(along / self.wave)
        near = arc ** 2 + up ** 2
        if self.haematoma:
            swell = self.haematoma * np.exp(-near / (2 * 25.0 ** 2))
            s[(depth < 0) & (depth > -4.0 - swell) & (swell > 0.5)] = self.haematoma_hu
        gap = bone & (np.abs(across) < self.gap / 2) & (np.abs(along) < self.length / 2)
        if self.kind == "depressed":  # a fragment pushed in, ringed by its fracture
            inside = near < self.radius ** 2
            pushed = inside & (depth >= self.drop) & (depth < thick_map + self.drop)
            s[inside & bone & ~pushed] = 30.0
            s[pushed] = 1500.0
            gap = (bone | pushed) & (np.abs(np.sqrt(near) - self.radius) < self.gap / 2 + 0.3)
        s[gap] = 30.0  # the gap fills with blood and soft tissue
        mask |= gap
