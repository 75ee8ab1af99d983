"""End to end through a real Kafka broker: study event produced → priority event received.

The worker runs as a separate `triage worker` process, as in production, with the registered
models of this checkout and the default routing rules: every model that applies to the study
runs. Where no model is registered, a stand-in ONNX graph (the volume maximum, built by the test
helpers) is routed to CT instead, so decode, resample and ONNX Runtime still run.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.bus.kafka_harness import ROOT, Broker, create_topics, free_port, study_event
from tests.helpers import make_model_dir, rules_file
from triage.inference.registry import DEFAULT_MODELS, check_models


class Receiver(threading.Thread):
    def __init__(self, bootstrap: str, topic: str):
        super().__init__(daemon=True)
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                      auto_offset_reset="earliest")
        self.received: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for batch in self.consumer.poll(timeout_ms=100).values():
                now = time.perf_counter()
                for r in batch:
                    self.received.setdefault(json.loads(r.value)["study_instance_uid"], now)
        self.consumer.close()


def _worker_rss_mb(pid: int) -> float:
    peak = 0.0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    for child in children:
        try:
            if b"spawn_main" not in Path(f"/proc/{child}/cmdline").read_bytes():
                continue
            for line in Path(f"/proc/{child}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            continue
    return peak


class Bench:
    def __init__(self, work: Path, study: Path, model_shape=(32, 128, 128)):
        self.work = work
        self.study = study
        self.broker = Broker(free_port(), work / "kafka")
        self.models_args: list[str] = []
        self.stand_in = not check_models(DEFAULT_MODELS)
        if self.stand_in:
            make_model_dir(work / "models", "maxstat", window=(0, 100), shape=model_shape)
            rules = rules_file(work / "rules.yaml", [{"name": "ct", "match": {"modality": "CT"}, "models": ["maxstat"]}])
            self.models_args = ["--models", str(work / "models"), "--rules", str(rules)]
        self.runs = 0

    def __enter__(self):
        self.broker.up()
        return self

    def __exit__(self, *exc):
        self.broker.down()

    def worker(self, processes: int) -> tuple[subprocess.Popen, list[str], Receiver]:
        """A fresh `triage worker` host on its own topics (studies, priority, dlq), and a receiver
        of its priority events."""
        self.runs += 1
        name = f"bench{self.runs}"
        topics = [f"{name}.studies", f"{name}.priority", f"{name}.dlq"]
        create_topics(self.broker.bootstrap, topics, 4)
        log = open(self.work / f"{name}.log", "w")
        host = subprocess.Popen(
            [sys.executable, "-m", "triage.cli", "worker", "--bootstrap", self.broker.bootstrap, "--processes",
             str(processes), "--group", name, "--in-topic", topics[0], "--out-topic", topics[1], "--dlq-topic",
             topics[2], *self.models_args, "--metrics-port", "0"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        receiver = Receiver(self.broker.bootstrap, topics[1])
        receiver.start()
        return host, topics, receiver

    def run(self, processes: int, n: int, interval_s: float, study: Path | None = None) -> dict:
        """Send ``n`` studies ``interval_s`` apart (0: all at once) to a fresh worker host;
        ``study``: the folder every event points at (default: the bench's own)."""
        from kafka import KafkaProducer

        study = study or self.study
        started = time.perf_counter()
        host, topics, receiver = self.worker(processes)
        producer = KafkaProducer(bootstrap_servers=self.broker.bootstrap, acks="all")
        try:
            warm = [f"2.25.{self.runs}{i}" for i in range(processes)]  # load every process's session first
            for uid in warm:
                producer.send(topics[0], key=uid.encode(), value=study_event(uid, study.as_uri()))
            producer.flush()
            self._wait(receiver, set(warm), host, 300)
            cold_start = min(receiver.received[u] for u in warm) - started
            sent: dict[str, float] = {}
            uids = [f"2.25.{self.runs}9{i:04d}" for i in range(n)]
            start = time.perf_counter()
            for i, uid in enumerate(uids):
                target = start + i * interval_s
                time.sleep(max(0.0, target - time.perf_counter()))
                sent[uid] = time.perf_counter()
                producer.send(topics[0], key=uid.encode(), value=study_event(uid, study.as_uri()))
                producer.flush()
            self._wait(receiver, set(uids), host, 900)
            wall = max(receiver.received[u] for u in uids) - start
            rss = _worker_rss_mb(host.pid)
            return {"latencies_s": sorted(receiver.received[u] - sent[u] for u in uids), "wall_s": wall,
                    "n": n, "processes": processes, "peak_rss_mb": rss, "cold_start_s": cold_start}
        finally:
            producer.close()
            receiver.stop.set()
            host.terminate()
            host.wait(120)

    @staticmethod
    def _wait(receiver: Receiver, uids: set[str], host: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not uids <= set(receiver.received):
            if host.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not answer {len(uids - set(receiver.received))} studies")
            time.sleep(0.05)
