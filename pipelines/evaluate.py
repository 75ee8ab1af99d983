"""Evaluate a trained model on a held-out split generated with seeds never used in training.

Reports ROC AUC, sensitivity and specificity with Wilson 95% intervals at each named operating
point (thresholds chosen on the validation split), sensitivity by lesion size and by slice
thickness, and a calibration curve. Writes eval.json, eval.md and roc.png.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    thresholds = np.r_[np.inf, np.sort(np.unique(scores))[::-1]]
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:  # one class only: no curve
        return np.full(len(thresholds), np.nan), np.full(len(thresholds), np.nan)
    return np.array([(neg >= t).mean() for t in thresholds]), np.array([(pos >= t).mean() for t in thresholds])


def fit_platt(labels: np.ndarray, scores: np.ndarray, steps: int = 50) -> tuple[float, float]:
    """(a, b) of Platt scaling, sigmoid(a·logit(p) + b), fitted by Newton's method on the
    validation split; the runtime applies it through the manifest (``triage...manifest.platt``)."""
    x = np.log(np.clip(scores, 1e-7, 1 - 1e-7) / (1 - np.clip(scores, 1e-7, 1 - 1e-7)))
    y = labels.astype(np.float64)
    if y.min() == y.max() or x[y == 0].max() < x[y == 1].min():
        return 1.0, 0.0  # one class, or perfectly separated: the maximum-likelihood slope is infinite
    w = np.zeros(2)
    design = np.stack([x, np.ones_like(x)], axis=1)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(design @ w)))
        grad = design.T @ (p - y)
        hess = design.T @ (design * (p * (1 - p))[:, None]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return float(w[0]), float(w[1])


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def parse_rule(rule: str) -> tuple[str, float]:
    """An operating-point rule as (kind, target): ``balanced`` (target 0), ``specificity_<0-1>`` or
    ``sensitivity_<0-1>``. Anything else raises ValueError naming the rule."""
    if rule == "balanced":
        return rule, 0.0
    kind, _, value = rule.partition("_")
    try:
        target = float(value)
    except ValueError:
        target = -1.0
    if kind not in ("specificity", "sensitivity") or not 0.0 < target <= 1.0:
        raise ValueError(f"unknown operating-point rule {rule!r}: use balanced, specificity_<0-1> or "
                         "sensitivity_<0-1> (e.g. specificity_0.95)")
    return kind, target


def threshold_for(rule: str, labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold for a named operating point on validation scores. ``specificity_0.95``: keep that
    specificity and catch as many positives as it allows, then raise no false alarm that catches no
    more; ``sensitivity_0.98``: keep that sensitivity with as few false alarms as it allows, then
    catch every positive that adds no false alarm. Of the thresholds that give the same counts it
    takes the lowest (just above a negative): a triage list would rather err towards reading sooner.
    So when the classes separate, both points sit just above the highest negative.

    ``balanced``: the threshold whose lower of sensitivity and specificity is highest (then the
    higher sum), for a model held to the same floor on both."""
    kind, target = parse_rule(rule)
    neg, pos = np.sort(scores[labels == 0]), np.sort(scores[labels == 1])
    if len(neg) == 0 or len(pos) == 0:
        return 0.5
    if kind == "balanced":
        # for each count of negatives let through, the lowest threshold catches the most positives
        candidates = np.r_[np.nextafter(neg, 2.0), min(neg[0], pos[0])]

        def rank(t):
            sensitivity, specificity = (pos >= t).mean(), (neg < t).mean()
            return min(sensitivity, specificity), sensitivity + specificity, -t

        return float(max(candidates, key=rank))
    if kind == "specificity":
        idx = min(len(neg) - 1, int(math.ceil(target * len(neg))) - 1)
        lowest = np.nextafter(neg[idx], 2.0)  # the lowest threshold keeping the specificity
        caught = pos[pos >= lowest]
        if len(caught) == 0:
            return float(min(1.0, lowest))
        negative = neg[neg < caught[0]][-1]  # raising the threshold past this loses no positive
    else:
        idx = min(len(pos) - 1, int(math.ceil(target * len(pos))) - 1)
        highest = pos[::-1][idx]  # the highest threshold keeping the sensitivity
        below = neg[neg < highest]
        if len(below) == 0:  # every negative already scores at least as high: catch every positive
            return float(pos[0])
        negative = below[-1]  # lowering the threshold down to this adds no false alarm
    return float(np.nextafter(negative, 2.0))


def confusion(labels, scores, threshold) -> dict:
    pred = scores >= threshold
    tp, fn = int((pred & (labels == 1)).sum()), int((~pred & (labels == 1)).sum())
    tn, fp = int((~pred & (labels == 0)).sum()), int((pred & (labels == 0)).sum())
    return {"threshold": round(threshold, 6), "tp": tp, "fn": fn, "tn": tn, "fp": fp,
            "sensitivity": tp / max(1, tp + fn), "sensitivity_ci95": wilson(tp, tp + fn),
            "specificity": tn / max(1, tn + fp), "specificity_ci95": wilson(tn, tn + fp)}


def _sensitivity(items, scores, threshold, keep) -> dict:
    sel = [s for it, s in zip(items, scores) if it.label == 1 and keep(it)]
    return {"n": len(sel), "sensitivity": float(sum(s >= threshold for s in sel) / len(sel)) if sel else None}


def check_targets(result: dict, targets: dict | None, items, scores) -> list[dict]:
    """Each target in the model's config against what the held-out set showed."""
    if not targets:
        return []
    op = result["operating_points"]["default"]
    checks = [("ROC AUC", targets.get("auc"), result["auc"]),
              ("sensitivity at the default operating point", targets.get("sensitivity"), op["sensitivity"]),
              ("specificity at the default operating point", targets.get("specificity"), op["specificity"])]
    if "min_lesion_ml" in targets:
        big = _sensitivity(items, scores, op["threshold"], lambda it: it.lesion_ml >= targets["min_lesion_ml"])
        checks.append((f"sensitivity for lesions >= {targets['min_lesion_ml']:g} mL",
                       targets.get("sensitivity_min_lesion"), big["sensitivity"]))
    return [{"target": name, "required": need, "measured": got, "met": bool(got is not None and got >= need)}
            for name, need, got in checks if need is not None]


SIZE_BINS_ML = (0, 1, 5, 20)  # bleed volumes; a config sets its own with ``size_bins_ml``


def evaluate(test_items, test_scores, val_items, val_scores, operating_points: dict, out: Path,
             targets: dict | None = None, size_bins_ml=SIZE_BINS_ML) -> dict:
    y = np.array([it.label for it in test_items])
    yv = np.array([it.label for it in val_items])
    ops = {name: confusion(y, test_scores, threshold_for(rule, yv, val_scores))
           for name, rule in operating_points.items()}
    default = ops["default"]["threshold"]
    by_size, by_thickness, by_kind = {}, {}, {}
    edges = [float(e) for e in size_bins_ml]
    for lo, hi in zip(edges, [*edges[1:], 1e9]):
        key = f"{lo:g}-{hi:g} mL" if hi < 1e9 else f">={lo:g} mL"
        by_size[key] = _sensitivity(test_items, test_scores, default, lambda it: lo <= it.lesion_ml < hi)
    for t in sorted({it.slice_thickness_mm for it in test_items if it.slice_thickness_mm > 0}):  # none on a radiograph
        by_thickness[f"{t:g} mm"] = _sensitivity(test_items, test_scores, default, lambda it: it.slice_thickness_mm == t)
    for k in sorted({it.kind for it in test_items if it.label == 1}):
        by_kind[k or "unspecified"] = _sensitivity(test_items, test_scores, default, lambda it: it.kind == k)
    bins = np.linspace(0, 1, 11)
    calibration = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (test_scores >= lo) & (test_scores < hi if hi < 1 else test_scores <= hi)
        if sel.any():
            calibration.append({"bin": [round(lo, 1), round(hi, 1)], "n": int(sel.sum()),
                                "mean_predicted": float(test_scores[sel].mean()), "observed": float(y[sel].mean())})
    result = {"n_test": int(len(y)), "n_positive": int(y.sum()), "auc": roc_auc(y, test_scores),
              "operating_points": ops, "sensitivity_by_lesion_size": by_size,
              "sensitivity_by_slice_thickness": by_thickness, "sensitivity_by_kind": by_kind,
              "calibration": calibration}
    result["targets"] = check_targets(result, targets, test_items, test_scores)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "eval.md").write_text(report(result))
    plot_roc(y, test_scores, ops, calibration, out / "roc.png")
    return result


def targets_table(targets: list[dict]) -> list[str]:
    """The targets as markdown table lines (eval.md and card.md)."""
    lines = ["| target | required | measured | met |", "|---|---|---|---|"]
    for t in targets:
        got = "-" if t["measured"] is None else f"{t['measured']:.3f}"
        lines.append(f"| {t['target']} | >= {t['required']:.2f} | {got} | {'yes' if t['met'] else '**no**'} |")
    return lines


def report(r: dict) -> str:
    lines = ["# Evaluation (held-out synthetic phantoms)", "",
             f"{r['n_test']} test studies, {r['n_positive']} positive. ROC AUC **{r['auc']:.3f}**.", "",
             "| operating point | threshold | sensitivity (95% CI) | specificity (95% CI) |", "|---|---|---|---|"]
    for name, o in r["operating_points"].items():
        lines.append(f"| {name} | {o['threshold']:.3f} | {o['sensitivity']:.3f} ({o['sensitivity_ci95'][0]:.3f}–"
                     f"{o['sensitivity_ci95'][1]:.3f}) | {o['specificity']:.3f} ({o['specificity_ci95'][0]:.3f}–"
                     f"{o['specificity_ci95'][1]:.3f}) |")
    if r.get("targets"):
        lines += ["", "Targets:", "", *targets_table(r["targets"])]
    for title, key in (("lesion size", "sensitivity_by_lesion_size"), ("slice thickness", "sensitivity_by_slice_thickness"),
                       ("finding type", "sensitivity_by_kind")):
        if not r.get(key):  # e.g. no slice thickness on a radiograph
            continue
        lines += ["", f"Sensitivity at the default operating point by {title}:", "", "| group | n | sensitivity |", "|---|---|---|"]
        for group, v in r.get(key, {}).items():
            sens = "-" if v["sensitivity"] is None else f"{v['sensitivity']:.3f}"
            lines.append(f"| {group} | {v['n']} | {sens} |")
    lines += ["", "Calibration (predicted vs observed positive rate):", "", "| bin | n | predicted | observed |", "|---|---|---|---|"]
    for c in r["calibration"]:
        lines.append(f"| {c['bin'][0]}–{c['bin'][1]} | {c['n']} | {c['mean_predicted']:.3f} | {c['observed']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_roc(y, scores, ops, calibration, path: Path) -> None:
    """ROC curve with the operating points, and the calibration (reliability) curve beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr = roc_curve(y, scores)
    fig, (ax, cal) = plt.subplots(1, 2, figsize=(9, 4.5))
    ax.plot(fpr, tpr, color="#3b6ea8", label=f"AUC {roc_auc(y, scores):.3f}")
    for name, o in ops.items():
        ax.plot(1 - o["specificity"], o["sensitivity"], "o", label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC, held-out phantoms")
    ax.legend(loc="lower right")
    cal.plot([0, 1], [0, 1], ":", color="grey")
    cal.plot([c["mean_predicted"] for c in calibration], [c["observed"] for c in calibration], "o-", color="#5a9e6f")
    for c in calibration:
        cal.annotate(str(c["n"]), (c["mean_predicted"], c["observed"]), textcoords="offset points", xytext=(4, 4),
                     fontsize=7, color="grey")
    cal.set_xlim(0, 1)
    cal.set_ylim(0, 1)
    cal.set_xlabel("predicted probability (bin mean)")
    cal.set_ylabel("observed positive rate")
    cal.set_title("Calibration (n per bin)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- beyond our own generator ------------------------------------------------------------------
# Real images that ship in packages we already depend on (pydicom, pydicom-data): CT and
# radiographs, presumed free of every finding our models read (their truth is unknown). Scored
# as served, for evaluation only: never trained on, never used to choose a threshold.
REAL_STUDIES = ("693_UNCR.dcm", "CT_small.dcm", "explicit_VR-UN.dcm", "J2K_pixelrep_mismatch.dcm",
                "eCT_Supplemental.dcm", "RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG3_UNCR.dcm")
INDEPENDENT = {"n": 60, "seed": 9101}  # the independent generator's evaluation set, the same for every model


def real_studies(models_dir: Path, work: Path) -> dict[str, dict]:
    """Each real study once through the served pipeline; per model, what it said of those routed to it."""
    import shutil

    from triage.demo import find_test_file
    from triage.events import STUDY_SCHEMA, now_iso, parse_study_event
    from triage.pipeline import Pipeline
    from triage.settings import Settings

    pipeline = Pipeline.from_settings(Settings(models_dir=models_dir))
    rows: dict[str, list[dict]] = {name: [] for name in pipeline.registry.manifests}
    for i, file in enumerate(REAL_STUDIES):
        path = find_test_file(file)
        if path is None:
            continue
        folder = work / "real" / file.replace(".", "_")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        shutil.copy(path, folder / file)
        event = pipeline.process(parse_study_event({"schema": STUDY_SCHEMA, "study_instance_uid": f"2.25.{i + 1}",
                                                    "source": {"uri": folder.resolve().as_uri()},
                                                    "received_at": now_iso()})).event
        findings = event.findings + (event.shadow_findings or [])
        for name, out in rows.items():
            found = [f for f in findings if f.model.name == name]
            out.append({"file": file, "routed": bool(found), "positive": any(f.positive for f in found),
                        "assessable": all(f.assessable for f in found) if found else None,
                        "probability": max((f.probability for f in found), default=None)})
    return {name: {"files": out, "n_routed": sum(r["routed"] for r in out),
                   "n_positive": sum(r["positive"] for r in out),
                   "note": "real images presumed negative; their truth is unknown"} for name, out in rows.items()}


def external_evaluation(models_dir: Path, name: str, finding: str, work: Path, progress: bool = True,
                        n: int = INDEPENDENT["n"], matrix: int = 384, radiograph: bool = False) -> dict:
    """The model as served on the independent generator's studies (when it draws the finding) and
    on the real studies; for eval.json, eval.md and the card."""
    from pipelines.envelope import guarded_figures
    from pipelines.evalgen.generate import generate, independent_kind

    out: dict = {"real_studies": real_studies(models_dir, work)[name]}
    kind = independent_kind(finding, radiograph)
    if kind is None:
        out["independent"] = None  # the independent generator does not draw this finding yet
        return out
    data = work / "independent" / kind
    marker = data / ".complete"
    stamp = json.dumps({"kind": kind, "n": n, "seed": INDEPENDENT["seed"], "matrix": matrix}, sort_keys=True)
    if not (marker.exists() and marker.read_text() == stamp):
        generate(kind, n, INDEPENDENT["seed"], data, matrix=matrix, progress=progress)
        marker.write_text(stamp)
    figures = guarded_figures(models_dir, name, data, progress)
    figures["split"] = f"independent generator ({kind}, seed {INDEPENDENT['seed']})"
    out["independent"] = figures
    return out


BEYOND_TARGET = 0.9  # sensitivity and specificity on the independent generator, at the default point


def external_targets(ext: dict) -> list[dict]:
    """What a model is held to beyond its own generator (:func:`external_evaluation`'s figures):
    sensitivity and specificity of at least 0.90 on the independent generator, as served, and no
    real study positive. A model that misses one runs in shadow (see ``pipelines.register``)."""
    rows = []
    ind = ext.get("independent")
    if ind is not None:
        for key in ("sensitivity", "specificity"):
            value = ind[key]
            rows.append({"target": f"independent generator {key}", "measured": value, "goal": BEYOND_TARGET,
                         "met": value is not None and value >= BEYOND_TARGET})
    real = ext["real_studies"]
    rows.append({"target": "real studies positive", "measured": real["n_positive"], "goal": 0,
                 "met": real["n_positive"] == 0})
    return rows


def external_report(ext: dict) -> str:
    """The eval.md and card section for :func:`external_evaluation`."""
    lines = []
    targets = external_targets(ext)
    ind = ext.get("independent")
    if ind is None:
        lines.append("Independent generator: it does not draw this finding yet; not measured.")
    else:
        num = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        met = [next(t["met"] for t in targets if t["target"] == f"independent generator {key}")
               for key in ("sensitivity", "specificity")]
        lines += [f"Independent generator (`pipelines/evalgen`, written apart from the training generator, never "
                  f"used to train, validate or pick thresholds): {ind['n']} studies, as served, at the default point.",
                  "", "| figure | measured | target |", "|---|---|---|",
                  f"| AUC | {num(ind.get('auc'))} | reported |",
                  f"| sensitivity (with the guard) | {num(ind['sensitivity'])} | >= 0.90: {'met' if met[0] else '**missed**'} |",
                  f"| specificity (with the guard) | {num(ind['specificity'])} | >= 0.90: {'met' if met[1] else '**missed**'} |",
                  f"| sensitivity, specificity without the guard | {num(ind['sensitivity_without_guard'])}, "
                  f"{num(ind['specificity_without_guard'])} | |",
                  f"| assessable | {ind['assessable_rate']:.1%} | |"]
    real = ext["real_studies"]
    lines += ["", f"Real studies (pydicom and pydicom-data; presumed negative, truth unknown): {real['n_routed']} of "
              f"{len(real['files'])} reach this model, {real['n_positive']} positive at the default point."]
    for r in real["files"]:
        if r["routed"]:
            lines.append(f"- {r['file']}: p={r['probability']:.3f}, "
                         f"{'positive' if r['positive'] else 'negative'}"
                         f"{'' if r['assessable'] else ' (not assessable)'}")
    missed = [t["target"] for t in targets if not t["met"]]
    if missed:
        lines += ["", f"**Missed beyond our own generator:** {'; '.join(missed)}. The model is registered in "
                  "shadow: it runs and is recorded, and never moves a priority."]
    return "\n".join(lines) + "\n"


def write_external(folder: Path, ext: dict) -> list[dict]:
    """:func:`external_evaluation`'s figures into a model folder's eval.json, eval.md and card;
    returns :func:`external_targets`, as written."""
    from pipelines.register import set_section

    eval_path = folder / "eval.json"
    result = json.loads(eval_path.read_text()) if eval_path.exists() else {}
    result.update(ext)
    result["targets_beyond"] = external_targets(ext)
    eval_path.write_text(json.dumps(result, indent=2) + "\n")
    body = external_report(ext)
    for name in ("eval.md", "card.md"):
        path = folder / name
        if path.exists():
            path.write_text(set_section(path.read_text(), "Beyond our own generator", body))
    return result["targets_beyond"]
