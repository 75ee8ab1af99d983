"""Decode one series into a :class:`Volume`: values after Modality LUT (HU for CT) and geometry.

Design for speed: geometry and the size budget are settled from the headers that
:mod:`triage.dicom.scan` already read, the output array is allocated once, and files are
decoded by a small thread pool that writes straight into it. Compressed files go through the
codec :mod:`triage.dicom.codecs` picks, which releases the GIL where one can.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from triage.dicom.codecs import plugin_for
from triage.dicom.scan import NATIVE_SYNTAXES, ScanLimits, SeriesInfo, _int, quiet_pydicom, safe_name
from triage.errors import (CorruptFileError, InconsistentSeriesError, MissingGeometryError,
                           MixedOrientationError, UnevenSpacingError, UnsupportedImageError,
                           VolumeTooLargeError)

DEFAULT_MAX_VOXELS = ScanLimits.max_voxels  # one budget: the scan's, which Settings sets for both
ORIENTATION_TOLERANCE = 1e-3
SPACING_TOLERANCE = 0.05  # relative deviation between gaps of one spacing
TILT_TOLERANCE_DEG = 0.5
# projection radiography: one image of the whole patient, no slice geometry
PLANAR = frozenset({"CR", "DX", "MG", "RG", "XA", "RF", "IO", "PX"})
# A projection image has no physical unit: its declared range (see declared_range) is read
# onto 0..DISPLAY_MAX, bright = dense, whatever its bit depth, VOI or photometric interpretation.
DISPLAY_MAX = 4095.0


@dataclass
class Volume:
    """One series as a 3-D array indexed ``[z, y, x]`` (slices sorted along the normal).

    ``array`` is float32, or int16 where every value is a whole number that fits (most CT:
    the same Hounsfield units in half the memory); read it as numbers, never by its dtype.
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
    # Positions (mm, along the slice normal, from the first slice) when the spacing is not
    # uniform, as in sequential head CT; preprocessing resamples on them. None: uniform.
    z_positions: np.ndarray | None = None
    # False for a radiograph that states no pixel spacing (some CR writers store 0\\0): it is
    # read on a nominal 1 mm grid, and the input guard marks its findings not assessable
    spacing_known: bool = True

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


def _frame_geometry(ds: Dataset, file: int, rel: str, n_frames: int) -> list[_Frame]:
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

        try:
            position = lookup("PlanePositionSequence", "ImagePositionPatient")
            orientation = lookup("PlaneOrientationSequence", "ImageOrientationPatient")
            slope = lookup("PixelValueTransformationSequence", "RescaleSlope")
            intercept = lookup("PixelValueTransformationSequence", "RescaleIntercept")
            spacings = (lookup("PixelMeasuresSequence", "PixelSpacing"), ds.get("ImagerPixelSpacing"),
                        ds.get("NominalScannedPixelSpacing"))
        except Exception:  # pydicom could not convert a value: the sender's text is never echoed
            raise CorruptFileError("unreadable rescale or geometry value", path=rel) from None
        sp = None
        for spacing in spacings:
            sp = _floats(spacing, 2) if spacing is not None else None
            if sp is not None and np.all(sp > 0):
                break  # some writers store 0\0 when the spacing is unknown
            sp = None
        try:
            thickness = lookup("PixelMeasuresSequence", "SliceThickness")
        except Exception:
            thickness = None
        try:
            frame = _Frame(
                file=file, index=i,
                position=_floats(position, 3) if position is not None else None,
                orientation=_floats(orientation, 6) if orientation is not None else None,
                slope=float(slope) if slope not in (None, "") else 1.0,
                intercept=float(intercept) if intercept not in (None, "") else 0.0,
                spacing_yx=(float(sp[0]), float(sp[1])) if sp is not None else None,
                thickness=None)
        except (TypeError, ValueError):
            raise CorruptFileError("unreadable rescale or geometry value", path=rel) from None
        if not math.isfinite(frame.slope) or frame.slope == 0 or abs(frame.slope) > 1e6:
            raise CorruptFileError("RescaleSlope is zero, not finite or beyond any scanner's range", path=rel)
        if not math.isfinite(frame.intercept) or abs(frame.intercept) > 1e7:
            raise CorruptFileError("RescaleIntercept is not finite or beyond any scanner's range", path=rel)
        for value in (frame.position, frame.orientation):
            if value is not None and not np.all(np.isfinite(value)):
                raise MissingGeometryError("ImagePositionPatient or ImageOrientationPatient is not finite", path=rel)
        if frame.orientation is not None and not _orthonormal(frame.orientation):
            raise MissingGeometryError("ImageOrientationPatient is not two perpendicular unit vectors", path=rel)
        try:
            frame.thickness = float(thickness) if thickness not in (None, "") else None
        except (TypeError, ValueError):
            frame.thickness = None
        frames.append(frame)
    return frames


def _orthonormal(iop: np.ndarray) -> bool:
    r0, r1, r2, c0, c1, c2 = (float(v) for v in iop)  # per slice: plain floats beat numpy on six values
    return (abs(math.sqrt(r0 * r0 + r1 * r1 + r2 * r2) - 1) < 0.01 and abs(math.sqrt(c0 * c0 + c1 * c1 + c2 * c2) - 1)
            < 0.01 and abs(r0 * c0 + r1 * c1 + r2 * c2) < 0.01)


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
            raise MixedOrientationError(f"orientation differs from that of {files[frames[0].file]}",
                                        path=files[f.file])
    row, col = ref[:3], ref[3:]
    normal = np.cross(row, col)
    positions = np.array([f.position @ normal for f in frames])
    order = np.argsort(positions, kind="stable")
    frames = [frames[i] for i in order]
    positions = positions[order]
    direction = np.column_stack([row, col, normal])
    if len(frames) == 1:
        return frames, direction, float(frames[0].thickness or 1.0)
    shear = _tilt_degrees(np.array([f.position for f in frames]), normal)
    if shear > TILT_TOLERANCE_DEG:
        raise UnsupportedImageError(f"gantry tilt of {shear:.1f} degrees (slices sheared along the normal); "
                                    "tilted series are not resampled here", path=files[frames[-1].file])
    gaps = np.diff(positions)
    if np.min(gaps) <= 1e-4:
        i = int(np.argmin(gaps))
        raise UnevenSpacingError(
            f"two slices at the same position ({positions[i]:.2f} mm along the normal)",
            path=files[frames[i + 1].file])
    median = float(np.median(gaps))
    odd = _odd_gap(gaps)
    if odd is not None:
        raise UnevenSpacingError(
            f"gap of {gaps[odd]:.2f} mm where the series spacing is {median:.2f} mm "
            "(missing or extra slice)", path=files[frames[odd + 1].file])
    return frames, direction, median


def _tilt_degrees(positions: np.ndarray, normal: np.ndarray) -> float:
    """How far the line through the slice positions leans from the slice normal."""
    step = positions[-1] - positions[0]
    length = float(np.linalg.norm(step))
    if length < 1e-6:
        return 0.0
    return math.degrees(math.acos(min(1.0, abs(float(step @ normal)) / length)))


def _spacing_runs(gaps: np.ndarray) -> list[int]:
    """A label per gap: gaps within the spacing tolerance of each other share one."""
    labels, levels = [], []
    for g in gaps:
        for k, level in enumerate(levels):
            if abs(g - level) <= max(SPACING_TOLERANCE * level, 0.01):
                labels.append(k)
                break
        else:
            levels.append(float(g))
            labels.append(len(levels) - 1)
    return labels


def _odd_gap(gaps: np.ndarray) -> int | None:
    """The first gap that is a missing or extra slice, or None.

    A series may change spacing a few times, as sequential head CT does (e.g. 2.5 mm through
    the posterior fossa, 5 mm above): each spacing then runs for two gaps or more, and a
    single gap may bridge two runs when it lies between them. A lone gap unlike both of
    its neighbours is a slice missing or inserted; more than three spacings is no design."""
    labels = _spacing_runs(gaps)
    if len(set(labels)) == 1:
        return None
    runs: list[tuple[int, int]] = []  # (label, start)
    for i, label in enumerate(labels):
        if not runs or runs[-1][0] != label:
            runs.append((label, i))
    if len(set(labels)) > 3:
        return runs[1][1]
    odd = []
    for k, (label, start) in enumerate(runs):
        end = runs[k + 1][1] if k + 1 < len(runs) else len(gaps)
        if end - start > 1:
            continue
        if 0 < start and end < len(gaps):  # between two others: fine only as a step from one to the other
            if not min(gaps[start - 1], gaps[end]) < gaps[start] < max(gaps[start - 1], gaps[end]):
                odd.append(start)
        elif labels.count(label) == 1:  # at an end, and like no other gap of the series
            odd.append(start)
    return min(odd) if odd else None


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
    """Decode ``series`` into a :class:`Volume`: Hounsfield units for CT; for a
    projection radiograph, its declared range read onto 0..``DISPLAY_MAX`` (bright = dense).

    Raises a :class:`~triage.errors.DecodeError` subclass naming the file and the reason.
    The voxel budget is checked before any per-frame work and before any pixel is allocated.
    """
    files = [safe_name(f) for f in series.files]
    counts = []
    for i, ds in enumerate(series.headers):
        rows, cols, n_frames = (_int(ds, k, d) for k, d in (("Rows", 0), ("Columns", 0), ("NumberOfFrames", 1)))
        if (rows, cols) != (series.rows, series.columns):
            raise InconsistentSeriesError(f"image size differs from the rest of the series "
                                          f"({series.rows}x{series.columns})", path=files[i])
        if n_frames is None or n_frames < 1:
            raise CorruptFileError("NumberOfFrames is not a positive whole number", path=files[i])
        counts.append(n_frames)
    n = sum(counts)
    voxels = n * series.rows * series.columns
    if voxels > max_voxels:
        raise VolumeTooLargeError(
            f"series of {n}x{series.rows}x{series.columns} = {voxels:,} voxels is over the "
            f"budget of {max_voxels:,}", path=files[0])
    frames: list[_Frame] = []
    for i, ds in enumerate(series.headers):
        frames.extend(_frame_geometry(ds, i, files[i], counts[i]))
    frames, direction, z_spacing = _sort_frames(frames, files, _spacing_between(series.headers))
    planar = n == 1 and series.modality.upper() in PLANAR
    spacing_yx = (1.0, 1.0) if planar and frames[0].spacing_yx is None else _pixel_spacing(frames, files)
    z_positions = _z_positions(frames, direction)
    compressed = any(NATIVE_SYNTAXES.get(_syntax(ds), (None, "big"))[1] != "little" for ds in series.headers)
    whole = not planar and not compressed and _whole_units(series.headers, frames)
    out = np.empty((n, series.rows, series.columns), dtype=np.int16 if whole else np.float32)
    slots: dict[int, list[tuple[int, _Frame]]] = {}
    for z, f in enumerate(frames):
        slots.setdefault(f.file, []).append((z, f))

    def decode_file(i: int) -> None:
        rel = files[i]
        ds = series.headers[i]
        offset = series.pixel_offsets[i] if i < len(series.pixel_offsets) else None
        try:
            # a single frame of whole units is read into its own plane of the output, and
            # rescaled there in place (int16 arithmetic on the stored bits is exact, see _rescale)
            into = out[slots[i][0][0]] if whole and counts[i] == 1 else None
            arr = _read_native(series.root / series.files[i], ds, offset, into)
            native = arr is not None  # masked to BitsStored: within the range _whole_units counted on
            if arr is None:
                with quiet_pydicom():
                    ds = pydicom.dcmread(series.root / series.files[i])
                    plugin = plugin_for(str(ds.file_meta.get("TransferSyntaxUID", "")))
                    if plugin:  # one file alone gets the codec's own threads (read by imagecodecs only)
                        ds.pixel_array_options(decoding_plugin=plugin, j2k_threads=1 if len(slots) > 1 else threads)
                    arr = ds.pixel_array
        except (NotImplementedError, RuntimeError) as exc:
            raise UnsupportedImageError(f"cannot decode pixel data ({type(exc).__name__})", path=rel) from None
        except MemoryError:
            raise CorruptFileError("pixel data too large to decode", path=rel) from None
        except Exception as exc:  # any codec failure on a sender's bytes is that file's fault
            raise CorruptFileError(f"pixel data is truncated or corrupt ({type(exc).__name__})", path=rel) from None
        arr = _to_gray(arr, ds)
        if counts[i] == 1:
            arr = arr[np.newaxis]
        if arr.shape[:3] != (counts[i], series.rows, series.columns):
            raise CorruptFileError(f"pixel data does not hold the {counts[i]}x{series.rows}x{series.columns} "
                                   "the header declares", path=rel)
        monochrome1 = str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1"
        for z, f in slots[i]:
            plane = out[z]
            slope, intercept = f.slope, f.intercept
            if monochrome1 or planar:
                lo, hi = declared_range(ds, f.slope, f.intercept)
            if monochrome1:  # low values are bright: flip on the declared range, never the image's own
                slope, intercept = -slope, lo + hi - intercept
            if planar:  # one scale for every film: 12-, 14-, 15- and 16-bit read alike
                scale = DISPLAY_MAX / (hi - lo)
                slope, intercept = slope * scale, (intercept - lo) * scale
            if whole and not native and (arr.dtype.kind not in "ui" or not -32768 <= int(arr[f.index].min())
                                         + intercept and int(arr[f.index].max()) + intercept <= 32767):
                raise CorruptFileError("pixel values beyond what BitsStored declares", path=rel)
            _rescale(arr[f.index], slope, intercept, plane)
            # integers times a slope and plus an intercept within the bounds checked on the
            # header cannot leave float32's range; floating-point pixel data can hold anything
            if arr.dtype.kind == "f" and not np.isfinite(plane).all():
                raise CorruptFileError("pixel values are not finite after RescaleSlope and RescaleIntercept",
                                       path=rel)

    # Native pixels are a read and one pass of arithmetic, which threads did not speed up
    # (measured: 60 x 256² slower, 300 x 512² within noise); codecs release the GIL and do.
    if threads > 1 and len(slots) > 1 and compressed:
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
                  modality=series.modality, z_positions=z_positions,
                  spacing_known=not (planar and frames[0].spacing_yx is None))


def _whole_units(headers: list[Dataset], frames: list[_Frame]) -> bool:
    """Whether every value of the series is a whole number within int16 once rescaled: a
    slope of 1, whole intercepts, and what BitsStored can hold within range. Most CT is (12
    bits, intercept -1024); it is then decoded to int16, the same numbers in half the memory."""
    if any(f.slope != 1.0 or f.intercept != int(f.intercept) for f in frames):
        return False
    lowest, highest = min(f.intercept for f in frames), max(f.intercept for f in frames)
    if lowest < -32768 or highest > 32767:
        return False
    for ds in headers:
        bits = _int(ds, "BitsAllocated", 0)
        stored = _int(ds, "BitsStored", bits) or bits
        signed = _int(ds, "PixelRepresentation", 0) == 1
        if bits not in (8, 16) or _int(ds, "SamplesPerPixel", 1) != 1 or not 0 < stored <= bits:
            return False
        lo, hi = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
        if lo + lowest < -32768 or hi + highest > 32767:
            return False
    return True


def _rescale(stored: np.ndarray, slope: float, intercept: float, out: np.ndarray) -> None:
    """``out = stored * slope + intercept``, in as few passes as the values allow: float32, or
    int16 where :func:`_whole_units` holds (the sum is then exact and in range)."""
    if out.dtype == np.int16:
        if stored.dtype == np.uint16:  # int16 arithmetic wraps, and the true sum is in range: exact
            stored = stored.view(np.int16)
        np.add(stored, np.int16(intercept), out=out, casting="unsafe")
        return
    if slope == 1.0:
        np.add(stored, np.float32(intercept), out=out, casting="unsafe")
        return
    np.multiply(stored, np.float32(slope), out=out, casting="unsafe")
    if intercept != 0.0:
        out += np.float32(intercept)


def _pixel_spacing(frames: list[_Frame], files: list[str]) -> tuple[float, float]:
    """One in-plane spacing for the series: never a silent 1 mm (a radiograph without one is
    read as ``spacing_known=False``), never two spacings."""
    first = frames[0].spacing_yx
    if first is None:
        raise MissingGeometryError("no PixelSpacing (nor ImagerPixelSpacing) above zero", path=files[frames[0].file])
    for f in frames:
        if f.spacing_yx is None or any(abs(a - b) > 1e-3 * b for a, b in zip(f.spacing_yx, first)):
            raise InconsistentSeriesError("PixelSpacing differs from the rest of the series, or is missing",
                                          path=files[f.file])
    return first


def _z_positions(frames: list[_Frame], direction: np.ndarray) -> np.ndarray | None:
    """Slice positions along the normal when the spacing is not uniform, else None."""
    if len(frames) < 3 or any(f.position is None for f in frames):
        return None
    along = np.array([f.position @ direction[:, 2] for f in frames])
    along -= along[0]
    gaps = np.diff(along)
    if np.all(np.abs(gaps - np.median(gaps)) <= np.maximum(SPACING_TOLERANCE * np.median(gaps), 0.01)):
        return None
    return along


def declared_range(ds: Dataset, slope: float, intercept: float) -> tuple[float, float]:
    """The range of values an image declares, in output units (after the rescale): its window
    when it has one, its VOI LUT's input range, else what BitsStored can hold; never the
    pixels' own minimum and maximum, which change with the patient."""
    def first_number(keyword: str) -> float | None:
        try:  # the read too: a value that is no number may raise as it is read
            value = ds.get(keyword)
            if value is None:
                return None
            number = float(value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        return number if math.isfinite(number) else None

    centre, width = first_number("WindowCenter"), first_number("WindowWidth")
    if centre is not None and width is not None and width > 1:  # PS3.3 C.11.2.1.2's linear window
        return centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
    lut = ds.get("VOILUTSequence")
    if lut:
        desc = lut[0].get("LUTDescriptor")
        try:
            entries, first = int(desc[0]) or 65536, int(desc[1])
            if entries > 1:
                return float(first), float(first + entries - 1)
        except (TypeError, ValueError, IndexError):
            pass
    stored = _int(ds, "BitsStored", 16) or 16
    signed = _int(ds, "PixelRepresentation", 0) == 1
    lo, hi = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
    lo, hi = lo * slope + intercept, hi * slope + intercept
    return (min(lo, hi), max(lo, hi)) if hi != lo else (lo, lo + 1.0)


_PIXEL_TAG = b"\xe0\x7f\x10\x00"


def _syntax(ds) -> str:
    return str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))


def _read_native(path, ds: Dataset, offset: int | None, into: np.ndarray | None = None) -> np.ndarray | None:
    """Read uncompressed little-endian grey pixels straight from the file, or None.

    ``offset`` is where the header parse stopped, at the pixel element; its tag and length
    are checked against the layout the header declares. Anything else goes to pydicom.
    ``into``: an int16 plane to read 16-bit pixels into (returned as a view of it), saving a
    buffer and a copy."""
    explicit, order = NATIVE_SYNTAXES.get(_syntax(ds), (None, None))
    head_len = None if order != "little" else (12 if explicit else 8)  # the pixel element's own header
    bits, signed = _int(ds, "BitsAllocated", 0), _int(ds, "PixelRepresentation", 0)
    if offset is None or head_len is None or _int(ds, "SamplesPerPixel", 1) != 1 or bits not in (8, 16):
        return None
    frames, rows, cols = _int(ds, "NumberOfFrames", 1), _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    count = frames * rows * cols
    nbytes = count * bits // 8
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        head = os.pread(fd, head_len, offset)
        length = int.from_bytes(head[-4:], "little")
        if len(head) != head_len or head[:4] != _PIXEL_TAG or length not in (nbytes, nbytes + (nbytes & 1)):
            return None
        dtype = np.dtype(("<i" if signed else "<u") + str(bits // 8))
        if into is not None and into.dtype.itemsize == dtype.itemsize and into.size == count:
            arr = into.reshape(-1).view(dtype)
        else:
            arr = np.empty(count, dtype=dtype)
        if os.preadv(fd, [arr], offset + head_len) != nbytes:  # straight into the array, unbuffered
            return None
    finally:
        os.close(fd)
    stored = _int(ds, "BitsStored", bits) or bits
    if stored < bits:  # drop bits above BitsStored, sign-extending signed values
        shift = bits - stored
        if signed:
            np.left_shift(arr, shift, out=arr)
            np.right_shift(arr, shift, out=arr)
        else:
            np.bitwise_and(arr, (1 << stored) - 1, out=arr)
    return arr.reshape((frames, rows, cols) if frames > 1 else (rows, cols))
