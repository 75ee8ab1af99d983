"""Resample, window and normalise a volume as a model's manifest asks.

This is the only implementation: the runtime and ``pipelines/`` (training) both call
:func:`preprocess`, so serving and training cannot drift apart.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from triage.errors import ManifestError


@dataclass(frozen=True)
class InputSpec:
    """How a model wants its input. Shapes and spacings are in array order ``[z, y, x]``.

    Two ways to say it:
    - in physical space (``spacing_mm`` and ``field_mm``): a box of ``field_mm`` around the body,
      found from the image, sampled every ``spacing_mm``; the same anatomy gives the same input
      whatever the scanner's field of view, pixel size or coverage. ``shape`` follows from them.
    - by ``shape`` alone: the whole series stretched to that shape, edge to edge (the models
      trained before physical inputs; their tensors must not change).
    """

    shape: tuple[int, int, int]
    window: tuple[float, float]  # lower, upper in HU (or stored values for X-ray)
    normalise: str = "window"  # "window": map [lower, upper] to [0, 1]; "zscore": (v-mean)/std in window
    # Shrinking an axis averages the input voxels each output voxel covers, as a thick reformat
    # does (thin slices' noise averages out); otherwise linear interpolation samples it.
    antialias: bool = False
    spacing_mm: tuple[float, float, float] | None = None
    field_mm: tuple[float, float, float] | None = None
    pad: float | None = None  # the value beyond the image's edge; default: the window's lower end
    body_above: float = -500.0  # what counts as the patient when the box is placed (HU for CT)

    @property
    def physical(self) -> bool:
        return self.spacing_mm is not None

    @property
    def pad_value(self) -> float:
        return self.window[0] if self.pad is None else self.pad

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "InputSpec":
        try:
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
            spacing = tuple(float(v) for v in data["spacing_mm"]) if "spacing_mm" in data else None
            fov = tuple(float(v) for v in data["field_mm"]) if "field_mm" in data else None
            pad = float(data["pad"]) if data.get("pad") is not None else None
            body_above = float(data.get("body_above", -500.0))
            if spacing is None:
                shape = tuple(int(v) for v in data["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"input spec needs spacing_mm and field_mm [z, y, x] (or a shape), and a window "
                                f"({type(exc).__name__}: {exc})", path=where) from None
        if (spacing is None) != (fov is None):
            raise ManifestError("input spacing_mm and field_mm go together", path=where)
        if spacing is not None:
            if len(spacing) != 3 or len(fov) != 3 or min(spacing) <= 0 or min(fov) <= 0 \
                    or not all(math.isfinite(v) for v in (*spacing, *fov)):
                raise ManifestError("input spacing_mm and field_mm must be three positive sizes each", path=where)
            shape = tuple(max(1, int(round(f / s))) for f, s in zip(fov, spacing))
            if "shape" in data and tuple(int(v) for v in data["shape"]) != shape:
                raise ManifestError(f"input shape {list(data['shape'])} is not field_mm / spacing_mm {list(shape)}",
                                    path=where)
        if len(shape) != 3 or min(shape) < 1:
            raise ManifestError(f"input shape {list(shape)} must be three positive sizes", path=where)
        if upper <= lower:
            raise ManifestError(f"window upper {upper} must exceed lower {lower}", path=where)
        if normalise not in ("window", "zscore"):
            raise ManifestError(f"normalise must be 'window' or 'zscore', not {normalise!r}", path=where)
        if not isinstance(antialias, bool):
            raise ManifestError(f"antialias must be true or false, not {antialias!r}", path=where)
        return cls(shape=shape, window=(lower, upper), normalise=normalise, antialias=antialias,
                   spacing_mm=spacing, field_mm=fov, pad=pad, body_above=body_above)


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


def body_centre(array: np.ndarray, spec: InputSpec, cache: dict | None = None) -> tuple[float, float, float]:
    """Where the physical box goes: the centre of mass of the patient (voxels above
    ``spec.body_above``), in voxel indices ``[z, y, x]``; the volume's middle when it holds
    none. Measured on a strided sample, so it costs the same for any series size; a thin
    table or head holder moves it little, where a bounding box would follow them."""
    key = ("body_centre", spec.body_above)
    if cache is not None and key in cache:
        return cache[key]
    steps = [max(1, -(-n // cap)) for n, cap in zip(array.shape, (64, 128, 128))]
    sample = array[::steps[0], ::steps[1], ::steps[2]] > spec.body_above
    if sample.any():
        centre = tuple(_mass_centre(sample, axis) * steps[axis] for axis in range(3))
    else:
        centre = tuple((n - 1) / 2 for n in array.shape)
    if cache is not None:
        cache[key] = centre
    return centre


def _mass_centre(mask: np.ndarray, axis: int) -> float:
    profile = mask.sum(axis=tuple(a for a in range(mask.ndim) if a != axis), dtype=np.float64)
    return float((profile * np.arange(profile.size)).sum() / profile.sum())


def _band(n_in: int, positions: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights that sample a line of ``n_in`` voxels at ``positions`` (voxel indices; voxel k
    covers [k - 0.5, k + 0.5]): each output is the mean over a box ``width`` voxels wide
    (``width`` > 1: averaging, as a thick reformat does) or linear between the two nearest
    voxels (``width`` <= 1). Returns (indices [n_out, band], weights [n_out, band], and the
    weight of the padding beyond the edges [n_out])."""
    n_out = positions.size
    if width <= 1.0:
        inside = (positions >= -0.5) & (positions <= n_in - 0.5)
        p = np.clip(positions, 0, n_in - 1)
        lower = np.floor(p).astype(np.intp)
        frac = p - lower
        idx = np.stack([lower, np.minimum(lower + 1, n_in - 1)], axis=1)
        w = np.stack([1.0 - frac, frac], axis=1) * inside[:, None]
        return idx, w, (~inside).astype(np.float64)
    lo, hi = positions - width / 2, positions + width / 2
    first = np.floor(lo + 0.5).astype(np.intp)
    band = int(np.ceil(width)) + 1
    idx = first[:, None] + np.arange(band)[None, :]
    overlap = np.clip(np.minimum(hi[:, None], idx + 0.5) - np.maximum(lo[:, None], idx - 0.5), 0, None)
    valid = (idx >= 0) & (idx < n_in)
    w = np.where(valid, overlap, 0.0) / width
    return np.clip(idx, 0, n_in - 1), w, 1.0 - w.sum(axis=1)


def _apply_band(array: np.ndarray, axis: int, idx: np.ndarray, w: np.ndarray, outside: np.ndarray,
                pad: float) -> np.ndarray:
    shape = [1] * array.ndim
    shape[axis] = idx.shape[0]
    out = np.empty([idx.shape[0] if a == axis else n for a, n in enumerate(array.shape)], np.float32)
    out[...] = (np.float32(pad) * outside.astype(np.float32)).reshape(shape)
    term = np.empty_like(out)  # one buffer for every tap: fresh memory per tap cost a third more
    for t in range(idx.shape[1]):
        weight = w[:, t].astype(np.float32)
        if not weight.any():
            continue
        np.multiply(np.take(array, idx[:, t], axis=axis), weight.reshape(shape), out=term)
        out += term
    return out


def resample_physical(array: np.ndarray, spacing_zyx: tuple[float, float, float], spec: InputSpec,
                      centre: tuple[float, float, float], cache: dict | None = None,
                      pad: float | None = None) -> np.ndarray:
    """Sample ``spec.field_mm`` around ``centre`` (voxel indices) every ``spec.spacing_mm``:
    separable, one axis at a time (those that shrink first), averaging where ``spec.antialias``
    and the axis shrinks, linear otherwise; ``pad`` (default ``spec.pad_value``) beyond the
    image. ``cache`` as for :func:`resample`: steps shared between specs are done once."""
    pad = spec.pad_value if pad is None else pad
    ratios = [s_out / s_in for s_out, s_in in zip(spec.spacing_mm, spacing_zyx)]
    # shrinking axes first, z before y before x, as in `resample`: a step along z copies whole
    # slices. Shrinking the most first sent lvo's 2x2 mm grid along y first on a 0.47 mm head,
    # two to three times slower on a 300-slice CT than z first.
    order = sorted(range(3), key=lambda ax: (ratios[ax] <= 1, ax))
    out, steps = array, []
    for axis in order:
        n_out, ratio = spec.shape[axis], ratios[axis]
        positions = centre[axis] + (np.arange(n_out) + 0.5 - n_out / 2) * ratio
        width = ratio if spec.antialias and ratio > 1 else 1.0
        steps.append((axis, n_out, round(ratio, 9), round(float(centre[axis]), 6), width > 1, pad))
        key = ("physical", *steps)
        if cache is not None and key in cache:
            out = cache[key]
            continue
        out = _apply_band(out, axis, *_band(out.shape[axis], positions, width), pad)
        if cache is not None:
            cache[key] = out
    return np.ascontiguousarray(out, dtype=np.float32)


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
    if spec.physical:
        out = resample_physical(array, spacing_zyx, spec, body_centre(array, spec, cache), cache)
    else:
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


def to_source_slice(index: int, model_depth: int, n_slices: int, spec: InputSpec | None = None,
                    centre_z: float | None = None, spacing_z: float | None = None) -> int:
    """Map a slice index of the model's input back to the decoded volume's slice: for a
    physical ``spec``, through the box's placement (``centre_z``, and the volume's
    ``spacing_z``); else edge to edge."""
    if model_depth <= 1:
        return 0
    if spec is not None and spec.physical and centre_z is not None and spacing_z:
        position = centre_z + (index + 0.5 - model_depth / 2) * spec.spacing_mm[0] / spacing_z
    else:
        position = (index + 0.5) * n_slices / model_depth - 0.5
    return int(min(n_slices - 1, max(0, round(position))))
