"""triage/preprocess.py: resample, window, normalise."""
from __future__ import annotations

import numpy as np
import pytest

from triage.errors import ManifestError
from triage.preprocess import InputSpec, preprocess, resample, to_source_slice


def test_window_maps_to_unit_range_and_clips():
    spec = InputSpec(shape=(2, 4, 4), window=(0.0, 100.0))
    vol = np.full((2, 4, 4), 50.0, np.float32)
    vol[0, 0, 0] = -1000
    vol[1, 3, 3] = 3000
    x = preprocess(vol, (1.0, 1.0, 1.0), spec)
    assert x.shape == (1, 1, 2, 4, 4) and x.dtype == np.float32
    assert x[0, 0, 0, 0, 0] == 0.0 and x[0, 0, 1, 3, 3] == 1.0 and x[0, 0, 0, 1, 1] == pytest.approx(0.5)


def test_resample_keeps_extent_and_values_of_a_constant_volume():
    vol = np.full((10, 64, 64), 40.0, np.float32)
    out = resample(vol, (5.0, 0.5, 0.5), (20, 32, 32))
    assert out.shape == (20, 32, 32)
    assert np.allclose(out, 40.0)


def test_resample_preserves_a_gradient_along_z():
    z = np.arange(8, dtype=np.float32)[:, None, None] * np.ones((1, 8, 8), np.float32)
    out = resample(z, (1.0, 1.0, 1.0), (4, 8, 8))
    assert np.all(np.diff(out[:, 4, 4]) > 0)
    assert out[0, 4, 4] == pytest.approx(0.5) and out[-1, 4, 4] == pytest.approx(6.5)


def test_zscore_normalisation():
    spec = InputSpec(shape=(1, 2, 2), window=(-1000.0, 1000.0), normalise="zscore")
    x = preprocess(np.array([[[0, 10], [20, 30]]], np.float32), (1, 1, 1), spec)
    assert x.mean() == pytest.approx(0.0, abs=1e-6) and x.std() == pytest.approx(1.0, abs=1e-5)


def test_key_slice_maps_back_to_the_source_volume():
    # model slice i covers source slices 4i..4i+3 when 128 slices were resampled to 32
    for i in (0, 7, 31):
        assert 4 * i <= to_source_slice(i, 32, 128) <= 4 * i + 3
    assert to_source_slice(5, 1, 40) == 0
    assert to_source_slice(3, 4, 4) == 3


@pytest.mark.parametrize("data,message", [
    ({"shape": [1, 2], "window": [0, 1]}, "three positive sizes"),
    ({"shape": [1, 2, 2], "window": [10, 0]}, "must exceed lower"),
    ({"shape": [1, 2, 2], "window": {"center": 40, "width": 80}, "normalise": "minmax"}, "normalise must be"),
    ({"window": [0, 1]}, "needs shape"),
])
def test_invalid_input_specs(data, message):
    with pytest.raises(ManifestError, match=message):
        InputSpec.from_dict(data, "m/manifest.yaml")


def test_window_given_as_centre_and_width():
    assert InputSpec.from_dict({"shape": [1, 1, 1], "window": {"center": 40, "width": 80}}, "m").window == (0.0, 80.0)
