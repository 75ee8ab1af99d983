"""How every benchmark figure is timed and recorded."""
from __future__ import annotations

import statistics
import time


def median_time(fn, repeats: int) -> float:
    fn()  # warm caches and imports once, untimed
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def row(name: str, ours: float, peer: float | None, unit: str, higher_is_better: bool = False, note: str = "") -> dict:
    if peer is None:
        ratio = None
    else:
        ratio = (ours / peer) if higher_is_better else (peer / ours)
    return {"name": name, "ours": round(ours, 4), "peer": None if peer is None else round(peer, 4),
            "unit": unit, "ratio": None if ratio is None else round(ratio, 3), "note": note}
