"""Resample, window and normalise a volume as a model's manifest asks.

This is the only implementation: the runtime and ``pipelines/`` (training) both call
:func:`preprocess`, so serving and training cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
             shape: tuple[int, int, int], antialias: bool = False,
             cache: dict | None = None) -> np.ndarray:
    """Resample ``array`` to ``shape``, keeping its physical extent edge to edge: linearly, or
    with ``antialias`` by averaging along each axis that shrinks (linearly along the others).

    The grid keeps the outer edges of the first and last voxels, so the mapping depends on the
    sizes alone (``spacing_zyx`` does not change it). Both are separable, so each axis is done
    on its own. The
    linear result is SimpleITK's ``Resample`` with a linear interpolator on this grid, to
    float rounding (a test holds it to that), in a sixth of the time on a 300-slice CT.

    ``cache``: a dict owned by the caller for one input array; every step is kept there under
    the steps that led to it, so models whose inputs share steps (the same shape, or the same
    in-plane reduction) compute them once. Arrays in it are never written to; the result is
    one of them, so a caller that passes a cache must copy before writing.
    """
    del spacing_zyx
    steps = []
    # Shrinking axes first, z before y before x: a step along z works on whole contiguous
    # slices, and each step leaves less for the next. Averaging in-plane first, so that models
    # with one in-plane size could share that step, was measured and is slower: on 300x512x512
    # it costs ~110 ms, where averaging z first costs ~45 ms per model.
    order = sorted((ax for ax in range(3) if array.shape[ax] != shape[ax]),
                   key=lambda ax: (shape[ax] > array.shape[ax], ax))
    out = array
    for axis in order:
        method = "mean" if antialias and out.shape[axis] > shape[axis] else "linear"
        steps.append((axis, int(shape[axis]), method))
        key = tuple(steps)
        if cache is not None and key in cache:
            out = cache[key]
            continue
        out = (_average if method == "mean" else _linear)(out, axis, int(shape[axis]))
        if cache is not None:
            cache[key] = out
    if out is array:
        out = np.asarray(array, dtype=np.float32)
    return np.ascontiguousarray(out)  # contiguous, as ONNX Runtime wants


def _linear(array: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Linear interpolation along ``axis`` onto ``n_out`` samples spanning the same extent;
    a sample past the outermost centres takes the edge value, as ITK's interpolator does."""
    n_in = array.shape[axis]
    centres = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    lower = np.floor(centres).astype(np.intp)
    upper = np.minimum(lower + 1, n_in - 1)
    weight = (centres - lower).astype(np.float32).reshape([n_out if a == axis else 1 for a in range(array.ndim)])
    out = np.take(array, lower, axis=axis).astype(np.float32, copy=False)
    out *= 1.0 - weight
    out += np.take(array, upper, axis=axis) * weight
    return out


def _average(array: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Split ``axis`` into ``n_out`` equal boxes edge to edge; each output voxel is the mean of
    the input it covers (a voxel cut by a box edge counts in part on both sides)."""
    n_in = array.shape[axis]
    if n_in % n_out == 0:  # whole boxes: a sum of strided views, in the array's own layout
        factor = n_in // n_out
        index = [slice(None)] * array.ndim
        index[axis] = slice(0, None, factor)
        out = np.array(array[tuple(index)], dtype=np.float32)
        for k in range(1, factor):
            index[axis] = slice(k, None, factor)
            out += array[tuple(index)]
        out *= np.float32(1.0 / factor)
        return out
    # Boxes [j*w, (j+1)*w) in input voxels, w > 1. Sum the voxels from ceil(start) up to
    # ceil(end) whole, then move the part of the last voxel beyond the box's end to the next
    # box, and add the part of the first voxel that lies inside this box.
    width = n_in / n_out
    edges = np.arange(n_out + 1) * width
    edges[-1] = n_in
    first = np.ceil(edges[:-1] - 1e-9).astype(np.intp)
    lead = (slice(None),) * axis

    def plane(a: np.ndarray, k: int) -> np.ndarray:  # a view: writes reach ``a``
        return a[lead + (k,)]

    shape = list(array.shape)
    shape[axis] = n_out
    out = np.empty(shape, np.float32)
    stops = [*first[1:], n_in]
    for j in range(n_out):
        np.sum(array[lead + (slice(first[j], stops[j]),)], axis=axis, dtype=np.float32, out=plane(out, j))
        head = first[j] - edges[j]  # the part of voxel first[j]-1 inside box j
        if head > 1e-9:
            plane(out, j)[...] += np.float32(head) * plane(array, first[j] - 1)
        if j + 1 < n_out:
            tail = first[j + 1] - edges[j + 1]  # the part of voxel first[j+1]-1 beyond box j
            if tail > 1e-9:
                plane(out, j)[...] -= np.float32(tail) * plane(array, first[j + 1] - 1)
    out *= np.float32(1.0 / width)
    return out


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
               z_positions: np.ndarray | None = None, cache: dict | None = None) -> np.ndarray:
    """Return the model input for one volume as float32 ``[1, 1, z, y, x]``. ``z_positions``:
    the slices' positions when their spacing is not uniform (see :func:`uniform_z`).

    ``cache``: one dict per volume, shared by the models that read it, so that what their
    specs have in common is computed once (see :func:`resample`). ``array`` is never changed."""
    lower, upper = spec.window
    if z_positions is not None:
        key = ("uniform_z",)
        if cache is not None and key in cache:
            array, z_spacing = cache[key]
        else:
            array, z_spacing = uniform_z(array, z_positions)
            if cache is not None:
                cache[key] = (array, z_spacing)
        spacing_zyx = (z_spacing, spacing_zyx[1], spacing_zyx[2])
        if cache is not None:
            cache = cache.setdefault(("after", "uniform_z"), {})
    source = array
    out = resample(array, spacing_zyx, spec.shape, spec.antialias, cache)
    if cache is not None or np.shares_memory(out, source):
        out = out.copy()  # windowing below writes in place: never into the volume or the cache
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
