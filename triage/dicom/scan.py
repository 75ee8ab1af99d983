"""Find the image series in a study folder from headers alone (no pixel data is read).

Routing runs on what this module returns, so a study whose series no model applies to
is answered without decoding a single pixel.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from triage.errors import CorruptFileError, EmptyStudyError

# Objects that carry no image volume to triage: reports, segmentations, presentation
# states, key-object selections, radiotherapy objects, waveforms, documents.
NON_IMAGE_MODALITIES = frozenset(
    {"SR", "SEG", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "REG",
     "FID", "DOC", "ECG", "HD", "PLAN", "RWV", "AU", "RESP"})


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


def _dicom_files(root: Path) -> list[str]:
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or name.upper() == "DICOMDIR":
                continue
            names.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(names)


def read_header(root: Path, rel: str) -> Dataset:
    try:
        return pydicom.dcmread(root / rel, stop_before_pixels=True)
    except InvalidDicomError:
        raise CorruptFileError("not a DICOM file (no DICM preamble)", path=rel) from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptFileError(f"unreadable DICOM header ({type(exc).__name__})", path=rel) from None


def _is_image_class(ds: Dataset) -> bool:
    sop = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    return sop is not None and "Image Storage" in getattr(sop, "name", "")


def _frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _contrast(ds: Dataset) -> bool:
    agent = str(ds.get("ContrastBolusAgent", "") or "").strip()
    if agent and agent.upper() not in {"NONE", "NO", "N"}:
        return True
    seq = ds.get("ContrastBolusAgentSequence")
    return bool(seq)


def _thickness(ds: Dataset) -> float | None:
    value = ds.get("SliceThickness")
    if value in (None, ""):
        shared = ds.get("SharedFunctionalGroupsSequence")
        try:
            value = shared[0].PixelMeasuresSequence[0].SliceThickness
        except (TypeError, IndexError, AttributeError, KeyError):
            return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def scan_study(root: str | Path) -> list[SeriesInfo]:
    """Group the image objects under ``root`` by series; skip non-image objects.

    Raises :class:`EmptyStudyError` when the folder holds no image series and
    :class:`CorruptFileError` naming the first file whose header cannot be read.
    """
    root = Path(root)
    if not root.is_dir():
        raise EmptyStudyError("study folder does not exist or is not a folder", path=str(root.name or root))
    files = _dicom_files(root)
    if not files:
        raise EmptyStudyError("study folder holds no files", path=root.name)
    series: dict[str, SeriesInfo] = {}
    for rel in files:
        ds = read_header(root, rel)
        modality = str(ds.get("Modality", "") or "").upper()
        if "Rows" not in ds and _is_image_class(ds):
            raise CorruptFileError("image object whose header ends before its pixel description "
                                   "(file cut short?)", path=rel)
        if "Rows" not in ds or modality in NON_IMAGE_MODALITIES:
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:
            raise CorruptFileError("image object without SeriesInstanceUID", path=rel)
        info = series.get(uid)
        if info is None:
            info = series[uid] = SeriesInfo(
                series_instance_uid=uid, modality=modality,
                body_part=str(ds.get("BodyPartExamined", "") or "").upper(),
                description=str(ds.get("SeriesDescription", "") or ""),
                contrast=_contrast(ds), slice_thickness=_thickness(ds), n_slices=0,
                rows=int(ds.Rows), columns=int(ds.Columns), root=root)
        info.files.append(rel)
        info.headers.append(ds)
        info.n_slices += _frames(ds)
    if not series:
        raise EmptyStudyError(f"no image series among {len(files)} file(s)", path=root.name)
    return sorted(series.values(), key=lambda s: s.series_instance_uid)
