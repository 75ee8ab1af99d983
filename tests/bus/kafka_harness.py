"""A real Apache Kafka broker for the tests, started the same way as `make kafka-up`, and
helpers to drive `triage worker` hosts against it as separate processes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import ROOT

BROKER_SH = ROOT / "scripts" / "kafka" / "broker.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Broker:
    port: int
    data: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def up(self) -> None:
        subprocess.run([str(BROKER_SH), "up", str(self.port), str(self.data)], check=True, timeout=600,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def down(self) -> None:
        subprocess.run([str(BROKER_SH), "down", str(self.data)], check=False, timeout=120,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


MAX_MESSAGE_BYTES = 8 << 20  # the studies topic takes records larger than the producer's 1 MiB default


def create_topics(bootstrap: str, names: list[str], partitions: int = 4, configs: dict | None = None) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(n, partitions, 1, topic_configs=configs or {}) for n in names])
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=MAX_MESSAGE_BYTES)
    for key, value in records:
        p.send(topic, key=key, value=value)
    p.flush(30)
    p.close()


def study_event(uid: str, uri: str) -> bytes:
    from triage.events import now_iso

    return json.dumps({"schema": "triage.study/v1", "study_instance_uid": uid, "source": {"uri": uri},
                       "received_at": now_iso()}).encode()


def read_all(bootstrap: str, topic: str, *, until=None, timeout: float = 120.0):
    """Every record of ``topic`` from the start, until ``until(records)`` holds or time runs out."""
    from kafka import KafkaConsumer

    c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                      enable_auto_commit=False)
    records = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for batch in c.poll(timeout_ms=500).values():
                records.extend(batch)
            if until is not None and until(records):
                break
        if until is None:
            for batch in c.poll(timeout_ms=1000).values():
                records.extend(batch)
    finally:
        c.close()
    return records


def events_by_study(records) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        e = json.loads(r.value)
        out.setdefault(e["study_instance_uid"], []).append(e)
    return out


def committed_and_end(bootstrap: str, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    from kafka import KafkaConsumer, TopicPartition

    # a consumer of the group that never subscribes only reads the group's commits
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        end = {tp.partition: off for tp, off in c.end_offsets(parts).items()}
        committed = {tp.partition: (c.committed(tp) or 0) for tp in parts}
    finally:
        c.close(autocommit=False)
    return committed, end


@dataclass
class Host:
    """One `triage worker` process."""

    proc: subprocess.Popen
    log: Path

    def worker_pids(self) -> list[int]:
        pids = []
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return []
        for pid in children:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmd:
                pids.append(int(pid))
        return pids

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Pool:
    """Topics, group and model folder for one test; starts hosts against the broker."""

    broker: Broker
    name: str
    tmp: Path
    models: Path
    rules: Path
    partitions: int = 4
    hosts: list[Host] = field(default_factory=list)

    def __post_init__(self) -> None:
        create_topics(self.broker.bootstrap, [self.studies], self.partitions,
                      {"max.message.bytes": str(MAX_MESSAGE_BYTES)})
        create_topics(self.broker.bootstrap, [self.priority, self.dlq], self.partitions)

    @property
    def studies(self) -> str:
        return f"{self.name}.studies"

    @property
    def priority(self) -> str:
        return f"{self.name}.priority"

    @property
    def dlq(self) -> str:
        return f"{self.name}.dlq"

    @property
    def group(self) -> str:
        return f"{self.name}.group"

    def start_host(self, processes: int = 2, env: dict | None = None, extra: list[str] | None = None,
                   group: str | None = None) -> Host:
        log = self.tmp / f"host{len(self.hosts)}.log"
        cmd = [sys.executable, "-m", "triage.cli", "worker", "--bootstrap", self.broker.bootstrap,
               "--processes", str(processes), "--group", group or self.group, "--in-topic", self.studies,
               "--out-topic", self.priority, "--dlq-topic", self.dlq, "--models", str(self.models),
               "--rules", str(self.rules), "--metrics-port", "0", *(extra or [])]
        full_env = {**os.environ, "TRIAGE_KAFKA_SESSION_TIMEOUT_MS": "10000", **(env or {})}
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=full_env)
        host = Host(proc, log)
        self.hosts.append(host)
        return host

    def submit(self, studies: list[tuple[str, str]]) -> None:
        produce(self.broker.bootstrap, self.studies, [(uid.encode(), study_event(uid, uri)) for uid, uri in studies])

    def wait_for(self, uids: set[str], timeout: float = 120.0) -> dict[str, list[dict]]:
        records = read_all(self.broker.bootstrap, self.priority, timeout=timeout,
                           until=lambda rs: uids <= {json.loads(r.value)["study_instance_uid"] for r in rs})
        return events_by_study(records)

    def wait_committed(self, timeout: float = 30.0, group: str | None = None) -> tuple[dict[int, int], dict[int, int]]:
        deadline = time.monotonic() + timeout
        while True:
            committed, end = committed_and_end(self.broker.bootstrap, group or self.group, self.studies)
            if all(committed.get(p, 0) == off for p, off in end.items()) or time.monotonic() > deadline:
                return committed, end
            time.sleep(0.5)

    def close(self) -> None:
        for h in self.hosts:
            if h.proc.poll() is None:
                h.proc.kill()
                h.proc.wait(10)

    def logs(self) -> str:
        return "\n".join(f"--- {h.log.name} ---\n{h.log_text()[-4000:]}" for h in self.hosts)


def java_and_maven_missing() -> str | None:
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None
