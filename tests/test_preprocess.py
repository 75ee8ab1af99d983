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


def test_antialias_averages_thin_slices_as_a_thick_reformat_does():
    # 0.625 mm slices of noise around 40 HU, shrunk to 32 x 32 x 32: each output voxel averages
    # 10 x 2 x 2 input voxels, so the noise falls by ~sqrt(40); linear sampling keeps much more
    rng = np.random.default_rng(0)
    vol = rng.normal(40.0, 10.0, (320, 64, 64)).astype(np.float32)
    averaged = resample(vol, (0.625, 1.0, 1.0), (32, 32, 32), antialias=True)
    sampled = resample(vol, (0.625, 1.0, 1.0), (32, 32, 32))
    assert averaged.shape == sampled.shape == (32, 32, 32) and averaged.flags.c_contiguous
    assert averaged.mean() == pytest.approx(40.0, abs=0.05)
    assert averaged.std() == pytest.approx(10.0 / np.sqrt(40), rel=0.1) and sampled.std() > 2 * averaged.std()


def test_antialias_box_edges_split_a_voxel_between_neighbours():
    z = np.arange(10, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    out = resample(z, (1.0, 1.0, 1.0), (3, 2, 2), antialias=True)[:, 0, 0]
    # boxes of 10/3 voxels: [0, 3.33) holds 0, 1, 2 and a third of 3
    assert out == pytest.approx([(0 + 1 + 2 + 3 / 3) / (10 / 3), 4.5, 9 - (0 + 1 + 2 + 3 / 3) / (10 / 3)], abs=1e-5)
    assert np.array_equal(resample(z, (1.0, 1.0, 1.0), (20, 2, 2), antialias=True),
                          resample(z, (1.0, 1.0, 1.0), (20, 2, 2)))  # growing an axis stays linear


def test_antialias_is_read_from_the_manifest_and_reaches_preprocess():
    spec = InputSpec.from_dict({"shape": [2, 2, 2], "window": [0, 100], "antialias": True}, "m")
    assert spec.antialias and not InputSpec.from_dict({"shape": [2, 2, 2], "window": [0, 100]}, "m").antialias
    vol = np.zeros((4, 2, 2), np.float32)
    vol[1] = 100.0  # one bright thin slice: averaged into the first output slice, not sampled past
    assert preprocess(vol, (1, 1, 1), spec)[0, 0, :, 0, 0] == pytest.approx([0.5, 0.0])


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
    ({"window": [0, 1]}, "needs spacing_mm and field_mm"),
    ({"spacing_mm": [2, 2, 2], "window": [0, 1]}, "go together"),
    ({"spacing_mm": [2, 0, 2], "field_mm": [100, 200, 200], "window": [0, 1]}, "three positive sizes each"),
    ({"spacing_mm": [4, 2, 2], "field_mm": [100, 200, 200], "shape": [20, 100, 100], "window": [0, 1]},
     "is not field_mm / spacing_mm"),
    ({"shape": [1, 2, 2], "window": [0, 1], "antialias": "yes"}, "antialias must be true or false"),
])
def test_invalid_input_specs(data, message):
    with pytest.raises(ManifestError, match=message):
        InputSpec.from_dict(data, "m/manifest.yaml")


def test_window_given_as_centre_and_width():
    assert InputSpec.from_dict({"shape": [1, 1, 1], "window": {"center": 40, "width": 80}}, "m").window == (0.0, 80.0)


@pytest.mark.parametrize("src,dst", [((30, 64, 64), (8, 16, 16)), ((7, 20, 30), (13, 50, 9)), ((1, 96, 80), (1, 32, 32)),
                                     ((12, 40, 40), (12, 40, 40)), ((5, 9, 11), (20, 3, 4))])
def test_linear_resample_is_simpleitks_on_the_same_grid(src, dst):
    """The models were trained on SimpleITK's linear resample; ours must give the same input."""
    sitk = pytest.importorskip("SimpleITK")
    vol = np.random.default_rng(3).normal(0, 300, src).astype(np.float32)
    image = sitk.GetImageFromArray(vol)
    size = (dst[2], dst[1], dst[0])
    spacing = tuple(src[2 - i] / size[i] for i in range(3))
    origin = tuple(-0.5 + 0.5 * spacing[i] for i in range(3))
    expected = sitk.GetArrayFromImage(sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin, spacing,
                                                    image.GetDirection(), -9999.0, sitk.sitkFloat32))
    out = resample(vol, (1.0, 1.0, 1.0), dst)
    assert out.shape == dst and out.flags.c_contiguous
    assert np.allclose(out, expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize("n_in,n_out", [(300, 96), (300, 32), (10, 3), (512, 128), (480, 128), (3, 2)])
def test_box_average_along_any_axis_matches_the_definition(n_in, n_out):
    rng = np.random.default_rng(4)
    for axis in range(3):
        shape = [4, 5, 6]
        shape[axis] = n_in
        vol = rng.normal(40, 100, shape).astype(np.float32)
        target = list(vol.shape)
        target[axis] = n_out
        # each output voxel: the integral of the piecewise-constant input over its box, divided by the width
        src = np.moveaxis(vol.astype(np.float64), axis, 0)
        cumulative = np.concatenate([np.zeros((1, *src.shape[1:])), np.cumsum(src, axis=0)])
        edges = np.linspace(0, n_in, n_out + 1)
        lo, frac = np.floor(edges).astype(int), edges - np.floor(edges)
        lo = np.minimum(lo, n_in - 1)
        frac[-1], lo[-1] = 1.0, n_in - 1
        integral = cumulative[lo] + frac.reshape(-1, 1, 1) * src[lo]
        expected = np.moveaxis((integral[1:] - integral[:-1]) / (n_in / n_out), 0, axis)
        out = resample(vol, (1.0, 1.0, 1.0), tuple(target), antialias=True)
        assert np.allclose(out, expected, atol=1e-3), axis


def test_models_sharing_a_volume_get_the_same_inputs_through_the_cache_and_never_change_it():
    rng = np.random.default_rng(5)
    vol = rng.normal(40, 50, (60, 64, 64)).astype(np.float32)
    before = vol.copy()
    specs = [InputSpec(shape=(8, 32, 32), window=(0, 100)), InputSpec(shape=(8, 32, 32), window=(-50, 50)),
             InputSpec(shape=(8, 32, 32), window=(0, 100), antialias=True),
             InputSpec(shape=(20, 32, 32), window=(0, 100), antialias=True),
             InputSpec(shape=(60, 64, 64), window=(0, 80))]  # already the model's shape: no resample at all
    cache: dict = {}
    sizes = []
    for spec in specs + specs:  # the second round is served from the cache
        shared = preprocess(vol, (1.0, 1.0, 1.0), spec, cache=cache)
        alone = preprocess(vol, (1.0, 1.0, 1.0), spec)
        assert np.array_equal(shared, alone)
        assert np.array_equal(vol, before)  # windowing never writes into the volume or the cache
        sizes.append(len(cache))
    # three steps (z, y, x) per distinct shape and method; a second window on one grid, the
    # volume's own shape and the second round add none
    assert sizes == [3, 3, 6, 9, 9] + [9] * 5


# --- physical space ------------------------------------------------------------------------
HEAD = InputSpec.from_dict({"spacing_mm": [4.0, 2.0, 2.0], "field_mm": [160, 240, 240], "window": [0, 100],
                            "antialias": True, "pad": -1024}, "head")
SUB = 3  # sub-samples per voxel and axis in _head


def _head(fov_mm: float, matrix: int = 192, thickness: float = 2.5, coverage: float = 180.0,
          shift_mm=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, tuple[float, float, float]]:
    """One analytic head (scalp, skull, brain with a ventricle pair and a 'bleed') sampled as a
    scanner with a ``fov_mm`` field of view and ``matrix`` pixels would, each voxel the mean of
    SUB³ sub-samples (partial volume); ``shift_mm``: where the head lies in the field."""
    pixel = fov_mm / matrix
    nz = int(round(coverage / thickness))
    sub = (np.arange(SUB) + 0.5) / SUB - 0.5
    z = ((np.arange(nz) - (nz - 1) / 2)[:, None] + sub[None, :]).ravel() * thickness - shift_mm[0]
    yx = ((np.arange(matrix) - (matrix - 1) / 2)[:, None] + sub[None, :]).ravel() * pixel
    y, x = yx - shift_mm[1], yx - shift_mm[2]
    out = np.empty((nz, matrix, matrix), np.float32)
    for k in range(nz):  # slab by slab
        zz = z[k * SUB:(k + 1) * SUB][:, None, None]
        r = np.sqrt((x[None, None, :] / 72) ** 2 + (y[None, :, None] / 90) ** 2 + (zz / 80) ** 2)
        hu = np.where(r < 1.0, 30.0, -1000.0)
        hu = np.where((r < 0.955) & (r >= 0.87), 1200.0, hu)
        hu = np.where(r < 0.87, 32.0, hu)
        vent = ((np.abs(x[None, None, :]) - 9) / 6) ** 2 + ((y[None, :, None] + 5) / 20) ** 2 + ((zz - 8) / 11) ** 2
        hu = np.where(vent < 1.0, 5.0, hu)
        bleed = (x[None, None, :] - 30) ** 2 + (y[None, :, None] + 20) ** 2 + (zz - 15) ** 2 < 8 ** 2
        hu = np.where(bleed, 70.0, hu)
        out[k] = hu.reshape(SUB, matrix, SUB, matrix, SUB).mean(axis=(0, 2, 4))
    return out, (thickness, pixel, pixel)


def test_the_same_head_at_230_and_300_mm_field_of_view_gives_the_same_tensor():
    """The issue's check: a model's physical scale no longer changes with the field of view."""
    a = preprocess(*_head(230.0), HEAD)
    b = preprocess(*_head(300.0), HEAD)
    assert a.shape == b.shape == (1, 1, 40, 120, 120)
    diff = np.abs(a - b)
    # interpolation error only: the two grids sample edges (skull against brain) differently
    assert diff.mean() < 0.01 and np.percentile(diff, 99) < 0.1
    # the bleed sits at the same voxels, at the same value, in both
    bleed = a[0, 0] > 0.6
    assert bleed.sum() > 20 and np.abs(a[0, 0][bleed] - b[0, 0][bleed]).mean() < 0.05
    # stretching the series edge to edge, as shape-only specs do, is what made them differ
    legacy = InputSpec(shape=HEAD.shape, window=HEAD.window, antialias=True)
    assert np.abs(preprocess(*_head(230.0), legacy) - preprocess(*_head(300.0), legacy)).mean() > 5 * diff.mean()


def test_the_box_follows_the_head_wherever_it_lies_in_the_field():
    centred = preprocess(*_head(300.0), HEAD)
    moved = preprocess(*_head(300.0, shift_mm=(10.0, 30.0, -25.0)), HEAD)
    assert np.abs(centred - moved).mean() < 0.01


def test_a_short_coverage_is_padded_and_thin_slices_average_to_the_same():
    thin = preprocess(*_head(250.0, thickness=0.625, coverage=120.0, matrix=128), HEAD)
    thick = preprocess(*_head(250.0, thickness=5.0, coverage=120.0, matrix=128), HEAD)
    assert thin.shape == thick.shape == (1, 1, 40, 120, 120)
    assert np.all(thin[0, 0, :3] == 0.0) and np.all(thin[0, 0, -3:] == 0.0)  # beyond the coverage: padding (air)
    assert np.abs(thin - thick).mean() < 0.02


def test_physical_inputs_through_the_shared_cache_equal_those_without_it():
    vol, spacing = _head(240.0, matrix=128)
    other = InputSpec.from_dict({"spacing_mm": [4.0, 2.0, 2.0], "field_mm": [160, 200, 200], "window": [-50, 150],
                                 "antialias": True, "pad": -1024}, "other")
    cache: dict = {}
    before = vol.copy()
    for spec in (HEAD, other, HEAD):
        assert np.array_equal(preprocess(vol, spacing, spec, cache=cache), preprocess(vol, spacing, spec))
    assert np.array_equal(vol, before)


def test_a_key_slice_maps_back_through_the_box():
    vol, spacing = _head(240.0, matrix=64, thickness=1.25, coverage=180.0)
    from triage.preprocess import body_centre

    centre = body_centre(vol, HEAD)
    # the model's middle slice is the head's centre of mass; its first lies 78 mm (62 slices) lower
    assert to_source_slice(20, 40, vol.shape[0], HEAD, centre[0], spacing[0]) == round(centre[0] + 0.5 * 4 / 1.25)
    assert to_source_slice(0, 40, vol.shape[0], HEAD, centre[0], spacing[0]) == max(0, round(centre[0] - 19.5 * 3.2))


@pytest.mark.parametrize("spec", [
    InputSpec(shape=(8, 32, 32), window=(0, 80)),
    InputSpec(shape=(8, 32, 32), window=(-1000, 1000), antialias=True),
    InputSpec(shape=(6, 20, 20), window=(0, 80), antialias=True, spacing_mm=(5.0, 4.0, 4.0),
              field_mm=(30.0, 80.0, 80.0)),
])
def test_an_int16_volume_gives_the_tensor_its_float_twin_gives(spec):
    """decode keeps whole Hounsfield units in int16: the models must see the very same input."""
    rng = np.random.default_rng(3)
    hu = rng.integers(-1024, 3000, (40, 64, 64)).astype(np.int16)
    sequential = np.concatenate([np.arange(20) * 2.5, 50 + np.arange(20) * 5.0])  # spacing that changes
    for cache, z in ((None, None), ({}, None), ({}, sequential)):
        a = preprocess(hu, (1.25, 0.9, 0.9), spec, z, cache=cache)
        b = preprocess(hu.astype(np.float32), (1.25, 0.9, 0.9), spec, z, cache=None if cache is None else {})
        assert a.dtype == np.float32 and np.array_equal(a, b)
