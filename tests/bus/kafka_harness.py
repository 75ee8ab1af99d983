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
    """One node started by ``scripts/kafka/broker.sh``: PLAINTEXT, or with ``secure`` a SASL_SSL
    listener (a throw-away CA, SCRAM-SHA-512 users) whose client settings the script writes."""

    port: int
    data: Path
    secure: bool = False
    replication: int = 1

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def up(self) -> None:
        _broker_sh("secure-up" if self.secure else "up", str(self.port), str(self.data), timeout=600)

    def down(self) -> None:
        _broker_sh("down", str(self.data), check=False)

    def env(self) -> dict[str, str]:
        """The TRIAGE_KAFKA_* variables a triage process needs for this broker."""
        if not self.secure:
            return {}
        lines = (self.data / "client.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def client_args(self) -> dict:
        """kafka-python arguments for the test's own clients (admin, producer, reader)."""
        args = {"bootstrap_servers": self.bootstrap}
        if self.secure:
            e = self.env()
            args.update(security_protocol=e["TRIAGE_KAFKA_SECURITY_PROTOCOL"], sasl_mechanism=e["TRIAGE_KAFKA_SASL_MECHANISM"],
                        sasl_plain_username=e["TRIAGE_KAFKA_SASL_USERNAME"],
                        sasl_plain_password=e["TRIAGE_KAFKA_SASL_PASSWORD"], ssl_cafile=e["TRIAGE_KAFKA_SSL_CAFILE"])
        return args


@dataclass
class Cluster:
    """A controller and ``n`` brokers on loopback (``broker.sh cluster-up``): replication factor
    ``n`` and min.insync.replicas ``n - 1``. Brokers are numbered from 1."""

    data: Path
    n: int = 3

    @property
    def replication(self) -> int:
        return self.n

    @property
    def bootstrap(self) -> str:
        return (self.data / "bootstrap").read_text().strip()

    def up(self) -> None:
        _broker_sh("cluster-up", str(self.data), str(self.n), timeout=600)

    def down(self) -> None:
        _broker_sh("down", str(self.data), check=False)

    def pid(self, broker: int) -> int | None:
        f = self.data / f"broker{broker}" / "broker.pid"
        return int(f.read_text()) if f.exists() else None

    def kill9(self, broker: int) -> None:
        pid = self.pid(broker)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
            (self.data / f"broker{broker}" / "broker.pid").unlink()

    def start(self, broker: int) -> None:
        _broker_sh("start", str(self.data / f"broker{broker}"), timeout=180)

    def env(self) -> dict[str, str]:
        return {}

    def client_args(self) -> dict:
        return {"bootstrap_servers": self.bootstrap.split(",")}


def wait_until(cond, timeout: float, what: str) -> None:
    """Poll ``cond`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def started(kafka, what: str = "Kafka tests need a real broker"):
    """Start a Broker or Cluster for a fixture and stop it after (a generator). Without Java or
    Maven: skip locally, fail under CI=true."""
    import pytest

    from tests.helpers import in_ci

    missing = java_and_maven_missing()
    if missing:
        (pytest.fail if in_ci() else pytest.skip)(f"{what}, but {missing}")
    kafka.up()
    try:
        yield kafka
    finally:
        kafka.down()


def pool_for(broker, prefix: str, model_setup, tmp_path, request):
    """A test's own Pool on ``broker`` (a generator for fixtures): prints the hosts' logs when
    the test failed."""
    models, rules, _ = model_setup
    p = Pool(broker, prefix + request.node.name.replace("[", "-").replace("]", "").replace("_", "-")[:40], tmp_path,
             models, rules)
    yield p
    p.close()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(p.logs())


def _reap(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def _broker_sh(*args: str, timeout: float = 120, check: bool = True) -> None:
    done = subprocess.run([str(BROKER_SH), *args], timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"broker.sh {args[0]} failed:\n{done.stdout[-3000:]}")


def _client(target) -> dict:
    """kafka-python arguments for ``target``: a bootstrap string, a Broker or a Cluster."""
    return {"bootstrap_servers": target} if isinstance(target, str) else target.client_args()


MAX_MESSAGE_BYTES = 8 << 20  # the studies topic takes records larger than the producer's 1 MiB default


def create_topics(bootstrap, names: list[str], partitions: int = 4, configs: dict | None = None) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(**_client(bootstrap))
    replication = getattr(bootstrap, "replication", 1)
    if replication > 1:  # what the README recommends for production topics
        configs = {"min.insync.replicas": str(replication - 1), **(configs or {})}
    try:
        admin.create_topics([NewTopic(n, partitions, replication, topic_configs=configs or {}) for n in names])

        def visible() -> bool:
            # CreateTopics returns once the controller has the topic; the broker a client asks
            # next may not have its metadata yet (CI saw a new topic described with no partitions)
            described = admin.describe_topics(names)
            return all(t.get("error_code", 0) == 0 and len(t["partitions"]) == partitions
                       and all(p["leader"] >= 0 and len(p["replicas"]) == replication for p in t["partitions"])
                       for t in described)

        wait_until(visible, 60, f"topics {', '.join(names)} to have a leader for each of {partitions} partitions")
    finally:
        admin.close()


def produce(bootstrap, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    from kafka import KafkaProducer

    # idempotent, as the worker's own producer is: a retry after a leader dies mid-request does not
    # write the record twice
    p = KafkaProducer(acks="all", enable_idempotence=True, max_request_size=MAX_MESSAGE_BYTES,
                      **_client(bootstrap))
    try:
        sent = [p.send(topic, key=key, value=value) for key, value in records]
        for f in sent:
            f.get(timeout=90)  # raises unless the broker acknowledged it: a test never loses its input silently
    finally:
        p.close()


def study_event(uid: str, uri: str) -> bytes:
    from triage.events import now_iso

    return json.dumps({"schema": "triage.study/v1", "study_instance_uid": uid, "source": {"uri": uri},
                       "received_at": now_iso()}).encode()


def read_all(bootstrap, topic: str, *, until=None, timeout: float = 120.0):
    """Every record of ``topic`` from the start, until ``until(records)`` holds or time runs out."""
    from kafka import KafkaConsumer

    c = KafkaConsumer(topic, group_id=None, auto_offset_reset="earliest", enable_auto_commit=False,
                      **_client(bootstrap))
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


def committed(bootstrap, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (0 where none)."""
    from kafka import KafkaConsumer, TopicPartition

    # a consumer of the group that never subscribes only reads the group's commits
    c = KafkaConsumer(group_id=group, enable_auto_commit=False, request_timeout_ms=30_000, **_client(bootstrap))
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        return {tp.partition: (c.committed(tp) or 0) for tp in parts}
    finally:
        c.close(autocommit=False)


def committed_and_end(bootstrap, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(enable_auto_commit=False, **_client(bootstrap))
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        end = {tp.partition: off for tp, off in c.end_offsets(parts).items()}
    finally:
        c.close(autocommit=False)
    return committed(bootstrap, group, topic), end


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

    broker: Broker | Cluster
    name: str
    tmp: Path
    models: Path
    rules: Path
    partitions: int = 4
    hosts: list[Host] = field(default_factory=list)

    def __post_init__(self) -> None:
        create_topics(self.broker, [self.studies], self.partitions, {"max.message.bytes": str(MAX_MESSAGE_BYTES)})
        create_topics(self.broker, [self.priority, self.dlq], self.partitions)

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
        full_env = {**os.environ, "TRIAGE_KAFKA_SESSION_TIMEOUT_MS": "10000", **self.broker.env(), **(env or {})}
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=full_env)
        host = Host(proc, log)
        self.hosts.append(host)
        return host

    def submit(self, studies: list[tuple[str, str]]) -> None:
        produce(self.broker, self.studies, [(uid.encode(), study_event(uid, uri)) for uid, uri in studies])

    def wait_for(self, uids: set[str], timeout: float = 120.0) -> dict[str, list[dict]]:
        records = read_all(self.broker, self.priority, timeout=timeout,
                           until=lambda rs: uids <= {json.loads(r.value)["study_instance_uid"] for r in rs})
        return events_by_study(records)

    def wait_committed(self, timeout: float = 30.0, group: str | None = None) -> tuple[dict[int, int], dict[int, int]]:
        deadline = time.monotonic() + timeout
        while True:
            committed, end = committed_and_end(self.broker, group or self.group, self.studies)
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
