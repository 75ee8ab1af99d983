"""The DICOM gateway, against dcmtk's own receiver in the same run.

* Throughput: the benchmark series sent by ``storescu`` over loopback into `triage gateway`
  (fsync and an atomic link per instance, state in SQLite) and into dcmtk's ``storescp``
  (the peer, writing files without fsync). A fresh store each repeat, so nothing is a resend.
  Both dcmtk tools run with ``TCP_NODELAY=1``, as a tuned dcmtk deployment would.
* Latency: from the end of the ``storescu`` run (the last instance acknowledged) to the
  study's priority event, through the real broker and a `triage worker`, with a 2 s window.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from benchmarks.measure import row
from tests.bus.kafka_harness import create_topics
from tests.gateway.harness import GatewayProc, StoreSCP

WINDOW_S = 2.0
# dcmtk leaves Nagle's algorithm on unless told; with it, every instance waits ~40 ms for an ACK
NODELAY = {**os.environ, "TCP_NODELAY": "1"}


def _send(port: int, folder: Path) -> float:
    files = sorted(str(p) for p in folder.glob("*.dcm"))
    t = time.perf_counter()
    done = subprocess.run(["storescu", "-aet", "BENCH", "-aec", "TRIAGE", "127.0.0.1", str(port), *files],
                          capture_output=True, text=True, timeout=900, env=NODELAY)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed: {done.stderr[-500:]}")
    return elapsed


def bench_gateway(raw: Path, work: Path, repeats: int, log) -> list[dict]:
    from benchmarks.e2e import Bench

    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        log("gateway: skipped (dcmtk's storescu and storescp are not installed)")
        return []
    n = len(list(raw.glob("*.dcm")))
    mb = sum(p.stat().st_size for p in raw.glob("*.dcm")) / 1e6
    with Bench(work / "gateway", raw) as bench:
        ours, peer = [], []
        for i in range(repeats + 1):  # the first of each is a warm-up
            scp = StoreSCP(work / "gateway" / f"storescp{i}").start()
            try:
                peer.append(_send(scp.port, raw))
            finally:
                scp.stop()
            topic = f"gwbench{i}.studies"
            create_topics(bench.broker.bootstrap, [topic], 2)
            gw = GatewayProc(bench.broker.bootstrap, work / "gateway" / f"store{i}", topic, window_s=60).start()
            try:
                ours.append(_send(gw.port, raw))
            finally:
                gw.kill9()
        t_ours, t_peer = statistics.median(ours[1:]), statistics.median(peer[1:])
        log(f"gateway: {n} instances, {mb:.0f} MB: ours {t_ours:.2f} s, storescp {t_peer:.2f} s")
        rows = [row("gateway_vs_storescp", t_ours * 1e3, t_peer * 1e3, "ms",
                    note=f"storescu of {n} instances over loopback; ours fsyncs each (storescp does not)"),
                row("gateway_instances_per_s", n / t_ours, n / t_peer, "instances/s", higher_is_better=True),
                row("gateway_mb_per_s", mb / t_ours, mb / t_peer, "MB/s", higher_is_better=True)]
        host, topics, receiver = bench.worker(1)
        latencies = []
        try:
            for i in range(repeats):
                gw = GatewayProc(bench.broker.bootstrap, work / "gateway" / f"latency{i}", topics[0],
                                 window_s=WINDOW_S).start()
                try:
                    receiver.received.clear()
                    _send(gw.port, raw)
                    sent = time.perf_counter()
                    deadline = time.monotonic() + 600
                    while not receiver.received and time.monotonic() < deadline and host.poll() is None:
                        time.sleep(0.02)
                    if not receiver.received:
                        logs = sorted((work / "gateway").glob("bench*.log"))
                        tail = logs[-1].read_text(errors="replace")[-3000:] if logs else ""
                        raise RuntimeError(f"no priority event for the study sent through the gateway "
                                           f"(worker exit {host.poll()}):\n{tail}")
                    latencies.append(min(receiver.received.values()) - sent)
                finally:
                    gw.kill9()
        finally:
            receiver.stop.set()
            host.terminate()
            host.wait(120)
    lat = statistics.median(latencies)
    log(f"gateway: last instance to priority event {lat:.2f} s (window {WINDOW_S:g} s), median of {repeats}")
    rows.append(row("gateway_last_instance_to_priority_s", lat, None, "s",
                    note=f"storescu done → priority event, through Kafka and 1 worker; {WINDOW_S:g} s window included"))
    return rows


if __name__ == "__main__":
    import argparse
    import sys
    import tempfile

    from benchmarks.data import series_pair

    parser = argparse.ArgumentParser(description="The gateway benchmark alone (make bench runs it with the rest).")
    parser.add_argument("--full", action="store_true", help="the 300-slice 512x512 series (default: 60 x 256x256)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cache = Path(__file__).parent / "results" / "tmp"
    raw, _ = series_pair(cache, *((300, 512) if args.full else (60, 256)))
    with tempfile.TemporaryDirectory(prefix="triage-gwbench-") as tmp:
        print(json.dumps(bench_gateway(raw, Path(tmp), args.repeats, lambda m: print(m, file=sys.stderr)), indent=2))
