"""pipelines/dataset.py: a dataset folder loads into the same tensors however it is loaded."""
from __future__ import annotations

import shutil

import numpy as np

from pipelines.dataset import load_dataset
from pipelines.synth.generate import generate
from triage.preprocess import InputSpec


def test_a_dataset_loads_the_same_with_a_pool_serially_and_from_its_cache(tmp_path):
    generate("head_ct", 4, 5, tmp_path / "a", matrix=32, progress=False, workers=1)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    spec = InputSpec((8, 16, 16), (0.0, 100.0))
    serial = load_dataset(tmp_path / "a", spec, progress=False, workers=1)
    pooled = load_dataset(tmp_path / "b", spec, progress=False, workers=2)
    cached = load_dataset(tmp_path / "b", spec, progress=False)
    assert [it.study_id for it in serial] == [it.study_id for it in pooled] == [it.study_id for it in cached]
    for a, b, c in zip(serial, pooled, cached):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.image, c.image)
        assert np.array_equal(a.mask, b.mask) and a.label == b.label == c.label
