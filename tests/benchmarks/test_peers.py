"""benchmarks/: the peers compared against ours decode the same volume, so the ratios compare like with like."""
import numpy as np

from benchmarks import peers
from benchmarks.data import series_pair


def test_peers_agree_on_the_benchmark_series(tmp_path):
    raw, j2k = series_pair(tmp_path, 8, 64)
    ours = peers.ours(raw)
    assert ours.shape == (8, 64, 64) and ours.min() < -900 and ours.max() > 900  # air and bone, in HU
    assert np.array_equal(peers.pydicom_file_by_file(raw), ours)
    assert np.array_equal(peers.simpleitk_series_reader(raw).astype(np.float32), ours)
    assert np.array_equal(peers.ours(j2k), ours)  # JPEG 2000 lossless really is lossless
    assert np.array_equal(peers.ours(j2k, threads=1), ours)
    assert peers.raw_bytes_limit(raw).size == sum(p.stat().st_size for p in raw.glob("*.dcm"))


def test_the_shadow_row_reports_a_shadow_models_time_apart(tmp_path):
    from benchmarks.models import bench_shadow
    from tests.helpers import ROOT

    raw, _ = series_pair(tmp_path / "data", 8, 64)
    (tmp_path / "work").mkdir()
    (r,) = bench_shadow(raw, ROOT / "models", tmp_path / "work", 1, lambda msg: None)
    assert r["name"] == "shadow_time_reported_separately" and r["ours"] > 0 and r["peer"] > 0
