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
    cut = tmp_path / "bad" / "slice001.dcm"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 3])  # a transfer that broke off
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


# -- hostile messages and studies: each ends on its own, the pool goes on ------------------
def _dlq_by_kind(broker):
    return {dict(m.headers)["error.kind"].decode(): m for m in broker.messages("triage.dlq")}


def test_unreadable_messages_are_dead_lettered_and_the_next_study_is_scored(tmp_path, settings):
    broker = MemoryBroker(partitions=1)
    write_series(tmp_path / "s", 4)
    for value in (b"[" * 200_000 + b"]" * 200_000, None, b"[1, 2]", b"42", b'{"note": "caf\xe9"}'):
        broker.produce("triage.studies", b"bad", value)
    broker.produce("triage.studies", b"1.2.11", _event("1.2.11", tmp_path / "s"))
    events = _run(settings, broker, 1)
    assert [(e.study_instance_uid, e.status.value) for e in events] == [("1.2.11", "scored")]
    dlq = broker.messages("triage.dlq")
    assert len(dlq) == 5 and all(dict(m.headers)["study_uid.read"] == b"false" for m in dlq)
    messages = [dict(m.headers)["error.message"].decode() for m in dlq]
    assert messages == ["JSON nested too deeply", "empty message (null value)", "an event must be a JSON object",
                        "an event must be a JSON object", "not UTF-8 text"]
    assert dlq[1].value is None  # the tombstone is kept as it came
    (tp,) = broker.partitions("triage.studies")
    assert broker.committed("triage", tp) == 6


def test_an_invalid_event_fails_at_its_orders_priority_and_an_oversized_one_is_kept_in_part(tmp_path, settings):
    import hashlib

    broker = MemoryBroker(partitions=1)
    missing = {"schema": STUDY_SCHEMA, "study_instance_uid": "1.2.12", "requested_priority": "STAT",
               "patient_class": "emergency", "received_at": now_iso()}
    broker.produce("triage.studies", b"1.2.12", json.dumps(missing).encode())
    big = json.dumps({**missing, "study_instance_uid": "1.2.13", "padding": "x" * (3 << 20)}).encode()
    broker.produce("triage.studies", b"1.2.13", big)
    events = {e.study_instance_uid: e for e in _run(settings, broker, 2)}
    for uid in ("1.2.12", "1.2.13"):
        assert events[uid].status.value == "failed"
        assert events[uid].priority.level.value == "STAT"  # the order's floor survives the invalid event
    assert events["1.2.12"].error.message == "source: required field is missing"
    dlq = _dlq_by_kind(broker)["schema"]
    headers = dict(dlq.headers)
    assert headers["payload.truncated"] == b"true" and headers["payload.size"] == str(len(big)).encode()
    assert headers["payload.sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert len(dlq.value) < MemorySink.max_record_bytes and big.startswith(dlq.value)


def test_unknown_fields_and_uids_with_letters_are_scored(tmp_path, settings):
    broker = MemoryBroker(partitions=1)
    write_series(tmp_path / "s", 4, mutate=lambda i, ds: setattr(ds, "SeriesInstanceUID", "1.2.840.99.ABC"))
    doc = json.loads(_event("1.2.840.99.XYZ", tmp_path / "s"))
    doc["added_by_a_newer_producer"] = {"anything": [1, 2]}
    doc["source"]["auth"] = "token"
    broker.produce("triage.studies", b"k", json.dumps(doc).encode())
    (event,) = _run(settings, broker, 1)
    assert event.status.value == "scored" and event.study_instance_uid == "1.2.840.99.XYZ"
    assert {f.series_instance_uid for f in event.findings} == {"1.2.840.99.ABC"}


def test_a_hung_study_times_out_and_the_pool_goes_on(tmp_path, settings):
    from tests.helpers import StudyServer
    from triage import metrics

    broker = MemoryBroker(partitions=1)
    write_series(tmp_path / "s", 4)
    server = StudyServer(tmp_path)  # "hang": accepts the request, never answers
    try:
        doc = json.loads(_event("1.2.14", tmp_path / "s"))
        doc["source"]["uri"] = server.uri("hang")
        broker.produce("triage.studies", b"1.2.14", json.dumps(doc).encode())
        broker.produce("triage.studies", b"1.2.15", _event("1.2.15", tmp_path / "s"))
        timeouts = metrics.TIMEOUTS._value.get()
        quick = Settings(models_dir=settings.models_dir, rules=settings.rules, processes=1, study_deadline_s=4)
        events = {e.study_instance_uid: e for e in _run(quick, broker, 2)}
    finally:
        server.close()
    assert events["1.2.14"].status.value == "failed" and events["1.2.14"].error.kind == "timeout"
    assert events["1.2.15"].status.value == "scored"
    assert dict(_dlq_by_kind(broker)["timeout"].headers)["original.offset"] == b"0"
    assert metrics.TIMEOUTS._value.get() == timeouts + 1
    (tp,) = broker.partitions("triage.studies")
    assert broker.committed("triage", tp) == 2


def test_a_study_that_kills_its_worker_fails_after_the_crash_budget(tmp_path, settings):
    from tests.helpers import StudyServer
    from triage import metrics

    broker = MemoryBroker(partitions=1)
    write_series(tmp_path / "studies" / "ok", 4)
    server = StudyServer(tmp_path / "studies")
    try:
        crashes = metrics.WORKER_CRASHES._value.get()
        broker.produce("triage.studies", b"1.2.16", _event("1.2.16", tmp_path / "x").replace(
            (tmp_path / "x").resolve().as_uri().encode(), server.uri("kill-client").encode()))
        broker.produce("triage.studies", b"1.2.17", _event("1.2.17", tmp_path / "studies" / "ok"))
        events = {e.study_instance_uid: e for e in _run(settings, broker, 2, options=HostOptions(max_crashes=3))}
    finally:
        server.close()
    assert events["1.2.16"].status.value == "failed" and events["1.2.16"].error.kind == "worker_crash"
    assert "3 times" in events["1.2.16"].error.message
    assert events["1.2.17"].status.value == "scored"
    assert metrics.WORKER_CRASHES._value.get() == crashes + 3
    assert list(_dlq_by_kind(broker)) == ["worker_crash"]


class _RefusingSink(MemorySink):
    """The in-memory bus, refusing its first ``n`` sends as a broker that is down would."""

    def __init__(self, broker, n):
        super().__init__(broker)
        self.refused, self.n, self.sent_at = 0, n, []

    def send(self, topic, key, value, headers=None):
        self.sent_at.append(time.monotonic())
        if self.refused < self.n:
            self.refused += 1
            return _Failed()
        return super().send(topic, key, value, headers)


class _Failed:
    def is_done(self):
        return True

    def error(self):
        return ConnectionError("broker not reachable")


def test_a_refused_send_is_retried_with_back_off_and_nothing_is_committed_past_it(tmp_path, settings):
    from triage import metrics

    broker = MemoryBroker(partitions=1)
    write_series(tmp_path / "s", 4)
    broker.produce("triage.studies", b"1.2.18", _event("1.2.18", tmp_path / "s"))
    sink = _RefusingSink(broker, 3)
    retries = metrics.SEND_RETRIES.labels("priority")._value.get()
    committed_while_refused = []
    events = []
    host = Host(MemorySource(broker), sink, WorkerPool(settings, 1), Pipeline.from_settings(settings),
                options=HostOptions(send_backoff_s=0.2, commit_interval_s=0.05), on_event=events.append)

    def until():
        if sink.refused and not broker.messages("triage.priority"):
            committed_while_refused.append(broker.committed("triage", ("triage.studies", 0)))
        return bool(events)

    host.run(until=until)
    assert [e.study_instance_uid for e in events] == ["1.2.18"]
    assert metrics.SEND_RETRIES.labels("priority")._value.get() == retries + 3
    gaps = [b - a for a, b in zip(sink.sent_at, sink.sent_at[1:])]
    assert gaps[0] >= 0.18 and gaps[1] >= 0.36 and gaps[2] >= 0.72  # 0.2 s, doubling: it never spins
    assert committed_while_refused and set(committed_while_refused) == {0}
    assert broker.committed("triage", ("triage.studies", 0)) == 1


def test_a_host_stopped_before_it_runs_never_joins_and_still_closes_its_pool(tmp_path, settings):
    # `triage worker` told to stop while it verifies models and checks the broker
    broker = MemoryBroker(partitions=2)
    folder = tmp_path / "s"
    write_series(folder, 4)
    broker.produce("triage.studies", b"1.2.3.9", _event("1.2.3.9", folder))
    joined = []

    class Source(MemorySource):  # the in-process source, noting when it joins the group
        def subscribe(self, *args, **kwargs):
            joined.append(True)
            super().subscribe(*args, **kwargs)

    pool = WorkerPool(settings, settings.processes)
    assert pool.pids()
    host = Host(Source(broker), MemorySink(broker), pool, Pipeline.from_settings(settings))
    host.stop()
    host.run()
    assert not joined  # no rebalance for the rest of the group
    assert broker.messages("triage.priority") == [] and not pool.pids()  # nothing consumed; workers gone
