"""The input guard: is a series inside what a model was trained on?

At registration (``pipelines/register.py``) every training study is measured with
:func:`measure` and the ranges go into the manifest as the model's :class:`Envelope`. At
serving the same measurement runs on each decoded series, once, and :meth:`Envelope.check`
says in our words what lies outside, if anything. A finding from a series outside its
model's envelope is reported with ``assessable: false``: its probability stands, it is never
positive and never raises a priority.

What is measured (all from the image, never from a tag the sender wrote):

- the field of view (mm, per axis) and the voxel spacing;
- the intensity distribution inside the body (25th, 50th, 75th percentiles, in HU for CT and
  in stored units otherwise);
- the fraction of the body the model's input window clips (a 15-bit radiograph read through
  a 12-bit window is mostly clipped);
- for a model that reads contrast studies, the enhancement of the brightest vessels: a
  study tagged as an angiogram whose vessels read 40 HU has no contrast in it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from triage.dicom.decode import PLANAR, Volume
from triage.errors import ManifestError

# How far outside its training range a value may lie and still count as inside. Ranges are
# widened by this fraction of their own span, and at least by the floors below, so that a
# model trained on one field of view still takes a slightly larger head.
RELATIVE_MARGIN = 0.25
FIELD_FLOOR = 0.15  # fraction of the value
INTENSITY_FLOOR = 0.10  # fraction of the model's window width
HU_FLOOR = 25.0  # CT: at least this many HU
SATURATION_FLOOR = 0.10  # absolute fraction of the body
# A series finer than anything trained on is resampled onto the model's grid; one coarser by
# more than this factor has lost detail that cannot be put back.
SPACING_FACTOR = 1.5
# Enhanced blood (iodine) reads well above any unenhanced soft tissue, which stays under about
# 80 HU; a contrast study whose brightest vessels read less than this is not one.
MIN_VESSEL_HU = 120.0
QUANTILES = (25, 50, 75)  # the bulk of the body; the window check covers the tails
MAX_REASON = 300  # the event schema's limit on not_assessable_reason
_SAMPLE = (64, 160, 160)  # at most this many sampled voxels per axis
_BODY_HU = -500.0  # CT: above this is the patient (or the table); lungs are filled in
_BONE_HU = 700.0
_NEAR_BONE_MM = 6.0


@dataclass(frozen=True)
class Measures:
    """One series as the guard sees it; computed once per series, shared by its models."""

    field_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    spacing_known: bool
    planar: bool  # a projection radiograph: its z axis is not an extent
    in_hu: bool  # CT: intensities are Hounsfield units
    quantiles: tuple[float, float, float]
    sample: np.ndarray = field(repr=False)  # intensities of the sampled body voxels
    vessel_hu: float | None  # CT only: how bright the blood is (see _vessel_hu)

    def saturated(self, window: tuple[float, float]) -> float:
        """Fraction of the body outside ``window`` (clipped to its lower or upper value)."""
        if self.sample.size == 0:
            return 1.0
        return float(np.mean((self.sample < window[0]) | (self.sample > window[1])))

    def summary(self, window: tuple[float, float]) -> dict[str, Any]:
        """What the envelope records for one training study."""
        return {"field_mm": list(self.field_mm), "spacing_mm": list(self.spacing_mm),
                "quantiles": list(self.quantiles), "saturated": self.saturated(window),
                "vessel_hu": self.vessel_hu}


def measure(array: np.ndarray, spacing_zyx: tuple[float, float, float], modality: str,
            z_positions: np.ndarray | None = None, spacing_known: bool = True,
            posterior_rows: bool = True) -> Measures:
    """Measure one decoded series (``array`` in HU for CT). Works on a strided sample of at
    most about 1.6 M voxels, so it costs the same for any series size. ``posterior_rows``:
    the row index grows towards the patient's back, as in a standard axial series."""
    shape = array.shape
    if z_positions is not None and len(z_positions) > 1:
        z_extent = float(z_positions[-1] - z_positions[0]) + float(np.min(np.diff(z_positions)))
    else:
        z_extent = shape[0] * spacing_zyx[0]
    field_mm = (z_extent, shape[1] * spacing_zyx[1], shape[2] * spacing_zyx[2])
    steps = [max(1, -(-n // cap)) for n, cap in zip(shape, _SAMPLE)]
    sample = np.asarray(array[::steps[0], ::steps[1], ::steps[2]], dtype=np.float32)
    planar = modality.upper() in PLANAR or shape[0] == 1
    ct = modality.upper() == "CT" and not planar
    if ct:
        body = _fill(sample > _BODY_HU)
    else:  # a radiograph is all patient; other modalities have no absolute scale to threshold
        body = np.ones(sample.shape, bool)
    values = sample[body]
    quantiles = tuple(float(v) for v in np.percentile(values, QUANTILES)) if values.size else (0.0, 0.0, 0.0)
    vessel = None
    if ct and values.size:
        vessel = _vessel_hu(sample, body, [s * k for s, k in zip(spacing_zyx, steps)], posterior_rows)
    return Measures(field_mm=tuple(round(v, 2) for v in field_mm), spacing_mm=tuple(float(v) for v in spacing_zyx),
                    spacing_known=spacing_known, planar=planar, in_hu=ct, quantiles=quantiles, sample=values, vessel_hu=vessel)


def measure_volume(volume: Volume) -> Measures:
    posterior = bool(np.asarray(volume.direction)[1, 1] >= 0) if volume.direction is not None else True
    return measure(volume.array, volume.spacing_zyx, volume.modality, volume.z_positions, volume.spacing_known,
                   posterior)


def _between(m: np.ndarray, axis: int) -> np.ndarray:
    """True where ``m`` holds somewhere before and somewhere after, along ``axis``: between
    the first and the last place it holds (two argmax passes; a running maximum is slower)."""
    n = m.shape[axis]
    first = np.expand_dims(np.argmax(m, axis=axis), axis)
    last = n - 1 - np.expand_dims(np.argmax(np.flip(m, axis=axis), axis=axis), axis)
    index = np.arange(n).reshape([n if a == axis else 1 for a in range(m.ndim)])
    return (index >= first) & (index <= last) & np.expand_dims(m.any(axis=axis), axis)


def _fill(mask: np.ndarray) -> np.ndarray:
    """Fill what lies between body on both sides, along rows and along columns (the lungs,
    the airway, the sinuses), leaving the air around the patient out."""
    return mask | (_between(mask, 1) & _between(mask, 2))


_MIN_MEDIASTINUM = 200  # sampled voxels: below this the series holds no chest to measure
# Air inside the body: a chest's lungs fill a third or more of it; a head's mastoid cells and
# sinuses a few percent, and the brain between them is no mediastinum.
_MIN_LUNG_SHARE = 0.08


def _vessel_hu(sample: np.ndarray, body: np.ndarray, step_mm: list[float], posterior_rows: bool) -> float | None:
    """How bright the blood is. In a chest: the upper quartile of the soft tissue between the
    lungs, in the front of the mediastinum (heart chambers, aortic root, pulmonary trunk; the
    spine behind is left out). Elsewhere (a head): the brightest soft tissue inside the bone and
    not next to it (a head holder or the table can read brighter than unenhanced blood)."""
    if not posterior_rows:
        sample, body = sample[:, ::-1], body[:, ::-1]
    lungs = body & (sample < -400)
    if lungs.sum() >= _MIN_LUNG_SHARE * body.sum():  # enough air inside to be a chest: is it closed?
        lungs &= ~_open_air(sample)
    if lungs.sum() >= _MIN_LUNG_SHARE * body.sum():
        mediastinum = body & ~lungs & _between(lungs, 2) & (sample >= -20) & (sample <= 600)
        rows = np.arange(sample.shape[1])[None, :, None]
        any_row = mediastinum.any(axis=2, keepdims=True)
        first = np.where(any_row, rows, sample.shape[1]).min(axis=1, keepdims=True)
        last = np.where(any_row, rows, -1).max(axis=1, keepdims=True)
        front = mediastinum & (rows <= first + 0.6 * (last - first))
        if front.sum() >= _MIN_MEDIASTINUM:
            return float(np.percentile(sample[front], 75))
    bone = sample > _BONE_HU
    soft = body & (sample >= -100) & (sample <= 600) & ~_dilate(bone, step_mm, _NEAR_BONE_MM)
    inside = soft & _between(bone, 1) & _between(bone, 2)  # within the skull: not the scalp or a holder
    soft = inside if inside.sum() >= _MIN_MEDIASTINUM else soft
    return float(np.percentile(sample[soft], 99.9)) if soft.any() else None


def _open_air(sample: np.ndarray) -> np.ndarray:
    """Air that reaches the sides of the image through air (3-D, face-connected): the room, and
    the gap between a head and its holder or a patient and the table, which `_fill` counts as
    inside the body. Lungs are closed by the chest wall; the trachea leaves only through the
    top or bottom slice, which does not count."""
    import SimpleITK as sitk

    air = np.ascontiguousarray(sample <= _BODY_HU, dtype=np.uint8)
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(air), False))
    sides = np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(),
                                      labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    return np.isin(labels, sides[sides > 0])


def _dilate(mask: np.ndarray, step_mm: list[float], radius_mm: float) -> np.ndarray:
    """``mask`` grown by about ``radius_mm`` along each axis (a box, in sampled voxels)."""
    out = mask.copy()
    for axis, step in enumerate(step_mm):
        r = int(min(mask.shape[axis] - 1, round(radius_mm / step)))
        grown = out.copy()
        for k in range(1, r + 1):
            lead = [slice(None)] * 3
            lag = [slice(None)] * 3
            lead[axis], lag[axis] = slice(k, None), slice(None, -k)
            grown[tuple(lag)] |= out[tuple(lead)]
            grown[tuple(lead)] |= out[tuple(lag)]
        out = grown
    return out


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float

    def widened(self, floor: float) -> tuple[float, float]:
        pad = max(RELATIVE_MARGIN * (self.hi - self.lo), floor)
        return self.lo - pad, self.hi + pad

    @classmethod
    def of(cls, values: list[float]) -> "Range":
        return cls(float(min(values)), float(max(values)))

    @classmethod
    def parse(cls, value: Any, where: str, what: str) -> "Range":
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ManifestError(f"envelope {what} must be [low, high]", path=where) from None
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
            raise ManifestError(f"envelope {what} must be finite with low <= high", path=where)
        return cls(lo, hi)


AXES = ("z", "y", "x")


@dataclass(frozen=True)
class Envelope:
    """The inputs a model was trained on, as ranges over its training studies."""

    n_studies: int
    field_mm: tuple[Range, Range, Range]
    spacing_mm: tuple[Range, Range, Range]
    quantiles: tuple[Range, Range, Range]
    saturated: Range
    vessel_hu: Range | None = None  # set for models that read contrast studies

    @classmethod
    def from_measures(cls, rows: list[dict[str, Any]], contrast: bool) -> "Envelope":
        """The envelope of training studies' :meth:`Measures.summary` rows."""
        if not rows:
            raise ValueError("an envelope needs at least one training study")
        per_axis = lambda key: tuple(Range.of([r[key][i] for r in rows]) for i in range(3))  # noqa: E731
        vessels = [r["vessel_hu"] for r in rows if r.get("vessel_hu") is not None]
        return cls(n_studies=len(rows), field_mm=per_axis("field_mm"), spacing_mm=per_axis("spacing_mm"),
                   quantiles=per_axis("quantiles"), saturated=Range.of([r["saturated"] for r in rows]),
                   vessel_hu=Range.of(vessels) if contrast and vessels else None)

    def to_dict(self) -> dict[str, Any]:
        pair = lambda r: [round(r.lo, 4), round(r.hi, 4)]  # noqa: E731
        out = {"n_studies": self.n_studies,
               "field_mm": {a: pair(r) for a, r in zip(AXES, self.field_mm)},
               "spacing_mm": {a: pair(r) for a, r in zip(AXES, self.spacing_mm)},
               "intensity_percentiles": {f"p{q:02d}": pair(r) for q, r in zip(QUANTILES, self.quantiles)},
               "saturated_fraction": pair(self.saturated)}
        if self.vessel_hu is not None:
            out["vessel_hu"] = pair(self.vessel_hu)
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "Envelope":
        if not isinstance(data, dict):
            raise ManifestError("envelope must be a mapping", path=where)
        try:
            axes = lambda key: tuple(Range.parse(data[key][a], where, f"{key}.{a}") for a in AXES)  # noqa: E731
            quantiles = tuple(Range.parse(data["intensity_percentiles"][f"p{q:02d}"], where, f"p{q:02d}")
                              for q in QUANTILES)
            env = cls(n_studies=int(data["n_studies"]), field_mm=axes("field_mm"), spacing_mm=axes("spacing_mm"),
                      quantiles=quantiles,
                      saturated=Range.parse(data["saturated_fraction"], where, "saturated_fraction"),
                      vessel_hu=Range.parse(data["vessel_hu"], where, "vessel_hu") if "vessel_hu" in data else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"envelope is incomplete ({type(exc).__name__}: {exc})", path=where) from None
        if env.n_studies < 1:
            raise ManifestError("envelope n_studies must be at least 1", path=where)
        return env

    def check(self, m: Measures, window: tuple[float, float]) -> list[str]:
        """What lies outside the envelope, in our words; empty when the series is inside."""
        out = []
        if not m.spacing_known:
            out.append("pixel spacing not stated")
        else:
            axes = (1, 2) if m.planar else (0, 1, 2)
            for i in axes:
                lo, hi = self.field_mm[i].widened(FIELD_FLOOR * self.field_mm[i].hi)
                if not lo <= m.field_mm[i] <= hi:
                    what = "field of view" if i else "coverage"
                    out.append(f"{what} {m.field_mm[i]:.0f} mm ({AXES[i]}; trained {self.field_mm[i].lo:.0f}–"
                               f"{self.field_mm[i].hi:.0f})")
                    break
            for i in axes:
                if m.spacing_mm[i] > SPACING_FACTOR * self.spacing_mm[i].hi:
                    out.append(f"spacing {m.spacing_mm[i]:.2f} mm ({AXES[i]}; trained up to {self.spacing_mm[i].hi:.2f})")
                    break
        floor = INTENSITY_FLOOR * (window[1] - window[0])
        if m.in_hu:
            floor = max(floor, HU_FLOOR)
        for q, r, v in zip(QUANTILES, self.quantiles, m.quantiles):
            lo, hi = r.widened(floor)
            if not lo <= v <= hi:
                out.append(f"body intensity p{q} {v:.0f} (trained {r.lo:.0f}–{r.hi:.0f})")
                break
        saturated = m.saturated(window)
        lo, hi = self.saturated.widened(SATURATION_FLOOR)
        if not lo <= saturated <= hi:
            out.append(f"{saturated:.0%} of the body clipped by the input window (trained {self.saturated.lo:.0%}–"
                       f"{self.saturated.hi:.0%})")
        return out

    def check_contrast(self, m: Measures) -> str | None:
        """For a contrast model: a study tagged contrast whose vessels are not enhanced."""
        if self.vessel_hu is None or m.vessel_hu is None:
            return None
        floor = max(MIN_VESSEL_HU, self.vessel_hu.lo - max(RELATIVE_MARGIN * self.vessel_hu.lo, 50.0))
        if m.vessel_hu < floor:
            return f"tagged contrast, brightest vessels {m.vessel_hu:.0f} HU"
        return None


# A not-assessable reason's kind, for metrics: the first kind whose phrase the reason holds.
REASON_KINDS = {"no_envelope": "has no training envelope", "contrast": "tagged contrast",
                "spacing_unknown": "pixel spacing not stated", "field_of_view": "field of view",
                "coverage": "coverage", "spacing": "spacing", "intensity": "body intensity",
                "window": "clipped by the input window"}


def reason_kind(reason: str) -> str:
    text = reason.split(": ", 1)[-1] if reason.startswith("outside ") else reason
    return next((kind for kind, phrase in REASON_KINDS.items() if phrase in text), "other")


def assess(name: str, envelope: Envelope | None, m: Measures, window: tuple[float, float]) -> str | None:
    """None when ``m`` is inside ``name``'s envelope, else the reason to report."""
    if envelope is None:
        return f"{name} has no training envelope"
    contrast = envelope.check_contrast(m)
    if contrast:
        return contrast
    outside = envelope.check(m, window)
    if not outside:
        return None
    reason = f"outside {name}'s training envelope: {'; '.join(outside)}"
    return reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 1] + "…"
