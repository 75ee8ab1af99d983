"""Geometry the independent generator's body parts share. Evaluation only (see
``pipelines/evalgen/__init__.py``)."""
from __future__ import annotations

import numpy as np


def segment_distance(z: float, ys: np.ndarray, xs: np.ndarray, p0, p1) -> tuple[np.ndarray, np.ndarray]:
    """Distance in mm from the points (z, ys, xs) to the segment p0→p1 (each [z, y, x]), and the
    fraction along it of the nearest point."""
    p0, d = np.asarray(p0, np.float32), np.asarray(p1, np.float32) - np.asarray(p0, np.float32)
    t = np.clip(((z - p0[0]) * d[0] + (ys - p0[1]) * d[1] + (xs - p0[2]) * d[2]) / float(d @ d), 0.0, 1.0)
    dist = np.sqrt((z - p0[0] - t * d[0]) ** 2 + (ys - p0[1] - t * d[1]) ** 2 + (xs - p0[2] - t * d[2]) ** 2)
    return dist, t
