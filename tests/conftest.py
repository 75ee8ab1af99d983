"""Session-wide services. The Kafka tests (tests/bus, tests/gateway, tests/ops) share one real Apache Kafka
broker that this suite starts itself. Without Java or Maven they skip locally; under CI=true
they fail instead. ``pool`` gives a test its own topics and group on that broker."""
from __future__ import annotations

import hashlib

import pytest

from tests.bus.kafka_harness import Broker, free_port, pool_for, started
from tests.helpers import StudyServer, make_model_dir, need, rules_file, write_series


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    yield from started(Broker(port=free_port(), data=tmp_path_factory.mktemp("kafka")))


@pytest.fixture(scope="session")
def model_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("kafka-models")
    make_model_dir(root / "models", "brightspot", window=(0, 2000), shape=(4, 64, 64))
    rules = rules_file(root / "rules.yaml", [{"name": "ct", "match": {"modality": "CT"}, "models": ["brightspot"]}])
    study = root / "studies" / "ct4"
    write_series(study, 4)
    return root / "models", rules, root / "studies"


@pytest.fixture
def pool(broker, model_setup, tmp_path, request):
    yield from pool_for(broker, "t", model_setup, tmp_path, request)


@pytest.fixture
def studies(model_setup):
    return model_setup[2]


@pytest.fixture
def wado(model_setup):
    server = StudyServer(model_setup[2])
    yield server
    server.close()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A real Orthanc with its DICOMweb plugin on free loopback ports (Debian packages orthanc,
    orthanc-dicomweb): the sending PACS of the gateway tests and the WADO-RS server of the
    fetch tests."""
    from tests.gateway.harness import Orthanc

    need("Orthanc")
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


@pytest.fixture
def gateways(broker, tmp_path, request):
    """``make(window_s=1.0, extra=[...], bootstrap=None)``: a started `triage gateway` process with its
    own store and study topic on the session's broker (dcmtk required: skip locally, fail under CI)."""
    from tests.gateway.harness import GatewayProc, new_topic

    need("storescu", "echoscu")
    made: list[GatewayProc] = []
    name = "gw-" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]

    def make(window_s: float = 1.0, extra: list[str] | None = None, bootstrap: str | None = None,
             start: bool = True, topic: str | None = None) -> GatewayProc:
        if topic is None:
            topic = new_topic(broker.bootstrap, f"{name}{len(made)}.studies") if bootstrap is None else f"{name}.studies"
        g = GatewayProc(bootstrap or broker.bootstrap, tmp_path / f"store{len(made)}", topic, window_s, extra or [])
        made.append(g)
        return g.start() if start else g

    yield make
    for g in made:
        g.kill9()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for g in made:
            print(f"--- {g.log.name} ---\n{g.log_text()[-4000:]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
