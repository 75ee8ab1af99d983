"""Gateway fixtures: a `triage gateway` process per test, with its own store and study topic on
the session's real broker; dcmtk is required (skip locally, fail under CI=true)."""
from __future__ import annotations

import hashlib

import pytest

from tests.gateway.harness import GatewayProc, new_topic
from tests.helpers import need


@pytest.fixture
def gateways(broker, tmp_path, request):
    """``make(window_s=1.0, extra=[...], bootstrap=None)``: a started gateway."""
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
