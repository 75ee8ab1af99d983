"""A real Prometheus scrapes a running `triage worker` (and a gateway) and its HTTP API answers
what ops will ask: studies by status, consumer lag, end-to-end latency, the oldest uncommitted
offset's age; the alert rules load and stay quiet on a healthy pool; every dashboard query runs."""
from __future__ import annotations

import math
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.bus.kafka_harness import free_port
from tests.helpers import ROOT, need
from tests.ops.harness import Prometheus
from tests.ops.test_rules import panel_exprs

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]


@pytest.fixture
def prometheus(tmp_path):
    servers = []

    def start(targets):
        need("prometheus")
        servers.append(Prometheus(tmp_path / f"prom{len(servers)}", targets).start())
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def test_prometheus_scrapes_a_worker_and_answers_the_ops_questions(pool, studies, gateways, prometheus):
    port = free_port()
    gw = gateways(window_s=1.0, topic=pool.studies)
    host = pool.start_host(processes=1, extra=["--metrics-port", str(port)])
    prom = prometheus({"triage-worker": [f"127.0.0.1:{port}"], "triage-gateway": [f"127.0.0.1:{gw.metrics_port}"]})
    prom.wait_value('up{job="triage-worker"}', lambda v: v == 1)
    prom.wait_value('up{job="triage-gateway"}', lambda v: v == 1)  # each target has its own scrape phase

    uids = [f"1.2.826.0.1.777.{i}" for i in range(5)]
    pool.submit([(u, (studies / "ct4").as_uri()) for u in uids])
    events = pool.wait_for(set(uids), timeout=120)
    assert all(e["status"] == "scored" for evs in events.values() for e in evs), pool.logs()
    committed, end = pool.wait_committed()
    assert committed == end

    # studies by status
    prom.wait_value('sum(triage_studies_total{job="triage-worker",status="scored"})', lambda v: v == 5)
    assert prom.value('sum(triage_studies_total{status="failed"})') in (None, 0.0)
    assert prom.value('sum(triage_findings_positive_total{code="brightspot"})') == 5
    # consumer lag: 0 once everything is committed (the worker refreshes it every 10 s)
    prom.wait_value(f'sum(triage_consumer_lag{{topic="{pool.studies}"}})', lambda v: v == 0)
    # end-to-end latency: five observations, a finite positive median under the test's own bound
    assert prom.value("sum(triage_end_to_end_seconds_count)") == 5
    p50 = prom.value("histogram_quantile(0.5, sum by (le) (triage_end_to_end_seconds_bucket))")
    assert p50 is not None and 0 < p50 < 120 and math.isfinite(p50)
    # the oldest uncommitted offset: none pending
    prom.wait_value(f'max(triage_oldest_uncommitted_seconds{{topic="{pool.studies}"}})', lambda v: v == 0)
    # the gateway's metrics are on the same Prometheus
    assert prom.value("sum(triage_gateway_outbox_depth)") == 0

    # the alert rules load into the real server, evaluate without error, and none fires here
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert len(rules) >= 7 and all(r["health"] == "ok" for r in rules), rules
    assert prom.api("alerts")["alerts"] == []
    # every dashboard query is valid PromQL for this server, and the core panels have data
    for title, exprs in panel_exprs().items():
        for expr in exprs:
            prom.query(expr)  # raises on a bad query
    assert prom.query('sum by (status) (increase(triage_studies_total[1h]))')
    assert host.stop() == 0


def test_a_model_that_fails_its_hash_check_is_scraped_and_alerted(pool, prometheus, tmp_path):
    from tests.helpers import make_model_dir

    models = tmp_path / "models"
    make_model_dir(models, "brightspot", window=(0, 2000), shape=(4, 64, 64))
    artifact = next(p for p in (models / "brightspot").iterdir() if p.suffix == ".onnx")
    artifact.write_bytes(artifact.read_bytes() + b"tampered")
    port = free_port()
    log = tmp_path / "worker.log"
    proc = subprocess.Popen([sys.executable, "-m", "triage.cli", "worker", "--bootstrap", pool.broker.bootstrap,
                             "--models", str(models), "--rules", str(pool.rules), "--metrics-port", str(port),
                             "--failed-start-linger", "30", "--in-topic", pool.studies],
                            cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        prom = prometheus({"triage-worker": [f"127.0.0.1:{port}"]})
        prom.wait_value('triage_model_verified{model="brightspot"}', lambda v: v == 0, timeout=30)
        deadline = time.monotonic() + 30
        while not any(a["labels"]["alertname"] == "TriageModelVerificationFailed" and a["state"] == "firing"
                      for a in prom.api("alerts")["alerts"]):
            assert time.monotonic() < deadline, prom.api("alerts")
            time.sleep(0.5)
        assert proc.wait(60) == 2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert "sha256" in text and "refusing to load" in text, text
    assert "Traceback" not in text


def test_worker_metrics_endpoint_serves_the_verified_models(pool, studies):
    port = free_port()
    host = pool.start_host(processes=1, extra=["--metrics-port", str(port)])
    deadline = time.monotonic() + 60
    while True:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            break
        except OSError:
            assert time.monotonic() < deadline, host.log_text()
            time.sleep(0.3)
    assert 'triage_model_verified{model="brightspot"} 1.0' in body
    assert host.stop() == 0
