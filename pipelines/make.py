"""One command per model: regenerate phantoms, train, evaluate, export, check parity, register.

    python -m pipelines.make ich                 # what `make train MODEL=ich` runs
    python -m pipelines.make ich --small --models /tmp/models --work /tmp/w   # a tiny smoke run
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from pipelines.evaluate import evaluate
from pipelines.export import export_onnx, parity
from pipelines.register import register
from pipelines.synth.__main__ import generate
from pipelines.train import input_spec, load_config, load_model, predict, train

CONFIGS = Path(__file__).parent / "configs"
SMALL = {"data.train": {"n": 6, "seed": 1}, "data.val": {"n": 4, "seed": 2}, "data.test": {"n": 4, "seed": 3},
         "data.matrix": 48, "train.epochs": 1, "train.channels": [4, 8], "input.shape": [16, 32, 32]}


def run(name: str, work: Path, models_dir: Path, small: bool = False, resume: bool = False,
        progress: bool = True) -> dict:
    started = time.perf_counter()
    cfg = load_config(CONFIGS / f"{name}.yaml", SMALL if small else None)
    data = work / "data"
    for split in ("train", "val", "test"):
        spec_ = cfg["data"][split]
        marker = data / split / ".complete"
        if not (resume and marker.exists()):
            generate(cfg["phantom"], int(spec_["n"]), int(spec_["seed"]), data / split,
                     matrix=int(cfg["data"]["matrix"]), progress=progress)
            marker.touch()
    best = train(cfg, data, work / "run", resume=resume, progress=progress)
    model, cfg = load_model(best)
    from pipelines.dataset import load_dataset

    spec = input_spec(cfg)
    val_items, test_items = load_dataset(data / "val", spec, progress), load_dataset(data / "test", spec, progress)
    val_scores, _ = predict(model, val_items)
    test_scores, _ = predict(model, test_items)
    result = evaluate(test_items, test_scores, val_items, val_scores, cfg["operating_points"], work / "eval")
    onnx_path = work / "model.onnx"
    export_onnx(model, spec, onnx_path)
    result["parity_max_abs_diff"] = parity(model, onnx_path, np.stack([it.image for it in test_items]))
    folder = register(cfg, onnx_path, work / "eval", models_dir, result)
    print(f"{name}: AUC {result['auc']:.3f}, parity {result['parity_max_abs_diff']:.1e}, registered in {folder} "
          f"({time.perf_counter() - started:.0f} s)")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.make", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=sorted(c.stem for c in CONFIGS.glob("*.yaml")))
    p.add_argument("--work", type=Path, help="data, checkpoints and evaluation (default: .cache/train/<model>)")
    p.add_argument("--models", type=Path, default=Path("models"), help="where to register (default: models/)")
    p.add_argument("--small", action="store_true", help="a tiny run: a few small studies, one epoch")
    p.add_argument("--resume", action="store_true", help="reuse generated data and continue training")
    args = p.parse_args(argv)
    run(args.model, args.work or Path(".cache/train") / args.model, args.models, args.small, args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
