"""Head CT phantoms: non-contrast (with or without haemorrhage) and CT angiography (with or
without a proximal large-vessel occlusion), as HU volumes with lesion masks.

Anatomy is drawn in a head-centred frame, then the frame is tilted and shifted, so size,
position and tilt vary between studies. Values follow the issue's ranges: bone 700–1500 HU,
grey/white matter ~35/25 HU, CSF ~5 HU, blood 50–90 HU, contrast-filled arteries 200–400 HU.
"""
from __future__ import annotations

import numpy as np

from pipelines.synth.common import Phantom, grid, smooth_noise, tube

THICKNESSES = (0.625, 1.25, 2.5, 5.0)
HAEMORRHAGE_KINDS = ("intraparenchymal", "subdural", "subarachnoid")


def _head(rng, coords):
    z, y, x = coords
    a, b, c = rng.uniform(66, 76), rng.uniform(84, 96), rng.uniform(70, 82)  # half-axes: lateral, AP, SI
    r = np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2)
    hu = np.full(r.shape, -1000.0, np.float32)
    hu[r < 1.0] = 30.0  # scalp
    skull = (r < 0.955) & (r >= 0.87)
    depth = (0.955 - r) / 0.085  # 0 outer table .. 1 inner table: bright tables, darker diploe
    hu[skull] = (1400 - 600 * np.sin(np.pi * np.clip(depth, 0, 1)))[skull] * rng.uniform(0.85, 1.05)
    brain = r < 0.87
    white = r < 0.62 + 0.05 * smooth_noise(rng, r.shape, 2.0)
    hu[brain] = 35.0
    hu[brain & white] = 25.0
    hu[(r < 0.87) & (r >= 0.85)] = 6.0  # subarachnoid CSF rim
    for side in (-1, 1):  # lateral ventricles
        v = ((x - side * 9) / 6) ** 2 + ((y + 5) / 20) ** 2 + ((z - 8) / 11) ** 2
        hu[v < 1.0] = 5.0
    return hu, r, (a, b, c)


def _csf_spaces(rng, coords, r, axes) -> dict[str, np.ndarray]:
    """The subarachnoid spaces where subarachnoid blood collects: cortical sulci (radial clefts
    ~1.5–2 mm wide, up to ~12 mm deep), the Sylvian fissures and the basal cisterns."""
    z, y, x = coords
    a, b, c = axes
    theta = np.arctan2(y / b, x / a)
    phi = np.arctan2(z / c, np.sqrt((x / a) ** 2 + (y / b) ** 2))
    folds = rng.integers(16, 24) * theta + rng.integers(3, 7) * phi + 3.0 * smooth_noise(rng, r.shape, 2.0)
    sulci = (np.abs(np.sin(folds)) > 0.975) & (r < 0.85) & (r > 0.72)
    sylvian = np.zeros(r.shape, bool)
    z0, y0 = rng.uniform(-12, 0), rng.uniform(-10, 5)
    for side in (-1, 1):  # a cleft running in from the lateral surface, forwards and medially
        lateral = side * x / a
        line = y - y0 + 22 * (0.85 - lateral)
        sylvian |= (np.abs(line) < rng.uniform(1.0, 1.6)) & (lateral > 0.3) & (np.abs(z - z0) < 14) & (r < 0.85)
    zc = rng.uniform(-32, -22)  # suprasellar cistern and the ring around the midbrain
    suprasellar = ((y + 8) / 11) ** 2 + (x / 13) ** 2 + ((z - zc) / 4) ** 2 < 1.0
    ring = np.sqrt((y - 12) ** 2 + x ** 2)
    ambient = (ring > 9) & (ring < 12) & (np.abs(z - zc - 4) < 6)
    return {"sulci": sulci, "sylvian": sylvian, "cisterns": suprasellar | ambient}


def _haemorrhage(rng, coords, r, kind: str, csf: dict[str, np.ndarray]) -> np.ndarray:
    z, y, x = coords
    if kind == "intraparenchymal":
        while True:
            centre = rng.uniform(-45, 45, size=3) * np.array([0.6, 0.9, 0.8])
            if 0.25 < np.sqrt((centre[2] / 70) ** 2 + (centre[1] / 90) ** 2 + (centre[0] / 76) ** 2) < 0.62:
                break
        volume_ml = float(np.exp(rng.uniform(np.log(0.3), np.log(40.0))))
        semi = (volume_ml * 1000 * 3 / (4 * np.pi)) ** (1 / 3) * rng.uniform(0.75, 1.3, size=3)
        d = ((z - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 + ((x - centre[2]) / semi[2]) ** 2
        return (d < 1.0) & (r < 0.85)
    angle = np.arctan2(y, x)
    side = rng.uniform(-np.pi, np.pi)
    width = rng.uniform(0.4, 1.4)
    sector = np.abs(np.angle(np.exp(1j * (angle - side)))) < width / 2
    zc, zh = rng.uniform(-25, 25), rng.uniform(10, 35)
    band = np.abs(z - zc) < zh
    if kind == "subdural":  # crescent against the inner table
        thick = rng.uniform(0.025, 0.09)  # ~2-7 mm
        return sector & band & (r < 0.87) & (r >= 0.87 - thick)
    # subarachnoid: blood fills part of the CSF spaces, patchily; either around the base of the
    # brain (cisterns and Sylvian fissures, the aneurysmal pattern) or over the convexity (the rim
    # and the sulci of one region)
    patches = smooth_noise(rng, r.shape, 6.0) > rng.uniform(-0.1, 0.2)
    if rng.random() < 0.5:
        spaces = csf["cisterns"] | (csf["sylvian"] & (rng.uniform(-1, 1) * x > -20))
        return spaces & patches
    rim = (r < 0.87) & (r >= 0.80)
    return sector & band & (rim | csf["sulci"]) & patches


def _segments() -> list[tuple[str, tuple, tuple, float]]:
    """The arterial tree of :func:`head_cta`: (name, start, end, radius) in mm, head frame (z, y, x)."""
    segments = []
    for side, s in (("L", 1), ("R", -1)):
        segments += [(f"ICA_{side}", (-60, 5, s * 18), (-5, 0, s * 14), 2.4),
                     (f"M1_{side}", (-5, 0, s * 14), (0, 2, s * 42), 1.9),
                     (f"M2a_{side}", (0, 2, s * 42), (18, -10, s * 55), 1.3),
                     (f"M2b_{side}", (0, 2, s * 42), (10, 20, s * 55), 1.3),
                     (f"A1_{side}", (-5, 0, s * 14), (0, -12, s * 3), 1.4),
                     (f"A2_{side}", (0, -12, s * 3), (35, -30, s * 3), 1.2),
                     (f"P_{side}", (-8, 18, 0), (0, 35, s * 30), 1.3)]
    segments += [("BA", (-55, 22, 0), (-8, 18, 0), 1.8), ("ACom", (0, -12, 3), (0, -12, -3), 0.9)]
    return segments


def _unfilled(occlude: str | None) -> dict[str, float]:
    """Segment -> the fraction along it from which it does not fill, for an occlusion at
    ``occlude`` ("ICA-T_L", "M1_R", ...)."""
    if occlude is None:
        return {}
    side = occlude[-1]
    if occlude.startswith("ICA"):  # terminus: M1, its branches and A1 of that side go dark
        return {f"ICA_{side}": 0.75, f"M1_{side}": 0.0, f"M2a_{side}": 0.0, f"M2b_{side}": 0.0, f"A1_{side}": 0.0}
    return {f"M1_{side}": 0.15, f"M2a_{side}": 0.0, f"M2b_{side}": 0.0}  # proximal M1


def _arteries(coords, occlude: str | None, rng, segments=None, unfilled=None) -> tuple[np.ndarray, np.ndarray]:
    """Contrast-filled arteries as tubes: ICAs, circle of Willis, MCAs, ACAs, basilar
    (``segments``, :func:`_segments` by default); the segments in ``unfilled`` (default: those of
    ``occlude``) do not fill from the given fraction along them.

    Returns (vessel mask, occluded-segment mask)."""
    z = coords[0]
    segments = _segments() if segments is None else segments
    unfilled = _unfilled(occlude) if unfilled is None else unfilled
    vessels = np.zeros(z.shape, bool)
    occluded = np.zeros(z.shape, bool)
    for name, p0, p1, radius in segments:
        inside, t = tube(coords, p0, p1, radius * rng.uniform(0.9, 1.1))
        if name in unfilled:
            part = inside & (t > unfilled[name]) if unfilled[name] > 0 else inside
            occluded |= part
            inside = inside & ~part
        vessels |= inside
    return vessels, occluded


def _plain_head(rng, coords):
    """The non-contrast head that every non-contrast head CT phantom starts from: skull, brain
    and its CSF spaces. One head, so that a model reading non-contrast head CTs (``ich`` reads the
    fracture phantoms too) sees the same anatomy whatever the finding."""
    hu, r, axes = _head(rng, coords)
    csf = _csf_spaces(rng, coords, r, axes)
    for space in csf.values():
        hu[space] = 6.0
    return hu, r, axes, csf


def _bleed(rng, hu, coords, spacing, r, csf, positive: bool, kind: str | None) -> tuple[np.ndarray, str]:
    """For a positive study, one haemorrhage of ``kind`` (drawn when not given) of at least
    0.1 mL, written into ``hu`` at 50–90 HU; returns its mask and kind ("none" when negative)."""
    mask = np.zeros(hu.shape, bool)
    kind = kind or (str(rng.choice(HAEMORRHAGE_KINDS)) if positive else "none")
    if positive:
        for _ in range(10):
            mask = _haemorrhage(rng, coords, r, kind, csf)
            if mask.sum() * np.prod(spacing) / 1000 >= 0.1:
                break
        hu[mask] = rng.uniform(50, 90)
    return mask, kind


def head_ct(rng: np.random.Generator, positive: bool, *, matrix: int = 128, thickness: float | None = None,
            kind: str | None = None) -> Phantom:
    """Non-contrast head CT; positive studies carry one haemorrhage (mask = the blood)."""
    thickness = thickness or float(rng.choice(THICKNESSES))
    coords, spacing = grid(rng, thickness, matrix)
    hu, r, axes, csf = _plain_head(rng, coords)
    mask, kind = _bleed(rng, hu, coords, spacing, r, csf, positive, kind)
    hu += rng.normal(0, rng.uniform(3, 10), hu.shape).astype(np.float32)
    lesion_ml = float(mask.sum() * np.prod(spacing) / 1000)
    return Phantom(hu=hu, spacing_zyx=spacing, mask=mask, label=int(positive), finding="ich", kind=kind,
                   contrast=False, description=f"HEAD W/O CONTRAST {thickness:g}mm", lesion_ml=lesion_ml)


def head_cta(rng: np.random.Generator, positive: bool, *, matrix: int = 128, thickness: float | None = None) -> Phantom:
    """Head CT angiography; positive studies have a proximal occlusion (mask = the unfilled segment)."""
    thickness = thickness or float(rng.choice(THICKNESSES[:3]))
    coords, spacing = grid(rng, thickness, matrix)
    hu, _, _ = _head(rng, coords)
    site = (str(rng.choice(["ICA-T", "M1"])) + "_" + str(rng.choice(["L", "R"]))) if positive else None
    vessels, occluded = _arteries(coords, site, rng)
    hu[vessels] = rng.uniform(200, 400)
    hu[occluded] = rng.uniform(25, 45)  # thrombus: no contrast
    hu += rng.normal(0, rng.uniform(4, 10), hu.shape).astype(np.float32)
    lesion_ml = float(occluded.sum() * np.prod(spacing) / 1000)
    return Phantom(hu=hu, spacing_zyx=spacing, mask=occluded, label=int(positive), finding="lvo",
                   kind=site or "none", contrast=True, description=f"CTA HEAD {thickness:g}mm", lesion_ml=lesion_ml)


def head_ct_fracture(rng: np.random.Generator, positive: bool, *, matrix: int = 128,
                     thickness: float | None = None) -> Phantom:
    """Non-contrast head CT read in a bone window, on the same head as ``head_ct``; positive studies
    have a linear skull fracture: a gap of soft tissue through the full thickness of the vault,
    20–90 mm long and 0.5–3 mm wide, drawn at least a voxel wide (mask = the gap)."""
    thickness = thickness or float(rng.choice(THICKNESSES))
    coords, spacing = grid(rng, thickness, matrix)
    hu, r, axes, _ = _plain_head(rng, coords)
    mask = _fracture(rng, hu, coords, spacing, axes, (r < 0.955) & (r >= 0.87)) if positive else np.zeros(hu.shape, bool)
    hu += rng.normal(0, rng.uniform(3, 10), hu.shape).astype(np.float32)
    lesion_ml = float(mask.sum() * np.prod(spacing) / 1000)
    return Phantom(hu=hu, spacing_zyx=spacing, mask=mask, label=int(positive), finding="skull_fracture",
                   kind="linear" if positive else "none", contrast=False,
                   description=f"HEAD W/O CONTRAST BONE {thickness:g}mm", lesion_ml=lesion_ml)


def _fracture(rng, hu, coords, spacing, axes, skull: np.ndarray) -> np.ndarray:
    """A linear fracture of the vault (``skull``: its bone), written into ``hu``; returns its mask."""
    z, y, x = coords
    mask = np.zeros(hu.shape, bool)
    for _ in range(10):
        # a point on the vault (the upper two thirds of the head), and a plane through it
        d = rng.normal(size=3) * np.array([0.5, 1.0, 1.0])
        d[0] = abs(d[0]) - 0.2
        d /= np.linalg.norm(d)
        centre = 0.91 * d * np.array([axes[2], axes[1], axes[0]])
        normal = rng.normal(size=3)
        normal /= np.linalg.norm(normal)
        # a gap narrower than a voxel still darkens one voxel (partial volume): draw it a voxel wide
        gap = max(float(rng.uniform(0.5, 3.0)), spacing[1])
        plane = np.abs((z - centre[0]) * normal[0] + (y - centre[1]) * normal[1] + (x - centre[2]) * normal[2]) < gap / 2
        half = rng.uniform(10, 45)  # half the fracture's length
        near = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 < half ** 2
        mask = skull & plane & near
        if mask.sum() * np.prod(spacing) / 1000 >= 0.02:
            break
    hu[mask] = rng.uniform(20, 60)  # the gap fills with blood and soft tissue
    return mask


# --- the head with normal variation and scanner physics (generator v2, issue 23) ---------------
def _varied_head(rng, coords, parts: dict | None = None):
    """A non-contrast head whose normal anatomy varies as patients' does, with the classic
    haemorrhage and fracture mimics: skull shape and thickness; CSF spaces from young to atrophic
    (ventricles, sulci, the subarachnoid rim); the dural venous sinuses (denser than brain);
    air in the frontal sinuses and mastoids; calcified pineal, choroid plexus, falx and basal
    ganglia; a grey/white texture that is not quite symmetric. Returns HU, r, axes, CSF spaces
    and the dense-bone mask (for beam hardening); ``parts`` (when given) gets the venous sinuses'
    mask as "venous", for a contrast phase to fill them."""
    z, y, x = coords
    a, b, c = rng.uniform(62, 80), rng.uniform(80, 100), rng.uniform(70, 84)
    r = np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2)
    r = r * (1 + 0.03 * smooth_noise(rng, r.shape, 1.0))  # not a perfect ellipsoid
    inner = rng.uniform(0.84, 0.9)
    outer = inner + rng.uniform(0.06, 0.11)
    hu = np.full(r.shape, -1000.0, np.float32)
    hu[r < outer + rng.uniform(0.03, 0.07)] = rng.uniform(20, 45)  # scalp
    skull = (r < outer) & (r >= inner)
    depth = np.clip((outer - r) / (outer - inner), 0, 1)
    hu[skull] = (rng.uniform(1300, 1700) - rng.uniform(400, 800) * np.sin(np.pi * depth))[skull]
    brain = r < inner
    age = rng.uniform(0, 1)  # 0 young, 1 atrophic
    white = r < inner * (0.68 + 0.06 * smooth_noise(rng, r.shape, 2.0)) - 0.04 * age
    grey_hu, white_hu = rng.uniform(32, 40), rng.uniform(22, 29)
    hu[brain] = grey_hu
    hu[brain & white] = white_hu
    hu[brain] += (3.0 * smooth_noise(rng, r.shape, 3.0) * (1 + 0.5 * np.sign(x)))[brain]  # texture, one side more
    rim = rng.uniform(0.01, 0.025) + 0.035 * age
    hu[brain & (r >= inner - rim)] = rng.uniform(2, 10)
    scale = 0.7 + 1.3 * age * rng.uniform(0.6, 1.0)
    for side in (-1, 1):  # lateral ventricles, larger with age
        v = ((x - side * 9 * scale ** 0.5) / (6 * scale)) ** 2 + ((y + 5) / (20 * scale ** 0.5)) ** 2 + ((z - 8) / 11) ** 2
        hu[v < 1.0] = rng.uniform(2, 10)
    hu[(np.abs(x) < 1.5 + 2 * age) & (np.abs(y + 2) < 8) & (np.abs(z - 2) < 8)] = 5.0  # third ventricle
    csf = _csf_spaces(rng, coords, r / inner * 0.87, (a, b, c))
    widen = smooth_noise(rng, r.shape, 1.5) > 0.6 - 0.8 * age  # wider sulci with age
    for space in csf.values():
        hu[space | (space & widen)] = rng.uniform(2, 10)
    # dural venous sinuses: superior sagittal along the vault's midline, transverse at the back
    sss = (np.abs(x) < rng.uniform(2, 4)) & (r < inner) & (r >= inner - rng.uniform(0.03, 0.05)) & (z > -10)
    transverse = (r < inner) & (r >= inner - 0.04) & (y > 0.5 * b) & (np.abs(z + rng.uniform(5, 20)) < 4)
    hu[sss | transverse] = rng.uniform(45, 65)  # denser than brain, as flowing blood is
    if parts is not None:
        parts["venous"] = sss | transverse
    # air: frontal sinuses (front, low, in the bone) and mastoids (behind the ears)
    if rng.random() < 0.85:
        fs = ((x / rng.uniform(10, 22)) ** 2 + ((y + b * 0.9) / 8) ** 2 + ((z + rng.uniform(5, 25)) / 12) ** 2) < 1
        hu[fs & (r < outer + 0.05) & (r > inner - 0.08)] = -1000.0
    for side in (-1, 1):
        if rng.random() < 0.9:
            m = (((x - side * a * 0.85) / 10) ** 2 + ((y - b * 0.2) / 12) ** 2 + ((z + c * 0.45) / 10) ** 2) < 1
            cells = smooth_noise(rng, r.shape, 8.0) > -0.2
            hu[m & cells] = -1000.0
            hu[m & ~cells] = 900.0
    # calcifications: the classic haemorrhage mimics
    def dot(centre, radius, value):
        d = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
        hu[d < radius ** 2] = value
    if rng.random() < 0.6:
        dot((rng.uniform(0, 8), rng.uniform(12, 20), rng.uniform(-1, 1)), rng.uniform(1.5, 4), rng.uniform(100, 400))
    if rng.random() < 0.6:
        for side in (-1, 1):
            dot((rng.uniform(4, 12), rng.uniform(10, 18), side * rng.uniform(12, 20)), rng.uniform(1.5, 4),
                rng.uniform(80, 300))
    if rng.random() < 0.4:
        plaque = (np.abs(x) < 1.2) & (np.abs(y - rng.uniform(-40, 30)) < rng.uniform(3, 10)) & (np.abs(z - rng.uniform(10, 40)) < 3)
        hu[plaque & brain] = rng.uniform(150, 500)
    if rng.random() < 0.3:
        for side in (-1, 1):
            dot((rng.uniform(-8, 4), rng.uniform(-8, 4), side * rng.uniform(14, 22)), rng.uniform(1, 3),
                rng.uniform(80, 250))
    dense = hu > 600
    return hu, r / inner * 0.87, (a, b, c), csf, dense


def _v2_grid(rng, thickness: float, matrix: int):
    """A scanner's grid: field of view 190–320 mm, tilt and shift, coverage that may include
    the skull base to the vertex or only part of it."""
    return grid(rng, thickness, matrix, fov_mm=float(rng.uniform(200, 330)), coverage_mm=(95.0, 175.0),
                tilt_deg=(18.0, 10.0), shift_mm=18.0)


def _scanned(rng, hu, coords, spacing, dense, axes) -> np.ndarray:
    from pipelines.synth.physics import acquire, support

    outside = hu <= -999.0
    holder = support(rng, coords, below_mm=axes[1] * 1.02, kind="head")
    hu[outside] = holder[outside]
    return acquire(rng, hu, spacing, dense)


def head_ct_v2(rng: np.random.Generator, positive: bool, *, matrix: int = 128, thickness: float | None = None,
               kind: str | None = None) -> Phantom:
    """Non-contrast head CT with normal variation and scanner physics (see :func:`_varied_head`
    and :mod:`pipelines.synth.physics`); positive studies carry one haemorrhage, 0.1–40 mL, 50–90 HU
    (mask = the blood)."""
    thickness = thickness or float(rng.choice(THICKNESSES))
    coords, spacing = _v2_grid(rng, thickness, matrix)
    hu, r, axes, csf, dense = _varied_head(rng, coords)
    mask, kind = _bleed(rng, hu, coords, spacing, r, csf, positive, kind)
    image = _scanned(rng, hu, coords, spacing, dense, axes)
    lesion_ml = float(mask.sum() * np.prod(spacing) / 1000)
    return Phantom(hu=image, spacing_zyx=spacing, mask=mask, label=int(positive), finding="ich", kind=kind,
                   contrast=False, description=f"HEAD W/O CONTRAST {thickness:g}mm", lesion_ml=lesion_ml)


def _sutures(rng, hu, coords, axes, skull: np.ndarray) -> None:
    """The cranial sutures and vascular grooves, the classic fracture mimics: wavy seams of soft
    tissue through the vault (sagittal, coronal, lambdoid), open in the young and fused in
    places later, and a groove for the middle meningeal artery on the inner table."""
    z, y, x = coords
    a, b, c = axes
    width = rng.uniform(0.4, 1.5)

    def wavy(u, v, mm):  # |u - a wave along v| under half the seam's width
        amplitude, period = rng.uniform(0.5, 2.5), rng.uniform(4, 10)
        return np.abs(u - amplitude * np.sin(2 * np.pi * v / period + rng.uniform(0, 2 * np.pi))) < mm / 2

    coronal_y = -b * rng.uniform(0.05, 0.3)
    seams = wavy(x, y, width) & (y > coronal_y) & (z > -0.1 * c)  # sagittal, from the coronal suture back
    seams |= wavy(y - coronal_y + 0.25 * (z - c * 0.5), x, width) & (z > -0.35 * c)  # coronal
    seams |= wavy(y - b * 0.45 - 0.6 * z, x, width) & (z < 0.5 * c) & (y > 0)  # lambdoid
    fused = smooth_noise(rng, hu.shape, 4.0) > rng.uniform(-0.6, 0.4)
    hu[skull & seams & ~fused] = rng.uniform(20, 250)
    if rng.random() < 0.7:  # a groove on the inner table, in the temporal bone, either side
        side = rng.choice([-1.0, 1.0])
        groove = wavy(z - rng.uniform(-15, 15) + 0.4 * y, y, rng.uniform(1.0, 2.5)) & (side * x > 0.6 * a)
        hu[skull & groove & (hu > 600)] -= rng.uniform(200, 600)


def _bone_density(rng, hu, skull: np.ndarray) -> None:
    """Vaults as dense as patients' are: bone density varies with age and from place to place (a
    thin temporal squama, read with partial volume, is far fainter than a thick frontal bone).
    Scales the vault's HU above soft tissue by a smooth field, 0.35 to 1.2 of what was drawn."""
    field = 0.8 + 0.3 * smooth_noise(rng, hu.shape, 1.5) + 0.1 * smooth_noise(rng, hu.shape, 4.0)
    gain = np.clip(field * rng.uniform(0.7, 1.1), 0.35, 1.2)
    hu[skull] = (40.0 + (hu - 40.0) * gain)[skull]


def head_ct_fracture_v2(rng: np.random.Generator, positive: bool, *, matrix: int = 128,
                        thickness: float | None = None) -> Phantom:
    """Non-contrast head CT in a bone window with normal variation and scanner physics, sutures
    and vascular grooves included; positive studies have a linear fracture of the vault (mask =
    the gap). The fracture is drawn as in :func:`head_ct_fracture`."""
    thickness = thickness or float(rng.choice(THICKNESSES))
    coords, spacing = _v2_grid(rng, thickness, matrix)
    hu, r, axes, _, dense = _varied_head(rng, coords)
    skull = dense & (r >= 0.87)
    _sutures(rng, hu, coords, axes, skull)
    _bone_density(rng, hu, skull)
    mask = _fracture(rng, hu, coords, spacing, axes, skull) if positive else np.zeros(hu.shape, bool)
    image = _scanned(rng, hu, coords, spacing, dense, axes)
    lesion_ml = float(mask.sum() * np.prod(spacing) / 1000)
    return Phantom(hu=image, spacing_zyx=spacing, mask=mask, label=int(positive), finding="skull_fracture",
                   kind="linear" if positive else "none", contrast=False,
                   description=f"HEAD W/O CONTRAST BONE {thickness:g}mm", lesion_ml=lesion_ml)


def _varied_tree(rng, axes) -> list[tuple[str, tuple, tuple, float]]:
    """:func:`_segments` as patients differ: the tree scaled to the head, every branch point moved
    a few mm, calibres that vary, and the common variants of the circle of Willis that leave one
    side thinner or empty without an occlusion (a hypoplastic or absent A1, no anterior or
    posterior communicating flow), which a model must not call an occlusion."""
    scale = np.array([axes[2] / 77.0, axes[1] / 90.0, axes[0] / 71.0])
    moved: dict[tuple, np.ndarray] = {}

    def node(p):
        if p not in moved:
            moved[p] = np.array(p, float) * scale + rng.normal(0, 2.5, 3)
        return tuple(moved[p])

    calibre = rng.uniform(0.85, 1.2)
    thin = {f"A1_{str(rng.choice(['L', 'R']))}": rng.uniform(0.0, 0.5)} if rng.random() < 0.2 else {}
    if rng.random() < 0.2:
        thin["ACom"] = 0.0
    if rng.random() < 0.25:  # a fetal posterior cerebral artery: P filled from the ICA, not the basilar
        thin[f"P_{str(rng.choice(['L', 'R']))}"] = rng.uniform(0.5, 0.8)
    out = []
    for name, p0, p1, radius in _segments():
        r = radius * calibre * rng.uniform(0.85, 1.15) * thin.get(name, 1.0)
        if r > 0.3:
            out.append((name, node(p0), node(p1), r))
    return out


def _varied_occlusion(rng) -> tuple[str, dict[str, float]]:
    """An occlusion that varies in site and extent: the ICA terminus, anywhere along M1 (its
    branches beyond may fill a little through collaterals), or the start of one M2 division,
    the smallest a reader is asked to call a large vessel occlusion."""
    side = str(rng.choice(["L", "R"]))
    site = str(rng.choice(["ICA-T", "M1", "M1", "M2"]))
    if site == "ICA-T":
        return f"ICA-T_{side}", _unfilled(f"ICA-T_{side}")
    if site == "M1":
        start = float(rng.uniform(0.05, 0.7))
        return f"M1_{side}", {f"M1_{side}": start, f"M2a_{side}": 0.0, f"M2b_{side}": 0.0}
    branch = str(rng.choice(["a", "b"]))
    return f"M2{branch}_{side}", {f"M2{branch}_{side}": float(rng.uniform(0.0, 0.4))}


def _deep_veins(rng, coords, axes) -> tuple[np.ndarray, np.ndarray]:
    """What else fills with contrast in a real CTA, away from the skull: the internal cerebral
    veins, the vein of Galen and the straight sinus (the deep venous system, head frame in mm),
    and the choroid plexus in the atria of the lateral ventricles. Returns (veins, plexus)."""
    b = axes[1]
    torcular = (-rng.uniform(5, 20), 0.9 * b, 0.0)
    galen_start = (rng.uniform(4, 8), rng.uniform(13, 18), 0.0)
    galen_end = (galen_start[0] + rng.uniform(3, 6), galen_start[1] + rng.uniform(8, 12), 0.0)
    veins = tube(coords, galen_start, galen_end, rng.uniform(2.0, 3.2))[0]
    veins |= tube(coords, galen_end, torcular, rng.uniform(1.8, 2.8))[0]  # straight sinus
    for side in (-1, 1):  # internal cerebral veins, from the foramen of Monro back to Galen
        veins |= tube(coords, (rng.uniform(8, 12), rng.uniform(-10, -6), side * 2.0),
                      (galen_start[0], galen_start[1], side * 1.0), rng.uniform(1.0, 1.6))[0]
    z, y, x = coords
    plexus = np.zeros(z.shape, bool)
    for side in (-1, 1):
        centre = (rng.uniform(5, 11), rng.uniform(10, 18), side * rng.uniform(13, 19))
        size = rng.uniform(2.5, 4.5, 3)
        plexus |= (((z - centre[0]) / size[0]) ** 2 + ((y - centre[1]) / (1.5 * size[1])) ** 2
                   + ((x - centre[2]) / size[2]) ** 2) < 1
    return veins, plexus


def head_cta_v2(rng: np.random.Generator, positive: bool, *, matrix: int = 128, thickness: float | None = None) -> Phantom:
    """Head CT angiography with normal variation and scanner physics: the varied head of
    :func:`_varied_head`, a tree that varies (:func:`_varied_tree`), contrast timing from early
    arterial to venous (arteries 200–500 HU; the venous sinuses and deep veins from barely to as
    bright as the arteries; an enhancing choroid plexus), calcified plaque in the carotid siphons. Positive studies carry one occlusion
    (:func:`_varied_occlusion`; mask = the segments that do not fill)."""
    thickness = thickness or float(rng.choice(THICKNESSES[:3]))
    coords, spacing = _v2_grid(rng, thickness, matrix)
    parts: dict = {}
    hu, r, axes, _, dense = _varied_head(rng, coords, parts)
    tree = _varied_tree(rng, axes)
    site, unfilled = _varied_occlusion(rng) if positive else ("none", {})
    vessels, occluded = _arteries(coords, None, rng, tree, unfilled)
    arterial = rng.uniform(200, 500)
    venous = rng.uniform(0.2, 1.0)  # how far into the venous phase: sinuses fill as arteries fade
    hu[parts["venous"]] = 50 + (arterial - 50) * venous
    deep, plexus = _deep_veins(rng, coords, axes)
    hu[deep] = 50 + (arterial - 50) * venous
    hu[plexus] = 40 + (arterial - 50) * rng.uniform(0.15, 0.4)  # the choroid plexus enhances
    hu[vessels] = arterial * (1.1 - 0.3 * venous)
    hu[occluded] = rng.uniform(25, 60)  # no contrast beyond the clot
    if site[:2] in ("IC", "M1") and rng.random() < 0.4:  # collaterals: the M2 branches fill faintly
        hu[occluded & (np.abs(coords[2]) > 0.58 * axes[0])] = rng.uniform(60, 110)
    z, y, x = coords
    for name, p0, p1, radius in tree:  # calcified plaque in the carotid siphons
        if name.startswith("ICA") and rng.random() < 0.35:
            p0, p1 = np.array(p0), np.array(p1)
            side = rng.normal(size=3)
            centre = p0 + rng.uniform(0.3, 0.9) * (p1 - p0) + radius * side / np.linalg.norm(side)
            plaque = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 < rng.uniform(0.8, 1.8) ** 2
            hu[plaque] = rng.uniform(500, 1200)
    image = _scanned(rng, hu, coords, spacing, dense | (hu > 600), axes)
    lesion_ml = float(occluded.sum() * np.prod(spacing) / 1000)
    return Phantom(hu=image, spacing_zyx=spacing, mask=occluded, label=int(positive), finding="lvo", kind=site,
                   contrast=True, description=f"CTA HEAD {thickness:g}mm", lesion_ml=lesion_ml)
