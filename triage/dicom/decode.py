"""Decode one series into a :class:`Volume`: values after Modality LUT (HU for CT) and geometry.

Design for speed: geometry and the size budget are settled from the headers that
:mod:`triage.dicom.scan` already read, the output array is allocated once, and files are
decoded by a small thread pool (the codecs release the GIL) that writes straight into it.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from triage.dicom.scan import SeriesInfo
from triage.errors import (CorruptFileError, InconsistentSeriesError, MissingGeometryError,
                           MixedOrientationError, UnevenSpacingError, UnsupportedImageError,
                           VolumeTooLargeError)

DEFAULT_MAX_VOXELS = 512 * 512 * 2000
ORIENTATION_TOLERANCE = 1e-3
SPACING_TOLERANCE = 0.05  # relative deviation from the median gap


@dataclass
class Volume:
    """One series as a 3-D array indexed ``[z, y, x]`` (slices sorted along the normal).

    ``spacing_zyx`` is in mm in array order. ``origin`` is the LPS position (mm) of voxel
    ``[0, 0, 0]``. ``direction`` is a 3×3 matrix whose columns are the patient-space
    directions of the x (column), y (row) and z (slice) axes, as in ITK.
    """

    array: np.ndarray
    spacing_zyx: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    series_instance_uid: str
    modality: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]


@dataclass
class _Frame:
    file: int
    index: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    slope: float
    intercept: float
    spacing_yx: tuple[float, float] | None
    thickness: float | None


def _floats(value, n: int) -> np.ndarray | None:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) else None


def _first(seq_parent: Dataset | None, seq: str) -> Dataset | None:
    if seq_parent is None:
        return None
    value = seq_parent.get(seq)
    return value[0] if value else None


def _frame_geometry(ds: Dataset, file: int, rel: str) -> list[_Frame]:
    n_frames = int(ds.get("NumberOfFrames") or 1)
    shared = _first(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) != n_frames:
        raise InconsistentSeriesError(
            f"{len(per_frame)} per-frame groups for {n_frames} frames", path=rel)
    frames = []
    for i in range(n_frames):
        groups = [g for g in (per_frame[i] if per_frame else None, shared) if g is not None]

        def lookup(seq: str, attr: str):
            for group in groups:
                item = _first(group, seq)
                if item is not None and attr in item:
                    return item.get(attr)
            return ds.get(attr)

        position = lookup("PlanePositionSequence", "ImagePositionPatient")
        orientation = lookup("PlaneOrientationSequence", "ImageOrientationPatient")
        slope = lookup("PixelValueTransformationSequence", "RescaleSlope")
        intercept = lookup("PixelValueTransformationSequence", "RescaleIntercept")
        sp = None
        for spacing in (lookup("PixelMeasuresSequence", "PixelSpacing"),
                        ds.get("ImagerPixelSpacing"), ds.get("NominalScannedPixelSpacing")):
            sp = _floats(spacing, 2) if spacing is not None else None
            if sp is not None and np.all(sp > 0):
                break  # some writers store 0\0 when the spacing is unknown
            sp = None
        thickness = lookup("PixelMeasuresSequence", "SliceThickness")
        try:
            frames.append(_Frame(
                file=file, index=i,
                position=_floats(position, 3) if position is not None else None,
                orientation=_floats(orientation, 6) if orientation is not None else None,
                slope=float(slope) if slope not in (None, "") else 1.0,
                intercept=float(intercept) if intercept not in (None, "") else 0.0,
                spacing_yx=(float(sp[0]), float(sp[1])) if sp is not None else None,
                thickness=float(thickness) if thickness not in (None, "") else None))
        except (TypeError, ValueError):
            raise CorruptFileError("unreadable rescale or geometry value", path=rel) from None
    return frames


def _sort_frames(frames: list[_Frame], files: list[str],
                 frame_spacing: float | None = None) -> tuple[list[_Frame], np.ndarray, float]:
    """Order frames along the slice normal; return them, the direction and the z spacing."""
    if len(frames) == 1 and (frames[0].position is None or frames[0].orientation is None):
        # A projection radiograph (DX/CR) or a lone image without patient geometry.
        f = frames[0]
        return frames, np.eye(3), float(f.thickness or 1.0)
    if (frame_spacing and len({f.file for f in frames}) == 1
            and all(f.position is None and f.orientation is None for f in frames)):
        # One multi-frame object stripped of its plane groups (seen in de-identified
        # enhanced MR): the frame order is the only order it states.
        return frames, np.eye(3), frame_spacing
    for f in frames:
        if f.position is None or f.orientation is None:
            raise MissingGeometryError(
                "slice has no ImagePositionPatient/ImageOrientationPatient, cannot order the series",
                path=files[f.file])
    ref = frames[0].orientation
    for f in frames:
        if np.max(np.abs(f.orientation - ref)) > ORIENTATION_TOLERANCE:
            raise MixedOrientationError(
                f"orientation {np.round(f.orientation, 3).tolist()} differs from "
                f"{np.round(ref, 3).tolist()} of {files[frames[0].file]}", path=files[f.file])
    row, col = ref[:3], ref[3:]
    normal = np.cross(row, col)
    positions = np.array([f.position @ normal for f in frames])
    order = np.argsort(positions, kind="stable")
    frames = [frames[i] for i in order]
    positions = positions[order]
    direction = np.column_stack([row, col, normal])
    if len(frames) == 1:
        return frames, direction, float(frames[0].thickness or 1.0)
    gaps = np.diff(positions)
    median = float(np.median(gaps))
    if np.min(gaps) <= 1e-4:
        i = int(np.argmin(gaps))
        raise UnevenSpacingError(
            f"two slices at the same position ({positions[i]:.2f} mm along the normal)",
            path=files[frames[i + 1].file])
    bad = np.abs(gaps - median) > max(SPACING_TOLERANCE * median, 0.01)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise UnevenSpacingError(
            f"gap of {gaps[i]:.2f} mm where the series spacing is {median:.2f} mm "
            "(missing or extra slice)", path=files[frames[i + 1].file])
    return frames, direction, median


def _spacing_between(headers: list[Dataset]) -> float | None:
    if len(headers) != 1:
        return None
    try:
        value = float(headers[0].get("SpacingBetweenSlices") or 0)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def _to_gray(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    if int(ds.get("SamplesPerPixel", 1)) == 1:
        return arr
    # Colour secondary captures: pydicom returns RGB; keep luminance.
    return arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114


def decode_series(series: SeriesInfo, *, max_voxels: int = DEFAULT_MAX_VOXELS,
                  threads: int = 2) -> Volume:
    """Decode ``series`` into a float32 :class:`Volume`.

    Raises a :class:`~triage.errors.DecodeError` subclass naming the file and the reason.
    The voxel budget is checked before any pixel is allocated.
    """
    files = series.files
    frames: list[_Frame] = []
    for i, ds in enumerate(series.headers):
        if int(ds.get("Rows", 0)) != series.rows or int(ds.get("Columns", 0)) != series.columns:
            raise InconsistentSeriesError(
                f"{ds.get('Rows')}x{ds.get('Columns')} pixels where the series has "
                f"{series.rows}x{series.columns}", path=files[i])
        frames.extend(_frame_geometry(ds, i, files[i]))
    n = len(frames)
    voxels = n * series.rows * series.columns
    if voxels > max_voxels:
        raise VolumeTooLargeError(
            f"series of {n}x{series.rows}x{series.columns} = {voxels:,} voxels is over the "
            f"budget of {max_voxels:,}", path=files[0])
    frames, direction, z_spacing = _sort_frames(frames, files, _spacing_between(series.headers))
    spacing_yx = frames[0].spacing_yx or (1.0, 1.0)
    out = np.empty((n, series.rows, series.columns), dtype=np.float32)
    slots: dict[int, list[tuple[int, _Frame]]] = {}
    for z, f in enumerate(frames):
        slots.setdefault(f.file, []).append((z, f))

    def decode_file(i: int) -> None:
        rel = files[i]
        try:
            ds = series.headers[i]
            arr = _read_native(series.root / rel, ds)
            if arr is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(series.root / rel)
                    arr = ds.pixel_array
        except (NotImplementedError, RuntimeError) as exc:
            raise UnsupportedImageError(f"cannot decode pixel data ({_short(exc)})", path=rel) from None
        except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise CorruptFileError(f"pixel data is truncated or corrupt ({_short(exc)})", path=rel) from None
        arr = _to_gray(arr, ds)
        n_frames = int(ds.get("NumberOfFrames") or 1)
        if n_frames == 1:
            arr = arr[np.newaxis]
        if arr.shape[:3] != (n_frames, series.rows, series.columns):
            raise CorruptFileError(f"pixel data has shape {arr.shape}, header says "
                                   f"{n_frames}x{series.rows}x{series.columns}", path=rel)
        invert = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
        for z, f in slots[i]:
            plane = out[z]
            np.multiply(arr[f.index], f.slope, out=plane, casting="unsafe")
            plane += f.intercept
            if invert:  # MONOCHROME1: low values are bright; flip so bright is high
                np.subtract(plane.max() + plane.min(), plane, out=plane)

    if threads > 1 and len(slots) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for fut in [pool.submit(decode_file, i) for i in slots]:
                fut.result()
    else:
        for i in slots:
            decode_file(i)
    first = frames[0]
    origin = tuple(float(v) for v in first.position) if first.position is not None else (0.0, 0.0, 0.0)
    return Volume(array=out, spacing_zyx=(z_spacing, spacing_yx[0], spacing_yx[1]), origin=origin,
                  direction=direction, series_instance_uid=series.series_instance_uid,
                  modality=series.modality)


_NATIVE_LE = {"1.2.840.10008.1.2": 8, "1.2.840.10008.1.2.1": 12}  # implicit, explicit VR little endian
_PIXEL_TAG = b"\xe0\x7f\x10\x00"


def _read_native(path, ds: Dataset) -> np.ndarray | None:
    """Read uncompressed little-endian grey pixels straight from the file, or None.

    The header (already parsed) gives the layout; the pixel element must be the file's last
    element, which is checked against its tag and length. Anything else goes to pydicom."""
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    head_len = _NATIVE_LE.get(ts)
    bits, signed = int(ds.get("BitsAllocated", 0)), int(ds.get("PixelRepresentation", 0))
    if head_len is None or int(ds.get("SamplesPerPixel", 1)) != 1 or bits not in (8, 16):
        return None
    frames, rows, cols = int(ds.get("NumberOfFrames") or 1), int(ds.Rows), int(ds.Columns)
    count = frames * rows * cols
    nbytes = count * bits // 8
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        for length in (nbytes, nbytes + (nbytes & 1)):  # odd lengths are padded to even
            offset = size - length
            if offset < head_len:
                continue
            f.seek(offset - head_len)
            head = f.read(head_len)
            if head[:4] == _PIXEL_TAG and int.from_bytes(head[-4:], "little") == length:
                f.seek(offset)
                arr = np.fromfile(f, dtype=("<i" if signed else "<u") + str(bits // 8), count=count)
                break
        else:
            return None
    if arr.size != count:
        return None
    stored = int(ds.get("BitsStored", bits))
    if stored < bits:  # drop bits above BitsStored, sign-extending signed values
        shift = bits - stored
        arr = (arr << shift) >> shift if signed else arr & ((1 << stored) - 1)
    return arr.reshape((frames, rows, cols) if frames > 1 else (rows, cols))


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]
