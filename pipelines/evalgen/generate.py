"""Write independent phantoms in the dataset layout (``pipelines/synth/write.py``), for evaluation.

    python -m pipelines.evalgen.generate --kind head_ct --n 60 --seed 9101 --out data/independent/ich

Only the container (``Phantom``) and the DICOM writer are shared with the training generator:
what a study looks like is drawn here alone."""
from __future__ import annotations

import argparse
import shutil
import sys
from functools import partial
from pathlib import Path

import numpy as np

from pipelines.dataset import pool_map
from pipelines.evalgen import chest, head, radiograph
from pipelines.synth.common import Phantom
from pipelines.synth.write import write_labels, write_study

# independent kind -> (drawing function, finding, contrast, body part, series description)
KINDS = {
    "head_ct": (head.head_ct, "ich", False, "HEAD", "CT HEAD NON-CONTRAST"),
    "head_cta": (head.head_cta, "lvo", True, "HEAD", "CTA HEAD ANGIO"),
    "head_ct_fracture": (head.head_ct_fracture, "skull_fracture", False, "HEAD", "CT HEAD BONE"),
    "chest_radiograph": (radiograph.chest_radiograph, "pneumothorax", False, "CHEST", "CHEST PA"),
    "chest_ct_pneumothorax": (chest.pneumothorax_ct, "pneumothorax", False, "CHEST", "CT CHEST"),
    "chest_ct_pericardial": (chest.pericardial_ct, "pericardial_effusion", False, "CHEST", "CT CHEST NON-CONTRAST"),
    "chest_cta_pe": (chest.pe_cta, "pe", True, "CHEST", "CTA CHEST PE PROTOCOL"),
    "chest_cta_dissection": (chest.dissection_cta, "aortic_dissection", True, "CHEST", "CTA CHEST AORTA"),
}
RADIOGRAPHS = frozenset({"chest_radiograph"})  # kinds drawn as one projection image, not a CT series


def independent_kind(finding: str, radiograph: bool = False) -> str | None:
    """The kind that draws ``finding`` as a model reads it (a CT series, or a radiograph), or None
    while none does."""
    for kind, entry in KINDS.items():
        if entry[1] == finding and (kind in RADIOGRAPHS) == radiograph:
            return kind
    return None


def _one(kind: str, seed: int, out: Path, matrix: int, i: int) -> dict:
    draw, finding, contrast, body_part, description = KINDS[kind]
    rng = np.random.default_rng([seed, i, 77])
    d = draw(rng, bool(rng.random() < 0.5), matrix=matrix)
    ph = Phantom(hu=d["hu"], spacing_zyx=d["spacing_zyx"], mask=d["mask"], label=d["label"], finding=finding,
                 kind=d["kind"], contrast=d.get("contrast", contrast), description=description, lesion_ml=d["lesion_ml"],
                 body_part=body_part, modality=d.get("modality", "CT"), extra=d.get("extra", {}))
    return write_study(ph, out, f"ind{seed}-{i:04d}", seed)


def generate(kind: str, n: int, seed: int, out: Path, matrix: int = 384, progress: bool = True) -> list[dict]:
    """Write ``n`` independent studies of ``kind`` and their labels into ``out``, replacing it."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rows = pool_map(partial(_one, kind, seed, out, matrix), list(range(n)), f"independent {kind} seed {seed}",
                    progress, workers=None)
    write_labels(out, rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.evalgen.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=sorted(KINDS), required=True)
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--seed", type=int, default=9101)
    p.add_argument("--matrix", type=int, default=384, help="pixels per row (default 384: 0.55–0.8 mm pixels)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    rows = generate(args.kind, args.n, args.seed, args.out, args.matrix)
    print(f"{len(rows)} studies ({sum(int(r['label']) for r in rows)} positive) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
