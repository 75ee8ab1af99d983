"""Hostile messages and studies against the real broker: each ends on its own, in one of the
three ways the README promises, and neither this worker nor the next owner of the partition
stops on it. Each test then checks that a valid study produced after the bad ones is scored."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import time

import pytest

from tests.bus.kafka_harness import produce, read_all, study_event
from tests.helpers import write_series
from triage.events import STUDY_SCHEMA, now_iso

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(420)]


def _doc(uid: str, uri: str, **extra) -> dict:
    return {"schema": STUDY_SCHEMA, "study_instance_uid": uid, "source": {"uri": uri}, "received_at": now_iso(),
            **extra}


def _dlq(pool, n: int) -> list:
    return read_all(pool.broker.bootstrap, pool.dlq, until=lambda rs: len(rs) >= n, timeout=60)


def _wait_log(host, text: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while text not in host.log_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {text!r} in the host log")
        time.sleep(0.2)


def test_poison_messages_never_stop_a_partition_nor_its_next_owner(pool, studies, tmp_path):
    letters = tmp_path / "letters"
    write_series(letters, 4, mutate=lambda i, ds: setattr(ds, "SeriesInstanceUID", "1.2.840.99.ABC"))
    ok = (studies / "ct4").as_uri()
    big = json.dumps(_doc("1.2.826.0.1.900.1", ok, requested_priority="STAT", padding="x" * (5 << 20))).encode()
    missing = _doc("1.2.826.0.1.900.2", ok, requested_priority="STAT", patient_class="emergency")
    del missing["source"]
    bad = [
        (b"nested", b"[" * 200_000 + b"]" * 200_000),
        (b"tombstone", None),
        (b"array", b'[{"schema": "triage.study/v1"}]'),
        (b"scalar", b"3.14"),
        (b"latin1", b'{"schema": "triage.study/v1", "accession_number": "caf\xe9"}'),
        (b"1.2.826.0.1.900.1", big),
        (b"1.2.826.0.1.900.2", json.dumps(missing).encode()),
        (b"1.2.826.0.1.900.3", json.dumps({**_doc("1.2.826.0.1.900.3", ok), "schema": "triage.study/v9",
                                           "requested_priority": "HIGH"}).encode()),
        (b"1.2.826.0.1.900.4", json.dumps(_doc("1.2.826.0.1.900.4", ok, added_in_v2={"a": [1]})).encode()),
        (b"1.2.840.99.DEF", json.dumps(_doc("1.2.840.99.DEF", letters.as_uri())).encode()),
    ]
    produce(pool.broker.bootstrap, pool.studies, bad)
    pool.submit([("1.2.826.0.1.900.9", ok)])
    host = pool.start_host(processes=1)
    expected = {"1.2.826.0.1.900.1", "1.2.826.0.1.900.2", "1.2.826.0.1.900.3", "1.2.826.0.1.900.4",
                "1.2.840.99.DEF", "1.2.826.0.1.900.9"}
    events = pool.wait_for(expected, timeout=120)
    assert set(events) == expected, pool.logs()
    first = {uid: evs[0] for uid, evs in events.items()}
    for uid in ("1.2.826.0.1.900.4", "1.2.840.99.DEF", "1.2.826.0.1.900.9"):
        assert first[uid]["status"] == "scored", (uid, first[uid])
    assert first["1.2.840.99.DEF"]["findings"][0]["series_instance_uid"] == "1.2.840.99.ABC"
    for uid, kind, level in (("1.2.826.0.1.900.1", "schema", "STAT"), ("1.2.826.0.1.900.2", "schema", "STAT"),
                             ("1.2.826.0.1.900.3", "unknown_schema", "URGENT")):
        assert (first[uid]["status"], first[uid]["error"]["kind"]) == ("failed", kind)
        assert first[uid]["priority"]["level"] == level, first[uid]  # the order's floor survived

    dlq = _dlq(pool, 8)
    assert len(dlq) == 8
    by_key = {r.key: r for r in dlq}
    for key in (b"nested", b"tombstone", b"array", b"scalar", b"latin1"):
        assert dict(by_key[key].headers)["study_uid.read"] == b"false"
    assert by_key[b"tombstone"].value is None
    assert dict(by_key[b"1.2.826.0.1.900.2"].headers)["study_uid.read"] == b"true"
    oversized = dict(by_key[b"1.2.826.0.1.900.1"].headers)
    assert oversized["payload.truncated"] == b"true" and oversized["payload.size"] == str(len(big)).encode()
    assert oversized["payload.sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert big.startswith(by_key[b"1.2.826.0.1.900.1"].value)
    committed, end = pool.wait_committed()
    assert committed == end, pool.logs()
    assert host.proc.poll() is None  # still running

    # a second worker that takes the same messages over (a new group reads them from the start)
    other = f"{pool.group}.takeover"
    second = pool.start_host(processes=1, group=other)
    committed, end = pool.wait_committed(timeout=120, group=other)
    assert committed == end, pool.logs()
    assert second.proc.poll() is None
    again = pool.wait_for(expected, timeout=30)
    assert len(again["1.2.826.0.1.900.9"]) == 2
    assert host.stop() == 0 and second.stop() == 0


def test_a_silent_dicomweb_server_times_out_and_a_named_pipe_is_skipped(pool, studies, wado, tmp_path):
    fifo = tmp_path / "fifo"
    write_series(fifo, 4)
    os.mkfifo(fifo / "slice999.dcm")  # opening it would block forever: it is never opened
    pool.submit([("1.2.826.0.1.910.1", fifo.as_uri()), ("1.2.826.0.1.910.2", wado.uri("hang")),
                 ("1.2.826.0.1.910.3", wado.uri("hang"))])
    pool.submit([("1.2.826.0.1.910.9", (studies / "ct4").as_uri())])
    host = pool.start_host(processes=2, extra=["--study-deadline", "6"])
    uids = {"1.2.826.0.1.910.1", "1.2.826.0.1.910.2", "1.2.826.0.1.910.3", "1.2.826.0.1.910.9"}
    events = pool.wait_for(uids, timeout=120)
    (piped,) = events["1.2.826.0.1.910.1"]
    assert piped["status"] == "scored" and "slice999.dcm: skipped, not a regular file" in piped["priority"]["reasons"]
    for uid in ("1.2.826.0.1.910.2", "1.2.826.0.1.910.3"):
        (event,) = events[uid]
        assert (event["status"], event["error"]["kind"]) == ("failed", "timeout"), event
        assert "6 s deadline" in event["error"]["message"]
    assert events["1.2.826.0.1.910.9"][0]["status"] == "scored"
    kinds = [dict(r.headers)["error.kind"] for r in _dlq(pool, 2)]
    assert kinds == [b"timeout", b"timeout"]
    committed, end = pool.wait_committed()
    assert committed == end, pool.logs()
    assert host.proc.poll() is None
    assert host.stop() == 0


def test_a_study_that_kills_its_worker_fails_after_the_crash_budget(pool, studies, wado):
    pool.submit([("1.2.826.0.1.920.1", wado.uri("kill-client")), ("1.2.826.0.1.920.9", (studies / "ct4").as_uri())])
    host = pool.start_host(processes=1, extra=["--max-crashes", "2"])
    events = pool.wait_for({"1.2.826.0.1.920.1", "1.2.826.0.1.920.9"}, timeout=120)
    (crashed,) = events["1.2.826.0.1.920.1"]
    assert (crashed["status"], crashed["error"]["kind"]) == ("failed", "worker_crash"), crashed
    assert events["1.2.826.0.1.920.9"][0]["status"] == "scored"
    (dead,) = _dlq(pool, 1)
    assert dict(dead.headers)["error.kind"] == b"worker_crash"
    log = host.log_text()
    assert "a study killed its worker process (1 of 2 allowed)" in log
    assert log.count("a worker process died under a study") == 2
    committed, end = pool.wait_committed()
    assert committed == end, pool.logs()
    assert host.stop() == 0


def test_sigterm_while_a_retry_is_pending_commits_nothing_for_it(pool, studies, tmp_path):
    late = tmp_path / "late"
    uid, ok = "1.2.826.0.1.930.1", "1.2.826.0.1.930.9"
    produce(pool.broker.bootstrap, pool.studies, [(uid.encode(), study_event(uid, late.as_uri()))])
    pool.submit([(ok, (studies / "ct4").as_uri())])
    host = pool.start_host(processes=1, extra=["--retry-backoff", "25"])
    pool.wait_for({ok}, timeout=90)
    _wait_log(host, "retrying in 25.0s")
    host.proc.send_signal(signal.SIGTERM)
    assert host.proc.wait(60) == 0
    assert "left for the next owner" in host.log_text()
    assert uid not in {json.loads(r.value)["study_instance_uid"] for r in read_all(pool.broker.bootstrap, pool.priority,
                                                                                   timeout=3)}
    committed, end = pool.wait_committed(timeout=5)
    assert committed != end and sum(end.values()) - sum(committed.values()) == 1  # only the pending study

    # the next owner redoes it, and by now its files have arrived
    write_series(tmp_path / "incoming", 4)
    os.rename(tmp_path / "incoming", late)
    pool.start_host(processes=1)
    events = pool.wait_for({uid}, timeout=90)
    assert [e["status"] for e in events[uid]] == ["scored"]
    committed, end = pool.wait_committed()
    assert committed == end
