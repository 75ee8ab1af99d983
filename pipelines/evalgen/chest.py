"""Independent chest CTs, for evaluation only (see ``pipelines/evalgen/__init__.py``).

Its own anatomy model, designed apart from the training generator's:
- the trunk is a superellipse in-plane whose half-axes change along z (narrow at the neck,
  widest at the lower ribs); skin, fat and muscle are bands measured inward from its surface;
  ribs are oblique bands of the chest wall that repeat along z;
- every tube (trachea and bronchi, oesophagus, aorta, pulmonary arteries, superior vena cava) is a
  polyline with a radius, drawn by its distance in mm; the heart is a tilted ellipsoid with
  myocardium, epicardial fat and pericardium; the diaphragm is two domes, with the liver, the
  spleen and the stomach (an air-fluid level) below them;
- the lungs are what is left of the chest cavity: parenchyma of 1/f texture that grows denser
  towards the back (gravity), with branching vessels;
- mimics and normal variation: emphysema and bullae (air with no lung texture, the classic
  pneumothorax mimic), dependent atelectasis, pleural effusion (fluid that must not be called
  pericardial), coronary and aortic wall calcification, epicardial fat of any thickness, air in
  the oesophagus and bowel, breasts, arms at the sides, clothing, the table;
- contrast phases (none, pulmonary arterial, aortic, venous), with a dense superior vena cava and
  its streaks in the early phases;
- scanner: the MTF, the slice profile and ramp-spectrum noise of ``pipelines/evalgen/scanner``.

Findings, each drawn down to the smallest a reader would be asked to find: pneumothorax
(non-dependent pleural air), pericardial effusion, pulmonary embolism (a filling defect in an
opacified artery) and aortic dissection (an intimal flap with its false lumen).
"""
from __future__ import annotations

import numpy as np

from pipelines.evalgen.scanner import mtf, pink, ramp_noise
from pipelines.evalgen.shapes import segment_distance

FINDINGS = ("pneumothorax", "pericardial_effusion", "pe", "aortic_dissection")


class _Tube:
    """A vessel or airway: a polyline of [z, y, x] points (mm) and a radius per segment."""

    def __init__(self, points, radii):
        self.points = [np.asarray(p, np.float32) for p in points]
        self.radii = list(radii)
        self.lo = min(p[0] for p in self.points) - max(self.radii) - 2
        self.hi = max(p[0] for p in self.points) + max(self.radii) + 2

    def near(self, z: float, y1: np.ndarray, x1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per pixel of the slice at ``z`` (``y1``, ``x1``: its row and column positions): the
        distance to the tube's axis, its radius there, and the index of the nearest segment
        (inf and -1 where no segment comes within reach; only the box around each is measured)."""
        shape = (len(y1), len(x1))
        best = np.full(shape, np.inf, np.float32)
        radius = np.zeros(shape, np.float32)
        which = np.full(shape, -1, np.int16)
        if not self.lo <= z <= self.hi:
            return best, radius, which
        for i, (p0, p1, r) in enumerate(zip(self.points[:-1], self.points[1:], self.radii)):
            reach = r + 2
            if min(p0[0], p1[0]) - reach > z or max(p0[0], p1[0]) + reach < z:
                continue
            rows = np.nonzero((y1 >= min(p0[1], p1[1]) - reach) & (y1 <= max(p0[1], p1[1]) + reach))[0]
            cols = np.nonzero((x1 >= min(p0[2], p1[2]) - reach) & (x1 <= max(p0[2], p1[2]) + reach))[0]
            if not len(rows) or not len(cols):
                continue
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            dist, _ = segment_distance(z, y1[box[0], None], x1[None, box[1]], p0, p1)
            closer = dist < best[box]
            best[box][closer], radius[box][closer], which[box][closer] = dist[closer], r, i
        return best, radius, which


class _Chest:
    """One patient's anatomy, in mm: z up (0 at the top of the right dome), y posterior-positive,
    x towards the patient's left."""

    def __init__(self, rng: np.random.Generator):
        u = rng.uniform
        self.a, self.b, self.power = u(135, 185), u(90, 130), u(2.2, 3.2)
        self.fat, self.muscle, self.rib = u(4, 35), u(6, 18), u(7, 11)
        self.rib_pitch, self.rib_height, self.rib_slope = u(21, 28), u(7, 11), u(0.25, 0.6)
        self.apex = u(175, 215)  # lung apices
        self.dome_right, self.dome_left = u(-5, 15), u(-25, 0)
        self.spine_y = self.b - self.fat - self.muscle - u(28, 38)
        self.vert_r, self.disc_pitch, self.disc_phase = u(15, 21), u(26, 32), u(0, 30)
        self.heart = (u(25, 60), u(-40, -15), u(5, 30))  # centre z, y, x
        self.heart_r = (u(42, 58), u(38, 50), u(48, 64))  # half-axes z, y, x
        self.heart_turn = np.radians(u(20, 45))
        self.epi_fat = u(1.5, 9.0)
        self.mediastinum = u(22, 34)
        self.age = u(0, 1)
        self.breasts = rng.random() < 0.4
        self.arms = rng.random() < 0.5
        self.clothing = rng.random() < 0.5
        carina = u(105, 130)
        asc = (u(55, 70), u(-35, -20), u(-5, 10))
        arch = (u(140, 160), u(-10, 10), u(5, 15))
        desc_x = u(18, 30)
        self.aorta = _Tube([asc, (u(110, 125), u(-35, -25), u(-5, 8)), arch,
                            (u(125, 135), self.spine_y - u(20, 30), desc_x), (-70, self.spine_y - u(18, 26), desc_x * 0.7)],
                           [u(13, 19), u(13, 18), u(11, 15), u(10, 14)])
        self.trachea = _Tube([(self.apex + 60, u(-30, -15), 0), (carina, u(-15, -5), u(-3, 3))], [u(8, 11)])
        self.bronchi = [_Tube([self.trachea.points[-1], (carina - u(20, 30), u(0, 10), s * u(40, 55))], [u(5, 7)])
                        for s in (-1, 1)]
        self.oesophagus = _Tube([(self.apex + 60, self.spine_y - 22, u(0, 8)), (-30, self.spine_y - 30, u(15, 30))],
                                [u(6, 8)])
        self.svc = _Tube([(self.apex + 20, u(-25, -10), u(-35, -25)), (u(70, 85), u(-20, -10), u(-30, -18))], [u(8, 11)])
        hz, hy, hx = self.heart
        fork = (u(95, 110), u(-15, 0), u(0, 10))
        trunk = [(hz + u(15, 25), hy - u(15, 25), hx + u(5, 15)), fork]
        self.arteries = [_Tube(trunk, [u(12, 15)])]
        for s in (-1, 1):  # the pulmonary arteries, their lobar and segmental branches
            hilum = (fork[0] + u(-10, 5), u(0, 15), s * u(50, 62))
            self.arteries.append(_Tube([fork, hilum], [u(9, 12)]))
            for _ in range(int(rng.integers(3, 6))):
                end = (hilum[0] + u(-90, 60), hilum[1] + u(-40, 50), s * u(70, 115))
                mid = tuple(0.5 * (np.asarray(hilum) + np.asarray(end)))
                self.arteries.append(_Tube([hilum, mid, end], [u(4.5, 7), u(2.5, 4.5)]))

    def outline(self, z: float, ys, xs):
        """rho (1 on the skin), and mm inward from the skin, for this slice."""
        taper = np.clip((z - self.apex - 20) / 60, 0, 1)  # narrowing into the neck
        widen = 1.0 + 0.06 * np.cos(np.pi * np.clip(z / 250, -1, 1))
        a = self.a * widen * (1 - 0.55 * taper)
        b = self.b * widen * (1 - 0.35 * taper)
        rho = (np.abs(xs / a) ** self.power + np.abs(ys / b) ** self.power) ** (1 / self.power)
        return rho, (1 - rho) * np.minimum(a, b)

    def dome(self, ys, xs):
        """Height of the diaphragm above each (y, x): two domes, lowest at the back and sides."""
        right = self.dome_right - ((xs + 55) ** 2 + (ys - 5) ** 2) / 90.0
        left = self.dome_left - ((xs - 55) ** 2 + (ys - 5) ** 2) / 90.0
        return np.maximum(np.where(xs < 0, right, left), -90)


def chest_ct(rng: np.random.Generator, positive: bool, *, finding: str, contrast: str, matrix: int = 384,
             thicknesses=(1.0, 1.25, 2.0, 2.5, 3.0, 5.0)) -> dict:
    """One chest CT, as a dict: HU ``[z, y, x]``, spacing, the finding's mask and what it holds.
    ``contrast``: "none", "pulmonary", "aortic" or "venous" (the phase the bolus is in)."""
    u = rng.uniform
    c = _Chest(rng)
    fov = u(330, 440)
    pixel = fov / matrix
    thickness = float(rng.choice(thicknesses))
    top, bottom = c.apex + u(5, 40), u(-90, -40)
    nz = int(round((top - bottom) / thickness))
    sub = 2 if thickness >= 2 else 1  # sub-slices averaged into one (the slice profile); thin slices are one
    z_mm = bottom + (np.arange(nz * sub) + 0.5) * thickness / sub  # index 0 the lowest, as the head's
    yx = (np.arange(matrix) - (matrix - 1) / 2) * pixel
    y1, x1 = (yx - u(-20, 20)).astype(np.float32), (yx - u(-15, 15)).astype(np.float32)  # the patient off centre
    ys, xs = np.meshgrid(y1, x1, indexing="ij")
    theta = np.arctan2(ys, xs)
    # the bolus: HU of the pulmonary arteries, the aorta, the superior vena cava and the liver
    # in this phase
    phase = {"none": (40, 40, 40, 40), "pulmonary": (u(280, 480), u(120, 220), u(600, 2200), u(70, 90)),
             "aortic": (u(180, 300), u(280, 450), u(300, 1200), u(80, 100)),
             "venous": (u(140, 190), u(140, 190), u(130, 180), u(100, 125))}[contrast]
    pa_hu, ao_hu, svc_hu, liver_hu = (float(v) for v in phase)
    myo_hu = 45.0 if contrast == "none" else u(90, 140)
    half = (matrix + 1) // 2  # texture is drawn at half resolution, then doubled (an odd matrix too)
    # texture planes every 4 mm (parenchyma) and 2 mm (vessels, glandular strands), whatever the slices
    tex = pink(rng, (int((top - bottom) / 4) + 2, half, half), 2.2)
    vessels = pink(rng, (int((top - bottom) / 2) + 2, half, half), 3.2)
    # normal variation switched on per patient
    bullae = [(u(c.apex - 70, c.apex - 10), u(-60, 40), rng.choice([-1, 1]) * u(40, 100), u(5, 22))
              for _ in range(int(rng.integers(0, 4)) if rng.random() < 0.4 else 0)]
    emphysema = u(0, 0.25) * (rng.random() < 0.4)
    effusion = u(5, 40) if rng.random() < 0.3 else 0.0  # pleural, dependent
    effusion_side = rng.choice([-1, 1, 0])
    atelectasis = u(3, 15) if rng.random() < 0.4 else 0.0
    calcified = rng.random() < 0.4
    stomach = (u(-40, -10), u(-40, 0), u(45, 75), u(25, 45))  # z, y, x, radius
    air_level = stomach[1] - stomach[3] * u(0.2, 0.7)
    # the finding
    side = float(rng.choice([-1.0, 1.0]))
    # a pneumothorax: air up to ``layer`` mm deep between the chest wall and the lung, deepest
    # where the patient's front turns to ``side`` (non-dependent, the patient supine), thinning to
    # none 35-110 degrees away
    if finding == "pneumothorax":
        spread = u(0.2, 1.6)
        ptx = (u(3, 40), u(c.apex - 150, c.apex - 30), np.cos(np.radians(u(35, 110))),
               np.array([-1.0, side * spread]) / np.hypot(1.0, spread))
    else:
        ptx = None
    peri = u(4, 22) if finding == "pericardial_effusion" else 0.0
    if finding == "pe":
        # in the trunk, a main or a lobar artery (its hilar half, inside the lung wherever the
        # domes lie): central to segmental emboli
        tube = c.arteries[int(rng.integers(0, len(c.arteries)))]
        seg = 0
        clot = (tube, seg, sorted(u(0, 0.6, 2)), rng.random() < 0.45, u(-1, 1, 3), u(20, 65))
    if finding == "aortic_dissection":
        segs = [0, 1] if rng.random() < 0.5 else [3]  # type A (ascending, arch) or type B (descending)
        flap = (segs, u(-1, 1, 3), u(0.35, 0.9), rng.random() < 0.2)
    hu = np.empty((nz * sub, matrix, matrix), np.float32)
    mask = np.zeros((nz * sub, matrix, matrix), bool)
    dome = c.dome(ys, xs)
    for k, z in enumerate(z_mm):
        z = float(z)
        rho, depth = c.outline(z, ys, xs)
        s = np.full((matrix, matrix), -1000.0, np.float32)
        body = depth > 0
        s[body] = 45.0
        s[body & (depth > 2) & (depth < c.fat + 2)] = -95.0
        wall = body & (depth >= c.fat + 2) & (depth < c.fat + 2 + c.muscle)
        s[wall] = 50.0
        ring = body & (depth >= c.fat + 2 + c.muscle) & (depth < c.fat + 2 + c.muscle + c.rib)
        rib_phase = (z + c.rib_slope * ys) % c.rib_pitch
        s[ring] = np.where(rib_phase[ring] < c.rib_height, 650.0 - 250.0 * (rib_phase[ring] / c.rib_height - 0.5) ** 2 * 4,
                           45.0)
        cavity = body & (depth >= c.fat + 2 + c.muscle + c.rib)
        v = np.kron(vessels[min(int((z - bottom) / 2), len(vessels) - 1)], np.ones((2, 2), np.float32))[:matrix, :matrix]
        if c.breasts and 40 < z < 150:
            for sd in (-1, 1):
                breast = (((xs - sd * 70) / 60) ** 2 + ((ys + c.b) / 45) ** 2 < 1) & ~body
                s[breast] = np.where(v[breast] > 0.3, 20.0, -90.0)  # glandular strands in fat
        # the spine: vertebral body (discs between), canal, posterior elements
        vert = (ys - c.spine_y) ** 2 + xs ** 2 < c.vert_r ** 2
        disc = abs(((z + c.disc_phase) % c.disc_pitch) - c.disc_pitch / 2) > c.disc_pitch / 2 - 4
        s[vert] = 90.0 if disc else u(220, 320)
        s[vert & ((ys - c.spine_y) ** 2 + xs ** 2 > (c.vert_r - 2) ** 2)] = 90.0 if disc else 700.0
        canal_y = c.spine_y + c.vert_r + 9
        canal = (ys - canal_y) ** 2 + xs ** 2 < 8.5 ** 2
        arch_bone = ((ys - canal_y) ** 2 + xs ** 2 < 13.5 ** 2) & ~canal
        s[arch_bone & body] = 600.0
        s[canal] = 25.0
        spine = (ys - c.spine_y) ** 2 + xs ** 2 < (c.vert_r + 8) ** 2
        spine |= arch_bone | canal | ((np.abs(xs) < 16) & (ys > c.spine_y))
        below = z < dome
        abdomen = cavity & below
        chest = cavity & ~below & (z < c.apex - 0.004 * xs ** 2) & ~spine
        # below the diaphragm: liver (right), spleen (back left), stomach (front left)
        s[abdomen] = 40.0
        s[abdomen & (xs < 30 + 0.2 * ys)] = liver_hu
        spleen = ((xs - 75) / 30) ** 2 + ((ys - 50) / 40) ** 2 + ((z - dome - (-25)) / 60) ** 2 < 1
        s[abdomen & spleen] = liver_hu - 10
        sz, sy, sx, sr = stomach
        gut = ((xs - sx) ** 2 + (ys - sy) ** 2 + (z - sz) ** 2 < sr ** 2) & abdomen
        s[gut] = np.where(ys[gut] < air_level, -1000.0, 15.0)
        if z < dome.min() - 30 and rng.random() < 0.3:  # bowel gas
            bz, by, bx = u(-60, 60), u(-80, 20), u(-80, 80)
            s[abdomen & ((xs - bx) ** 2 + (ys - by) ** 2 < u(4, 14) ** 2)] = -1000.0
        # the mediastinum and the lungs
        # the mediastinum: a lens from the sternum to the spine, widest at the heart
        mid_half = (c.mediastinum + 30 * np.exp(-((z - c.heart[0]) / 50) ** 2)) * np.sqrt(
            np.clip(1 - ((ys - c.spine_y * 0.2) / (c.b * 0.9)) ** 2, 0, 1))
        mid = np.abs(xs - 8) < mid_half
        lung = chest & ~mid
        s[chest & mid] = -90.0  # mediastinal fat
        kz = min(int((z - bottom) / 4), len(tex) - 1)
        t = np.kron(tex[kz], np.ones((2, 2), np.float32))[:matrix, :matrix]
        gravity = np.clip((ys + c.b) / (2 * c.b), 0, 1)
        parenchyma = -875.0 + 14.0 * t + 70.0 * gravity ** 2
        parenchyma = np.where(np.abs(v) < 0.05 + 0.02 * c.age, (pa_hu + 40) / 2, parenchyma)  # small vessels
        if emphysema:
            parenchyma = np.where(t > 2.2 - 3 * emphysema, -975.0, parenchyma)
        s[lung] = parenchyma[lung]
        for bz, by, bx, br in bullae:
            d = np.sqrt((xs - bx) ** 2 + (ys - by) ** 2 + (z - bz) ** 2)
            s[lung & (d < br)] = -1000.0
            s[lung & (d >= br) & (d < br + 0.8)] = -400.0
        if atelectasis:
            back = lung & (depth < c.fat + 2 + c.muscle + c.rib + atelectasis * gravity) & (ys > 0) & (z < c.heart[0] + 30)
            s[back] = -250.0 + 200.0 * gravity[back]
        if effusion and z < 60:
            sides = (xs * effusion_side >= 0) if effusion_side else np.ones_like(lung)
            fluid = lung & sides & (ys > c.b - c.fat - c.muscle - c.rib - effusion * (1 - z / 60))
            s[fluid] = u(5, 20)
        if ptx is not None and positive:
            layer, z_lo, arc_cos, towards = ptx
            inner = depth - (c.fat + 2 + c.muscle + c.rib)
            cos = (ys * towards[0] + xs * towards[1]) / np.maximum(np.hypot(ys, xs), 1e-3)
            deep = layer * np.clip((cos - arc_cos) / (1 - arc_cos), 0, 1)
            one_side = lung & (xs * side > 0) & (z > z_lo)
            front = one_side & (inner < deep)
            s[front] = -1000.0
            s[one_side & ~front & (inner < deep + 1.2) & (deep > 0)] = -500.0  # the visceral pleural line
            mask[k] |= front
        # airways and oesophagus
        for tube in (c.trachea, *c.bronchi):
            d, r, _ = tube.near(z, y1, x1)
            s[(d < r + 1.8) & cavity] = 40.0
            s[(d < r) & cavity] = -1000.0
        d, r, _ = c.oesophagus.near(z, y1, x1)
        s[(d < r) & cavity] = 40.0
        if c.age > 0.5:
            s[(d < 2.5) & cavity] = -1000.0
        # the heart: myocardium and chambers, epicardial fat, pericardium (and an effusion)
        hz, hy, hx = c.heart
        rz, ry, rx = c.heart_r
        hxr = (xs - hx) * np.cos(c.heart_turn) + (ys - hy) * np.sin(c.heart_turn)
        hyr = -(xs - hx) * np.sin(c.heart_turn) + (ys - hy) * np.cos(c.heart_turn)
        e = np.sqrt((hxr / rx) ** 2 + (hyr / ry) ** 2 + ((z - hz) / rz) ** 2)
        scale = min(rx, ry, rz)
        out_mm = (e - 1) * scale  # mm outside the myocardium's surface (about)
        heart = (out_mm < 0) & ~below
        s[heart & cavity] = myo_hu
        chambers = out_mm < -10
        chambers &= ~below
        s[chambers & cavity & (hxr < 0)] = pa_hu if contrast != "none" else 40.0  # right side
        s[chambers & cavity & (hxr >= 0)] = ao_hu if contrast != "none" else 40.0
        wet = peri * np.clip(1.0 + 0.5 * hyr / ry, 0.4, 1.5) if peri and positive else 0.0
        fat = (out_mm >= 0) & (out_mm < c.epi_fat) & cavity & ~below
        s[fat] = -95.0
        if positive and peri:
            fluid = (out_mm >= c.epi_fat) & (out_mm < c.epi_fat + wet) & cavity & ~below
            s[fluid] = u(0, 20)
            mask[k] |= fluid
        sac = (out_mm >= c.epi_fat + wet) & (out_mm < c.epi_fat + wet + 1.5) & cavity & ~below
        s[sac] = 35.0
        if calcified:
            s[heart & (out_mm > -2.5) & (np.abs(v) < 0.03) & cavity] = 650.0  # coronary calcification
        # the great vessels
        d, r, which = c.aorta.near(z, y1, x1)
        lumen = (d < r) & cavity
        s[(d < r + 1.5) & cavity] = 45.0
        s[lumen] = ao_hu
        if calcified:
            s[(d >= r) & (d < r + 1.5) & cavity & (np.cos(theta * 3) > 0.8)] = 700.0
        if finding == "aortic_dissection" and positive:
            segs, normal, true_share, thrombosed = flap
            normal = np.asarray(normal) / (np.linalg.norm(normal) or 1.0)
            twist = 0.02 * z
            nx_, ny_ = normal[2] * np.cos(twist) - normal[1] * np.sin(twist), normal[2] * np.sin(twist) + normal[1] * np.cos(twist)
            for seg in segs:
                here = lumen & (which == seg)
                if not here.any():
                    continue
                p0, p1 = c.aorta.points[seg], c.aorta.points[seg + 1]
                _, tt = segment_distance(z, ys, xs, p0, p1)
                cy, cx = p0[1] + tt * (p1[1] - p0[1]), p0[2] + tt * (p1[2] - p0[2])
                side_mm = (ys - cy) * ny_ + (xs - cx) * nx_
                cut = (true_share - 0.5) * 2 * r
                flap_px = here & (np.abs(side_mm - cut) < 0.9)
                false = here & (side_mm > cut + 0.9)
                s[false] = 40.0 if thrombosed else ao_hu * u(0.5, 0.85)
                s[flap_px] = 70.0
                mask[k] |= flap_px | false
        d, r, _ = c.svc.near(z, y1, x1)
        s[(d < r) & cavity] = svc_hu  # early phases: contrast from the arm, barely diluted
        if contrast in ("pulmonary", "aortic") and svc_hu > 800 and (d < r).any():
            cy, cx = ys[d < r].mean(), xs[d < r].mean()
            ang = np.arctan2(ys - cy, xs - cx)
            dist = np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2)
            streak = (svc_hu / 8) * np.cos(7 * ang + u(0, 6.3)) * np.exp(-dist / 35) * (dist > r)
            s[body] += streak[body]
        for i, tube in enumerate(c.arteries):
            d, r, which = tube.near(z, y1, x1)
            inside = (d < r) & (chest | (cavity & mid))
            s[inside] = pa_hu
            if finding == "pe" and positive and tube is clot[0]:
                _, seg, (t0, t1), occlusive, direction, clot_hu = clot
                p0, p1 = tube.points[seg], tube.points[seg + 1]
                _, tt = segment_distance(z, ys, xs, p0, p1)
                along = inside & (which == seg) & (tt >= t0) & (tt <= max(t1, t0 + 0.15))
                if not occlusive:
                    cy, cx = p0[1] + tt * (p1[1] - p0[1]), p0[2] + tt * (p1[2] - p0[2])
                    along &= ((ys - cy) * direction[1] + (xs - cx) * direction[2]) > -0.2 * r
                s[along] = clot_hu
                mask[k] |= along
        # outside: arms, clothing, the table
        if c.arms:
            for sd in (-1, 1):
                arm = ((xs - sd * (c.a + 45)) / 42) ** 2 + ((ys - 10) / 48) ** 2 < 1
                s[arm & ~body] = 50.0
                s[arm & ~body & (((xs - sd * (c.a + 45)) / 11) ** 2 + ((ys - 10) / 11) ** 2 < 1)] = 700.0
        if c.clothing:
            s[(depth < -3) & (depth > -6) & (np.cos(theta * 9) > 0.2)] = -150.0
        table = (ys > c.b + 6) & (ys < c.b + 22) & (np.abs(xs) < 230)
        s[table] = np.where(ys[table] < c.b + 14, -900.0, 200.0)
        hu[k] = s
    # scanner: slice profile, MTF, noise that rises towards the centre of the trunk
    f50 = u(0.3, 0.7)
    out = np.empty((nz, matrix, matrix), np.float32)
    gain = 1.0 + 0.8 * np.exp(-(ys ** 2 + xs ** 2) / 110.0 ** 2)
    sd, peak = u(6, 20) * np.sqrt(1.25 / thickness), u(0.25, 0.55)
    for k in range(nz):
        out[k] = mtf(hu[k * sub:(k + 1) * sub].mean(axis=0), pixel, f50) + sd * gain * ramp_noise(
            rng, (matrix, matrix), pixel, peak)
    lesion = mask.reshape(nz, sub, matrix, matrix).mean(axis=1) >= 0.5
    if rng.random() < 0.7:
        out[:, np.sqrt(yx[:, None] ** 2 + yx[None, :] ** 2) > fov / 2 * 0.98] = float(rng.choice([-1024.0, -2000.0, -3024.0]))
    voxel_ml = thickness * pixel * pixel / 1000
    label = int(positive and lesion.any())
    return {"hu": out, "spacing_zyx": (thickness, pixel, pixel), "mask": lesion, "label": label,
            "kind": finding if label else "none", "lesion_ml": float(lesion.sum() * voxel_ml)}


CTA_THICKNESSES = (0.625, 1.0, 1.25, 2.0, 2.5)


def pneumothorax_ct(rng: np.random.Generator, positive: bool, *, matrix: int = 384) -> dict:
    """A chest CT read for pneumothorax, with or without venous contrast (the study says which)."""
    phase = "none" if rng.random() < 0.5 else "venous"
    return {**chest_ct(rng, positive, finding="pneumothorax", contrast=phase, matrix=matrix),
            "contrast": phase != "none"}


def pericardial_ct(rng: np.random.Generator, positive: bool, *, matrix: int = 384) -> dict:
    return chest_ct(rng, positive, finding="pericardial_effusion", contrast="none", matrix=matrix)


def pe_cta(rng: np.random.Generator, positive: bool, *, matrix: int = 384) -> dict:
    return chest_ct(rng, positive, finding="pe", contrast="pulmonary", matrix=matrix, thicknesses=CTA_THICKNESSES)


def dissection_cta(rng: np.random.Generator, positive: bool, *, matrix: int = 384) -> dict:
    return chest_ct(rng, positive, finding="aortic_dissection", contrast="aortic", matrix=matrix,
                    thicknesses=CTA_THICKNESSES)
