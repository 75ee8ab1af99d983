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


def simpleitk_resample(array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """SimpleITK's linear resample onto the edge-aligned grid our models use: what
    preprocessing ran before it resampled each axis on its own (the same values, to rounding)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    size = (int(shape[2]), int(shape[1]), int(shape[0]))
    spacing = tuple(array.shape[2 - i] / size[i] for i in range(3))
    origin = tuple(-0.5 + 0.5 * spacing[i] for i in range(3))
    return sitk.GetArrayFromImage(sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin, spacing,
                                                image.GetDirection(), float(array.min()), sitk.sitkFloat32))
