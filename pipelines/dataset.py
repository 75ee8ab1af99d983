"""Read a dataset folder (see pipelines/synth/write.py for the layout) into model inputs.

Studies go through the runtime's own decoder and ``triage.preprocess`` (not a copy), so a
model trains on exactly the tensors it will be served.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from triage.dicom import decode_series, scan_study
from triage.preprocess import InputSpec, body_centre, preprocess, resample, resample_physical


@dataclass(frozen=True)
class Item:
    study_id: str
    label: int
    image: np.ndarray  # [1, z, y, x] float32
    mask: np.ndarray  # [1, z, y, x] float32 in {0, 1}
    lesion_ml: float
    slice_thickness_mm: float
    source_slices: int
    kind: str = ""  # finding subtype from labels.csv (e.g. subdural), for per-kind reporting


def read_labels(dataset: Path) -> list[dict]:
    with open(dataset / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def load_study(dataset: Path, row: dict, spec: InputSpec) -> Item:
    folder = dataset / "studies" / row["study_id"]
    if folder.is_dir():
        (series,) = scan_study(folder)[:1]
        vol = decode_series(series)
        array, spacing = vol.array, vol.spacing_zyx
    else:  # <study_id>.nii.gz
        img = sitk.ReadImage(str(dataset / "studies" / f"{row['study_id']}.nii.gz"))
        array = sitk.GetArrayFromImage(img).astype(np.float32)
        sx, sy, sz = img.GetSpacing()
        spacing = (sz, sy, sx)
    shared: dict = {}  # the image's box placement, found once for the image and its mask
    image = preprocess(array, spacing, spec, cache=shared)[0]
    mask = np.zeros_like(image)
    if row.get("mask"):
        m = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / row["mask"]))).astype(np.float32)
        if spec.physical:  # the image's own box: placed on the image, never on the lesion
            m = resample_physical(m, spacing, spec, body_centre(array, spec, shared), pad=0.0)
        else:
            m = resample(m, spacing, spec.shape, spec.antialias)
        mask = (m > 0.25).astype(np.float32)[np.newaxis]
    return Item(row["study_id"], int(row["label"]), image, mask, float(row.get("lesion_ml") or 0),
                float(row.get("slice_thickness_mm") or 0), array.shape[0], row.get("kind") or "")


def _load_and_cache(dataset: Path, spec: InputSpec, cache: Path, row: dict) -> Item:
    path = cache / f"{row['study_id']}.npz"
    if path.exists():
        z = np.load(path)
        return Item(row["study_id"], int(row["label"]), z["image"], z["mask"], float(row.get("lesion_ml") or 0),
                    float(row.get("slice_thickness_mm") or 0), int(z["source_slices"]), row.get("kind") or "")
    item = load_study(dataset, row, spec)
    np.savez_compressed(path, image=item.image, mask=item.mask, source_slices=item.source_slices)
    return item


def pool_map(job, rows: list, desc: str, progress: bool = True, workers: int | None = None) -> list:
    """``job`` over ``rows`` in order, in a spawned process pool (in this process for one
    worker), with a progress bar; by default a worker per 8 rows, up to the core count."""
    import os
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial
    from multiprocessing import get_context

    from tqdm import tqdm

    workers = workers or min(os.cpu_count() or 1, max(1, len(rows) // 8))
    bar = partial(tqdm, total=len(rows), desc=desc, unit="study", disable=not progress)
    if workers == 1:
        return list(bar(map(job, rows)))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        return list(bar(pool.map(job, rows, chunksize=4)))


def load_dataset(dataset: Path, spec: InputSpec, progress: bool = True, workers: int | None = None) -> list[Item]:
    """All studies, preprocessed (in a process pool the first time); cached beside the dataset
    per input spec."""
    import os
    from functools import partial

    key = hashlib.sha256(repr(spec).encode()).hexdigest()[:12]
    cache = dataset / ".cache" / key
    cache.mkdir(parents=True, exist_ok=True)
    rows = read_labels(dataset)
    todo = sum(not (cache / f"{r['study_id']}.npz").exists() for r in rows)
    workers = workers or min(os.cpu_count() or 1, max(1, todo // 8))
    return pool_map(partial(_load_and_cache, dataset, spec, cache), rows, f"loading {dataset.name}", progress, workers)
