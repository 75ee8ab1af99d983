"""The worker host and process pool on the in-process bus (Kafka itself: tests/bus/test_kafka*.py)."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from tests.helpers import make_model_dir, rules_file, write_series
from triage.bus.memory import MemoryBroker, MemorySink, MemorySource
from triage.events import STUDY_SCHEMA, now_iso, parse_priority_event
from triage.pipeline import Pipeline
from triage.settings import Settings
from triage.worker.host import Host, HostOptions, Topics
from triage.worker.pool import WorkerPool


def _event(uid: str, folder) -> bytes:
    return json.dumps({"schema": STUDY_SCHEMA, "study_instance_uid": uid, "source": {"uri": folder.resolve().as_uri()},
                       "received_at": now_iso()}).encode()


@pytest.fixture
def settings(tmp_path):
    models = tmp_path / "models"
    make_model_dir(models, "brightspot", window=(0, 2000), shape=(4, 64, 64))
    rules = rules_file(tmp_path / "rules.yaml", [{"name": "ct", "match": {"modality": "CT"}, "models": ["brightspot"]}])
    return Settings(models_dir=models, rules=rules, processes=2)


def _run(settings, broker, expected, options=HostOptions(max_in_flight=4, retry_backoff_s=0.2), during=None,
         timeout=120):
    events = []
    pool = WorkerPool(settings, settings.processes)
    host = Host(MemorySource(broker), MemorySink(broker), pool, Pipeline.from_settings(settings),
                options=options, on_event=events.append)
    if during:
        threading.Thread(target=during, args=(pool, events), daemon=True).start()
    deadline = time.monotonic() + timeout
    host.run(until=lambda: len(events) >= expected or time.monotonic() > deadline)
    return events


def test_every_study_gets_one_event_and_offsets_reach_the_end(tmp_path, settings):
    broker = MemoryBroker(partitions=3)
    folder = tmp_path / "s"
    write_series(folder, 4)
    for i in range(12):
        broker.produce("triage.studies", f"1.2.3.{i}".encode(), _event(f"1.2.3.{i}", folder))
    events = _run(settings, broker, 12)
    assert sorted(e.study_instance_uid for e in events) == sorted(f"1.2.3.{i}" for i in range(12))
    assert all(e.status.value == "scored" for e in events)
    published = [parse_priority_event(m.value) for m in broker.messages("triage.priority")]
    assert {e.study_instance_uid for e in published} == {f"1.2.3.{i}" for i in range(12)}
    for tp in broker.partitions("triage.studies"):
        assert broker.committed("triage", tp) == broker.end_offset(tp)


def test_poison_message_goes_to_dlq_and_pool_goes_on(tmp_path, settings):
    broker = MemoryBroker(partitions=1)
    write_series(tmp_path / "s", 4)
    broker.produce("triage.studies", b"k", b"{not json")
    broker.produce("triage.studies", b"1.2.9", json.dumps({"schema": "triage.study/v9", "study_instance_uid": "1.2.9"}).encode())
    broker.produce("triage.studies", b"1.2.10", _event("1.2.10", tmp_path / "s"))
    events = _run(settings, broker, 2)
    dlq = broker.messages("triage.dlq")
    assert [dict(m.headers)["error.kind"] for m in dlq] == [b"schema", b"unknown_schema"]
    assert dict(dlq[0].headers)["original.offset"] == b"0" and dlq[0].value == b"{not json"
    statuses = {e.study_instance_uid: e.status.value for e in events}
    assert statuses == {"1.2.9": "failed", "1.2.10": "scored"}  # the v9 study is still on the worklist
    (tp,) = broker.partitions("triage.studies")
    assert broker.committed("triage", tp) == 3


def test_corrupt_study_gets_failed_event_and_dlq_entry(tmp_path, settings):
    broker = MemoryBroker(partitions=1)
    write_series(tmp_path / "bad", 4)
    (tmp_path / "bad" / "slice001.dcm").write_bytes(b"garbage")
    broker.produce("triage.studies", b"1.2.5", _event("1.2.5", tmp_path / "bad"))
    (event,) = _run(settings, broker, 1)
    assert event.status.value == "failed" and event.error.kind == "corrupt_file"
    (dead,) = broker.messages("triage.dlq")
    headers = dict(dead.headers)
    assert headers["error.kind"] == b"corrupt_file" and b"slice001.dcm" in headers["error.message"]
    assert headers["attempts"] == b"1" and headers["original.topic"] == b"triage.studies"


def test_retriable_error_is_retried_until_the_source_appears(tmp_path, settings):
    broker = MemoryBroker(partitions=1)
    late = tmp_path / "late"
    broker.produce("triage.studies", b"1.2.7", _event("1.2.7", late))

    def arrive(pool, events):
        time.sleep(0.5)
        # the study lands whole, as a finished transfer does: written beside it, then renamed into
        # place (a retry that scanned a half-written folder would rightly fail it as empty)
        write_series(tmp_path / "incoming", 4)
        os.rename(tmp_path / "incoming", late)

    (event,) = _run(settings, broker, 1, options=HostOptions(retry_attempts=8, retry_backoff_s=0.3,
                                                             retry_backoff_max_s=1.0), during=arrive)
    assert event.status.value == "scored"
    assert broker.messages("triage.dlq") == []


def test_retriable_error_after_last_attempt_goes_to_dlq(tmp_path, settings):
    broker = MemoryBroker(partitions=1)
    broker.produce("triage.studies", b"1.2.8", _event("1.2.8", tmp_path / "never"))
    (event,) = _run(settings, broker, 1, options=HostOptions(retry_attempts=2, retry_backoff_s=0.1))
    assert event.status.value == "failed" and event.error.kind == "source_unavailable"
    (dead,) = broker.messages("triage.dlq")
    assert dict(dead.headers)["attempts"] == b"2"


def test_killed_worker_process_is_replaced_and_its_studies_redone(tmp_path, settings):
    broker = MemoryBroker(partitions=2)
    write_series(tmp_path / "s", 8)
    for i in range(10):
        broker.produce("triage.studies", f"1.3.{i}".encode(), _event(f"1.3.{i}", tmp_path / "s"))

    def kill_one(pool, events):
        while not pool.pids() or len(events) < 2:
            time.sleep(0.05)
        os.kill(pool.pids()[0], signal.SIGKILL)

    from triage import metrics

    restarts = metrics.WORKER_RESTARTS._value.get()
    events = _run(settings, broker, 10, during=kill_one)
    assert {e.study_instance_uid for e in events} == {f"1.3.{i}" for i in range(10)}
    assert metrics.WORKER_RESTARTS._value.get() == restarts + 1
