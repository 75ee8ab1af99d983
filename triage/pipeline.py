"""One study end to end: fetch → scan → route → decode → infer → score → priority event.

Pure: no Kafka, no process management. :meth:`Pipeline.process` never raises; every study
comes out as an event (``scored``, ``no_applicable_model`` or ``failed`` with a reason),
together with the error, if any, so that a worker can decide to retry (``retriable``).
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

from triage.dicom.decode import Volume, decode_series
from triage.dicom.scan import SeriesInfo, scan_study
from triage.errors import SchemaError, TriageError
from triage.events import (UNKNOWN_SOURCE, ErrorInfo, Finding, PriorityEvent, Source, Status, StudyEvent,
                           Timings, make_event_id, now_iso, parse_priority_event, to_dict)
from triage.fetch import local_study
from triage.inference.registry import ModelRegistry
from triage.priority import Policy
from triage.routing import Router
from triage.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    event: PriorityEvent
    error: TriageError | None = None


def study_ref(uid: str) -> str:
    """A short, non-reversible reference to a study for logs (no UIDs in logs)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:10]


class Pipeline:
    """Holds one process's models, rules and policy. Not thread-safe; one per process."""

    def __init__(self, registry: ModelRegistry, router: Router, policy: Policy, *,
                 max_voxels: int, decode_threads: int = 2, fetch_timeout_s: float = 60.0):
        self.registry = registry
        self.router = router
        self.policy = policy
        self.max_voxels = max_voxels
        self.decode_threads = decode_threads
        self.fetch_timeout_s = fetch_timeout_s
        self._severities = {f.code: f.severity for m in registry.manifests.values() for f in m.findings}
        policy.check_severities({f"{m.name}/{f.code}": f.severity for m in registry.manifests.values()
                                 for f in m.findings})
        # everything besides the study itself that can change its priority, for the event_id
        self._config_id = make_event_id(registry.fingerprint, router.fingerprint, policy.fingerprint)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Pipeline":
        registry = ModelRegistry(settings.models_dir, settings.runtime)
        router = Router.from_file(settings.rules, {n: m.applies_to for n, m in registry.manifests.items()})
        return cls(registry, router, Policy.from_file(settings.policy),
                   max_voxels=settings.max_voxels, decode_threads=settings.decode_threads,
                   fetch_timeout_s=settings.fetch_timeout_s)

    def process(self, study: StudyEvent) -> Outcome:
        started = time.perf_counter()
        clock = {"decode": 0.0, "infer": 0.0, "score": 0.0}
        inputs = study.source.uri
        try:
            with local_study(study.source.uri, self.fetch_timeout_s) as folder:
                t = time.perf_counter()
                series = scan_study(folder)
                inputs = _input_fingerprint(series)
                routes = self.router.route(series)
                volumes: dict[str, Volume] = {}
                for route in routes:
                    uid = route.series.series_instance_uid
                    if uid not in volumes:
                        volumes[uid] = decode_series(route.series, max_voxels=self.max_voxels,
                                                     threads=self.decode_threads)
                clock["decode"] = time.perf_counter() - t
                t = time.perf_counter()
                findings: list[Finding] = []
                for route in routes:
                    findings.extend(self.registry.infer(route.model, volumes[route.series.series_instance_uid]))
                clock["infer"] = time.perf_counter() - t
            t = time.perf_counter()
            if routes:
                status, extra = Status.SCORED, []
            else:
                modalities = ", ".join(sorted({s.modality or "?" for s in series}))
                status = Status.NO_APPLICABLE_MODEL
                extra = [f"no model applies to {len(series)} series ({modalities})"]
            priority = self.policy.score(findings, self._severities, study.requested_priority,
                                         study.patient_class, extra)
            clock["score"] = time.perf_counter() - t
            event = self._event(study, status, priority, findings, None, inputs, clock, started)
            try:  # what came from the files (series UIDs) must not make an event consumers refuse
                parse_priority_event(to_dict(event))
            except SchemaError as exc:
                raise TriageError(f"the priority event did not validate ({exc})") from None
            return Outcome(event)
        except TriageError as exc:
            error = exc
        except Exception as exc:  # a bug must not take the pool down: report it as a failed study
            log.debug("unexpected error", exc_info=True)
            error = TriageError(f"internal error ({type(exc).__name__}: {str(exc)[:200]})")
        log.warning("study %s failed: %s", study_ref(study.study_instance_uid), error)
        return Outcome(self.failed_event(study, error, inputs, clock, started), error)

    def failed_event(self, study: StudyEvent | str, error: TriageError, inputs: str | None = None,
                     clock: dict[str, float] | None = None, started: float | None = None) -> PriorityEvent:
        """A ``failed`` event keeping the order's own priority; ``study`` may be a bare UID."""
        if isinstance(study, str):
            study = StudyEvent(study_instance_uid=study, source=Source(uri=UNKNOWN_SOURCE), received_at=now_iso())
        priority = self.policy.score([], {}, study.requested_priority, study.patient_class,
                                     [f"triage failed ({error.kind}); read in order priority"])
        info = ErrorInfo(kind=error.kind, message=str(error))
        return self._event(study, Status.FAILED, priority, [], info, inputs or study.source.uri,
                           clock or {"decode": 0.0, "infer": 0.0, "score": 0.0},
                           time.perf_counter() if started is None else started)

    def _event(self, study: StudyEvent, status: Status, priority, findings, error, inputs: str,
               clock: dict[str, float], started: float) -> PriorityEvent:
        total = time.perf_counter() - started
        return PriorityEvent(
            event_id=make_event_id(study.study_instance_uid, inputs, self._config_id,
                                   study.requested_priority.value if study.requested_priority else "",
                                   study.patient_class.value if study.patient_class else "", status.value),
            study_instance_uid=study.study_instance_uid, accession_number=study.accession_number,
            status=status, priority=priority, findings=findings, error=error,
            timings_ms=Timings(decode=round(clock["decode"] * 1e3, 2), infer=round(clock["infer"] * 1e3, 2),
                               score=round(clock["score"] * 1e3, 2), total=round(total * 1e3, 2)),
            produced_at=now_iso())


def _input_fingerprint(series: list[SeriesInfo]) -> str:
    uids = sorted(str(ds.get("SOPInstanceUID", "")) for s in series for ds in s.headers)
    return make_event_id(*uids)
