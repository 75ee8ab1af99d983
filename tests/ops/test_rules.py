"""The shipped alert rules and dashboard: valid for Prometheus's own tool, unit-tested with it,
and naming only metrics that triage exports."""
from __future__ import annotations

import json
import re
import subprocess

import yaml

from tests.helpers import ROOT, need
from triage import metrics

PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "triage.json"
_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created")}


def exported_names() -> set[str]:
    """Every sample name triage's /metrics can carry (worker and gateway share the registry)."""
    names = set()
    for family in metrics.REGISTRY.collect():
        names.update(family.name + s for s in _SUFFIXES[family.type])
    return names


def alert_exprs() -> dict[str, str]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def panel_exprs() -> dict[str, list[str]]:
    dash = json.loads(DASHBOARD.read_text())
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in dash["panels"]}


def named_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b(triage_[a-z0-9_]+)\b", expr))


def test_promtool_checks_and_unit_tests_the_alert_rules():
    need("promtool")
    check = subprocess.run(["promtool", "check", "rules", "alerts.yml"], cwd=PROM, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(alert_exprs())} rules found" in check.stdout
    tested = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=PROM, capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_unit_test_that_fires_it():
    fired = set()
    for case in yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]:
        fired |= {t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert fired == set(alert_exprs())


def test_the_issue_asks_for_these_alerts():
    # lag growing, a stuck partition, DLQ rate, failure rate, end-to-end p99, no worker, a model's hash check
    assert {"TriageConsumerLagGrowing", "TriagePartitionStuck", "TriageDeadLetterRate", "TriageFailureRate",
            "TriageEndToEndSlow", "TriageNoWorkerUp", "TriageModelVerificationFailed"} <= set(alert_exprs())


def test_alerts_and_panels_name_only_metrics_triage_exports():
    exported = exported_names()
    unknown = {}
    for name, expr in alert_exprs().items():
        unknown.update({f"alert {name}: {m}": expr for m in named_metrics(expr) - exported})
    for title, exprs in panel_exprs().items():
        for expr in exprs:
            unknown.update({f"panel {title!r}: {m}": expr for m in named_metrics(expr) - exported})
    assert not unknown, unknown


def test_the_name_check_catches_a_misspelt_metric():
    assert named_metrics("rate(triage_studies_totl[5m])") - exported_names() == {"triage_studies_totl"}


def test_dashboard_has_the_panels_ops_asked_for():
    titles = " | ".join(panel_exprs()).lower()
    for want in ("throughput", "lag per partition", "end-to-end latency", "per-stage latency", "studies by status",
                 "positive findings by code", "dead-letter", "worker restarts"):
        assert want in titles, want
    ids = [p["id"] for p in json.loads(DASHBOARD.read_text())["panels"]]
    assert len(ids) == len(set(ids))
