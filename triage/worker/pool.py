"""The process pool that runs the pipeline: N worker processes, one study at a time each.

Each process builds its own :class:`~triage.pipeline.Pipeline` once (ONNX Runtime threads
are set so that N processes do not oversubscribe the cores). The pool knows which process
runs which study and since when, so one study can be dealt with without touching the others:

* A study still running at its deadline (fetch, decode and inference together) has its
  process killed and replaced; it comes back as a ``timeout`` result.
* A process that dies under a study (OOM killer, ``kill -9``, a crash in a native decoder)
  is replaced; the study comes back as a ``crashed`` result, and the host, which keeps the
  count, decides whether to run it again. Queued studies are not affected.

Owned and used by the host's consumer thread only; nothing in it is thread-safe.
"""
from __future__ import annotations

import collections
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from triage import metrics
from triage.settings import Settings

log = logging.getLogger(__name__)

_PIPELINE = None
_RESTART_BACKOFF_S = (0.5, 30.0)  # a process that dies before it is ready is restarted after this, doubling


@dataclass(frozen=True)
class Result:
    event_json: str
    error_kind: str | None
    error_message: str | None
    retriable: bool
    crashed: bool = False  # the worker process died while running the study


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
    from triage.events import parse_study_event, to_json

    try:
        outcome = _PIPELINE.process(parse_study_event(payload))
        err = outcome.error
        return Result(to_json(outcome.event), err.kind if err else None, str(err) if err else None,
                      bool(err and err.retriable))
    except Exception as exc:  # the pipeline never raises; this is a bug, reported as this study's failure
        return Result("", "internal", f"worker error ({type(exc).__name__})", False)


def _worker_main(conn: Connection, settings: Settings, log_level: int, host_pid: int) -> None:
    _init(settings, log_level, host_pid)
    conn.send(("ready", None))
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        task_id, payload = item
        conn.send((task_id, _score(payload)))


@dataclass
class _Slot:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    ready: bool = False
    task: int | None = None
    started: float = 0.0  # when the study was handed over (its deadline counts from here)


class WorkerPool:
    def __init__(self, settings: Settings, processes: int, *, deadline_s: float | None = None):
        self.settings = settings
        self.processes = processes
        self.deadline_s = float(deadline_s if deadline_s is not None else settings.study_deadline_s)
        self._ctx = multiprocessing.get_context("spawn")
        self._queue: collections.deque[int] = collections.deque()
        self._payloads: dict[int, bytes] = {}  # wanted studies, queued or running
        self._slots: list[_Slot] = []
        self._restart_at: list[float] = []  # when a replacement process may start
        self._backoff = _RESTART_BACKOFF_S[0]
        for _ in range(processes):
            self._start()

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, daemon=True, name="triage-worker",
                                    args=(child, self.settings, logging.getLogger().getEffectiveLevel(), os.getpid()))
        process.start()
        child.close()
        self._slots.append(_Slot(process, parent))

    def pids(self) -> list[int]:
        return sorted(s.process.pid for s in self._slots if s.process.pid is not None and s.process.is_alive())

    def submit(self, task_id: int, payload: bytes) -> None:
        self._payloads[task_id] = payload
        self._queue.append(task_id)

    def forget(self, task_id: int) -> None:
        """Stop caring about a study (its partition was revoked); a late result is dropped."""
        self._payloads.pop(task_id, None)

    def results(self, timeout_s: float) -> list[tuple[int, Result]]:
        out: list[tuple[int, Result]] = []
        self._restart_due()
        self._dispatch(out)
        now = time.monotonic()
        wait_s = timeout_s
        for s in self._slots:
            if s.task is not None:
                wait_s = min(wait_s, max(0.0, s.started + self.deadline_s - now))
        handles = [s.conn for s in self._slots] + [s.process.sentinel for s in self._slots]
        ready = set(wait(handles, timeout=wait_s)) if handles else set()
        if not handles and timeout_s > 0:
            time.sleep(timeout_s)
        for slot in list(self._slots):
            if slot.conn in ready:
                self._receive(slot, out)
        for slot in list(self._slots):
            if slot in self._slots and not slot.process.is_alive():
                self._died(slot, out)
        self._enforce_deadlines(out)
        self._dispatch(out)
        return out

    def _dispatch(self, out: list[tuple[int, Result]]) -> None:
        for slot in self._slots:
            if not self._queue:
                return
            if not slot.ready or slot.task is not None:
                continue
            task_id = self._queue.popleft()
            while task_id not in self._payloads:  # forgotten while queued
                if not self._queue:
                    return
                task_id = self._queue.popleft()
            try:
                slot.conn.send((task_id, self._payloads[task_id]))
            except (OSError, ValueError):  # the process is gone; the study waits for another
                self._queue.appendleft(task_id)
                continue
            slot.task, slot.started = task_id, time.monotonic()

    def _receive(self, slot: _Slot, out: list[tuple[int, Result]]) -> None:
        try:
            tag, result = slot.conn.recv()
        except (EOFError, OSError):
            return  # died; handled by _died
        except Exception as exc:  # a result that cannot be unpickled: that study's failure, not the pool's
            tag, result = slot.task, Result("", "internal", f"worker result unreadable ({type(exc).__name__})", False)
        if tag == "ready":
            slot.ready = True
            self._backoff = _RESTART_BACKOFF_S[0]
            return
        slot.task = None
        if self._payloads.pop(tag, None) is not None:
            out.append((tag, result))

    def _died(self, slot: _Slot, out: list[tuple[int, Result]]) -> None:
        code = slot.process.exitcode
        task = slot.task
        self._replace(slot, immediately=slot.ready)
        if task is not None and self._payloads.pop(task, None) is not None:
            metrics.WORKER_CRASHES.inc()
            log.error("a worker process died under a study (exit %s); replacing it", code)
            out.append((task, Result("", "worker_crash", f"the worker process died while scoring (exit {code})",
                                     False, crashed=True)))
        else:
            log.error("a worker process died (exit %s); replacing it", code)

    def _enforce_deadlines(self, out: list[tuple[int, Result]]) -> None:
        now = time.monotonic()
        for slot in list(self._slots):
            if slot.task is None or now - slot.started < self.deadline_s:
                continue
            task = slot.task
            self._kill(slot)
            self._replace(slot, immediately=True)
            if self._payloads.pop(task, None) is not None:
                metrics.TIMEOUTS.inc()
                log.error("a study ran past its %.0f s deadline; its worker process was killed", self.deadline_s)
                out.append((task, Result("", "timeout", f"the study ran past its {self.deadline_s:.0f} s deadline "
                                         "(fetch, decode and inference)", False)))

    def _replace(self, slot: _Slot, *, immediately: bool) -> None:
        """Drop ``slot`` and schedule a new process; one that died before it was ready backs off."""
        metrics.WORKER_RESTARTS.inc()
        self._slots.remove(slot)
        slot.conn.close()
        slot.process.join(timeout=1)
        delay = 0.0 if immediately else self._backoff
        if not immediately:
            self._backoff = min(_RESTART_BACKOFF_S[1], self._backoff * 2)
            log.error("a worker process died while starting; next start in %.1f s", delay)
        self._restart_at.append(time.monotonic() + delay)
        self._restart_due()

    def _restart_due(self) -> None:
        now = time.monotonic()
        due = [t for t in self._restart_at if t <= now]
        self._restart_at = [t for t in self._restart_at if t > now]
        for _ in due:
            self._start()

    @staticmethod
    def _kill(slot: _Slot) -> None:
        try:
            os.kill(slot.process.pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError):
            pass

    def shutdown(self) -> None:
        """Stop every process; studies still running are abandoned (the caller drained what it could)."""
        for slot in self._slots:
            if slot.task is None and slot.ready:
                try:
                    slot.conn.send(None)
                except (OSError, ValueError):
                    pass
            else:
                self._kill(slot)
        for slot in self._slots:
            slot.process.join(timeout=5)
            if slot.process.is_alive():
                self._kill(slot)
                slot.process.join(timeout=5)
            slot.conn.close()
        self._slots.clear()
        self._restart_at.clear()
        self._queue.clear()
        self._payloads.clear()
