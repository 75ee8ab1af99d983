"""The worker pool against a real Apache Kafka broker: at-least-once, nothing lost.

Every test reads the priority events back from the topic and asserts on that set.
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.bus.kafka_harness import read_all, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(420)]


def _uids(prefix: str, n: int) -> list[str]:
    return [f"1.2.826.0.1.{prefix}.{i}" for i in range(n)]


def _wait_for_events(pool, n: int) -> None:
    """Until ``n`` priority events are on the topic: work is in flight from then on."""
    wait_until(lambda: len(read_all(pool.broker.bootstrap, pool.priority, timeout=1)) >= n, 120, f"{n} events")



def test_200_studies_4_partitions_3_processes(pool, studies):
    uids = _uids("100", 200)
    pool.submit([(u, (studies / "ct4").as_uri()) for u in uids])
    pool.start_host(processes=3)
    events = pool.wait_for(set(uids), timeout=240)
    assert set(events) == set(uids), pool.logs()
    assert all(e["status"] == "scored" for evs in events.values() for e in evs)
    committed, end = pool.wait_committed()
    assert committed == end and sum(end.values()) == 200
    assert pool.hosts[0].stop() == 0


def test_kill_9_of_a_worker_process_loses_nothing(pool, wado):
    uids = _uids("200", 24)
    pool.submit([(u, wado.uri("ct4", 0.5)) for u in uids])
    host = pool.start_host(processes=2)
    wait_until(lambda: len(host.worker_pids()) == 2, 60, "worker processes")
    _wait_for_events(pool, 3)
    os.kill(host.worker_pids()[0], signal.SIGKILL)
    events = pool.wait_for(set(uids), timeout=180)
    assert set(events) == set(uids), pool.logs()
    for evs in events.values():  # duplicates are allowed, and share their event_id
        assert len({e["event_id"] for e in evs if e["status"] == "scored"}) == 1
    assert "a worker process died" in host.log_text()
    committed, end = pool.wait_committed()
    assert committed == end
    assert host.stop() == 0


def test_kill_9_of_a_host_while_another_runs(pool, wado):
    uids = _uids("300", 40)
    a = pool.start_host(processes=1)
    b = pool.start_host(processes=1)
    wait_until(lambda: "assigned 2 partition(s)" in a.log_text() and "assigned 2 partition(s)" in b.log_text(),
                90, "both hosts to own partitions")
    pool.submit([(u, wado.uri("ct4", 0.3)) for u in uids])
    _wait_for_events(pool, 4)
    a.kill()
    events = pool.wait_for(set(uids), timeout=180)
    assert set(events) == set(uids), pool.logs()
    committed, end = pool.wait_committed()
    assert committed == end
    assert b.stop() == 0


@pytest.mark.slow
def test_a_60_second_study_neither_evicts_nor_storms(pool, wado):
    slow, fast = "1.2.826.0.1.400.999", _uids("400", 20)
    env = {"TRIAGE_KAFKA_MAX_POLL_INTERVAL_MS": "15000", "TRIAGE_FETCH_TIMEOUT_S": "120"}
    host = pool.start_host(processes=2, env=env)
    wait_until(lambda: "assigned 4 partition(s)" in host.log_text(), 90, "assignment")
    time.sleep(2)  # let the group settle: joining may take two rounds while topic metadata arrives
    before = len(host.log_text())
    pool.submit([(slow, wado.uri("ct4", 60))] + [(u, wado.uri("ct4", 0)) for u in fast])
    events = pool.wait_for(set(fast) | {slow}, timeout=200)
    assert set(events) == set(fast) | {slow}, pool.logs()
    assert events[slow][0]["status"] == "scored"
    during = host.log_text()[before:]
    assert during.count("revoked ") <= 1, during  # at most one rebalance while the study ran
    assert "lost " not in during, during  # never evicted, though the study outlived max.poll.interval
    committed, end = pool.wait_committed()
    assert committed == end
    assert host.stop() == 0


def test_scaling_from_one_host_to_two_while_in_flight(pool, wado):
    uids = _uids("500", 60)
    a = pool.start_host(processes=2)
    wait_until(lambda: "assigned 4 partition(s)" in a.log_text(), 90, "assignment")
    pool.submit([(u, wado.uri("ct4", 0.4)) for u in uids])
    _wait_for_events(pool, 6)
    b = pool.start_host(processes=2)
    events = pool.wait_for(set(uids), timeout=240)
    assert set(events) == set(uids), pool.logs()
    assert "revoked 4 partition(s)" in a.log_text()
    assert "assigned 2 partition(s)" in b.log_text()
    # a study finished by the old owner but not yet committed may be redone by the new
    # one (at-least-once); a repeat carries the same event_id, so consumers drop it
    for evs in events.values():
        assert len({e["event_id"] for e in evs}) == 1
    repeated = sum(len(evs) - 1 for evs in events.values())
    assert repeated <= 8, pool.logs()  # at most what was in flight at the handover
    committed, end = pool.wait_committed()
    assert committed == end
    assert a.stop() == 0 and b.stop() == 0


def test_poison_message_and_corrupt_study(pool, studies, tmp_path):
    import shutil

    bad = tmp_path / "corrupt"
    shutil.copytree(studies / "ct4", bad)
    cut = bad / "slice001.dcm"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 3])  # a transfer that broke off
    from tests.bus.kafka_harness import produce, study_event

    produce(pool.broker.bootstrap, pool.studies, [
        (b"poison", b"\xff not json at all"),
        (b"1.2.826.0.1.600.1", study_event("1.2.826.0.1.600.1", bad.as_uri())),
        (b"1.2.826.0.1.600.2", study_event("1.2.826.0.1.600.2", (studies / "ct4").as_uri())),
    ])
    host = pool.start_host(processes=1)
    events = pool.wait_for({"1.2.826.0.1.600.1", "1.2.826.0.1.600.2"}, timeout=120)
    assert events["1.2.826.0.1.600.1"][0]["status"] == "failed"
    assert events["1.2.826.0.1.600.1"][0]["error"]["kind"] == "corrupt_file"
    assert "slice001.dcm" in events["1.2.826.0.1.600.1"][0]["error"]["message"]
    assert events["1.2.826.0.1.600.2"][0]["status"] == "scored"  # the pool went on
    dlq = read_all(pool.broker.bootstrap, pool.dlq, until=lambda rs: len(rs) >= 2, timeout=60)
    by_kind = {dict(r.headers)["error.kind"]: r for r in dlq}
    poison = by_kind[b"schema"]
    assert poison.value == b"\xff not json at all"
    headers = dict(poison.headers)
    assert headers["original.topic"] == pool.studies.encode() and headers["attempts"] == b"1"
    assert {"error.message", "original.partition", "original.offset"} <= set(headers)
    assert dict(by_kind[b"corrupt_file"].headers)["error.message"].find(b"slice001.dcm") >= 0
    committed, end = pool.wait_committed()
    assert committed == end
    assert host.stop() == 0


@pytest.mark.slow
def test_broker_restart_mid_run_loses_nothing(pool, wado):
    uids = _uids("700", 30)
    host = pool.start_host(processes=2)
    wait_until(lambda: "assigned 4 partition(s)" in host.log_text(), 90, "assignment")
    pool.submit([(u, wado.uri("ct4", 0.5)) for u in uids])
    _wait_for_events(pool, 4)
    pool.broker.down()
    time.sleep(3)
    pool.broker.up()
    events = pool.wait_for(set(uids), timeout=240)
    assert set(events) == set(uids), pool.logs()
    committed, end = pool.wait_committed(timeout=60)
    assert committed == end, pool.logs()
    assert host.stop() == 0


def test_sigterm_drains_in_flight_work_and_commits(pool, wado):
    uids = _uids("800", 4)
    host = pool.start_host(processes=2, extra=["--drain-timeout", "60"])
    wait_until(lambda: "assigned 4 partition(s)" in host.log_text(), 90, "assignment")
    pool.submit([(u, wado.uri("ct4", 3)) for u in uids])
    time.sleep(2.0)  # all four are in flight: two running, two queued
    assert host.stop(timeout=90) == 0
    log = host.log_text()
    for step in ("1/5: stop fetching", "2/5: draining", "3/5: commit", "4/5: close", "5/5: done"):
        assert step in log
    events = pool.wait_for(set(uids), timeout=30)
    assert set(events) == set(uids)
    committed, end = pool.wait_committed(timeout=5)
    assert committed == end


def test_submit_command_publishes_a_study_event(pool, studies):
    import subprocess
    import sys

    from tests.bus.kafka_harness import ROOT

    r = subprocess.run([sys.executable, "-m", "triage.cli", "submit", str(studies / "ct4"), "--bootstrap",
                        pool.broker.bootstrap, "--topic", pool.studies, "--requested-priority", "STAT"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (record,) = read_all(pool.broker.bootstrap, pool.studies, until=lambda rs: len(rs) >= 1, timeout=30)
    event = json.loads(record.value)
    assert event["requested_priority"] == "STAT" and record.key == event["study_instance_uid"].encode()
