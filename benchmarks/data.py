"""Benchmark inputs, generated reproducibly and cached under results/tmp/: a synthetic
head-CT-like series written with pydicom, once uncompressed and once JPEG 2000 lossless; the
same voxels labelled as a contrast chest CT angiogram (routed to three models); and one chest
radiograph."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (CTImageStorage, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian,
                         JPEG2000Lossless, generate_uid)


def _phantom(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Stored values (HU + 1024) of an ellipsoid head: air, scalp, skull, brain, ventricles."""
    z, y, x = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    r = np.sqrt((x / 0.75) ** 2 + (y / 0.9) ** 2 + (z / 1.1) ** 2)
    hu = np.full(r.shape, -1000.0, np.float32)
    hu[r < 1.0] = 40
    hu[r < 0.95] = 1000
    hu[r < 0.88] = 32
    hu[(np.abs(x) > 0.05) & (np.abs(x) < 0.25) & (np.abs(y) < 0.35) & (np.abs(z) < 0.3)] = 5
    hu += rng.normal(0, 6, hu.shape).astype(np.float32)
    return np.clip(hu + 1024, 0, 4095).astype(np.uint16)


# What the headers say, per kind of study: (BodyPartExamined, SeriesDescription, ContrastBolusAgent)
KINDS = {"head": ("HEAD", "BENCH HEAD", None), "chest_cta": ("CHEST", "BENCH CTA CHEST", "IOPAMIDOL")}


def write_series(folder: Path, n: int, size: int, *, compress: bool, seed: int = 0, kind: str = "head") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    stored = _phantom(n, size, rng)
    body_part, description, agent = KINDS[kind]
    study, series, frame = (generate_uid(entropy_srcs=[f"bench-{kind}-{seed}-{k}"]) for k in ("study", "series", "frame"))
    paths = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[series, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.BodyPartExamined, ds.SeriesDescription = "CT", body_part, description
        if agent:
            ds.ContrastBolusAgent = agent
        ds.PatientName, ds.PatientID = "Bench^Phantom", "BENCH"
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-120.0, -120.0, i * 0.625]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [240.0 / size, 240.0 / size]
        ds.SliceThickness = 0.625
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = stored[i].tobytes()
        if compress:
            ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_radiograph(folder: Path, rows: int = 2500, cols: int = 2048, seed: int = 0) -> Path:
    """One 12-bit chest radiograph (DX, MONOCHROME2, 0.17 mm detector pixels): lungs darker
    than the mediastinum and the soft tissue around them, with detector noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, cols), indexing="ij")
    image = np.full((rows, cols), 2600.0, np.float32)
    for side in (-1, 1):
        image[((x - side * 0.45) / 0.32) ** 2 + ((y + 0.05) / 0.7) ** 2 < 1] = 900
    image[np.abs(x) > 0.92] = 300  # air beside the patient
    image += rng.normal(0, 20, image.shape).astype(np.float32)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"bench-dx-{seed}"])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = (generate_uid(entropy_srcs=[f"bench-dx-{seed}-{k}"])
                                                 for k in ("study", "series"))
    ds.Modality, ds.BodyPartExamined, ds.SeriesDescription = "DX", "CHEST", "BENCH CHEST PA"
    ds.PatientName, ds.PatientID = "Bench^Phantom", "BENCH"
    ds.ImagerPixelSpacing = [0.17, 0.17]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.clip(image, 0, 4095).astype(np.uint16).tobytes()
    path = folder / "dx.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def cached(folder: Path, write) -> Path:
    """``folder``, written by ``write(folder)`` once and marked complete."""
    marker = folder / ".complete"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        write(folder)
        marker.touch()
    return folder


def series_pair(root: Path, n: int, size: int) -> tuple[Path, Path]:
    """(uncompressed folder, JPEG 2000 lossless folder), generated once per size."""
    return tuple(cached(root / f"head-{n}x{size}-{'j2k' if compress else 'raw'}",
                        lambda folder, c=compress: write_series(folder, n, size, compress=c))
                 for compress in (False, True))


def chest_cta(root: Path, n: int, size: int) -> Path:
    return cached(root / f"chest-cta-{n}x{size}", lambda folder: write_series(folder, n, size, compress=False,
                                                                               kind="chest_cta"))


def radiograph(root: Path) -> Path:
    return cached(root / "dx-2500x2048", write_radiograph)
