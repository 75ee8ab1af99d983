"""The ways a user would otherwise load a DICOM series into an HU volume, for comparison."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def ours(folder: Path, threads: int = 2) -> np.ndarray:
    from triage.dicom import decode_series, scan_study

    (series,) = scan_study(folder)
    return decode_series(series, threads=threads).array


def pydicom_file_by_file(folder: Path) -> np.ndarray:
    import pydicom

    slices = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
        position = ds.get("ImagePositionPatient") or [0, 0, len(slices)]
        slices.append((float(position[2]), hu))
    slices.sort(key=lambda s: s[0])
    return np.stack([s[1] for s in slices])


def simpleitk_series_reader(folder: Path) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def monai_load_image(folder: Path) -> np.ndarray:
    from monai.transforms import LoadImage

    return np.asarray(LoadImage(reader="PydicomReader", image_only=True)(str(folder)))


def raw_bytes_limit(folder: Path) -> np.ndarray:
    """The floor: the same files' bytes into one numpy buffer, no DICOM parsing at all."""
    paths = sorted(folder.glob("*.dcm"))
    sizes = [p.stat().st_size for p in paths]
    out = np.empty(sum(sizes), np.uint8)
    pos = 0
    for p, n in zip(paths, sizes):
        with open(p, "rb") as f:
            f.readinto(memoryview(out)[pos:pos + n])
        pos += n
    return out
