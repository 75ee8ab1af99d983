"""Resample, window and normalise a volume as a model's manifest asks.

This is the only implementation: the runtime and ``pipelines/`` (training) both call
:func:`preprocess`, so serving and training cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from triage.errors import ManifestError


@dataclass(frozen=True)
class InputSpec:
    """How a model wants its input. Shapes and spacings are in array order ``[z, y, x]``."""

    shape: tuple[int, int, int]
    window: tuple[float, float]  # lower, upper in HU (or stored values for X-ray)
    normalise: str = "window"  # "window": map [lower, upper] to [0, 1]; "zscore": (v-mean)/std in window
    # Shrinking an axis averages the input voxels each output voxel covers, as a thick reformat
    # does (thin slices' noise averages out); otherwise linear interpolation samples it.
    antialias: bool = False

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "InputSpec":
        try:
            shape = tuple(int(v) for v in data["shape"])
            window = data["window"]
            if isinstance(window, dict):
                if "center" in window:
                    c, w = float(window["center"]), float(window["width"])
                    lower, upper = c - w / 2, c + w / 2
                else:
                    lower, upper = float(window["lower"]), float(window["upper"])
            else:
                lower, upper = (float(v) for v in window)
            normalise = str(data.get("normalise", "window"))
            antialias = data.get("antialias", False)
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"input spec needs shape [z, y, x] and window ({exc})", path=where) from None
        if len(shape) != 3 or min(shape) < 1:
            raise ManifestError(f"input shape {list(shape)} must be three positive sizes", path=where)
        if upper <= lower:
            raise ManifestError(f"window upper {upper} must exceed lower {lower}", path=where)
        if normalise not in ("window", "zscore"):
            raise ManifestError(f"normalise must be 'window' or 'zscore', not {normalise!r}", path=where)
        if not isinstance(antialias, bool):
            raise ManifestError(f"antialias must be true or false, not {antialias!r}", path=where)
        return cls(shape=shape, window=(lower, upper), normalise=normalise, antialias=antialias)


def resample(array: np.ndarray, spacing_zyx: tuple[float, float, float],
             shape: tuple[int, int, int], antialias: bool = False) -> np.ndarray:
    """Resample ``array`` to ``shape``, keeping its physical extent: linearly, or with
    ``antialias`` by averaging along each axis that shrinks (then linearly along the others)."""
    if antialias:
        spacing = list(spacing_zyx)
        for axis in range(3):
            if array.shape[axis] > shape[axis]:
                spacing[axis] *= array.shape[axis] / shape[axis]
                array = _average(array, axis, shape[axis])
        spacing_zyx = tuple(spacing)
    if tuple(array.shape) == tuple(shape):
        return np.asarray(array, dtype=np.float32)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's warnings go to stderr unasked
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing((float(spacing_zyx[2]), float(spacing_zyx[1]), float(spacing_zyx[0])))
    size_xyz = (int(shape[2]), int(shape[1]), int(shape[0]))
    in_size = image.GetSize()
    in_spacing = image.GetSpacing()
    out_spacing = tuple(in_size[i] * in_spacing[i] / size_xyz[i] for i in range(3))
    # Align the outer edges of the first and last voxels, not their centres.
    out_origin = tuple(-0.5 * in_spacing[i] + 0.5 * out_spacing[i] for i in range(3))
    resampled = sitk.Resample(image, size_xyz, sitk.Transform(), sitk.sitkLinear, out_origin,
                              out_spacing, image.GetDirection(), float(array.min()), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled)


def _average(array: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Split ``axis`` into ``n_out`` equal boxes edge to edge; each output voxel is the mean of
    the input it covers (a voxel cut by a box edge counts in part on both sides)."""
    src = np.moveaxis(np.asarray(array, dtype=np.float32), axis, 0)
    n_in = src.shape[0]
    width = n_in / n_out  # input voxels per box, > 1
    out = np.zeros((n_out, *src.shape[1:]), np.float32)
    for k in range(n_in):  # one slab at a time: each input voxel falls in at most two boxes
        j = min(int(k / width), n_out - 1)
        inside = min(1.0, (j + 1) * width - k)
        out[j] += inside * src[k] if inside < 1.0 else src[k]
        if inside < 1.0 and j + 1 < n_out:
            out[j + 1] += (1.0 - inside) * src[k]
    out /= width
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))  # contiguous, as ONNX Runtime wants


def uniform_z(array: np.ndarray, z_positions: np.ndarray) -> tuple[np.ndarray, float]:
    """Resample slices at the given positions (mm, increasing) onto an even grid at their
    finest spacing, linearly between the two slices around each new one; returns the array
    and its z spacing. A series whose spacing changes (sequential head CT) is read this way."""
    positions = np.asarray(z_positions, dtype=np.float64)
    extent = float(positions[-1] - positions[0])
    step = float(np.min(np.diff(positions)))
    n = max(2, int(round(extent / step)) + 1)
    grid = positions[0] + np.arange(n) * (extent / (n - 1))
    upper = np.clip(np.searchsorted(positions, grid, side="right"), 1, len(positions) - 1)
    lower = upper - 1
    weight = ((grid - positions[lower]) / (positions[upper] - positions[lower])).astype(np.float32)
    out = np.empty((n, *array.shape[1:]), dtype=np.float32)
    for k in range(n):
        out[k] = array[lower[k]] * (1.0 - weight[k]) + array[upper[k]] * weight[k]
    return out, extent / (n - 1)


def preprocess(array: np.ndarray, spacing_zyx: tuple[float, float, float], spec: InputSpec,
               z_positions: np.ndarray | None = None) -> np.ndarray:
    """Return the model input for one volume as float32 ``[1, 1, z, y, x]``. ``z_positions``:
    the slices' positions when their spacing is not uniform (see :func:`uniform_z`)."""
    lower, upper = spec.window
    if z_positions is not None:
        array, z_spacing = uniform_z(array, z_positions)
        spacing_zyx = (z_spacing, spacing_zyx[1], spacing_zyx[2])
    out = resample(array, spacing_zyx, spec.shape, spec.antialias)
    np.clip(out, lower, upper, out=out)
    if spec.normalise == "window":
        out -= lower
        out /= upper - lower
    else:
        std = float(out.std())
        out -= float(out.mean())
        out /= std if std > 0 else 1.0
    return out[np.newaxis, np.newaxis].astype(np.float32, copy=False)


def to_source_slice(index: int, model_depth: int, n_slices: int) -> int:
    """Map a slice index of the model's input back to the decoded volume's slice."""
    if model_depth <= 1:
        return 0
    return int(min(n_slices - 1, max(0, round((index + 0.5) * n_slices / model_depth - 0.5))))
