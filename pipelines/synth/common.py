"""What every phantom shares: the study before it is written, the scanner grid, and texture."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Phantom:
    """A synthetic study before it is written: HU array ``[z, y, x]`` and its geometry."""

    hu: np.ndarray
    spacing_zyx: tuple[float, float, float]
    mask: np.ndarray
    label: int
    finding: str
    kind: str
    contrast: bool
    description: str
    lesion_ml: float
    body_part: str = "HEAD"
    modality: str = "CT"  # or DX: a single 2-D radiograph, hu holding its stored values [1, rows, cols]
    extra: dict = field(default_factory=dict)


def grid(rng: np.random.Generator, thickness: float, matrix: int, fov_mm: float = 240.0,
         coverage_mm: tuple[float, float] = (100.0, 130.0), tilt_deg: tuple[float, float] = (12.0, 8.0),
         shift_mm: float = 10.0):
    """Voxel centres of a ``matrix``-square axial series, in the patient's own frame (tilted and
    shifted against the scanner's), and the spacing ``(z, y, x)`` in mm."""
    pixel = round(float(rng.uniform(0.85, 1.0)) * fov_mm / matrix, 4)  # field of view 85–100% of fov_mm
    coverage = float(rng.uniform(*coverage_mm))
    nz = max(8, int(round(coverage / thickness)))
    z = (np.arange(nz) - (nz - 1) / 2) * thickness
    yx = (np.arange(matrix) - (matrix - 1) / 2) * pixel
    zz, yy, xx = np.meshgrid(z, yx, yx, indexing="ij")
    # tilt (pitch about x, yaw about z) and shift: the patient frame in scanner coordinates
    pitch, yaw = np.radians(rng.uniform(-tilt_deg[0], tilt_deg[0])), np.radians(rng.uniform(-tilt_deg[1], tilt_deg[1]))
    shift = rng.uniform(-shift_mm, shift_mm, size=3)
    x1, y1, z1 = xx - shift[2], yy - shift[1], zz - shift[0]
    y2 = y1 * np.cos(pitch) - z1 * np.sin(pitch)
    z2 = y1 * np.sin(pitch) + z1 * np.cos(pitch)
    x3 = x1 * np.cos(yaw) - y2 * np.sin(yaw)
    y3 = x1 * np.sin(yaw) + y2 * np.cos(yaw)
    return (z2.astype(np.float32), y3.astype(np.float32), x3.astype(np.float32)), (thickness, pixel, pixel)


def smooth_noise(rng: np.random.Generator, shape, scale: float) -> np.ndarray:
    """Low-frequency texture in [-1, 1] (sum of a few random cosines)."""
    z, y, x = (np.linspace(0, 1, n, dtype=np.float32) for n in shape)
    out = np.zeros(shape, np.float32)
    for _ in range(4):
        f = rng.uniform(1, 4, size=3) * scale
        p = rng.uniform(0, 2 * np.pi, size=3)
        out += (np.cos(2 * np.pi * f[0] * z + p[0])[:, None, None] * np.cos(2 * np.pi * f[1] * y + p[1])[None, :, None]
                * np.cos(2 * np.pi * f[2] * x + p[2])[None, None, :])
    return out / 4


def tube(coords, p0, p1, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Voxels within ``radius`` of the segment p0→p1 (z, y, x in mm), and the position along it
    (0 outside the segment's bounding box)."""
    p0, p1 = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
    lo, hi = np.minimum(p0, p1) - radius, np.maximum(p0, p1) + radius
    # only the voxels in the segment's bounding box can be in the tube: measure those alone
    box = index_box(coords, lo, hi)
    z, y, x = (c[box] for c in coords)
    near = (z >= lo[0]) & (z <= hi[0]) & (y >= lo[1]) & (y <= hi[1]) & (x >= lo[2]) & (x <= hi[2])
    d = p1 - p0
    t = np.clip(((z - p0[0]) * d[0] + (y - p0[1]) * d[1] + (x - p0[2]) * d[2]) / float(d @ d), 0, 1)
    dist2 = (z - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (x - p0[2] - t * d[2]) ** 2
    inside, along = np.zeros(coords[0].shape, bool), np.zeros(coords[0].shape, np.float32)
    inside[box], along[box] = near & (dist2 < radius ** 2), np.where(near, t, 0)
    return inside, along


def index_box(coords, lo, hi) -> tuple[slice, slice, slice]:
    """The block of voxel indices that holds every voxel whose centre lies in the box [lo, hi]
    (mm): the grid is an affine map of the indices, tilted, so the box's corners are mapped back."""
    origin = np.array([c[0, 0, 0] for c in coords], np.float64)
    steps = np.array([[c[1, 0, 0] - c[0, 0, 0], c[0, 1, 0] - c[0, 0, 0], c[0, 0, 1] - c[0, 0, 0]]
                      for c in coords], np.float64)  # column k: one voxel along index axis k
    corners = np.array([[(lo, hi)[(n >> k) & 1][k] for k in range(3)] for n in range(8)], np.float64)
    index = np.linalg.solve(steps, (corners - origin).T)  # [3 axes, 8 corners]
    first = np.maximum(np.floor(index.min(axis=1)).astype(int) - 1, 0)
    last = np.minimum(np.ceil(index.max(axis=1)).astype(int) + 2, coords[0].shape)
    return tuple(slice(int(a), int(max(a, b))) for a, b in zip(first, last))
