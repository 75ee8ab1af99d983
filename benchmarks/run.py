"""Run the benchmark suite: every figure is a ratio against a peer measured in the same run.

    python -m benchmarks.run            # full: decode at four sizes, end to end on a 300-slice 512x512 head CT (make bench)
    python -m benchmarks.run --quick    # a radiograph and 60-slice 256x256 studies (make bench-quick)

A full run writes benchmarks/results/latest.json and latest.md (and PNG plots), the committed
results; --quick writes quick.json, quick.md and quick-*.png (ignored by git) and never touches
them. Both print the table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from benchmarks import peers
from benchmarks.measure import median_time, row
from benchmarks.data import chest_cta, radiograph, series_pair

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in ("numpy", "pydicom", "pylibjpeg-openjpeg", "imagecodecs", "SimpleITK", "onnxruntime", "torch",
                 "monai", "kafka-python"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"cores": os.cpu_count(), "cpu_model": cpu, "python": platform.python_version(),
            "platform": platform.platform(), "libraries": versions,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def bench_decode(raw: Path, label: str, repeats: int, log) -> list[dict]:
    """Uncompressed decode of one study against every peer and the raw-bytes limit; row names
    end in ``label`` (the study's size)."""
    ref = peers.ours(raw)
    mb = ref.size * 2 / 1e6  # 16-bit stored voxels
    log(f"decode {label}: {ref.shape[0]} x {ref.shape[1]}x{ref.shape[2]} ({mb:.0f} MB of voxel data), median of {repeats}")
    assert np.array_equal(peers.pydicom_file_by_file(raw), ref), "peers disagree with ours"
    t_ours = median_time(lambda: peers.ours(raw), repeats)
    rows = [row(f"decode_ours_mb_per_s_{label}", mb / t_ours, None, "MB/s", note="ours, uncompressed")]
    for name, fn, note in (("decode_vs_pydicom", peers.pydicom_file_by_file, "pydicom dcmread + pixel_array + rescale + np.stack"),
                           ("decode_vs_simpleitk", peers.simpleitk_series_reader, "SimpleITK ImageSeriesReader"),
                           ("decode_vs_monai", peers.monai_load_image, "MONAI LoadImage(PydicomReader)")):
        t = median_time(lambda: fn(raw), repeats)
        rows.append(row(f"{name}_{label}", t_ours * 1e3, t * 1e3, "ms", note=note))
        log(f"  {name}: ours {t_ours * 1e3:.0f} ms, peer {t * 1e3:.0f} ms")
    t_limit = median_time(lambda: peers.raw_bytes_limit(raw), repeats)
    rows.append(row(f"decode_vs_limit_{label}", t_ours * 1e3, t_limit * 1e3, "ms",
                    note="limit: the same files' bytes into numpy, no parsing (ratio < 1: ours is slower)"))
    return rows


def bench_j2k(j2k: Path, repeats: int, log) -> tuple[list[dict], float]:
    """JPEG 2000 decode on 1 and 2 threads and against pydicom's own (pylibjpeg) path; also
    returns the 2-thread time in seconds."""
    t1 = median_time(lambda: peers.ours(j2k, threads=1), repeats)
    t2 = median_time(lambda: peers.ours(j2k, threads=2), repeats)
    tp = median_time(lambda: peers.pydicom_file_by_file(j2k), repeats)
    log(f"  j2k: 1 thread {t1 * 1e3:.0f} ms, 2 threads {t2 * 1e3:.0f} ms, pydicom {tp * 1e3:.0f} ms")
    return [row("j2k_decode_scaling", t2 * 1e3, t1 * 1e3, "ms", note="JPEG 2000 lossless: 2 threads vs 1 (target ≥ 1.8)"),
            row("j2k_decode_vs_pydicom", t2 * 1e3, tp * 1e3, "ms",
                note="JPEG 2000 lossless, ours on 2 threads; peer: pydicom file by file (pylibjpeg-openjpeg)")], t2


def bench_real_files(work: Path, repeats: int, log) -> list[dict]:
    """The real compressed files of pydicom-data, ours against pydicom file by file."""
    import shutil

    from triage.demo import find_test_file
    from triage.errors import MissingGeometryError

    rows = []
    for name in ("693_J2KR.dcm", "RG1_J2KR.dcm", "emri_small_jpeg_ls_lossless.dcm", "JPEG-LL.dcm"):
        src = find_test_file(name)
        if src is None:
            continue
        folder = work / "real" / name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, folder / name)
        try:
            peers.ours(folder)
        except MissingGeometryError:  # it ships without a pixel spacing, which decode refuses: give the copy one
            import pydicom

            ds = pydicom.dcmread(src)
            ds.PixelSpacing = [1.0, 1.0]
            ds.save_as(folder / name)
        t_ours = median_time(lambda: peers.ours(folder), repeats)
        t_peer = median_time(lambda: peers.pydicom_file_by_file(folder), repeats)
        rows.append(row(f"real_{name.removesuffix('.dcm')}_vs_pydicom", t_ours * 1e3, t_peer * 1e3, "ms",
                        note="pydicom-data file"))
    log(f"real files: {len(rows)} compared")
    return rows


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_e2e(studies: dict[str, Path], work: Path, n: int, interval_s: float, j2k_decode_s: float,
              log) -> tuple[list[dict], dict]:
    """``studies``: the uncompressed head CT ("head"), its JPEG 2000 twin ("head_j2k"), the chest
    CT angiogram ("chest_cta") and the radiograph ("dx"). ``j2k_decode_s``: the JPEG 2000
    study's decode time on 2 threads, measured before in this run."""
    from benchmarks.e2e import Bench

    with Bench(work / "e2e", studies["head"]) as bench:
        log(f"end to end: {n} studies at one per {interval_s:g} s, 1 worker process")
        steady = bench.run(1, n, interval_s)
        # a JPEG 2000 study takes its decode time longer: spaced so that none waits for another
        j2k_interval = interval_s + 1.5 * j2k_decode_s
        small = max(4, n // 2)
        log(f"end to end: {small} JPEG 2000 head CTs at one per {j2k_interval:.1f} s")
        j2k = bench.run(1, small, j2k_interval, studies["head_j2k"])
        log(f"end to end: {n} chest CT angiograms (three models) at one per {interval_s:g} s")
        chest = bench.run(1, n, interval_s, studies["chest_cta"])
        log(f"end to end: {n} chest radiographs at one per {interval_s / 4:g} s")
        dx = bench.run(1, n, interval_s / 4, studies["dx"])
        log(f"throughput: bursts of {n} head CTs with 1 and 2 worker processes, and of {n} radiographs with 2")
        burst1 = bench.run(1, n, 0.0)
        burst2 = bench.run(2, n, 0.0)
        burst_dx = bench.run(2, n, 0.0, studies["dx"])
        models = "stand-in volume-maximum graph" if bench.stand_in else "every registered model that applies"
    lat = steady["latencies_s"]
    per_hour = {p: r["n"] / r["wall_s"] * 3600 for p, r in ((1, burst1), (2, burst2))}
    cores = os.cpu_count() or 1
    p50 = {k: percentile(r["latencies_s"], 50) for k, r in (("head", steady), ("j2k", j2k), ("chest", chest), ("dx", dx))}
    rows = [
        row("e2e_p50_s", p50["head"], None, "s", note=f"head CT, produce → priority event received, steady rate; {models}"),
        row("e2e_p95_s", percentile(lat, 95), None, "s"),
        row("e2e_p99_s", percentile(lat, 99), None, "s"),
        row("e2e_j2k_head_p50_s", p50["j2k"], j2k_decode_s + p50["head"], "s",
            note="JPEG 2000 head CT; peer: its decode on 2 threads + the uncompressed study's p50 (target ratio ≥ 0.77)"),
        row("e2e_j2k_head_p99_s", percentile(j2k["latencies_s"], 99), None, "s"),
        row("e2e_chest_cta_p50_s", p50["chest"], None, "s",
            note="contrast chest CT: pneumothorax, aortic_dissection and pe on one series, in shadow as shipped (target ≤ 1.5 s)"),
        row("e2e_chest_cta_p99_s", percentile(chest["latencies_s"], 99), None, "s"),
        row("e2e_radiograph_p50_ms", p50["dx"] * 1e3, None, "ms", note="one 2500x2048 chest radiograph (target ≤ 150 ms)"),
        row("e2e_radiograph_p99_ms", percentile(dx["latencies_s"], 99) * 1e3, None, "ms"),
        row("cold_start_s", steady["cold_start_s"], None, "s",
            note="`triage worker` started → its first priority event (every registered model verified and its session loaded at start)"),
        row("throughput_studies_per_hour_1proc", per_hour[1], None, "studies/h"),
        row("throughput_studies_per_hour_2proc", per_hour[2], per_hour[1], "studies/h", higher_is_better=True,
            note="ratio: 2 processes vs 1"),
        row("throughput_head_ct_per_hour_per_core", per_hour[2] / min(2, cores), None, "studies/h/core",
            note="burst, 2 worker processes"),
        row("throughput_radiographs_per_hour_per_core", burst_dx["n"] / burst_dx["wall_s"] * 3600 / min(2, cores), None,
            "studies/h/core", note="burst, 2 worker processes"),
        row("peak_rss_mb", max(r["peak_rss_mb"] for r in (steady, j2k, chest, burst2)), None, "MB",
            note="peak RSS of one worker process (VmHWM)"),
    ]
    return rows, {"latencies_s": lat, "throughput": per_hour}


def plots(raw: dict, out: Path, prefix: str = "") -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    if raw.get("latencies_s"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(raw["latencies_s"], bins=20, color="#3b6ea8")
        ax.set_xlabel("seconds from study event to priority event")
        ax.set_ylabel("studies")
        ax.set_title("End-to-end latency through Kafka (1 worker process)")
        fig.tight_layout()
        fig.savefig(out / f"{prefix}latency.png", dpi=110)
        made.append(f"{prefix}latency.png")
    if raw.get("throughput"):
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        procs = sorted(raw["throughput"])
        ax.bar([str(p) for p in procs], [raw["throughput"][p] for p in procs], color="#5a9e6f")
        ax.set_xlabel("worker processes")
        ax.set_ylabel("studies per hour")
        ax.set_title("Throughput scaling")
        fig.tight_layout()
        fig.savefig(out / f"{prefix}scaling.png", dpi=110)
        made.append(f"{prefix}scaling.png")
    plt.close("all")
    return made


def write_results(doc: dict, out: Path) -> Path:
    """``latest.json``/``.md`` for a full run, ``quick.json``/``.md`` for a quick one: a quick
    run never overwrites the committed full-run results."""
    stem = "quick" if doc["mode"] == "quick" else "latest"
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / f"{stem}.md").write_text(table(doc["results"]) + "\n")
    return out / f"{stem}.json"


def table(results: list[dict]) -> str:
    lines = ["| figure | ours | peer | unit | ratio (× faster) | note |", "|---|---|---|---|---|---|"]
    for r in results:
        peer = "" if r["peer"] is None else f"{r['peer']:.4g}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['name']} | {r['ours']:.4g} | {peer} | {r['unit']} | {ratio} | {r.get('note', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats (about 3 minutes)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default: benchmarks/results)")
    parser.add_argument("--skip-kafka", action="store_true", help="leave out the end-to-end figures")
    parser.add_argument("--skip-models", action="store_true", help="leave out the per-model figures")
    args = parser.parse_args(argv)
    n, size, repeats = (60, 256, 3) if args.quick else (300, 512, 3)
    e2e_n, interval = (8, 1.0) if args.quick else (20, 2.0)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "tmp"
    log(f"generating inputs ({n} slices {size}x{size}, uncompressed and JPEG 2000 lossless) in {cache}")
    raw, j2k = series_pair(cache, n, size)
    studies = {"head": raw, "head_j2k": j2k, "chest_cta": chest_cta(cache, n, size), "dx": radiograph(cache)}
    sizes = {"dx": studies["dx"], "60x256": series_pair(cache, 60, 256)[0]}
    if not args.quick:
        sizes |= {"300x512": raw, "1000x512": series_pair(cache, 1000, 512)[0]}
    results = []
    for label, folder in sizes.items():
        results += bench_decode(folder, label, repeats, log)
    j2k_rows, j2k_s = bench_j2k(j2k, repeats, log)
    results += j2k_rows
    with tempfile.TemporaryDirectory(prefix="triage-bench-") as tmp:
        results += bench_real_files(Path(tmp), repeats, log)
        if not args.skip_models:
            from benchmarks.models import bench_models
            from triage.inference.registry import DEFAULT_MODELS

            log("models: ONNX Runtime vs torch, and our study path vs the MONAI-native path")
            results += bench_models(raw, DEFAULT_MODELS, repeats, log)
            from benchmarks.models import bench_study

            results += bench_study(raw, DEFAULT_MODELS, repeats, log)
            if not args.quick:  # the small study too: a per-study cost shows there first
                results += bench_study(sizes["60x256"], DEFAULT_MODELS, repeats, log, "_60x256")
            from benchmarks.models import bench_shadow

            results += bench_shadow(raw, DEFAULT_MODELS, Path(tmp), repeats, log)
        extra: dict = {}
        if not args.skip_kafka:
            e2e_rows, extra = bench_e2e(studies, Path(tmp), e2e_n, interval, j2k_s, log)
            results += e2e_rows
            from benchmarks.gateway import bench_gateway

            log("gateway: storescu into triage gateway vs into dcmtk's storescp; last instance to priority event")
            results += bench_gateway(raw, Path(tmp), repeats, log)
    doc = {"machine": machine(), "mode": "quick" if args.quick else "full",
           "inputs": {"slices": n, "matrix": size, "repeats": repeats, "e2e_studies": e2e_n},
           "results": results, "plots": plots(extra, args.out, "quick-" if args.quick else ""),
           "seconds": round(time.perf_counter() - started, 1)}
    written = write_results(doc, args.out)
    print()
    print(table(results))
    print(f"\nwrote {written} in {doc['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
