"""A model's training envelope, and how often the guard lets it read held-out studies.

    python -m pipelines.envelope ich        # regenerate ich's train and test phantoms, write its
                                            # envelope into models/ich/manifest.yaml, and its
                                            # guarded figures into eval.json and card.md

``pipelines.make`` does the same at the end of every training run. The envelope is measured
with the runtime's own decoder and guard (``triage.inference.guard``), on every training
study; the guarded figures are measured through the runtime's own registry, on the held-out
test split: a positive that is not assessable counts as a miss.
"""
from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import yaml

from pipelines.dataset import pool_map, read_labels
from pipelines.register import set_section, update_manifest
from triage.dicom import decode_series, scan_study
from triage.inference.guard import Envelope, measure_volume, reason_kind

GUARD_TARGET = 0.95  # the share of held-out studies a model must find assessable


def _measure_one(dataset: Path, window: tuple[float, float], row: dict) -> dict:
    (series,) = scan_study(dataset / "studies" / row["study_id"])[:1]
    return measure_volume(decode_series(series)).summary(window)


def envelope_of(dataset: Path, cfg: dict, progress: bool = True) -> Envelope:
    """The envelope of every study in a training split (DICOM studies only)."""
    from pipelines.train import input_spec

    rows = pool_map(partial(_measure_one, dataset, input_spec(cfg).window), read_labels(dataset),
                    f"envelope {dataset.name}", progress)
    return Envelope.from_measures(rows, contrast=bool(cfg["applies_to"].get("contrast")))


_REGISTRY: dict = {}  # one per worker process


def _score_one(models_dir: Path, name: str, dataset: Path, row: dict) -> tuple[int, bool, bool, str, float]:
    from triage.inference.registry import ModelRegistry

    # one registry per worker process, read again whenever the model's manifest changes
    key = (str(models_dir), name, (models_dir / name / "manifest.yaml").stat().st_mtime_ns)
    registry = _REGISTRY.get(key) or _REGISTRY.setdefault(key, ModelRegistry(models_dir))
    (series,) = scan_study(dataset / "studies" / row["study_id"])[:1]
    (finding,) = registry.infer(name, decode_series(series))[:1]
    return int(row["label"]), finding.probability >= finding.threshold, bool(finding.assessable), \
        finding.not_assessable_reason or "", float(finding.probability)


def guarded_figures(models_dir: Path, name: str, dataset: Path, progress: bool = True) -> dict:
    """Sensitivity and specificity at the default operating point as served, with the guard:
    a finding that is not assessable is never positive (a missed positive)."""
    rows = read_labels(dataset)
    out = pool_map(partial(_score_one, models_dir, name, dataset), rows, f"guard {name}", progress)
    labels = np.array([o[0] for o in out])
    flagged = np.array([o[1] for o in out])
    assessable = np.array([o[2] for o in out])
    positive = flagged & assessable
    reasons: dict[str, int] = {}  # by kind, as triage_not_assessable_total counts them
    for o in out:
        if not o[2]:
            reasons[reason_kind(o[3])] = reasons.get(reason_kind(o[3]), 0) + 1
    pos, neg = labels == 1, labels == 0
    from pipelines.evaluate import roc_auc

    probabilities = np.array([o[4] for o in out])
    return {
        "auc": round(float(roc_auc(labels, probabilities)), 4) if pos.any() and neg.any() else None,
        "n": int(len(out)), "assessable_rate": round(float(assessable.mean()), 4),
        "target_assessable_rate": GUARD_TARGET, "met": bool(assessable.mean() >= GUARD_TARGET),
        "sensitivity": round(float(positive[pos].mean()), 4) if pos.any() else None,
        "specificity": round(float((~positive[neg]).mean()), 4) if neg.any() else None,
        "sensitivity_without_guard": round(float(flagged[pos].mean()), 4) if pos.any() else None,
        "specificity_without_guard": round(float((~flagged[neg]).mean()), 4) if neg.any() else None,
        "not_assessable": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:5]),
        "split": "held-out test phantoms",
    }


def guard_section(envelope: dict, figures: dict) -> str:
    """The card's "Input guard" section."""
    f = envelope["field_mm"]
    lines = [
        f"Measured on all {envelope['n_studies']} training studies and written to `manifest.yaml` (`envelope`). "
        "A series outside it gives findings with `assessable: false` and the reason: their probability is "
        "reported, but they are never positive and never raise a priority. The envelope and the figures below "
        "come from our own phantom generator only; on another generator or on real studies, how often the "
        "model is assessable and how it performs are not measured.",
        "",
        f"- field of view: {f['y'][0]:.0f}–{f['y'][1]:.0f} mm (rows), {f['x'][0]:.0f}–{f['x'][1]:.0f} mm (columns)"
        + ("" if f["z"][1] <= 1.5 else f", coverage {f['z'][0]:.0f}–{f['z'][1]:.0f} mm"),
        "- body intensity, median: {0:.0f} to {1:.0f}".format(*envelope["intensity_percentiles"]["p50"]),
        "- share of the body clipped by the input window: {0:.0%}–{1:.0%}".format(*envelope["saturated_fraction"]),
    ]
    if "vessel_hu" in envelope:
        lines.append("- contrast in the vessels: {0:.0f}–{1:.0f} HU".format(*envelope["vessel_hu"]))
    lines += [
        "",
        "| held-out phantoms, default operating point | without guard | with guard |",
        "|---|---|---|",
        f"| sensitivity | {_num(figures['sensitivity_without_guard'])} | {_num(figures['sensitivity'])} |",
        f"| specificity | {_num(figures['specificity_without_guard'])} | {_num(figures['specificity'])} |",
        f"| assessable | | {figures['assessable_rate']:.1%} of {figures['n']} (target ≥ {GUARD_TARGET:.0%}: "
        f"{'met' if figures['met'] else 'missed'}) |",
    ]
    if figures["not_assessable"]:
        lines.append("")
        lines.append("Not assessable: " + "; ".join(f"{k} ({v})" for k, v in figures["not_assessable"].items()) + ".")
    return "\n".join(lines) + "\n"


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def write_envelope(folder: Path, envelope: Envelope) -> None:
    """Write the envelope into a model folder's manifest; the artifact and its hash are untouched."""
    update_manifest(folder, envelope=envelope.to_dict())


def write_figures(folder: Path, figures: dict) -> None:
    """The guarded figures into eval.json, and the card's "Input guard" section."""
    eval_path = folder / "eval.json"
    result = json.loads(eval_path.read_text()) if eval_path.exists() else {}
    result["guard"] = figures
    eval_path.write_text(json.dumps(result, indent=2) + "\n")
    envelope = yaml.safe_load((folder / "manifest.yaml").read_text())["envelope"]
    card = folder / "card.md"
    if card.exists():
        card.write_text(set_section(card.read_text(), "Input guard", guard_section(envelope, figures)))


def main(argv: list[str] | None = None) -> int:
    from pipelines.make import CONFIGS
    from pipelines.synth.generate import generate
    from pipelines.train import load_config
    from triage.inference.manifest import load_manifest

    p = argparse.ArgumentParser(prog="python -m pipelines.envelope", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=sorted(c.stem for c in CONFIGS.glob("*.yaml")))
    p.add_argument("--models", type=Path, default=Path("models"), help="model folders (default: models/)")
    p.add_argument("--work", type=Path, help="where the phantoms go (default: .cache/envelope/<model>)")
    args = p.parse_args(argv)
    cfg = load_config(CONFIGS / f"{args.model}.yaml")
    work = args.work or Path(".cache/envelope") / args.model
    for split in ("train", "test"):
        d = cfg["data"][split]
        generate(cfg["phantom"], int(d["n"]), int(d["seed"]), work / split, matrix=int(cfg["data"]["matrix"]))
    envelope = envelope_of(work / "train", cfg)
    folder = args.models / args.model
    write_envelope(folder, envelope)
    figures = guarded_figures(args.models.resolve(), args.model, work / "test")
    write_figures(folder, figures)
    load_manifest(folder)  # what the runtime will do
    print(f"{args.model}: envelope of {envelope.n_studies} training studies; held-out assessable "
          f"{figures['assessable_rate']:.1%}, sensitivity {_num(figures['sensitivity'])}, "
          f"specificity {_num(figures['specificity'])} with the guard")
    return 0


if __name__ == "__main__":
    sys.exit(main())
