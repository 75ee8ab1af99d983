"""Find the image series in a study folder from headers alone (no pixel data is read).

Every byte here is a sender's, so the work is bounded before it is done: only regular
files inside the folder are opened, the folder's file count and size are checked first,
a deflated dataset's inflated size is measured before pydicom inflates it, and nesting is
bounded. What cannot be used is isolated: a file that is not DICOM is skipped and named,
a file whose header is broken fails its own series, and the other series go on. Nothing
read from a tag is echoed in a message, except UIDs and codes mapped onto a closed list.

Routing runs on what this module returns, so a study whose series no model applies to
is answered without decoding a single pixel.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import stat
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID_dictionary

from triage.dicom.header import Header, read_fast
from triage.events import is_uid
from triage.errors import (CorruptFileError, DecodeError, EmptyStudyError, MixedStudiesError, StudyTooLargeError,
                           TriageError, UnsupportedImageError, VolumeTooLargeError)
from triage.errors import printable as safe_name

# Objects that carry no image volume to triage: reports, segmentations, presentation
# states, key-object selections, radiotherapy objects, waveforms, documents.
NON_IMAGE_MODALITIES = frozenset(
    {"SR", "SEG", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "REG",
     "FID", "DOC", "ECG", "HD", "PLAN", "RWV", "AU", "RESP"})
# DICOM's defined terms for Modality (PS3.3 C.7.3.1.1.1); anything else is shown as "other".
DICOM_MODALITIES = NON_IMAGE_MODALITIES | frozenset(
    {"AR", "ASMT", "BDUS", "BI", "BMD", "CR", "CT", "CTPROTOCOL", "DG", "DX", "EPS", "ES", "GM", "HC", "IO",
     "IOL", "IVOCT", "IVUS", "KER", "LEN", "LS", "MG", "MR", "M3D", "NM", "OAM", "OCT", "OP", "OPM", "OPT",
     "OPTBSV", "OPTENF", "OPV", "OSS", "OT", "POS", "PT", "PX", "RF", "RG", "RTINTENT", "RTRAD", "RTSEGANN",
     "SM", "SMR", "SRF", "STAIN", "TEXTUREMAP", "TG", "US", "VA", "XA", "XAPROTOCOL", "XC"})
CROSS_SECTIONAL = frozenset({"CT", "MR", "PT", "NM"})

# Contrast: ContrastBolusAgent (0018,0010) is free text. These values, upper-cased and
# stripped of punctuation, mean "no contrast"; any other non-empty value, a non-empty
# ContrastBolusAgentSequence, or a ContrastBolusRoute naming a route means contrast.
NO_CONTRAST = frozenset({"", "NONE", "NO", "N", "NA", "N A", "0", "NIL", "NULL", "NO CONTRAST", "NON CONTRAST",
                         "NONCONTRAST", "WITHOUT", "WITHOUT CONTRAST", "NATIVE", "PLAIN", "UNENHANCED"})
# The description speaks for contrast only where it says so in words.
_DESCRIPTION_CONTRAST = ("CTA", "ANGIO", "CONTRAST", "C+", "POST CON", "ARTERIAL", "VENOUS", "PORTAL")
_DESCRIPTION_PLAIN = ("NON CONTRAST", "NONCONTRAST", "NON-CONTRAST", "W/O", "WITHOUT", "NO CONTRAST", "PLAIN", "NATIVE")

_DEFLATED = "1.2.840.10008.1.2.1.99"
# uncompressed transfer syntaxes: (explicit VR, byte order)
NATIVE_SYNTAXES = {"1.2.840.10008.1.2": (False, "little"), "1.2.840.10008.1.2.1": (True, "little"),
           "1.2.840.10008.1.2.2": (True, "big")}


@dataclass(frozen=True)
class ScanLimits:
    """Budgets checked before the data they guard is read. The defaults fit the largest real
    studies (a 3,000-slice CT, a 2,000-frame enhanced MR) with room to spare."""

    max_files: int = 20_000
    max_bytes: int = 16 << 30
    max_voxels: int = 512 * 512 * 4000  # per file and per series: frames x rows x columns x samples
    max_frames: int = 50_000  # per file, checked before any per-frame work
    max_inflated_bytes: int = 2 << 30  # a deflated dataset, once inflated
    max_depth: int = 16  # sequences within sequences


@dataclass
class SeriesInfo:
    """What routing needs to know about one series, read from headers."""

    series_instance_uid: str
    modality: str
    body_part: str
    description: str
    contrast: bool
    slice_thickness: float | None
    n_slices: int
    rows: int
    columns: int
    root: Path
    files: list[str] = field(default_factory=list)  # relative to root
    headers: list[Dataset] = field(default_factory=list, repr=False)
    pixel_offsets: list[int] = field(default_factory=list, repr=False)  # where each file's pixel element starts


@dataclass
class StudyScan:
    """A study folder as far as its headers tell: the readable series, the series that
    failed on their headers (UID, error), and notes on what was skipped, in our words."""

    series: list[SeriesInfo]
    failed: list[tuple[str, TriageError]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def modality_label(modality: str) -> str:
    """A Modality shown in our words: a DICOM defined term, or "other"."""
    return modality if modality in DICOM_MODALITIES else "other"


def list_files(root: Path, limits: ScanLimits = ScanLimits()) -> tuple[list[str], list[str]]:
    """Regular files under ``root`` (relative, sorted) and notes on what was skipped.

    Nothing is opened here: FIFOs, sockets and devices are skipped, and so is a symlink
    that resolves outside the folder. The file count and total size are checked first."""
    real_root = root.resolve()
    names, notes, total = [], [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            try:
                info = os.lstat(path)
                if stat.S_ISLNK(info.st_mode):
                    target = Path(path).resolve()
                    if real_root not in target.parents:
                        notes.append(f"{safe_name(rel)}: skipped, a link that leads outside the study folder")
                        continue
                    info = os.stat(path)
            except OSError:
                notes.append(f"{safe_name(rel)}: skipped, cannot be read")
                continue
            if not stat.S_ISREG(info.st_mode):
                notes.append(f"{safe_name(rel)}: skipped, not a regular file")
                continue
            names.append(rel)
            total += info.st_size
            if len(names) > limits.max_files:
                raise StudyTooLargeError(f"more than {limits.max_files:,} files in the study folder")
            if total > limits.max_bytes:
                raise StudyTooLargeError(f"study folder holds more than {limits.max_bytes:,} bytes")
    return sorted(names), notes


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """pydicom's warnings and log lines quote tag values; none of them may reach a log."""
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    for name in ("pydicom", "openjpeg", "pylibjpeg", "libjpeg", "rle", "imagecodecs"):
        logger = logging.getLogger(name)
        if logger.level != logging.CRITICAL:  # setLevel clears every logger's cache: once, not per file
            logger.setLevel(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def read_header(root: Path, rel: str, limits: ScanLimits = ScanLimits()) -> tuple[Dataset | Header, int]:
    """The header of one file (no pixel data) and the offset of its pixel element: read by
    :func:`~triage.dicom.header.read_fast` where it can, else by pydicom."""
    path = root / rel
    name = safe_name(rel)
    try:
        fast = read_fast(path, limits.max_depth, name)
    except OSError:
        fast = None  # pydicom's path names what cannot be read
    if fast is not None:
        return fast
    with quiet_pydicom():
        try:
            with open(path, "rb") as fp:
                deflated = _check_inflated_size(fp, limits, name)
                # values over 1 MiB stay on disk until asked for (a private element may claim gigabytes)
                ds = pydicom.dcmread(fp, stop_before_pixels=True, defer_size=None if deflated else 1 << 20)
                offset = fp.tell()
        except InvalidDicomError:
            raise CorruptFileError("not a DICOM file (no DICM preamble)", path=name) from None
        except RecursionError:
            raise CorruptFileError("sequences nested too deeply", path=name) from None
        except MemoryError:
            raise CorruptFileError("header too large to read", path=name) from None
        except TriageError:
            raise
        except Exception as exc:  # any library failure on a sender's bytes is that file's fault
            raise CorruptFileError(f"unreadable DICOM header ({type(exc).__name__})", path=name) from None
        if _depth(ds) > limits.max_depth:
            raise CorruptFileError(f"sequences nested deeper than {limits.max_depth}", path=name)
    return ds, offset


def _check_inflated_size(fp, limits: ScanLimits, name: str) -> bool:
    """A deflated dataset is inflated here in bounded chunks, and counted, before pydicom
    inflates it whole into memory. Returns whether the file is deflated."""
    head = fp.read(144)
    fp.seek(0)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        return False
    meta_end = 144 + int.from_bytes(head[140:144], "little")  # (0002,0000) group length, explicit VR LE
    fp.seek(144)
    meta = fp.read(max(0, meta_end - 144))
    if _DEFLATED.encode() not in meta:
        fp.seek(0)
        return False
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    try:
        while not inflater.eof and (chunk := fp.read(1 << 20)):
            while chunk and not inflater.eof:
                out = inflater.decompress(chunk, 1 << 20)
                if not out and inflater.unconsumed_tail == chunk:
                    break  # no progress: a broken stream, which pydicom reports
                size += len(out)
                chunk = inflater.unconsumed_tail
                if size > limits.max_inflated_bytes:
                    raise CorruptFileError(f"deflated dataset inflates past {limits.max_inflated_bytes:,} bytes",
                                           path=name)
    except zlib.error:
        pass  # pydicom reports the broken stream
    fp.seek(0)
    return True


def _depth(ds: Dataset) -> int:
    deepest, stack = 0, [(ds, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        for tag in list(item.keys()):  # raw elements: a deferred value is never loaded to look at it
            if item.get_item(tag, keep_deferred=True).VR == "SQ" and item[tag].value:
                stack.extend((child, depth + 1) for child in item[tag].value)
    return deepest


def _get(ds: Dataset, keyword: str):
    """A tag's value, or None when pydicom cannot even convert it (the text is never echoed)."""
    try:
        return ds.get(keyword)
    except Exception:
        return None


def _int(ds: Dataset, keyword: str, default: int) -> int | None:
    """An integer tag, or None when it holds something else (never echoed)."""
    try:
        value = ds.get(keyword)
        if value in (None, ""):
            return default
        number = float(value)
    except Exception:
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


def _is_image_class(ds: Dataset) -> bool:
    sop = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    entry = UID_dictionary.get(str(sop or "").rstrip("\0 "))  # never UID(...).name: it logs an invalid value
    return entry is not None and "Image Storage" in entry[0]


def _words(value) -> str:
    text = "".join(c if c.isalnum() or c == "+" else " " for c in str(value or "").upper())
    return " ".join(text.split())


def is_contrast(agent, has_sequence: bool, route, description) -> bool:
    """Contrast from the headers, by the vocabulary above."""
    if has_sequence:
        return True
    if _words(agent) not in NO_CONTRAST:
        return True
    if _words(route) not in NO_CONTRAST:
        return True
    text = f" {_words(description)} "
    if any(f" {w} " in text for w in (_words(p) for p in _DESCRIPTION_PLAIN)):
        return False
    return any(f" {w} " in text or (w.endswith("+") and w in text) for w in (_words(p) for p in _DESCRIPTION_CONTRAST))


def _contrast(ds: Dataset) -> bool:
    return is_contrast(_get(ds, "ContrastBolusAgent"), bool(_get(ds, "ContrastBolusAgentSequence")),
                       _get(ds, "ContrastBolusRoute"), _get(ds, "SeriesDescription"))


def _thickness(ds: Dataset) -> float | None:
    value = _get(ds, "SliceThickness")
    if value in (None, ""):
        shared = ds.get("SharedFunctionalGroupsSequence")
        try:
            value = shared[0].PixelMeasuresSequence[0].SliceThickness
        except (TypeError, IndexError, AttributeError, KeyError, ValueError):  # ValueError: not a number
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _spacing_from_positions(headers: list[Dataset]) -> float | None:
    """The median distance between slice positions along the normal, for a series whose
    SliceThickness cannot be read."""
    try:
        iop = np.asarray([float(v) for v in headers[0].ImageOrientationPatient], float)
        normal = np.cross(iop[:3], iop[3:])
        along = sorted(float(np.asarray([float(v) for v in ds.ImagePositionPatient], float) @ normal)
                       for ds in headers)
    except (AttributeError, TypeError, ValueError, IndexError):
        return None
    gaps = np.diff(along)
    gaps = gaps[gaps > 1e-4]
    return float(np.median(gaps)) if gaps.size and np.all(np.isfinite(gaps)) else None


def check_image_header(ds: Dataset, path: Path, rel: str, offset: int, limits: ScanLimits) -> int:
    """Header-level checks of one image object; returns its frame count. Raises a typed
    error naming the file; nothing of the pixel data is read."""
    name = safe_name(rel)
    size = os.path.getsize(path)
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    frames, samples = _int(ds, "NumberOfFrames", 1), _int(ds, "SamplesPerPixel", 1)
    bits, stored = _int(ds, "BitsAllocated", 0), _int(ds, "BitsStored", 0)
    if None in (rows, cols, frames, samples, bits, stored) or min(rows, cols, frames, samples) < 1:
        raise CorruptFileError("image dimensions are not positive whole numbers", path=name)
    if frames > limits.max_frames or rows * cols * frames * samples > limits.max_voxels:
        raise VolumeTooLargeError(f"declares {frames:,} frames of {rows}x{cols}, over the budget of "
                                  f"{limits.max_voxels:,} voxels", path=name)
    if bits not in (1, 8, 16, 32, 64) or stored > bits:
        raise CorruptFileError("BitsStored exceeds BitsAllocated, or BitsAllocated is not 1, 8, 16, 32 or 64",
                               path=name)
    modality = str(ds.get("Modality", "") or "").upper()
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if modality in CROSS_SECTIONAL | {"CR", "DX", "MG"} and (samples != 1 or photometric not in
                                                             ("MONOCHROME1", "MONOCHROME2")):
        raise UnsupportedImageError(f"a {modality} image that is not greyscale (one sample, MONOCHROME1/2)",
                                    path=name)
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if ts in NATIVE_SYNTAXES:
        declared = _pixel_length(path, offset, size, *NATIVE_SYNTAXES[ts])
        expected = rows * cols * frames * samples * bits // 8
        if declared is None:
            raise CorruptFileError("image object without pixel data (file cut short?)", path=name)
        if declared not in (expected, expected + (expected & 1)) or offset + declared > size:
            raise CorruptFileError("pixel data length does not match rows x columns x frames, or the file "
                                   "is cut short", path=name)
    elif ts != _DEFLATED and offset >= size:  # a deflated file's offsets are in the inflated stream
        raise CorruptFileError("image object without pixel data (file cut short?)", path=name)
    return frames


def _pixel_length(path: Path, offset: int, size: int, explicit: bool, order: str) -> int | None:
    """The length the pixel element declares, read from its own element header (8 or 12 bytes)."""
    if offset + 8 > size:
        return None
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        head = os.pread(fd, 12, offset)
    finally:
        os.close(fd)
    if head[:4] != (b"\xe0\x7f\x10\x00" if order == "little" else b"\x7f\xe0\x00\x10"):
        return None
    if explicit:
        return int.from_bytes(head[8:12], order) if len(head) == 12 else None
    return int.from_bytes(head[4:8], order)


def survey_study(root: str | Path, limits: ScanLimits = ScanLimits()) -> StudyScan:
    """Group the image objects under ``root`` by series; skip and name what is not usable.

    Raises only for the study as a whole: :class:`EmptyStudyError` when the folder holds no
    file, :class:`StudyTooLargeError` past a budget, :class:`MixedStudiesError` when it
    holds more than one study."""
    root = Path(root)
    if not root.is_dir():
        raise EmptyStudyError("study folder does not exist or is not a folder", path=safe_name(root.name or str(root)))
    files, notes = list_files(root, limits)
    if not files:
        raise EmptyStudyError("study folder holds no files", path=safe_name(root.name))
    series: dict[str, SeriesInfo] = {}
    failed: dict[str, TriageError] = {}
    studies: dict[str, str] = {}
    seen: dict[str, tuple[str, str]] = {}  # SOP Instance UID -> (file, digest)
    unreadable: list[TriageError] = []
    for rel in files:
        name = safe_name(rel)
        try:
            ds, offset = read_header(root, rel, limits)
        except CorruptFileError as exc:
            unreadable.append(exc)
            reason = str(exc).split(": ", 1)[-1]
            notes.append(f"{name}: skipped, {reason}")
            continue
        modality = str(_get(ds, "Modality") or "").upper()
        has_rows = "Rows" in ds
        uid = str(_get(ds, "SeriesInstanceUID") or "")
        if not has_rows and not _get(ds, "SOPClassUID") and not modality:
            notes.append(f"{name}: skipped, a DICOM file with no SOP class, modality or image (garbage after "
                         "its preamble?)")
            continue
        if (not has_rows and not _is_image_class(ds)) or modality in NON_IMAGE_MODALITIES:
            continue
        if uid and not is_uid(uid):
            unreadable.append(CorruptFileError("SeriesInstanceUID is not a UID", path=name))
            notes.append(f"{name}: skipped, SeriesInstanceUID is not a UID")
            continue
        if not uid or not has_rows:
            broken = CorruptFileError("image object whose header ends before its series and pixel description "
                                      "(file cut short?)" if not has_rows else "image object without "
                                      "SeriesInstanceUID", path=name)
            unreadable.append(broken)
            notes.append(f"{name}: skipped, {str(broken).split(': ', 1)[-1]}")
            continue
        study_uid = str(_get(ds, "StudyInstanceUID") or "")
        if study_uid:
            studies.setdefault(study_uid, name)
            if len(studies) > 1:
                first = next(iter(studies.values()))
                raise MixedStudiesError(f"holds a second study beside that of {first}; one folder is one study",
                                        path=name)
        sop = str(_get(ds, "SOPInstanceUID") or "")
        if sop:
            digest = hashlib.sha256((root / rel).read_bytes()).hexdigest() if sop in seen else ""
            if sop in seen:
                other, other_digest = seen[sop]
                other_digest = other_digest or hashlib.sha256((root / other).read_bytes()).hexdigest()
                if digest == other_digest:
                    notes.append(f"{name}: dropped, the same instance as {other} sent twice")
                    continue
                failed.setdefault(uid, CorruptFileError(f"shares its SOP Instance UID with {other} but differs "
                                                        "from it", path=name))
                continue
            seen[sop] = (rel, "")
        if uid in failed:
            continue
        try:
            n_frames = check_image_header(ds, root / rel, rel, offset, limits)
        except DecodeError as exc:
            failed[uid] = exc
            series.pop(uid, None)
            continue
        info = series.get(uid)
        if info is None:
            info = series[uid] = SeriesInfo(
                series_instance_uid=uid, modality=modality,
                body_part=str(_get(ds, "BodyPartExamined") or "").upper(),
                description=str(_get(ds, "SeriesDescription") or ""),
                contrast=_contrast(ds), slice_thickness=_thickness(ds), n_slices=0,
                rows=_int(ds, "Rows", 0), columns=_int(ds, "Columns", 0), root=root)
        info.files.append(rel)
        info.headers.append(ds)
        info.pixel_offsets.append(offset)
        info.n_slices += n_frames
        if info.n_slices * info.rows * info.columns > limits.max_voxels:
            failed[uid] = VolumeTooLargeError(f"series is over the budget of {limits.max_voxels:,} voxels", path=name)
            series.pop(uid)
    for info in series.values():
        if info.slice_thickness is None and len(info.headers) > 1:
            info.slice_thickness = _spacing_from_positions(info.headers)
    if not series and not failed and unreadable:
        raise unreadable[0]  # no image could be read, and something was broken
    if not series and not failed:
        raise EmptyStudyError(f"no image series among {len(files)} file(s)", path=safe_name(root.name))
    return StudyScan(series=sorted(series.values(), key=lambda s: s.series_instance_uid),
                     failed=sorted(failed.items()), notes=notes)


def scan_study(root: str | Path, limits: ScanLimits = ScanLimits()) -> list[SeriesInfo]:
    """The readable image series under ``root``; raises the first series' error when none is."""
    survey = survey_study(root, limits)
    if not survey.series:
        raise survey.failed[0][1]
    return survey.series
