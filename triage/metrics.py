"""Every Prometheus metric of triage, defined once. Labels never carry PHI or UIDs.

Worker processes do not touch these: the host process observes each finished study from
its priority event (:func:`observe_event`), so one ``/metrics`` endpoint serves the pool.
"""
from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from triage.events import PriorityEvent
from triage.inference.guard import reason_kind

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
_STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

STUDIES = Counter("triage_studies_total", "Studies finished, by status", ["status"], registry=REGISTRY)
STAGE_SECONDS = Histogram("triage_stage_seconds", "Time per pipeline stage", ["stage"],
                          buckets=_STAGE_BUCKETS, registry=REGISTRY)
FINDINGS_POSITIVE = Counter("triage_findings_positive_total", "Positive findings, by finding code", ["code"],
                            registry=REGISTRY)
SHADOW_FINDINGS = Counter("triage_shadow_findings_total", "Findings of shadow models (never scored), by code and outcome",
                          ["code", "positive"], registry=REGISTRY)
NOT_ASSESSABLE = Counter("triage_not_assessable_total",
                         "Findings not assessed (the series lay outside the model's training envelope), by model and reason",
                         ["model", "reason"], registry=REGISTRY)
FAILURES = Counter("triage_failures_total", "Failed studies, by error kind", ["reason"], registry=REGISTRY)
PRIORITY_LEVEL = Counter("triage_priority_level_total", "Studies by resulting worklist level", ["level"],
                         registry=REGISTRY)
IN_FLIGHT = Gauge("triage_in_flight", "Studies handed to worker processes and not yet acknowledged",
                  registry=REGISTRY)
WORKER_RESTARTS = Counter("triage_worker_restarts_total", "Worker processes replaced (died, or killed at a deadline)",
                          registry=REGISTRY)
WORKER_CRASHES = Counter("triage_worker_crashes_total", "Worker processes that died while running a study",
                         registry=REGISTRY)
TIMEOUTS = Counter("triage_study_timeouts_total", "Studies that ran past their deadline (their process was killed)",
                   registry=REGISTRY)
SEND_RETRIES = Counter("triage_send_retries_total", "Sends to the bus sent again after a failure, by topic role",
                       ["topic"], registry=REGISTRY)
OLDEST_UNCOMMITTED = Gauge("triage_oldest_uncommitted_seconds",
                           "Age of the oldest message not yet committed, per partition (0: none pending)",
                           ["topic", "partition"], registry=REGISTRY)
DLQ = Counter("triage_dlq_total", "Messages sent to the dead-letter topic, by reason (error kind)", ["reason"],
              registry=REGISTRY)
RETRIES = Counter("triage_retries_total", "Retriable failures retried, by error kind", ["reason"],
                  registry=REGISTRY)
COMMITS = Counter("triage_commits_total", "Offset commits made", registry=REGISTRY)
REBALANCES = Counter("triage_rebalances_total", "Partition assignments and revocations", ["kind"],
                     registry=REGISTRY)
CONSUMER_LAG = Gauge("triage_consumer_lag", "End offset minus committed offset", ["topic", "partition"],
                     registry=REGISTRY)
MODEL_VERIFIED = Gauge("triage_model_verified",
                       "1 when the model folder's manifest and sha256 verified at start, 0 when it failed",
                       ["model"], registry=REGISTRY)
E2E_SECONDS = Histogram("triage_end_to_end_seconds", "From received_at to the priority event acknowledged",
                        buckets=_STAGE_BUCKETS + (300, 600), registry=REGISTRY)

GW_INSTANCES = Counter("triage_gateway_instances_total",
                       "Instances received by the gateway, by protocol and outcome (stored, duplicate, refused)",
                       ["protocol", "outcome"], registry=REGISTRY)
GW_BYTES = Counter("triage_gateway_bytes_total", "Bytes of instances stored by the gateway, by protocol",
                   ["protocol"], registry=REGISTRY)
GW_REFUSED = Counter("triage_gateway_refused_total",
                     "Instances refused by the gateway, by reason (instance_budget, study_budget, bad_uid, ...)",
                     ["reason"], registry=REGISTRY)
GW_ASSOCIATIONS_REFUSED = Counter("triage_gateway_associations_refused_total",
                                  "Associations and HTTP requests refused at the door, by reason",
                                  ["reason"], registry=REGISTRY)
GW_STUDIES = Counter("triage_gateway_studies_completed_total",
                     "Study versions whose quiet window passed (their study event is in the outbox)",
                     registry=REGISTRY)
GW_OUTBOX = Gauge("triage_gateway_outbox_depth", "Study events written to the outbox and not yet acknowledged",
                  registry=REGISTRY)
GW_PUBLISH_SECONDS = Histogram("triage_gateway_publish_seconds",
                               "From a study's last instance to its study event acknowledged by the broker",
                               buckets=_STAGE_BUCKETS + (300, 600), registry=REGISTRY)


def observe_event(event: PriorityEvent) -> None:
    STUDIES.labels(event.status.value).inc()
    PRIORITY_LEVEL.labels(event.priority.level.value).inc()
    t = event.timings_ms
    for stage, ms in (("decode", t.decode), ("infer", t.infer), ("score", t.score), ("total", t.total)):
        STAGE_SECONDS.labels(stage).observe(ms / 1e3)
    for f in event.findings:
        if f.positive:
            FINDINGS_POSITIVE.labels(f.code).inc()
        if f.assessable is False:
            NOT_ASSESSABLE.labels(f.model.name, reason_kind(f.not_assessable_reason or "")).inc()
    for f in event.shadow_findings or []:
        SHADOW_FINDINGS.labels(f.code, "true" if f.positive else "false").inc()
    if event.error is not None:
        FAILURES.labels(event.error.kind).inc()


def serve(port: int, host: str = "127.0.0.1") -> int | None:
    """Serve ``/metrics``; returns the port, or None (with a warning) if it is taken."""
    if not port:
        return None
    try:
        start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        log.warning("metrics not served: %s:%d is not available (%s)", host, port, exc.strerror)
        return None
    log.info("metrics on http://%s:%d/metrics", host, port)
    return port
