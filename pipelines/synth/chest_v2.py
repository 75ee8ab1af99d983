"""Chest CT phantoms with normal variation and scanner physics (generator v2, issue 23).

The chest of :mod:`pipelines.synth.chest`, with the normal anatomy its negatives lacked, which a
model reading chests must not call a finding:
- air that is not a pneumothorax: trachea and main bronchi, air in the oesophagus, stomach gas and
  bowel below the diaphragm, emphysema and subpleural bullae (the classic pneumothorax mimic),
  clothing folds and the air between the body and the table;
- fluid and soft tissue that is not a pericardial effusion: pleural effusion (dependent, beside
  the spine), dependent atelectasis, the liver and spleen domes under the diaphragm, breasts, arms
  at the sides, fat and muscle walls of varying thickness;
- dense things: calcified coronary arteries and aortic wall, and on angiography a dense superior
  vena cava (its streaks come from the scanner model's beam hardening);
- contrast timing from pulmonary arterial through aortic to venous phase, the right heart filling
  with the pulmonary arteries and the left with the aorta;
- what angiography shows that is no flap or clot: vessel walls (a septum where two lumens touch),
  pulsation at the aortic root, the spine's cancellous bone inside its cortex, with discs and
  the arch round the canal, and pulmonary arteries that branch on into the lung rather than stop
  (an artery's cut-off is what an occlusive clot makes).

Scanner physics (kernel, slice profile, correlated noise, HU drift, reconstruction circle and
padding, beam hardening, metal) is :func:`pipelines.synth.physics.acquire`. The findings are
drawn as in :mod:`pipelines.synth.chest`, into this chest.
"""
from __future__ import annotations

import numpy as np

from pipelines.synth.chest import (CONTRAST, DESCRIPTION, FINDINGS, OPACIFIED_LUNG_VESSELS, THICKNESSES, Chest,
                                   draw_finding)
from pipelines.synth.common import Phantom, grid, index_box, smooth_noise, tube
from pipelines.synth.physics import acquire, support

PHASES = ("pulmonary", "aortic", "venous")


def _ellipsoid(coords, centre, axes) -> np.ndarray:
    """Voxels inside the axis-aligned ellipsoid (mm); only its bounding box is measured."""
    centre, axes = np.asarray(centre, np.float32), np.asarray(axes, np.float32)
    box = index_box(coords, centre - axes, centre + axes)
    z, y, x = (c[box] for c in coords)
    out = np.zeros(coords[0].shape, bool)
    out[box] = ((z - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + ((x - centre[2]) / axes[2]) ** 2 < 1
    return out


class VariedChest(Chest):
    """:class:`Chest` with the normal anatomy above drawn as masks: the diaphragm's domes cut the
    lungs from below, and the airways, oesophagus, abdominal organs, breasts and arms join them."""

    def __init__(self, rng: np.random.Generator, coords):
        super().__init__(rng, coords)
        z, y, x = coords
        A, B = self.A, self.B
        # the diaphragm: two domes, the right (patient right is -x) higher; below them the abdomen
        top = rng.uniform(-110, -50)
        dome = np.where(x < 0, top + rng.uniform(5, 20), top) - 45 * ((np.abs(x) - 0.45 * A) / (0.5 * A)) ** 2 \
            - 30 * (y / B) ** 2
        below = self.cavity & (z < dome)
        for lung in self.lungs.values():
            lung &= ~below
        self.lung = self.lungs["R"] | self.lungs["L"]
        self.markings &= ~below | self.pa
        organs = below & ~self.heart & ~self.aorta & ~self.spine & ~self.canal
        self.liver = organs & (x < A * rng.uniform(0.0, 0.3) + 15 * smooth_noise(rng, z.shape, 1.0))
        self.spleen = organs & _ellipsoid(coords, (top - 30, 0.35 * B, 0.6 * A), rng.uniform(25, 45, 3))
        stomach = organs & ~self.liver & _ellipsoid(coords, (top - 35, -0.15 * B, 0.35 * A), rng.uniform(25, 50, 3))
        level = -0.15 * B - rng.uniform(-10, 30)  # supine: gas rises to the front (-y)
        self.stomach_gas = stomach & (y < level)
        self.stomach_fluid = stomach & ~self.stomach_gas
        self.bowel_gas = organs & ~self.liver & ~stomach & (smooth_noise(rng, z.shape, 6.0) > rng.uniform(0.45, 0.7))
        self.organs = organs
        # airways: trachea down to the carina, main bronchi out to each hilum
        carina = np.array(self.pa_segments[0][2]) + np.array([rng.uniform(0, 10), 0.22 * B, -0.03 * A])
        r_trachea = rng.uniform(7, 11)
        self.airway_wall = np.zeros(z.shape, bool)
        self.airway = np.zeros(z.shape, bool)
        pieces = [((200.0, carina[1] - 5, carina[2]), tuple(carina), r_trachea)]
        for s in (-1, 1):
            hilum = (carina[0] - rng.uniform(15, 30), carina[1] + rng.uniform(-5, 10), s * A * rng.uniform(0.22, 0.3))
            pieces.append((tuple(carina), hilum, r_trachea * rng.uniform(0.6, 0.75)))
        for p0, p1, r in pieces:
            self.airway_wall |= tube(coords, p0, p1, r + rng.uniform(1.0, 2.0))[0]
            self.airway |= tube(coords, p0, p1, r)[0]
        # the oesophagus, between the trachea and the spine, left of the midline; air in it or not
        oy = 0.5 * (carina[1] + self.B * 0.58)
        self.oesophagus = tube(coords, (200.0, oy, 6.0), (top - 20, oy - 10, 0.2 * A), rng.uniform(6, 9))[0]
        self.oesophagus_air = tube(coords, (rng.uniform(-20, 60), oy, 6.0), (rng.uniform(-80, -20), oy, 8.0),
                                   rng.uniform(1.5, 5))[0] if rng.random() < 0.6 else np.zeros(z.shape, bool)
        # outside the chest wall: breasts, arms at the sides (arms up leaves them out of the field)
        self.breasts = np.zeros(z.shape, bool)
        if rng.random() < 0.5:
            size = rng.uniform(35, 75)
            for s in (-1, 1):
                self.breasts |= _ellipsoid(coords, (rng.uniform(-60, 0), -B * 0.95, s * A * 0.45),
                                           (size * 0.9, size * 0.8, size))
            self.breasts &= ~self.body
        self.arms = np.zeros(z.shape, bool)
        self.humerus = np.zeros(z.shape, bool)
        if rng.random() < 0.4:
            for s in (-1, 1):
                centre_x, radius = s * (A + rng.uniform(35, 55)), rng.uniform(35, 48)
                rr = np.sqrt((x - centre_x) ** 2 + (y - rng.uniform(-20, 20)) ** 2)
                self.arms |= rr < radius
                self.humerus |= rr < rng.uniform(9, 13)
        # the lung's own variation: emphysema, bullae against the pleura, dependent atelectasis,
        # pleural effusion (fluid beside the spine, which is not pericardial)
        self.emphysema = self.lung & (smooth_noise(rng, z.shape, 4.0) > rng.uniform(0.25, 0.6)) \
            if rng.random() < 0.35 else np.zeros(z.shape, bool)
        self.bullae = np.zeros(z.shape, bool)
        self.bulla_walls = np.zeros(z.shape, bool)
        if rng.random() < 0.35:
            inside = np.argwhere(self.lung)
            for _ in range(int(rng.integers(1, 5))):
                if not len(inside):
                    break
                idx = inside[rng.integers(len(inside))]
                centre = (z[tuple(idx)], y[tuple(idx)], x[tuple(idx)])
                radius = rng.uniform(8, 35)
                ball = _ellipsoid(coords, centre, (radius,) * 3)
                self.bulla_walls |= ball & ~_ellipsoid(coords, centre, (radius - rng.uniform(1, 2),) * 3)
                self.bullae |= ball
            self.bullae &= self.lung
            self.bulla_walls &= self.lung
        self.atelectasis = np.zeros(z.shape, bool)
        self.pleural_fluid = np.zeros(z.shape, bool)
        for side in self.lungs.values():
            back = float(y[side].max()) if side.any() else 0.0
            if rng.random() < 0.4:
                self.atelectasis |= side & (y > back - rng.uniform(5, 25)) & (z < top + rng.uniform(30, 120))
            if rng.random() < 0.3:
                depth = rng.uniform(8, 60) * (1 + np.clip((top + 60 - z) / 80, 0, 1))
                self.pleural_fluid |= side & (y > back - depth)
        # calcification: coronary arteries on the heart's surface, plaques in the aortic wall
        self.calcium = np.zeros(z.shape, bool)
        surface = np.argwhere(self.heart & (self.heart_r > 0.9))
        for _ in range(int(rng.integers(0, 5)) if len(surface) else 0):
            idx = surface[rng.integers(len(surface))]
            self.calcium |= _ellipsoid(coords, (z[tuple(idx)], y[tuple(idx)], x[tuple(idx)]), (rng.uniform(1.5, 4),) * 3)
        if rng.random() < 0.5:
            shell = np.zeros(z.shape, bool)
            for p0, p1 in zip(self.aorta_path, self.aorta_path[1:]):
                shell |= tube(coords, p0, p1, self.aorta_radius + 1.5)[0]
            self.calcium |= shell & ~self.aorta & (smooth_noise(rng, z.shape, 8.0) > rng.uniform(0.3, 0.6))
        # the superior vena cava, right of the aorta, down into the heart
        self.svc_path = ((200.0, -0.1 * B, -0.15 * A), (self.aorta_path[0][0], -0.2 * B, -0.1 * A))
        self.svc_radius = rng.uniform(8, 11)
        self.svc = tube(coords, *self.svc_path, self.svc_radius)[0] & ~self.aorta
        self._vertebrae(rng.spawn(1)[0])
        self._peripheral_arteries(rng.spawn(1)[0])

    def _vertebrae(self, rng: np.random.Generator) -> None:
        """The spine as patients have it: vertebral bodies of cancellous bone in a cortical shell,
        with discs between them, and the posterior arch (pedicles, laminae, spinous process) that
        rings the canal. The v1 spine was one solid cylinder with the canal in soft tissue behind it,
        and models took the grey inside bright bone they had never met for a flap or a clot. Drawn
        from its own stream (``rng``): everything else in the chest stays as it was."""
        z, y, x = self.coords
        sy = float(y[self.spine].mean()) if self.spine.any() else 0.6 * self.B
        rr = np.sqrt(x ** 2 + (y - sy) ** 2)
        radius = float(rr[self.spine].max()) if self.spine.any() else 18.0
        period, phase, disc_mm = rng.uniform(22, 28), rng.uniform(0, 1), rng.uniform(4, 7)
        level = ((z / period + phase) % 1.0) * period  # mm into this vertebra, from the disc below it
        shell = rng.uniform(1.5, 3.0)
        self.discs = self.spine & (level < disc_mm)
        self.vertebral_cortex = self.spine & ~self.discs & ((rr > radius - shell) | (level < disc_mm + shell)
                                                            | (level > period - shell))
        cr = np.sqrt(x ** 2 + (y - sy - 26) ** 2)  # around the canal (pipelines.synth.chest.Chest)
        arch = (cr >= 8) & (cr < 8 + rng.uniform(3, 6))
        arch |= (np.abs(x) < rng.uniform(2.5, 4.5)) & (y > sy + 30) & (y < sy + 34 + rng.uniform(12, 28))
        self.arch = arch & self.body & ~self.spine & ~self.canal & ~self.lung
        self.bone_values = {"cortex": rng.uniform(600, 1100), "cancellous": rng.uniform(80, 300),
                            "disc": rng.uniform(60, 110), "arch": rng.uniform(400, 900)}

    def _peripheral_arteries(self, rng: np.random.Generator) -> None:
        """Each segmental artery branches on into the lung, narrowing at every division, down to
        2-3 mm across (finer ones are below the phantom's grid), as in patients. The v1 arteries
        stopped 60-95 mm from the hilum, and an artery that stops in mid-lung is the cut-off an
        occlusive clot makes: pe's first v2 run fired at those ends on normal chests. The branches
        are lung vessels (``pa``, opacified with the arteries); a clot in a segmental artery blocks
        them too. Drawn from their own stream (``rng``): every other structure is drawn as before."""
        branches = []
        tips = [(p0, p1, radius) for level, p0, p1, radius in self.pa_segments if level == "segmental"]
        while tips:
            p0, p1, radius = tips.pop()
            radius *= rng.uniform(0.65, 0.8)
            if radius < 1.0:
                continue
            d = (np.asarray(p1, np.float64) - np.asarray(p0, np.float64))
            d /= np.linalg.norm(d) or 1.0
            for _ in range(2):
                d2 = d + rng.normal(scale=0.45, size=3)
                d2 /= np.linalg.norm(d2) or 1.0
                end = tuple(np.asarray(p1, np.float64) + d2 * rng.uniform(12, 25) * radius / 1.5)
                branches.append(("subsegmental", p1, end, float(radius)))
                tips.append((p1, end, radius))
        vessels = np.zeros(self.coords[0].shape, bool)
        for _, p0, p1, radius in branches:
            vessels |= tube(self.coords, p0, p1, radius)[0]
        vessels &= self.lung
        self.pa_segments += branches
        self.pa |= vessels
        self.markings |= vessels

    def _heart_sides(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The right heart (in front and to the patient's right of a plane through the heart) and
        the septum (a few mm either side of that plane)."""
        z, y, x = self.coords
        centre = [float(c[self.heart].mean()) for c in self.coords] if self.heart.any() else [0.0, 0.0, 0.0]
        turn, tilt = rng.uniform(np.pi / 4 - 0.4, np.pi / 4 + 0.4), rng.uniform(-0.3, 0.3)
        normal = np.array([np.sin(tilt), -np.cos(tilt) * np.sin(turn), -np.cos(tilt) * np.cos(turn)], np.float32)
        offset = (z - centre[0]) * normal[0] + (y - centre[1]) * normal[1] + (x - centre[2]) * normal[2]
        offset -= np.float32(rng.uniform(-6, 6))
        return offset > 0, np.abs(offset) < rng.uniform(2.0, 5.0)

    def _vessel_walls(self, rng: np.random.Generator) -> np.ndarray:
        """The walls of the aorta, the central pulmonary arteries and the superior vena cava (1-2.5
        mm of soft tissue), where they lie in the mediastinum. On angiography a wall is a grey rim
        against fat, and where two opacified vessels touch, a grey septum between two lumens of
        different contrast: the pseudo-flap a reader must not call a dissection."""
        coords = self.coords
        wall = np.zeros(coords[0].shape, bool)
        w = rng.uniform(1.0, 2.5)
        for p0, p1 in zip(self.aorta_path, self.aorta_path[1:]):
            wall |= tube(coords, p0, p1, self.aorta_radius + w)[0]
        for level, p0, p1, radius in self.pa_segments:
            if level == "central":
                wall |= tube(coords, p0, p1, radius + rng.uniform(0.8, 1.5))[0]
        wall |= tube(coords, *self.svc_path, self.svc_radius + rng.uniform(0.8, 1.5))[0]
        lumens = self.aorta | self.pa | self.svc | self.chambers
        return wall & self.cavity & ~lumens & ~self.lung & ~self.airway_wall & ~self.calcium

    def _root_motion(self, rng: np.random.Generator) -> np.ndarray:
        """Pulsation artefact at the aortic root, the commonest mimic of a type A dissection: the
        root is imaged in two places during the heartbeat, and the ghost of its wall runs as a curved
        grey line through the lumen. Returns the ghost's wall inside the lower ascending aorta."""
        p0, p1 = (np.asarray(p, np.float32) for p in self.aorta_path[:2])
        top = p0 + (p1 - p0) * np.float32(rng.uniform(0.3, 0.7))  # the root and the ascending aorta's start
        angle = rng.uniform(0, 2 * np.pi)
        shift = np.float32(rng.uniform(2.0, 6.0)) * np.array([0.0, np.sin(angle), np.cos(angle)], np.float32)
        r, half = self.aorta_radius, rng.uniform(0.6, 1.2)
        ghost = tube(self.coords, p0 + shift, top + shift, r + half)[0] & ~tube(self.coords, p0 + shift, top + shift,
                                                                                  r - half)[0]
        return ghost & self.aorta

    def hu(self, rng: np.random.Generator, contrast: bool, opacified_markings: bool = False,
           phase: str = "pulmonary") -> np.ndarray:
        out = super().hu(rng, contrast, opacified_markings)
        z = self.coords[0]
        out[self.body] += rng.uniform(-8, 12)  # muscle 30-50 HU
        out[self.fat] = rng.uniform(-120, -80)
        if self.breasts.any():  # glandular tissue in fat
            out[self.breasts] = np.where(smooth_noise(rng, z.shape, 2.0) > 0, 30.0, -100.0)[self.breasts]
        out[self.arms] = 45.0
        out[self.humerus] = rng.uniform(600, 1100)
        venous = contrast and phase == "venous"
        out[self.organs] = 40.0
        out[self.liver] = rng.uniform(100, 130) if venous else rng.uniform(50, 65)
        out[self.spleen] = rng.uniform(100, 130) if venous else rng.uniform(40, 50)
        out[self.stomach_fluid] = rng.uniform(5, 25)
        out[self.stomach_gas | self.bowel_gas] = -1000.0
        out[self.oesophagus] = 40.0
        out[self.oesophagus_air] = -1000.0
        out[self.emphysema] = rng.uniform(-990, -940)
        out[self.bullae] = -1000.0
        out[self.bulla_walls] = rng.uniform(-600, -200)
        out[self.atelectasis] = rng.uniform(-300, 30)
        out[self.pleural_fluid] = rng.uniform(0, 20)
        out[self.calcium] = rng.uniform(300, 1000)
        bone = self.bone_values
        out[self.spine] = bone["cancellous"]
        out[self.vertebral_cortex] = bone["cortex"]
        out[self.discs] = bone["disc"]
        out[self.arch] = bone["arch"]
        out[self.airway_wall & ~self.airway & ~self.lung] = 40.0
        out[self.airway] = -1000.0
        if contrast:  # contrast timing: the pulmonary arteries and the aorta fill at different times
            peak = rng.uniform(250, 500)
            pa, aorta = {"pulmonary": (1.0, rng.uniform(0.4, 0.8)), "aortic": (rng.uniform(0.6, 0.9), 1.0),
                         "venous": (rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6))}[phase]
            out[self.pa] = peak * pa
            if opacified_markings:
                out[self.markings & self.lung & ~self.pa] = peak * pa
            out[self.aorta] = peak * aorta
            # the right heart fills with the pulmonary arteries, the left with the aorta: two lumens of
            # different contrast with the septum between them, as in every angiogram
            self.right_heart, self.septum = self._heart_sides(rng)
            out[self.chambers & self.right_heart] = peak * pa
            out[self.chambers & ~self.right_heart] = peak * aorta
            out[self.chambers & self.septum] = rng.uniform(80, 150)  # enhanced myocardium
            # injected through an arm vein: the vena cava is still dense in the early phases
            out[self.svc] = rng.uniform(800, 2500) if phase != "venous" and rng.random() < 0.6 else peak * 0.6
            out[self._vessel_walls(rng)] = rng.uniform(30, 60)
            if rng.random() < 0.35:
                out[self._root_motion(rng)] = peak * aorta * rng.uniform(0.35, 0.7)
        return out


def chest_ct_v2(rng: np.random.Generator, positive: bool, *, finding: str, matrix: int = 128,
                thickness: float | None = None) -> Phantom:
    """A chest CT for one finding, with normal variation and scanner physics: with contrast for
    ``pe`` (pulmonary arterial or aortic phase) and ``aortic_dissection`` (aortic or venous), without
    for the others. Mask = the finding, drawn as in :func:`pipelines.synth.chest.chest_ct`."""
    if finding not in FINDINGS:
        raise ValueError(f"unknown chest finding {finding!r}; one of {', '.join(FINDINGS)}")
    contrast = CONTRAST[finding]
    thickness = thickness or float(rng.choice(THICKNESSES[:3] if contrast else THICKNESSES))
    coords, spacing = grid(rng, thickness, matrix, fov_mm=float(rng.uniform(340, 500)), coverage_mm=(200.0, 320.0),
                           tilt_deg=(6.0, 6.0), shift_mm=25.0)
    chest = VariedChest(rng, coords)
    phase = str(rng.choice(PHASES[:2] if finding == "pe" else PHASES[1:])) if contrast else "none"
    hu = chest.hu(rng, contrast, opacified_markings=finding in OPACIFIED_LUNG_VESSELS, phase=phase)
    mask, kind = draw_finding(rng, chest, hu, finding, spare=chest.pleural_fluid) if positive \
        else (np.zeros(hu.shape, bool), "none")
    outside = hu <= -999.0
    outside &= ~chest.cavity & ~chest.body  # the air around the patient, not in it
    clothing = outside & ~(chest.breasts | chest.arms)
    z, y, x = coords
    rb = np.sqrt((x / (chest.A + rng.uniform(3, 15))) ** 2 + (y / (chest.B + rng.uniform(3, 15))) ** 2)
    cloth = clothing & (np.abs(rb - 1.0) < 0.015) & (smooth_noise(rng, z.shape, 4.0) > rng.uniform(-0.3, 0.4))
    table = support(rng, coords, below_mm=chest.B * 1.02, kind="table")
    hu[outside] = table[outside]
    hu[cloth] = rng.uniform(-250, -50)
    dense = chest.ribs | chest.sternum | chest.spine | chest.humerus | (hu > 700)
    image = acquire(rng, hu, spacing, dense)
    lesion_ml = float(mask.sum() * np.prod(spacing) / 1000)
    return Phantom(hu=image, spacing_zyx=spacing, mask=mask, label=int(positive), finding=finding, kind=kind,
                   contrast=contrast, description=f"{DESCRIPTION[finding]} {thickness:g}mm", lesion_ml=lesion_ml,
                   body_part="CHEST", extra={"phase": phase})
