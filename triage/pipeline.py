"""One study end to end: fetch → scan → route → decode → infer → score → priority event.

Pure: no Kafka, no process management. :meth:`Pipeline.process` never raises; every study
comes out as an event (``scored``, ``no_applicable_model`` or ``failed`` with a reason),
together with the error, if any, so that a worker can decide to retry (``retriable``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from triage.dicom.decode import decode_series
from triage.dicom.scan import ScanLimits, SeriesInfo, modality_label, survey_study
from triage.errors import SchemaError, TriageError
from triage.events import (UNKNOWN_SOURCE, ErrorInfo, Finding, PriorityEvent, Source, Status, StudyEvent,
                           Timings, make_event_id, now_iso, parse_priority_event, study_ref, to_dict)
from triage.fetch import local_study
from triage.inference.guard import measure_volume
from triage.inference.registry import ModelRegistry
from triage.priority import Policy
from triage.routing import Route, Router
from triage.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    event: PriorityEvent
    error: TriageError | None = None


class Pipeline:
    """Holds one process's models, rules and policy. Not thread-safe; one per process."""

    def __init__(self, registry: ModelRegistry, router: Router, policy: Policy, *,
                 max_voxels: int, decode_threads: int = 2, fetch_timeout_s: float = 60.0,
                 limits: ScanLimits | None = None):
        self.registry = registry
        self.router = router
        self.policy = policy
        self.max_voxels = max_voxels
        self.decode_threads = decode_threads
        self.fetch_timeout_s = fetch_timeout_s
        self.limits = limits or ScanLimits(max_voxels=max_voxels)
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
                   fetch_timeout_s=settings.fetch_timeout_s, limits=settings.scan_limits)

    def process(self, study: StudyEvent) -> Outcome:
        """Score one study. Each series stands on its own: one that cannot be read or scored
        is named in the reasons and the others go on; the study fails only when nothing was
        scored and something was broken. One volume is held in memory at a time."""
        started = time.perf_counter()
        clock = {"decode": 0.0, "infer": 0.0, "score": 0.0, "shadow": 0.0}
        inputs = study.source.uri
        notes: list[str] = []
        try:
            with local_study(study.source.uri, self.fetch_timeout_s) as folder:
                t = time.perf_counter()
                survey = survey_study(folder, self.limits)
                notes = survey.notes
                inputs = _input_fingerprint(survey.series)
                routes = self.router.route(survey.series)
                clock["decode"] += time.perf_counter() - t
                failures: list[tuple[str, TriageError]] = list(survey.failed)
                findings: list[Finding] = []
                shadow_findings: list[Finding] = []
                scored = 0
                for uid, series_routes in _by_series(routes).items():
                    t = time.perf_counter()
                    try:
                        volume = decode_series(series_routes[0].series, max_voxels=self.max_voxels,
                                               threads=self.decode_threads)
                    except TriageError as exc:
                        failures.append((uid, exc))
                        continue
                    finally:
                        clock["decode"] += time.perf_counter() - t
                    t = time.perf_counter()
                    measures = measure_volume(volume)  # once per series, for every model's guard
                    shared: dict = {}  # preprocessing steps the series' models have in common
                    clock["infer"] += time.perf_counter() - t
                    for route in series_routes:
                        shadow = route.shadow or self.registry.manifests[route.model].mode == "shadow"
                        t = time.perf_counter()
                        try:
                            found = self.registry.infer(route.model, volume, measures, shared)
                        except TriageError as exc:
                            if shadow:  # a shadow model's failure is its own: logged, never in the event
                                log.warning("shadow model %s failed: %s", route.model, exc)
                            else:
                                failures.append((uid, exc))
                            continue
                        finally:
                            clock["shadow" if shadow else "infer"] += time.perf_counter() - t
                        if shadow:
                            shadow_findings.extend(found)
                        else:
                            findings.extend(found)
                            scored += 1
                    del volume, shared
            reasons = ([f"series {uid} not read: {exc}" for uid, exc in failures]
                       + [f"{f.label} not assessed: {f.not_assessable_reason}" for f in findings if not f.assessable]
                       + _summarise(notes))
            if not scored and failures:
                error = failures[0][1]
                log.warning("study %s failed: %s", study_ref(study.study_instance_uid), error)
                return Outcome(self.failed_event(study, error, inputs, clock, started, reasons[1:]), error)
            t = time.perf_counter()
            if scored:
                status = Status.SCORED
            elif routes:  # only shadow models read this study: for the worklist, none applies
                status = Status.NO_APPLICABLE_MODEL
                reasons.insert(0, f"no live model applies to {len(survey.series)} series")
            else:
                modalities = ", ".join(sorted({modality_label(s.modality) for s in survey.series}))
                status = Status.NO_APPLICABLE_MODEL
                reasons.insert(0, f"no model applies to {len(survey.series)} series ({modalities})")
            priority = self.policy.score(findings, self._severities, study.requested_priority,
                                         study.patient_class, reasons)
            clock["score"] = time.perf_counter() - t
            event = self._event(study, status, priority, findings, None, inputs, clock, started,
                                shadow_findings or None)
            try:  # what came from the files (series UIDs) must not make an event consumers refuse
                parse_priority_event(to_dict(event))
            except SchemaError as exc:
                raise TriageError(f"the priority event did not validate ({exc})") from None
            return Outcome(event)
        except TriageError as exc:
            error = exc
        except Exception as exc:  # a bug must not take the pool down: report it as a failed study
            log.debug("unexpected error", exc_info=True)
            error = TriageError(f"internal error ({type(exc).__name__})")
        log.warning("study %s failed: %s", study_ref(study.study_instance_uid), error)
        return Outcome(self.failed_event(study, error, inputs, clock, started, _summarise(notes)), error)

    def failed_event(self, study: StudyEvent | str, error: TriageError, inputs: str | None = None,
                     clock: dict[str, float] | None = None, started: float | None = None,
                     extra_reasons: list[str] | None = None) -> PriorityEvent:
        """A ``failed`` event keeping the order's own priority; ``study`` may be a bare UID."""
        if isinstance(study, str):
            study = StudyEvent(study_instance_uid=study, source=Source(uri=UNKNOWN_SOURCE), received_at=now_iso())
        priority = self.policy.score([], {}, study.requested_priority, study.patient_class,
                                     [f"triage failed ({error.kind}); read in order priority", *(extra_reasons or [])])
        info = ErrorInfo(kind=error.kind, message=str(error))
        return self._event(study, Status.FAILED, priority, [], info, inputs or study.source.uri,
                           clock or {"decode": 0.0, "infer": 0.0, "score": 0.0},
                           time.perf_counter() if started is None else started)

    def _event(self, study: StudyEvent, status: Status, priority, findings, error, inputs: str,
               clock: dict[str, float], started: float,
               shadow_findings: list[Finding] | None = None) -> PriorityEvent:
        total = time.perf_counter() - started
        return PriorityEvent(
            event_id=make_event_id(study.study_instance_uid, inputs, self._config_id,
                                   study.requested_priority.value if study.requested_priority else "",
                                   study.patient_class.value if study.patient_class else "", status.value),
            study_instance_uid=study.study_instance_uid, accession_number=study.accession_number,
            status=status, priority=priority, findings=findings, error=error,
            timings_ms=Timings(decode=round(clock["decode"] * 1e3, 2), infer=round(clock["infer"] * 1e3, 2),
                               score=round(clock["score"] * 1e3, 2), total=round(total * 1e3, 2),
                               shadow=round(clock["shadow"] * 1e3, 2) if clock.get("shadow") else None),
            produced_at=now_iso(), shadow_findings=shadow_findings)


_MAX_NOTES = 5


def _summarise(notes: list[str]) -> list[str]:
    """What was skipped, for the reasons: the first few, then a count."""
    if len(notes) <= _MAX_NOTES:
        return list(notes)
    return notes[:_MAX_NOTES] + [f"and {len(notes) - _MAX_NOTES} more file(s) skipped"]


def _by_series(routes: list[Route]) -> dict[str, list[Route]]:
    out: dict[str, list[Route]] = {}
    for route in routes:
        out.setdefault(route.series.series_instance_uid, []).append(route)
    return out


def _input_fingerprint(series: list[SeriesInfo]) -> str:
    uids = sorted(str(ds.get("SOPInstanceUID", "")) for s in series for ds in s.headers)
    return make_event_id(*uids)
