"""triage against a secured broker: a SASL_SSL listener (TLS from a throw-away CA, SCRAM-SHA-512
users made with Kafka's own storage tool), started by scripts/kafka/broker.sh secure-up.

The worker, `triage submit` and the gateway connect with TLS plus SCRAM from TRIAGE_KAFKA_*
variables; a wrong password, an untrusted certificate, or PLAINTEXT against the TLS listener
each fail at start with one line naming the cause."""
from __future__ import annotations

import subprocess
import sys
import time

import pydicom
import pytest

from tests.bus.kafka_harness import Broker, free_port, pool_for, started
from tests.gateway.harness import GatewayProc, new_topic, storescu, study_events
from tests.helpers import ROOT, need, write_series

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    need("openssl")
    yield from started(Broker(port=free_port(), data=tmp_path_factory.mktemp("kafka-secure"), secure=True),
                       "the secured-broker tests need a real broker")


@pytest.fixture
def secure_pool(secure_broker, model_setup, tmp_path, request):
    yield from pool_for(secure_broker, "s", model_setup, tmp_path, request)


def test_broker_script_secures_the_listener(secure_broker):
    env = secure_broker.env()
    assert env["TRIAGE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and env["TRIAGE_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    props = (secure_broker.data / "server.properties").read_text()
    assert "listeners=SASL_SSL://127.0.0.1:" in props and "PLAINTEXT://" not in props.replace("CONTROLLER:PLAINTEXT", "")
    # what the listener presents: our CA's certificate for 127.0.0.1, over TLS
    shown = subprocess.run(["openssl", "s_client", "-connect", secure_broker.bootstrap, "-CAfile",
                            env["TRIAGE_KAFKA_SSL_CAFILE"], "-verify_return_error", "-verify_ip", "127.0.0.1"],
                           input="", capture_output=True, text=True, timeout=30)
    assert "Verify return code: 0 (ok)" in shown.stdout, shown.stdout[-2000:]


def test_50_studies_scored_over_sasl_ssl_with_scram(secure_pool, studies):
    uids = [f"1.2.826.0.1.901.{i}" for i in range(50)]
    secure_pool.submit([(u, (studies / "ct4").as_uri()) for u in uids])
    host = secure_pool.start_host(processes=2)
    events = secure_pool.wait_for(set(uids), timeout=240)
    assert set(events) == set(uids), secure_pool.logs()
    assert all(e["status"] == "scored" for evs in events.values() for e in evs)
    committed, end = secure_pool.wait_committed()
    assert committed == end and sum(end.values()) == 50
    # `triage submit` over the same secured listener
    env = {**secure_pool.broker.env()}
    done = subprocess.run([sys.executable, "-m", "triage.cli", "submit", str(studies / "ct4"), "--bootstrap",
                           secure_pool.broker.bootstrap, "--topic", secure_pool.studies, "--study-uid", "1.2.826.0.1.901.99"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env={**_env(), **env})
    assert done.returncode == 0, done.stderr
    assert "1.2.826.0.1.901.99" in secure_pool.wait_for({"1.2.826.0.1.901.99"}, timeout=120)
    assert host.stop() == 0


def test_gateway_publishes_to_the_secured_broker(secure_broker, tmp_path):
    need("storescu")
    topic = new_topic(secure_broker, "secure-gw.studies")
    files = write_series(tmp_path / "ct3", 3)
    gw = GatewayProc(secure_broker.bootstrap, tmp_path / "store", topic, 1.0, env=secure_broker.env()).start()
    try:
        sent = storescu(gw.port, files)
        assert sent.returncode == 0, sent.stderr
        [event] = study_events(secure_broker, topic, 1)
        assert event["study_instance_uid"] == pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    finally:
        gw.kill9()


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_KAFKA_")}


def _other_ca(tmp_path):
    key, crt = tmp_path / "other.key", tmp_path / "other.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=not ours",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    return crt


@pytest.mark.parametrize("case", ["wrong_password", "untrusted_certificate", "plaintext_against_tls"])
def test_misconfiguration_fails_fast_with_one_line(case, secure_broker, model_setup, tmp_path):
    models, rules, _ = model_setup
    env = {**_env(), **secure_broker.env()}
    want = {"wrong_password": "SASL SCRAM-SHA-512 login as 'triage' was refused",
            "untrusted_certificate": "its TLS certificate is not signed by the CA in ssl_cafile",
            "plaintext_against_tls": "did not answer PLAINTEXT; its listener likely wants SSL or SASL_SSL"}[case]
    if case == "wrong_password":
        env["TRIAGE_KAFKA_SASL_PASSWORD"] = "not-the-password"
    elif case == "untrusted_certificate":
        env["TRIAGE_KAFKA_SSL_CAFILE"] = str(_other_ca(tmp_path))
    else:
        for k in ("TRIAGE_KAFKA_SECURITY_PROTOCOL", "TRIAGE_KAFKA_SASL_MECHANISM", "TRIAGE_KAFKA_SASL_USERNAME",
                  "TRIAGE_KAFKA_SASL_PASSWORD", "TRIAGE_KAFKA_SSL_CAFILE"):
            env.pop(k)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "triage.cli", "worker", "--bootstrap", secure_broker.bootstrap,
                           "--models", str(models), "--rules", str(rules), "--metrics-port", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=90, env=env)
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("triage: ")]
    assert len(said) == 1 and said[0].startswith(f"triage: Kafka broker {secure_broker.bootstrap}: "), done.stderr
    assert want in said[0], said
    assert not any(" kafka." in line for line in done.stderr.splitlines()), done.stderr  # no library lines
    assert "Traceback" not in done.stderr and env.get("TRIAGE_KAFKA_SASL_PASSWORD", "-") not in done.stderr
    assert took < 30, f"took {took:.0f} s to fail"
