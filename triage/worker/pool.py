"""The process pool that runs the pipeline, one :class:`~triage.pipeline.Pipeline` per process.

Each process builds its own model sessions once (ONNX Runtime threads are set so that N
processes do not oversubscribe the cores). If any process dies (OOM killer, ``kill -9``),
the pool notices, is rebuilt, and every study that was in it is submitted again: nothing
in flight is lost, and deterministic ``event_id``\\ s make the redo harmless.

Owned and used by the host's consumer thread only.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from triage import metrics
from triage.events import parse_study_event, to_json
from triage.settings import Settings

log = logging.getLogger(__name__)

_PIPELINE = None


@dataclass(frozen=True)
class Result:
    event_json: str
    error_kind: str | None
    error_message: str | None
    retriable: bool


def _die_with_parent(host_pid: int) -> None:
    """Linux: have the kernel kill this worker if its host dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != host_pid:  # the host died before the line above ran
        os._exit(1)


def _init(settings: Settings, log_level: int, host_pid: int) -> None:
    global _PIPELINE
    _die_with_parent(host_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host decides when work stops
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s [worker %(process)d] %(message)s")
    from triage.pipeline import Pipeline

    _PIPELINE = Pipeline.from_settings(settings)
    _PIPELINE.registry.warm_up()


def _score(payload: bytes) -> Result:
    outcome = _PIPELINE.process(parse_study_event(payload))
    err = outcome.error
    return Result(to_json(outcome.event), err.kind if err else None, str(err) if err else None,
                  bool(err and err.retriable))


class WorkerPool:
    def __init__(self, settings: Settings, processes: int):
        self.settings = settings
        self.processes = processes
        self._ctx = multiprocessing.get_context("spawn")
        self._executor = self._new_executor()
        self._futures: dict[Future, int] = {}
        self._payloads: dict[int, bytes] = {}

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.processes, mp_context=self._ctx, initializer=_init,
                                   initargs=(self.settings, logging.getLogger().getEffectiveLevel(), os.getpid()))

    def pids(self) -> list[int]:
        return sorted((getattr(self._executor, "_processes", None) or {}).keys())

    def submit(self, task_id: int, payload: bytes) -> None:
        self._payloads[task_id] = payload
        try:
            self._futures[self._executor.submit(_score, payload)] = task_id
        except BrokenProcessPool:
            self._rebuild()

    def forget(self, task_id: int) -> None:
        """Stop caring about a task (its partition was revoked); a late result is dropped."""
        self._payloads.pop(task_id, None)

    def results(self, timeout_s: float) -> list[tuple[int, Result]]:
        if not self._futures:
            if timeout_s > 0:
                time.sleep(timeout_s)
            return []
        done, _ = wait(list(self._futures), timeout=timeout_s, return_when=FIRST_COMPLETED)
        out, broken = [], False
        for fut in done:
            task_id = self._futures.pop(fut)
            try:
                result = fut.result()
            except BrokenProcessPool:
                broken = True
                continue
            except Exception as exc:  # the pipeline never raises; this is a pickling or memory failure
                log.error("worker returned an error instead of an event: %s", type(exc).__name__)
                result = Result("", "internal", f"worker process error ({type(exc).__name__})", False)
            if self._payloads.pop(task_id, None) is not None:
                out.append((task_id, result))
        if broken:
            self._rebuild()
        return out

    def _rebuild(self) -> None:
        redo = dict(self._payloads)
        log.error("a worker process died; restarting the pool and redoing %d in-flight studies", len(redo))
        metrics.WORKER_RESTARTS.inc()
        time.sleep(0.5)  # a pool that cannot start at all must not spin
        self._kill_processes()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor()
        self._futures.clear()
        self._payloads.clear()
        for task_id, payload in redo.items():
            self.submit(task_id, payload)

    def _kill_processes(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def shutdown(self) -> None:
        """Abandon whatever is still running; the caller has already drained what it could."""
        if self._payloads:
            self._kill_processes()
        self._executor.shutdown(wait=True, cancel_futures=True)
