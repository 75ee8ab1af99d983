"""Nothing is lost: kill -9 of the gateway at the worst moments, and a broker that is down
while studies complete. Read back from the real broker and the store."""
from __future__ import annotations

import sqlite3
import subprocess
import time

import pytest

from tests.bus.kafka_harness import Broker, free_port
from kafka.errors import TopicAlreadyExistsError

from tests.gateway.harness import new_topic, real_study, storescu, study_events

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def versions(gw) -> list[tuple[int, str]]:
    db = sqlite3.connect(gw.store / ".gateway" / "state.sqlite")
    try:
        return db.execute("SELECT version, state FROM studies ORDER BY version").fetchall()
    finally:
        db.close()


def wait_metric(gw, line: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while line not in gw.metrics() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert line in gw.metrics()


def test_kill9_after_store_success_before_publish_loses_nothing(gateways):
    files = real_study("77654033/CR*")
    gw = gateways(window_s=4.0)
    assert storescu(gw.port, files).returncode == 0  # success: the instances are on disk
    gw.kill9()  # inside the window: no study event yet
    assert len(gw.stored()) == len(files)
    assert study_events(gw.bootstrap, gw.topic, 1, timeout=2) == []
    gw.start()
    [event] = study_events(gw.bootstrap, gw.topic, 1, timeout=30)
    time.sleep(2)
    assert len(study_events(gw.bootstrap, gw.topic, 2, timeout=2)) == 1
    assert versions(gw) == [(1, "published")]
    assert "1 open, 0 queued" in gw.log_text()  # the restart found the open study and resumed its window


def test_kill9_during_a_burst_then_resend_gives_no_duplicates(gateways):
    files = real_study("TINY_ALPHA/PT000000/ST000000/SE000000")
    assert len(files) == 50
    gw = gateways(window_s=3.0)
    sender = subprocess.Popen(["storescu", "-aet", "SENDER", "-aec", "TRIAGE", "127.0.0.1", str(gw.port),
                               *map(str, files)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while len(gw.stored()) < 10 and time.monotonic() < deadline:
        time.sleep(0.005)
    gw.kill9()
    sender.wait(30)
    partial = len(gw.stored())
    assert 10 <= partial <= len(files)
    gw.start()
    resent = storescu(gw.port, files)  # the sender does not know what arrived: it sends everything again
    assert resent.returncode == 0
    stored = gw.stored()
    assert len(stored) == len(files)
    assert len(list(gw.store.glob("*/*/*.dcm"))) == len(files)
    time.sleep(4)
    states = versions(gw)
    events = study_events(gw.bootstrap, gw.topic, len(states), timeout=30)
    time.sleep(1)
    assert len(study_events(gw.bootstrap, gw.topic, len(states) + 1, timeout=2)) == len(states)
    assert all(state == "published" for _, state in states)
    assert len({e["received_at"] for e in events}) == len(events)  # one event per version, each its own


def test_studies_that_complete_while_the_broker_is_down_are_published_when_it_returns(gateways, tmp_path):
    port = free_port()
    gw = gateways(window_s=1.0, bootstrap=f"127.0.0.1:{port}")  # nothing listens there yet
    studies = [real_study("77654033/CR*"), real_study("77654033/CT2")]
    for files in studies:
        assert storescu(gw.port, files).returncode == 0  # receiving does not need the broker
    wait_metric(gw, "triage_gateway_outbox_depth 2.0")
    assert gw.proc.poll() is None
    late = Broker(port=port, data=tmp_path / "late-kafka")
    late.up()
    try:
        try:
            new_topic(late.bootstrap, gw.topic)
        except TopicAlreadyExistsError:  # the gateway's first send created it
            pass
        events = study_events(late.bootstrap, gw.topic, 2, timeout=90)
        assert len(events) == 2
        assert [state for _, state in versions(gw)] == ["published", "published"]
        wait_metric(gw, "triage_gateway_outbox_depth 0.0")
    finally:
        gw.kill9()
        late.down()
