"""Train a model from its config on a dataset folder with train/ and val/ splits.

    python -m pipelines.train --config pipelines/configs/ich.yaml --data data/ich --run runs/ich [--resume]

MONAI network, transforms and metric (the loss is torch's voxel BCE, see below); deterministic
seeds; a progress bar per epoch; a checkpoint after every epoch (``--resume`` continues from it)
and the best model by validation AUC.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from pipelines.dataset import load_dataset
from pipelines.model import Triager, build_model
from triage.preprocess import InputSpec


def load_config(path: Path, overrides: dict | None = None) -> dict:
    cfg = yaml.safe_load(Path(path).read_text())
    for key, value in (overrides or {}).items():
        section, _, field = key.partition(".")
        cfg.setdefault(section, {})[field] = value
    return cfg


def input_spec(cfg: dict) -> InputSpec:
    return InputSpec.from_dict(cfg["input"], cfg["name"])


def predict(model: Triager, items, batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    probs, slices = [], []
    with torch.inference_mode():
        for i in range(0, len(items), batch):
            x = torch.from_numpy(np.stack([it.image for it in items[i:i + batch]]))
            p, s = model(x)
            probs.append(p[:, 0].numpy())
            slices.append(s[:, 0].numpy())
    return np.concatenate(probs), np.concatenate(slices)


def margin_loss(voxels: torch.Tensor, masks: torch.Tensor, evidence: int = 1) -> torch.Tensor:
    """The study score is the mean of the ``evidence`` highest voxels (see
    :class:`pipelines.model.Triager`), so rank on it: push those highest voxels away from any
    lesion down (every study) and the highest lesion voxels up (positive studies; as many as
    the lesion has, up to ``evidence``).

    Voxel BCE alone leaves many slightly raised voxels along the inner table of the skull, and in
    a negative study the highest of them outranks a small bleed. The lesion is dilated by one
    voxel first: its partial-volume rim is neither lesion nor background."""
    from pipelines.model import study_logit

    near = torch.nn.functional.max_pool3d(masks, 3, stride=1, padding=1) > 0
    outside = study_logit(voxels.masked_fill(near, -1e4), evidence)[:, 0]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(outside, torch.zeros_like(outside))
    lesion = masks.flatten(1).sum(1)
    inside = []
    for i in torch.nonzero(lesion > 0).flatten().tolist():
        k = max(1, min(evidence, int(lesion[i].item())))
        inside.append(study_logit(voxels[i:i + 1].masked_fill(masks[i:i + 1] <= 0, -1e4), k)[0, 0])
    if inside:
        inside_t = torch.stack(inside)
        loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(inside_t, torch.ones_like(inside_t))
    return loss


def visible_lesion(items, window) -> list:
    """With ``train.lesion_window`` ([low, high], in the input's normalised units), a voxel of a
    lesion mask is trained as lesion only where the input reads within it. The mask is resampled
    from the phantom's grid and blurred by the scanner model, so its edge reaches into what lies
    beside the lesion: for a subdural, the inner table (bone, 1.0 in a blood window). Trained as
    blood there and as normal in every negative, the skull's rim becomes what the model cannot
    tell apart. Evaluation reads labels only, never masks."""
    if not window:
        return items
    from dataclasses import replace

    low, high = (float(v) for v in window)
    return [replace(it, mask=(it.mask * ((it.image >= low) & (it.image <= high))).astype(np.float32))
            if it.label else it for it in items]


def patch_sampler(patch, shape, mirror: bool = False):
    """With ``train.patch`` ([z, y, x]), each training step sees one patch per study instead of the
    whole volume: centred on the lesion or on the background, even odds. A lesion of a few voxels
    then weighs far more per step, and a step costs the patch, not the volume. The network is fully
    convolutional, so validation, evaluation and serving still read the whole volume. A patch is
    never larger than the input.

    With ``mirror`` a patch must span the full width: the network's second channel is its input
    flipped left to right, and only a full-width patch flips about the patient's midline as the
    whole volume does when served."""
    if not patch:
        return None
    from monai.transforms import RandCropByPosNegLabeld

    size = tuple(min(int(n), int(m)) for n, m in zip(patch, shape))
    if mirror and size[2] < int(shape[2]):
        raise ValueError(f"train.patch {list(patch)}: with train.mirror a patch must span the input's full width "
                         f"({shape[2]}), or its mirrored channel is not the other side of the patient")
    return RandCropByPosNegLabeld(keys=("image", "mask"), label_key="mask", spatial_size=size, pos=1, neg=1,
                                  num_samples=1, fg_indices_key="fg", bg_indices_key="bg")


def lookalike_centres(pair: dict, window, share: float, rng: np.random.Generator) -> dict:
    """With ``train.hard_negatives`` (a share, 0–1), that share of background patches is centred
    on a voxel that reads like a lesion (input inside ``lesion_window``) but lies at least a voxel
    away from one: the rims of calcifications and of the inner table, venous sinuses. Random
    background patches are mostly brain and air the network already scores low; these
    mimics are what outranks a bleed. The rest stay random, over every non-lesion voxel."""
    mask = np.asarray(pair["mask"])[0] > 0
    out = {**pair, "fg": np.flatnonzero(mask)}
    if share and window and rng.random() < share:
        image = np.asarray(pair["image"])[0]
        near = mask.copy()
        for axis in range(mask.ndim):
            near |= np.roll(mask, 1, axis) | np.roll(mask, -1, axis)
        look = np.flatnonzero((image >= float(window[0])) & (image <= float(window[1])) & ~near)
        if look.size:
            out["bg"] = look
            return out
    out["bg"] = np.flatnonzero(~mask)
    return out


def train(cfg: dict, data: Path, run: Path, resume: bool = False, progress: bool = True) -> Path:
    from monai.metrics import ROCAUCMetric
    from monai.transforms import RandFlipd
    from monai.utils import set_determinism
    from tqdm import tqdm

    tc = cfg["train"]
    set_determinism(seed=int(tc["seed"]))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    spec = input_spec(cfg)
    crop = patch_sampler(tc.get("patch"), spec.shape, bool(tc.get("mirror", False)))  # checked first
    train_items = visible_lesion(load_dataset(data / "train", spec, progress), tc.get("lesion_window"))
    val_items = load_dataset(data / "val", spec, progress)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=float(tc["lr"]))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(tc["epochs"]))
    # Voxel-wise BCE, lesion voxels up-weighted (they are ~0.1% of a volume), plus optionally the
    # margin term below. Tried and left out on CPU-sized runs: Dice terms (the network did not
    # learn small bleeds at all) and a study term on the highest voxel whatever it lies on
    # (ranking got worse).
    seg_loss = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(tc.get("pos_weight", 20.0))))
    margin_weight = float(tc.get("margin_weight", 0.0))
    # validating a large input costs a good part of an epoch: every n epochs, and always the last
    val_every = int(tc.get("val_every", 1))
    flip = RandFlipd(keys=("image", "mask"), prob=0.5, spatial_axis=2)  # left-right
    run.mkdir(parents=True, exist_ok=True)
    ckpt, best_path = run / "checkpoint.pt", run / "best.pt"
    start, best_auc = 0, -1.0
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start, best_auc = state["epoch"] + 1, state["best_auc"]
        print(f"resuming after epoch {start} (best validation AUC {best_auc:.3f})")
    rng = np.random.default_rng(int(tc["seed"]))
    for _ in range(start):
        rng.permutation(len(train_items))  # keep the shuffles of a resumed run identical
    bs = int(tc["batch_size"])
    for epoch in range(start, int(tc["epochs"])):
        model.train()
        order = rng.permutation(len(train_items))
        flip.set_random_state(int(tc["seed"]) + epoch)  # per epoch, so a resumed run flips (and crops) the same
        if crop:  # flip draws once per study and the crop twice: the two streams share only the first draw
            crop.set_random_state(int(tc["seed"]) + epoch)
            centres = np.random.default_rng([int(tc["seed"]), epoch])  # per epoch too, for --resume
        bar = tqdm(range(0, len(order), bs), desc=f"epoch {epoch + 1}/{tc['epochs']}", unit="batch",
                   disable=not progress)
        for i in bar:
            batch = [train_items[j] for j in order[i:i + bs]]
            pairs = [flip({"image": b.image, "mask": b.mask}) for b in batch]
            if crop:
                pairs = [lookalike_centres(p, tc.get("lesion_window"), float(tc.get("hard_negatives", 0)), centres)
                         for p in pairs]
                with warnings.catch_warnings():  # no lesion to centre on: MONAI takes background, as wanted
                    warnings.filterwarnings("ignore", message="Num foregrounds 0", category=UserWarning)
                    pairs = [crop(p)[0] for p in pairs]
            x = torch.as_tensor(np.stack([np.asarray(p["image"]) for p in pairs]))
            y = torch.as_tensor(np.stack([np.asarray(p["mask"]) for p in pairs]))
            voxels = model.logits(x)
            loss = seg_loss(voxels, y)
            if margin_weight:
                loss = loss + margin_weight * margin_loss(voxels, y, int(tc.get("evidence_voxels", 1)))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        schedule.step()
        if (epoch + 1) % val_every == 0 or epoch + 1 == int(tc["epochs"]):
            probs, _ = predict(model, val_items)
            metric = ROCAUCMetric()
            metric(torch.from_numpy(probs), torch.tensor([it.label for it in val_items]))
            auc = float(metric.aggregate()) if len({it.label for it in val_items}) > 1 else 0.5
            if auc > best_auc:
                best_auc = auc
                torch.save({"model": model.state_dict(), "config": cfg, "epoch": epoch, "val_auc": auc}, best_path)
            print(f"epoch {epoch + 1}: validation AUC {auc:.3f} (best {best_auc:.3f})", flush=True)
        else:
            print(f"epoch {epoch + 1}: not validated (every {val_every} epochs)", flush=True)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": schedule.state_dict(),
                    "epoch": epoch, "best_auc": best_auc}, ckpt)
    return best_path


def load_model(path: Path) -> tuple[Triager, dict]:
    state = torch.load(path, weights_only=False)
    cfg = state["config"]
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    return model.eval(), cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="folder with train/ and val/ datasets")
    p.add_argument("--run", type=Path, required=True, help="where checkpoints go")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    args = p.parse_args(argv)
    print(f"best model: {train(load_config(args.config), args.data, args.run, args.resume)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
