"""Write a phantom dataset in the one layout training reads (see pipelines/synth/write.py).

Each study has its own random stream, derived from (seed, index): the same seed gives the same
studies whatever the worker count, and different seeds give disjoint splits."""
from __future__ import annotations

import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from pipelines.synth.chest import chest_ct
from pipelines.synth.chest_v2 import chest_ct_v2
from pipelines.synth.head import head_ct, head_ct_fracture, head_ct_fracture_v2, head_ct_v2, head_cta, head_cta_v2
from pipelines.synth.radiograph import chest_radiograph
from pipelines.synth.radiograph_v2 import chest_radiograph_v2
from pipelines.synth.write import write_labels, write_study

# phantom kind (a model config's `phantom`) -> generator; positives carry that kind's finding
KINDS = {
    "head_ct": head_ct,
    # with normal variation and scanner physics (issue 23); the kinds above stay until every
    # model that trains on them is retrained on theirs
    "head_ct_v2": head_ct_v2,
    "head_ct_fracture_v2": head_ct_fracture_v2,
    "head_cta_v2": head_cta_v2,
    "head_cta": head_cta,
    "head_ct_fracture": head_ct_fracture,
    "chest_ct_pneumothorax": partial(chest_ct, finding="pneumothorax"),
    "chest_ct_pericardial_effusion": partial(chest_ct, finding="pericardial_effusion"),
    "ctpa_pe": partial(chest_ct, finding="pe"),
    "cta_aortic_dissection": partial(chest_ct, finding="aortic_dissection"),
    "chest_radiograph_pneumothorax": chest_radiograph,
    "chest_ct_pneumothorax_v2": partial(chest_ct_v2, finding="pneumothorax"),
    "chest_ct_pericardial_effusion_v2": partial(chest_ct_v2, finding="pericardial_effusion"),
    "ctpa_pe_v2": partial(chest_ct_v2, finding="pe"),
    "cta_aortic_dissection_v2": partial(chest_ct_v2, finding="aortic_dissection"),
    "chest_radiograph_pneumothorax_v2": chest_radiograph_v2,
}


def _one(kind: str, seed: int, i: int, out: Path, positive_fraction: float, matrix: int) -> dict:
    rng = np.random.default_rng([seed, i])  # per study: the same study whatever the worker count
    positive = bool(rng.random() < positive_fraction)
    ph = KINDS[kind](rng, positive, matrix=matrix)
    return write_study(ph, out, f"s{seed}-{i:04d}", seed)


def generate(kind: str, n: int, seed: int, out: Path, positive_fraction: float = 0.5, matrix: int = 128,
             progress: bool = True, workers: int | None = None) -> list[dict]:
    """Write ``n`` studies and ``labels.csv`` (in study order) into ``out``, replacing it."""
    from tqdm import tqdm

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    workers = workers or min(os.cpu_count() or 1, max(1, n // 4))
    job = partial(_one, kind, seed, out=out, positive_fraction=positive_fraction, matrix=matrix)
    if workers == 1:
        results = map(job, range(n))
    else:
        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
        results = pool.map(job, range(n), chunksize=2)
    try:
        rows = list(tqdm(results, total=n, desc=f"{kind} seed {seed}", unit="study", disable=not progress))
    finally:
        if workers > 1:
            pool.shutdown(cancel_futures=True)
    write_labels(out, rows)
    return rows
