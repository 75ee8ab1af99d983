"""One command per model: regenerate phantoms, train, evaluate, export, check parity, register.

    python -m pipelines.make ich                 # what `make train MODEL=ich` runs
    python -m pipelines.make ich --small --models /tmp/models --work /tmp/w   # a tiny smoke run
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from pipelines.envelope import envelope_of, guarded_figures, write_envelope, write_figures
from pipelines.evaluate import (INDEPENDENT, SIZE_BINS_ML, evaluate, external_evaluation, fit_platt, parse_rule,
                                 write_external)
from pipelines.export import export_onnx, parity
from pipelines.register import demote_to_shadow, register
from pipelines.synth.generate import generate
from pipelines.train import input_spec, load_config, load_model, predict, train
from triage.inference.manifest import load_manifest, platt

CONFIGS = Path(__file__).parent / "configs"
SMALL = {"data.train": {"n": 6, "seed": 1}, "data.val": {"n": 4, "seed": 2}, "data.test": {"n": 4, "seed": 3},
         "data.matrix": 48, "train.epochs": 1, "train.channels": [4, 8], "input.shape": [16, 32, 32]}


def small_overrides(cfg: dict) -> dict:
    """A tiny run's settings for ``cfg``: a radiograph model stays 2-D, and a physical input
    keeps its field of view, sampled coarsely enough for a [16, 32, 32] input."""
    spec = input_spec(cfg)
    if spec.shape[0] == 1:
        return {**SMALL, "input.shape": [1, 32, 32]}
    if spec.physical:
        rest = {k: v for k, v in SMALL.items() if k != "input.shape"}
        return {**rest, "input.spacing_mm": [f / n for f, n in zip(spec.field_mm, SMALL["input.shape"])]}
    return SMALL


def compare_with_committed(committed: Path, result: dict, tolerance: dict | None) -> list[dict]:
    """This run's headline figures against the registered model's, within the config's tolerance;
    none when the registered figures were measured on another test split (not like with like)."""
    if not committed.exists() or not tolerance:
        return []
    before = json.loads(committed.read_text())
    if before.get("test_split") != result["test_split"]:
        print(f"  not compared with {committed}: its figures come from test split {before.get('test_split', 'unknown')}, "
              f"this run's from {result['test_split']}")
        return []
    rows = []
    for key, get in (("auc", lambda r: r["auc"]),
                     ("sensitivity", lambda r: r["operating_points"]["default"]["sensitivity"]),
                     ("specificity", lambda r: r["operating_points"]["default"]["specificity"])):
        if key in tolerance:
            now, then = get(result), get(before)
            same = abs(now - then) <= tolerance[key] or (np.isnan(now) and np.isnan(then))  # nan: one class only
            rows.append({"figure": key, "committed": then, "this_run": now, "tolerance": tolerance[key],
                         "within": bool(same)})
    for r in rows:
        print(f"  {r['figure']:<12} committed {r['committed']:.3f}  this run {r['this_run']:.3f}  "
              f"{'within' if r['within'] else 'OUTSIDE'} ±{r['tolerance']:g}")
    return rows


class NotReproduced(RuntimeError):
    """A retrained model's held-out figures differ from the registered model's (same test split)
    by more than the config's ``reproduce`` tolerance: it is not registered over it."""


def run(name: str, work: Path, models_dir: Path, small: bool = False, resume: bool = False,
        progress: bool = True, data: Path | None = None, keep_data: bool = False, replace: bool = False) -> dict:
    """The lifecycle for one model; ``data``: an existing dataset folder (train/, val/, test/)
    to use instead of generating phantoms. Once the model is registered, the phantoms it generated
    are removed (2-6 GB a model) unless ``keep_data``; checkpoints and the evaluation stay.
    Raises NotReproduced, registering nothing, when the run misses the registered model's figures
    beyond tolerance, unless ``replace`` (a new recipe meant to replace it)."""
    started = time.perf_counter()
    cfg = load_config(CONFIGS / f"{name}.yaml")
    if small:
        cfg = load_config(CONFIGS / f"{name}.yaml", small_overrides(cfg))
    for point, rule in cfg["operating_points"].items():  # a typo fails now, not after training
        try:
            parse_rule(rule)
        except ValueError as e:
            raise SystemExit(f"{CONFIGS / f'{name}.yaml'}: operating_points.{point}: {e}") from None
    own_data = data is not None
    data = data or work / "data"
    made_from = {}  # split -> what identifies it: its generator's values, or its own labels' hash
    for split in ("train", "val", "test"):
        spec_ = cfg["data"][split]
        # what the split is generated from, kept in its marker: a resumed run reuses the split only
        # while the config still says the same
        made = {"phantom": cfg["phantom"], "n": int(spec_["n"]), "seed": int(spec_["seed"]),
                "matrix": int(cfg["data"]["matrix"])}
        stamp = json.dumps(made, sort_keys=True)
        marker = data / split / ".complete"
        if own_data:
            labels = data / split / "labels.csv"
            if not labels.exists():
                raise SystemExit(f"{data / split}: no labels.csv (a dataset needs train/, val/ and test/ splits)")
            made = {"labels_sha256": hashlib.sha256(labels.read_bytes()).hexdigest()}
        elif not (resume and marker.exists() and marker.read_text() == stamp):
            generate(made["phantom"], made["n"], made["seed"], data / split, matrix=made["matrix"], progress=progress)
            marker.write_text(stamp)
        made_from[split] = made
    best = train(cfg, data, work / "run", resume=resume, progress=progress)
    model, trained = load_model(best)
    # what made the network (input, training data, training) comes from its checkpoint; how it is
    # judged and described (test split, targets, operating points, size bins, limits) from the config
    data_cfg = {**trained.get("data", cfg["data"]), "test": cfg["data"]["test"]}
    cfg = {**cfg, **{key: trained[key] for key in ("input", "train") if key in trained}, "data": data_cfg}
    from pipelines.dataset import load_dataset

    spec = input_spec(cfg)
    val_items, test_items = load_dataset(data / "val", spec, progress), load_dataset(data / "test", spec, progress)
    val_raw, _ = predict(model, val_items)
    test_raw, _ = predict(model, test_items)
    # Calibrate on validation, then evaluate and set thresholds on the calibrated scale: the
    # probabilities in priority events are what the priority policy weighs.
    a, b = fit_platt(np.array([it.label for it in val_items]), val_raw)
    val_scores, test_scores = (np.array([platt(p, a, b) for p in raw]) for raw in (val_raw, test_raw))
    result = evaluate(test_items, test_scores, val_items, val_scores, cfg["operating_points"], work / "eval",
                      cfg.get("targets"), cfg.get("size_bins_ml", SIZE_BINS_ML))
    result["platt"] = {"a": a, "b": b}
    result["test_split"] = made_from["test"]
    onnx_path = work / "model.onnx"
    export_onnx(model, spec, onnx_path)
    result["parity_max_abs_diff"] = parity(model, onnx_path, np.stack([it.image for it in test_items]))
    result["reproduction"] = compare_with_committed(models_dir / name / "eval.json", result, cfg.get("reproduce"))
    spent = work / "run" / "seconds.json"  # a resumed run adds to the time the earlier ones spent
    before = json.loads(spent.read_text())["seconds"] if (resume and spent.exists()) else 0
    result["make_seconds"] = round(before + time.perf_counter() - started)
    spent.write_text(json.dumps({"seconds": result["make_seconds"]}))
    result["make_cores"] = os.cpu_count()
    (work / "eval" / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    missed = [r["figure"] for r in result["reproduction"] if not r["within"]]
    if missed and not replace:
        raise NotReproduced(f"{name}: {', '.join(missed)} outside the `reproduce` tolerance of "
                            f"{CONFIGS / f'{name}.yaml'}; {models_dir / name} is left as it was. This run's "
                            f"model, evaluation and phantoms stay in {work}: --resume --replace registers it "
                            "without training again")
    folder = register(cfg, onnx_path, work / "eval", models_dir, result, weights=best)
    # the input guard: the envelope of every training study, then the held-out figures as served
    write_envelope(folder, envelope_of(data / "train", cfg, progress))
    result["guard"] = guarded_figures(models_dir.resolve(), name, data / "test", progress)
    write_figures(folder, result["guard"])
    result.update(beyond_our_generator(name, work, models_dir, progress, **({"n": 4, "matrix": 64} if small else {})))
    print(f"{name}: AUC {result['auc']:.3f}, assessable {result['guard']['assessable_rate']:.1%}, "
          f"parity {result['parity_max_abs_diff']:.1e}, registered in {folder} "
          f"({result['make_seconds']} s on {result['make_cores']} cores)")
    if not keep_data:
        generated = [] if own_data else [data]
        for folder_ in generated + [work / "external" / "independent"]:
            shutil.rmtree(folder_, ignore_errors=True)
        print(f"  removed the generated phantoms under {work} (--keep-data keeps them)")
    return result


def beyond_our_generator(name: str, work: Path, models_dir: Path, progress: bool = True, **sizes) -> dict:
    """The registered model ``models_dir/name``, as served, on the independent generator and on
    real studies (never used to train or tune it), written into its folder; below a target there,
    it is put in shadow: it runs, and never moves a priority. Returns the figures."""
    folder = models_dir / name
    manifest = load_manifest(folder)
    external = external_evaluation(models_dir.resolve(), name, manifest.findings[0].code, work / "external", progress,
                                   radiograph=manifest.input.shape[0] == 1, **sizes)
    external["targets_beyond"] = write_external(folder, external)
    if any(not t["met"] for t in external["targets_beyond"]):
        demote_to_shadow(folder)
    return external


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.make", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=sorted(c.stem for c in CONFIGS.glob("*.yaml")))
    p.add_argument("--work", type=Path, help="data, checkpoints and evaluation (default: .cache/train/<model>)")
    p.add_argument("--models", type=Path, default=Path("models"), help="where to register (default: models/)")
    p.add_argument("--small", action="store_true", help="a tiny run: a few small studies, one epoch")
    p.add_argument("--resume", action="store_true", help="reuse generated data and continue training")
    p.add_argument("--keep-data", action="store_true", help="keep the generated phantoms once the model is "
                   "registered (default: remove them; they take 2-6 GB a model)")
    p.add_argument("--replace", action="store_true", help="register the retrained model even when its held-out "
                   "figures miss the registered model's beyond the config's `reproduce` tolerance (a new recipe); "
                   "without it such a run registers nothing and exits 1")
    p.add_argument("--data", type=Path, help="your own dataset folder with train/, val/ and test/ splits in the "
                   "layout of pipelines/synth/write.py (default: generate phantoms)")
    p.add_argument("--recheck", action="store_true", help="train nothing: measure the registered model beyond our "
                   "own generator (independent phantoms, real studies), write it into its card, and put it in "
                   "shadow if it misses a target there")
    p.add_argument("--independent-n", type=int, default=INDEPENDENT["n"],
                   help=f"independent studies to measure on (default {INDEPENDENT['n']})")
    args = p.parse_args(argv)
    if args.recheck:
        ext = beyond_our_generator(args.model, args.work or Path(".cache/train") / args.model, args.models,
                                   n=args.independent_n)
        missed = [t["target"] for t in ext["targets_beyond"] if not t["met"]]
        print(f"{args.model}: " + (f"missed {'; '.join(missed)}: in shadow" if missed else "meets every target beyond "
                                   "our own generator"))
        return 0
    try:
        run(args.model, args.work or Path(".cache/train") / args.model, args.models, args.small, args.resume,
            data=args.data, keep_data=args.keep_data, replace=args.replace)
    except NotReproduced as e:
        print(f"not registered: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
