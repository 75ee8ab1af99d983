"""The worker host: one consumer loop feeding a process pool, with at-least-once commits.

The loop never blocks on inference. It polls (which keeps the member alive however long
a study takes), hands studies to the pool, publishes each result, and commits a
partition's offset only up to the lowest study whose priority event the bus has not yet
acknowledged. Partitions are paused while in-flight work is at its limit.

Shutdown is a written sequence (:meth:`Host.run` ends with it): stop fetching, drain
in-flight work until a deadline, commit, close. Work abandoned at the deadline is not
committed, so the group redelivers it.

A Host belongs to the thread that calls :meth:`run`; :meth:`stop` may be called from a
signal handler or another thread (it only sets an event).
"""
from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from triage import metrics
from triage.bus.base import Message, SendHandle, Sink, Source, TopicPartition
from triage.errors import SchemaError, TriageError
from triage.events import PriorityEvent, StudyEvent, parse_priority_event, parse_study_event, to_json
from triage.pipeline import Pipeline
from triage.worker.offsets import OffsetTracker
from triage.worker.pool import Result, WorkerPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Topics:
    studies: str = "triage.studies"
    priority: str = "triage.priority"
    dlq: str = "triage.dlq"


@dataclass(frozen=True)
class HostOptions:
    max_in_flight: int = 4
    retry_attempts: int = 3  # total attempts for a retriable error, the first included
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 30.0
    drain_timeout_s: float = 30.0
    revoke_timeout_s: float = 10.0  # how long revoked partitions' in-flight work may finish
    commit_interval_s: float = 1.0
    poll_timeout_s: float = 0.2


@dataclass
class _Task:
    message: Message
    attempts: int = 0
    outstanding: list[tuple[SendHandle, str, bytes, bytes, list]] = field(default_factory=list)
    event: PriorityEvent | None = None
    study: StudyEvent | None = None  # None for a message that is not a valid study event


class Host:
    def __init__(self, source: Source, sink: Sink, pool: WorkerPool, pipeline: Pipeline, *,
                 topics: Topics = Topics(), options: HostOptions = HostOptions(),
                 on_event: Callable[[PriorityEvent], None] | None = None):
        self.source, self.sink, self.pool, self.pipeline = source, sink, pool, pipeline
        self.topics, self.options, self.on_event = topics, options, on_event
        self.tracker = OffsetTracker()
        self._tasks: dict[int, _Task] = {}
        self._by_offset: dict[tuple[TopicPartition, int], int] = {}
        self._publishing: set[int] = set()
        self._retry: list[tuple[float, int]] = []
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._last_commit = 0.0
        self._last_lag = 0.0
        self._closed = False
        self._handover: dict[TopicPartition, int] = {}
        self._finished = 0

    # -- control ------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self, until: Callable[[], bool] | None = None) -> None:
        self.source.subscribe([self.topics.studies], self._on_assigned, self._on_revoked)
        log.info("host started: %d process(es), up to %d studies in flight", self.pool.processes,
                 self.options.max_in_flight)
        while not self._stop.is_set() and not (until and until()):
            self._flow_control()
            for msg in self.source.poll(self.options.poll_timeout_s, self._room()):
                self._accept(msg)
            self._pump(0.05)
            self._maybe_commit()
        self._shutdown()

    # -- the loop's steps ---------------------------------------------------------------
    def _room(self) -> int:
        return max(0, self.options.max_in_flight - len(self._tasks))

    def _flow_control(self) -> None:
        """Pause every assigned partition while in-flight work is at its limit, else resume.

        Reads the pause state back from the source each time: a rebalance may hand back a
        partition still paused from before, and must not leave it paused forever."""
        assigned = self.source.assignment()
        paused = self.source.paused() & assigned
        if self._room() == 0 or self._stop.is_set():
            if assigned - paused:
                self.source.pause(assigned - paused)
        elif paused:
            self.source.resume(paused)
        metrics.IN_FLIGHT.set(len(self._tasks))

    def _accept(self, msg: Message) -> None:
        key = (msg.tp, msg.offset)
        if key in self._by_offset:
            return  # already in flight here (redelivered after a seek)
        task_id = next(self._ids)
        task = _Task(message=msg)
        self._tasks[task_id] = task
        self._by_offset[key] = task_id
        self.tracker.add(msg.tp, msg.offset)
        try:
            task.study = parse_study_event(msg.value)
        except SchemaError as exc:
            log.warning("message %s/%d@%d is not a valid study event: %s", msg.topic, msg.partition,
                        msg.offset, exc)
            self._dead_letter(task_id, exc)
            return
        self._submit(task_id)

    def _submit(self, task_id: int) -> None:
        task = self._tasks[task_id]
        task.attempts += 1
        self.pool.submit(task_id, task.message.value)

    def _pump(self, timeout_s: float) -> None:
        """Collect finished studies, due retries and acknowledged sends."""
        now = time.monotonic()
        while self._retry and self._retry[0][0] <= now:
            _, task_id = heapq.heappop(self._retry)
            if task_id in self._tasks:
                self._submit(task_id)
        for task_id, result in self.pool.results(timeout_s):
            if task_id in self._tasks:
                self._finish(task_id, result)
        self._check_sends()

    def _finish(self, task_id: int, result: Result) -> None:
        task = self._tasks[task_id]
        if result.retriable and task.attempts < self.options.retry_attempts and not self._stop.is_set():
            delay = min(self.options.retry_backoff_max_s, self.options.retry_backoff_s * 2 ** (task.attempts - 1))
            log.info("retriable failure (%s), attempt %d of %d, retrying in %.1fs", result.error_kind,
                     task.attempts, self.options.retry_attempts, delay)
            metrics.RETRIES.labels(result.error_kind).inc()
            heapq.heappush(self._retry, (time.monotonic() + delay, task_id))
            return
        if result.event_json:
            event = parse_priority_event(result.event_json)
        else:
            error = TriageError(result.error_message or "worker error")
            event = self.pipeline.failed_event(task.study, error)
            result = Result(to_json(event), error.kind, str(error), False)
        task.event = event
        self._send(task, self.topics.priority, event.study_instance_uid.encode(), result.event_json.encode(), [])
        if result.error_kind is not None:
            self._send_dlq(task, result.error_kind, result.error_message or "")
        self._publishing.add(task_id)

    def _dead_letter(self, task_id: int, exc: TriageError) -> None:
        task = self._tasks[task_id]
        self._send_dlq(task, exc.kind, str(exc))
        uid = _study_uid(task.message.value)
        if uid is not None:  # the reading platform still sees the study
            task.event = self.pipeline.failed_event(uid, exc)
            self._send(task, self.topics.priority, uid.encode(), to_json(task.event).encode(), [])
        self._publishing.add(task_id)

    def _send_dlq(self, task: _Task, kind: str, message: str) -> None:
        m = task.message
        headers = [("error.kind", kind.encode()), ("error.message", message.encode()[:1000]),
                   ("attempts", str(max(1, task.attempts)).encode()), ("original.topic", m.topic.encode()),
                   ("original.partition", str(m.partition).encode()), ("original.offset", str(m.offset).encode())]
        metrics.DLQ.labels(kind).inc()
        self._send(task, self.topics.dlq, m.key or b"", m.value, headers)

    def _send(self, task: _Task, topic: str, key: bytes, value: bytes, headers: list) -> None:
        task.outstanding.append((self.sink.send(topic, key, value, headers), topic, key, value, headers))

    def _check_sends(self) -> None:
        for task_id in list(self._publishing):
            task = self._tasks.get(task_id)
            if task is None:
                self._publishing.discard(task_id)
                continue
            still = []
            for handle, topic, key, value, headers in task.outstanding:
                if not handle.is_done():
                    still.append((handle, topic, key, value, headers))
                elif handle.error() is not None:
                    log.warning("send to %s failed (%s); sending again", topic, type(handle.error()).__name__)
                    still.append((self.sink.send(topic, key, value, headers), topic, key, value, headers))
            task.outstanding = still
            if not still:
                self._complete(task_id)

    def _complete(self, task_id: int) -> None:
        task = self._tasks.pop(task_id)
        self._publishing.discard(task_id)
        m = task.message
        self._by_offset.pop((m.tp, m.offset), None)
        self.tracker.done(m.tp, m.offset)
        self._finished += 1
        if task.event is not None:
            metrics.observe_event(task.event)
            if task.study is not None:
                metrics.E2E_SECONDS.observe(_since(task.study.received_at))
            if self.on_event:
                self.on_event(task.event)

    def _maybe_commit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < self.options.commit_interval_s:
            return
        self._last_commit = now
        scope = self.source.assignment()
        offsets = {tp: off for tp, off in self.tracker.committable().items() if tp in scope}
        if offsets:
            try:
                self.source.commit(offsets)
            except TriageError as exc:
                log.warning("commit failed (%s); will retry", exc)
                return
            self.tracker.mark_committed(offsets)
            metrics.COMMITS.inc()
        if now - self._last_lag > 10 or force:
            self._last_lag = now
            log.info("status: %d in flight, %d finished, %d partition(s) assigned, %d paused, %d retrying",
                     len(self._tasks), self._finished, len(scope), len(self.source.paused()), len(self._retry))
            for tp, lag in self.source.lag().items():
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)

    # -- rebalances ---------------------------------------------------------------------
    def _on_assigned(self, partitions: set[TopicPartition]) -> None:
        metrics.REBALANCES.labels("assigned").inc()
        back = {tp: off for tp, off in self._handover.items() if tp in partitions}
        if back:
            self.source.seek(back)  # restart at the first study this member left unfinished
        self._handover.clear()
        log.info("assigned %d partition(s)%s", len(partitions),
                 f"; {len(back)} rewound to unfinished work" if back else "")

    def _on_revoked(self, partitions: set[TopicPartition], can_commit: bool) -> dict[TopicPartition, int]:
        """Let ``partitions`` go: their in-flight studies get up to ``revoke_timeout_s`` to finish,
        then the offsets of finished work are returned for the source to commit, and what is
        still unfinished is dropped for the next owner to redo. Runs inside ``poll`` on the
        consumer thread; afterwards this member never commits for these partitions."""
        metrics.REBALANCES.labels("revoked" if can_commit else "lost").inc()
        if can_commit and not self._closed:
            deadline = time.monotonic() + self.options.revoke_timeout_s
            while any(t.message.tp in partitions for t in self._tasks.values()) and time.monotonic() < deadline:
                self._pump(0.1)
        return self._release(partitions, can_commit)

    def _release(self, partitions: set[TopicPartition], can_commit: bool) -> dict[TopicPartition, int]:
        # A client may hand a partition straight back keeping its read position, which is
        # past the studies dropped below; remember where to restart (see _on_assigned).
        for tp in partitions:
            point = self.tracker.resume_point(tp)
            if point is not None:
                self._handover[tp] = point
        final = {tp: off for tp, off in self.tracker.committable().items() if tp in partitions} if can_commit else {}
        dropped = 0
        for t, task in list(self._tasks.items()):
            if task.message.tp in partitions:
                del self._tasks[t]
                dropped += 1
                self.pool.forget(t)
                self._publishing.discard(t)
                self._by_offset.pop((task.message.tp, task.message.offset), None)
        self._retry = [(due, t) for due, t in self._retry if t in self._tasks]
        heapq.heapify(self._retry)
        self.tracker.forget(partitions)
        log.info("%s %d partition(s); %d unfinished studies left for the next owner",
                 "revoked" if can_commit else "lost", len(partitions), dropped)
        return final

    # -- shutdown -----------------------------------------------------------------------
    def _shutdown(self) -> None:
        log.info("shutdown 1/5: stop fetching")
        assigned = self.source.assignment()
        self.source.pause(assigned)
        waiting = {t for _, t in self._retry}  # not retried now: left uncommitted, redelivered later
        self._retry.clear()
        log.info("shutdown 2/5: draining %d in-flight studies (deadline %.0fs)", len(self._tasks) - len(waiting),
                 self.options.drain_timeout_s)
        deadline = time.monotonic() + self.options.drain_timeout_s
        while set(self._tasks) - waiting and time.monotonic() < deadline:
            self._pump(0.1)  # a retriable failure now is published as failed rather than retried
        if self._tasks:
            log.warning("shutdown: %d studies unfinished at the deadline; left uncommitted for redelivery",
                        len(self._tasks))
        log.info("shutdown 3/5: commit")
        self._maybe_commit(force=True)
        log.info("shutdown 4/5: close pool, producer and consumer")
        self._closed = True
        self.pool.shutdown()
        self.sink.flush(10.0)
        self.sink.close()
        self.source.close()
        log.info("shutdown 5/5: done")


def _study_uid(value: bytes) -> str | None:
    """The StudyInstanceUID of a message that failed validation, if it has a usable one."""
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    uid = doc.get("study_instance_uid") if isinstance(doc, dict) else None
    if isinstance(uid, str) and uid.replace(".", "").isdigit() and len(uid) <= 64:
        return uid
    return None


def _since(iso: str) -> float:
    """Seconds since a validated ISO 8601 time (events are checked to carry a time zone)."""
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return max(0.0, (datetime.now(timezone.utc) - then).total_seconds())
