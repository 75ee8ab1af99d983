"""python -m pipelines.synth: write a phantom dataset.

    python -m pipelines.synth --kind head_ct --n 200 --seed 1 --out data/ich/train

Seeds decide everything: train, validation and test sets generated with different seeds are
disjoint and reproducible. About half the studies are positive (--positive-fraction).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines.synth.generate import KINDS, generate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.synth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", choices=sorted(KINDS), required=True,
                   help="what to generate; positives carry the finding the name ends with "
                   "(head_ct: haemorrhage, head_cta: occlusion)")
    p.add_argument("--n", type=int, default=100, help="number of studies (default 100)")
    p.add_argument("--seed", type=int, required=True, help="random seed; use different seeds per split")
    p.add_argument("--out", type=Path, required=True, help="dataset folder (replaced if it exists)")
    p.add_argument("--positive-fraction", type=float, default=0.5)
    p.add_argument("--matrix", type=int, default=128, help="in-plane matrix (default 128)")
    args = p.parse_args(argv)
    rows = generate(args.kind, args.n, args.seed, args.out, args.positive_fraction, args.matrix)
    positives = sum(int(r["label"]) for r in rows)
    print(f"wrote {len(rows)} studies ({positives} positive) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
