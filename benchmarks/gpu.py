"""GPU figures, kept apart from the CPU table: each model on ONNX Runtime's CUDA provider
against the CPU provider, and JPEG 2000 decode with nvImageCodec against ours (imagecodecs
on 2 threads), measured in the same run on the benchmark's head CT. Run by
``benchmarks/gpu.sh`` on a machine with an NVIDIA GPU; writes ``results/gpu.json``.

    python -m benchmarks.gpu [--out benchmarks/results/gpu.json] [--slices 300] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.data import series_pair
from benchmarks.measure import median_time, row
from benchmarks.run import RESULTS, machine


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0] if out else ""


def bench_models(volume, repeats: int, log) -> list[dict]:
    from triage.inference.backends import RuntimeOptions
    from triage.inference.registry import DEFAULT_MODELS, ModelRegistry
    from triage.preprocess import preprocess

    cpu = ModelRegistry(DEFAULT_MODELS, RuntimeOptions(providers="cpu", threads=2))
    cuda = ModelRegistry(DEFAULT_MODELS, RuntimeOptions(providers="cuda", threads=2))
    rows = []
    for name, manifest in sorted(cpu.manifests.items()):
        x = preprocess(volume.array, volume.spacing_zyx, manifest.input)
        on_cpu, on_gpu = cpu.session(name), cuda.session(name)
        a, b = on_cpu.run(x), on_gpu.run(x)
        key = manifest.probabilities
        agree = float(np.max(np.abs(np.asarray(a[key]) - np.asarray(b[key]))))
        t_cpu, t_gpu = median_time(lambda: on_cpu.run(x), repeats), median_time(lambda: on_gpu.run(x), repeats)
        rows.append(row(f"infer_cuda_vs_cpu_{name}", t_gpu * 1e3, t_cpu * 1e3, "ms",
                        note=f"input {'x'.join(map(str, manifest.input.shape))}; peer: CPU provider, 2 threads; "
                             f"largest probability difference {agree:.1e}"))
        log(f"  {name}: CUDA {t_gpu * 1e3:.1f} ms, CPU {t_cpu * 1e3:.1f} ms")
    return rows


def bench_j2k(j2k: Path, repeats: int, log) -> list[dict]:
    try:
        from nvidia import nvimgcodec
    except ImportError:
        log("  nvImageCodec is not installed: no GPU decode figures")
        return []
    import pydicom
    from pydicom.encaps import generate_frames

    from triage.dicom import decode_series, scan_study

    (series,) = scan_study(j2k)
    ours = decode_series(series, threads=2)
    streams = []
    for name in series.files:
        ds = pydicom.dcmread(series.root / name)
        streams.append(next(generate_frames(ds.PixelData, number_of_frames=1)))
    decoder = nvimgcodec.Decoder()

    def on_gpu() -> list[np.ndarray]:
        return [np.asarray(image.cpu()) for image in decoder.decode(streams)]

    stored = np.stack([a.reshape(a.shape[:2]) for a in on_gpu()])
    expected = np.stack([pydicom.dcmread(series.root / name).pixel_array for name in series.files])
    exact = bool(np.array_equal(stored, expected))
    t_gpu = median_time(on_gpu, repeats)
    t_ours = median_time(lambda: decode_series(series, threads=2), repeats)
    log(f"  JPEG 2000: nvImageCodec {t_gpu * 1e3:.0f} ms (bit-exact: {exact}), ours on 2 threads {t_ours * 1e3:.0f} ms")
    return [row("j2k_nvimgcodec_vs_ours", t_gpu * 1e3, t_ours * 1e3, "ms",
                note=f"{ours.shape[0]} slices {ours.shape[1]}x{ours.shape[2]}, frames to host memory; "
                     f"peer: ours (imagecodecs, 2 threads, HU volume); bit-exact: {exact}")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu.json", help="where the figures go")
    parser.add_argument("--slices", type=int, default=300, help="slices of the 512x512 head CT (default 300)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per figure, median kept (default 5)")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)

    name = gpu_name()
    if not name:
        print("benchmarks.gpu: no NVIDIA GPU here (nvidia-smi found none); nothing measured", file=sys.stderr)
        return 2
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):  # CUDA and cuDNN from their pip packages (onnxruntime-gpu >= 1.21)
        ort.preload_dlls()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("benchmarks.gpu: this onnxruntime has no CUDA provider (benchmarks/gpu.sh installs onnxruntime-gpu)",
              file=sys.stderr)
        return 2
    from triage.dicom import decode_series, scan_study

    log(f"GPU: {name}; inputs: {args.slices} slices 512x512")
    raw, j2k = series_pair(RESULTS / "tmp", args.slices, 512)
    (series,) = scan_study(raw)
    volume = decode_series(series)
    results = bench_models(volume, args.repeats, log) + bench_j2k(j2k, args.repeats, log)
    doc = {"machine": {**machine(), "gpu": name, "onnxruntime_providers": ort.get_available_providers()},
           "inputs": {"slices": args.slices, "matrix": 512, "repeats": args.repeats}, "results": results,
           "seconds": round(time.perf_counter() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
