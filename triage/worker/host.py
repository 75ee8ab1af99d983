"""The worker host: one consumer loop feeding a process pool, with at-least-once commits.

The loop never blocks on inference. It polls (which keeps the member alive however long
a study takes), hands studies to the pool, publishes each result, and commits a
partition's offset only up to the lowest study whose priority event the bus has not yet
acknowledged. Partitions are paused while in-flight work is at its limit.

Every message ends in exactly one way: a priority event; a DLQ record plus a ``failed``
event when a study UID can be read from it; or a DLQ record alone (header
``study_uid.read: false``). Nothing one message or one study does, invalid bytes, a hung
or crashing study, a send the bus refuses, leaves the loop: sends are retried with capped
back-off, and the partition's offset waits for them.

Shutdown is a written sequence (:meth:`Host.run` ends with it, in a ``finally``): stop
fetching, drain in-flight work until a deadline, commit, close. Work abandoned at the
deadline, or waiting for a retry, is not committed, so the group redelivers it.

A Host belongs to the thread that calls :meth:`run`; :meth:`stop` may be called from a
signal handler or another thread (it only sets an event).
"""
from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from triage import metrics
from triage.bus.base import Message, SendHandle, Sink, Source, TopicPartition
from triage.errors import ConfigError, SchemaError, StudyTimeoutError, TriageError, WorkerCrashError
from triage.events import (PriorityEvent, StudyEvent, parse_priority_event, parse_study_event, salvage_study_event,
                           to_json)
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
    max_crashes: int = 2  # a study that kills its worker process this many times fails as worker_crash
    send_backoff_s: float = 0.5  # a failed send is sent again after this, doubling per failure
    send_backoff_max_s: float = 30.0
    drain_timeout_s: float = 30.0
    revoke_timeout_s: float = 10.0  # how long revoked partitions' in-flight work may finish
    commit_interval_s: float = 1.0
    poll_timeout_s: float = 0.2

    def __post_init__(self) -> None:
        if self.max_in_flight < 1 or self.retry_attempts < 1 or self.max_crashes < 1:
            raise ConfigError("in-flight limit, retry attempts and crash budget must each be at least 1")
        if min(self.retry_backoff_s, self.send_backoff_s, self.drain_timeout_s, self.revoke_timeout_s) < 0:
            raise ConfigError("back-offs and timeouts must not be negative")


@dataclass
class _Send:
    """One record owed to the bus; sent again with back-off until acknowledged."""

    topic: str
    role: str  # "priority" or "dlq", the metric label
    key: bytes
    value: bytes | None
    headers: list
    handle: SendHandle | None = None
    failures: int = 0
    next_try: float = 0.0


@dataclass
class _Task:
    message: Message
    attempts: int = 0
    crashes: int = 0
    outstanding: list[_Send] = field(default_factory=list)
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
        self._parked: set[int] = set()  # left for the next owner at shutdown: never published, never committed
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
        """Consume until stopped. Whatever happens to one message stays with that message;
        an exception that escapes (the bus itself failing) still gets the full shutdown."""
        try:
            if self._stop.is_set():  # stopped while starting: close what was opened, never join the group
                return
            self.source.subscribe([self.topics.studies], self._on_assigned, self._on_revoked)
            log.info("host started: %d process(es), up to %d studies in flight, %.0f s deadline per study",
                     self.pool.processes, self.options.max_in_flight, self.pool.deadline_s)
            while not self._stop.is_set() and not (until and until()):
                self._flow_control()
                for msg in self.source.poll(self.options.poll_timeout_s, self._room()):
                    self._accept(msg)
                self._pump(0.05)
                self._maybe_commit()
        finally:
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
            self._fail(task_id, exc)
            return
        except Exception as exc:  # a parser bug must cost this message, not the partition
            log.error("message %s/%d@%d could not be read (%s)", msg.topic, msg.partition, msg.offset,
                      type(exc).__name__)
            self._fail(task_id, TriageError(f"study event could not be read ({type(exc).__name__})"))
            return
        self._submit(task_id)

    def _submit(self, task_id: int, *, attempt: bool = True) -> None:
        task = self._tasks[task_id]
        task.attempts += attempt
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
                try:
                    self._finish(task_id, result)
                except Exception as exc:  # a bug here must cost this study, not the partition
                    log.error("the result of a study could not be handled (%s); it fails", type(exc).__name__)
                    self._fail(task_id, TriageError(f"internal error handling the result ({type(exc).__name__})"))
        self._check_sends()

    def _finish(self, task_id: int, result: Result) -> None:
        task = self._tasks[task_id]
        stopping = self._stop.is_set()
        if result.crashed:
            task.crashes += 1
            if task.crashes < self.options.max_crashes:
                if stopping:
                    self._park(task_id, "its worker process died")
                else:
                    log.warning("a study killed its worker process (%d of %d allowed); running it again",
                                task.crashes, self.options.max_crashes)
                    self._submit(task_id, attempt=False)
                return
            self._fail(task_id, WorkerCrashError(f"the worker process died on this study {task.crashes} times; "
                                                 "not tried again"))
            return
        if result.retriable and task.attempts < self.options.retry_attempts:
            if stopping:  # retried by the next owner, not failed because this host is stopping
                self._park(task_id, f"retriable failure ({result.error_kind})")
                return
            delay = min(self.options.retry_backoff_max_s, self.options.retry_backoff_s * 2 ** (task.attempts - 1))
            log.info("retriable failure (%s), attempt %d of %d, retrying in %.1fs", result.error_kind,
                     task.attempts, self.options.retry_attempts, delay)
            metrics.RETRIES.labels(result.error_kind).inc()
            heapq.heappush(self._retry, (time.monotonic() + delay, task_id))
            return
        if not result.event_json:
            error_type = {"timeout": StudyTimeoutError}.get(result.error_kind or "", TriageError)
            self._fail(task_id, error_type(result.error_message or "worker error"))
            return
        try:
            event = parse_priority_event(result.event_json)
        except SchemaError as exc:
            log.error("a worker produced an event that does not validate: %s", exc)
            self._fail(task_id, TriageError(f"internal error: the priority event did not validate ({exc})"))
            return
        task.event = event
        self._send(task, "priority", event.study_instance_uid.encode(), result.event_json.encode())
        if result.error_kind is not None:
            self._send_dlq(task, result.error_kind, result.error_message or "")
        self._publishing.add(task_id)

    def _park(self, task_id: int, why: str) -> None:
        log.info("shutdown: a study left for the next owner (%s); its offset is not committed", why)
        self._parked.add(task_id)

    def _fail(self, task_id: int, error: TriageError) -> None:
        """End a message without a worker's event: a DLQ record and, when a study UID can be
        read, a ``failed`` priority event that keeps the order's priority."""
        task = self._tasks[task_id]
        study = task.study or salvage_study_event(task.message.value)
        if study is not None:
            try:
                task.event = self.pipeline.failed_event(study, error)
            except Exception as exc:  # still dead-lettered below; the partition goes on
                log.error("no failed event could be built (%s); dead-lettered only", type(exc).__name__)
                study = None
            else:
                self._send(task, "priority", study.study_instance_uid.encode(), to_json(task.event).encode())
        self._send_dlq(task, error.kind, str(error), study_uid_read=study is not None)
        self._publishing.add(task_id)

    def _send_dlq(self, task: _Task, kind: str, message: str, *, study_uid_read: bool = True) -> None:
        m = task.message
        headers = [("error.kind", kind.encode()), ("error.message", message.encode()[:1000]),
                   ("attempts", str(max(1, task.attempts)).encode()), ("original.topic", m.topic.encode()),
                   ("original.partition", str(m.partition).encode()), ("original.offset", str(m.offset).encode()),
                   ("study_uid.read", b"true" if study_uid_read else b"false")]
        key = (m.key or b"")[:256]
        value = m.value
        size = len(value or b"")
        room = self.sink.max_record_bytes - len(key) - sum(len(k) + len(v) for k, v in headers) - _RECORD_OVERHEAD
        if size > room:  # keep what fits: a head of the payload, its size and digest
            headers += [("payload.truncated", b"true"), ("payload.size", str(size).encode()),
                        ("payload.sha256", hashlib.sha256(value).hexdigest().encode())]
            value = value[:max(0, min(_DLQ_HEAD_BYTES, room - 256))]
        metrics.DLQ.labels(kind).inc()
        self._send(task, "dlq", key, value, headers)

    def _send(self, task: _Task, role: str, key: bytes, value: bytes | None, headers: list | None = None) -> None:
        topic = self.topics.priority if role == "priority" else self.topics.dlq
        record = _Send(topic, role, key, value, headers or [])
        record.handle = self._try_send(record)
        task.outstanding.append(record)

    def _try_send(self, record: _Send) -> SendHandle | None:
        try:
            return self.sink.send(record.topic, record.key, record.value, record.headers)
        except Exception as exc:  # a sink that raises instead of returning a failed handle
            log.warning("send to %s raised (%s)", record.topic, type(exc).__name__)
            return _Refused(exc)

    def _check_sends(self) -> None:
        now = time.monotonic()
        for task_id in list(self._publishing):
            task = self._tasks.get(task_id)
            if task is None:
                self._publishing.discard(task_id)
                continue
            still = []
            for record in task.outstanding:
                if record.handle is None:  # waiting out its back-off
                    if now >= record.next_try:
                        metrics.SEND_RETRIES.labels(record.role).inc()
                        record.handle = self._try_send(record)
                    still.append(record)
                elif not record.handle.is_done():
                    still.append(record)
                elif record.handle.error() is not None:
                    record.failures += 1
                    delay = min(self.options.send_backoff_max_s, self.options.send_backoff_s * 2 ** (record.failures - 1))
                    log.warning("send to %s failed (%s); sending again in %.1f s", record.topic,
                                type(record.handle.error()).__name__, delay)
                    record.handle, record.next_try = None, now + delay
                    still.append(record)
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
        if task.event is None:
            return
        try:
            metrics.observe_event(task.event)
            if task.study is not None:
                metrics.E2E_SECONDS.observe(_since(task.study.received_at))
            if self.on_event:
                self.on_event(task.event)
        except Exception as exc:  # the event is out and acknowledged; an observer's fault stays its own
            log.error("observing a finished study failed (%s)", type(exc).__name__)

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
            else:
                self.tracker.mark_committed(offsets)
                metrics.COMMITS.inc()
        for tp, age in self.tracker.oldest_pending_age().items():
            if tp in scope:
                metrics.OLDEST_UNCOMMITTED.labels(tp.topic, str(tp.partition)).set(age)
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
        self._parked &= set(self._tasks)
        for tp in partitions:
            metrics.OLDEST_UNCOMMITTED.labels(tp.topic, str(tp.partition)).set(0)
        log.info("%s %d partition(s); %d unfinished studies left for the next owner",
                 "revoked" if can_commit else "lost", len(partitions), dropped)
        return final

    # -- shutdown -----------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Stop fetching, drain until the deadline, commit, close: each step runs even if one
        before it failed. Studies waiting for a retry, and any that fail retriably now, are
        parked: never published as failed, never committed past, so the next owner redoes them."""
        def step(what: str, action: Callable[[], None]) -> None:
            try:
                action()
            except Exception as exc:
                log.error("shutdown: %s failed (%s)", what, type(exc).__name__)

        log.info("shutdown 1/5: stop fetching")
        step("pausing partitions", lambda: self.source.pause(self.source.assignment()))
        self._parked |= {t for _, t in self._retry if t in self._tasks}
        self._retry.clear()
        log.info("shutdown 2/5: draining %d in-flight studies (deadline %.0fs); %d left for the next owner",
                 len(set(self._tasks) - self._parked), self.options.drain_timeout_s, len(self._parked))
        deadline = time.monotonic() + self.options.drain_timeout_s

        def drain() -> None:
            while set(self._tasks) - self._parked and time.monotonic() < deadline:
                self._pump(0.1)

        step("draining", drain)
        if self._tasks:
            log.warning("shutdown: %d studies unfinished (%d parked); left uncommitted for redelivery",
                        len(self._tasks), len(self._parked))
        log.info("shutdown 3/5: commit")
        step("the final commit", lambda: self._maybe_commit(force=True))
        log.info("shutdown 4/5: close pool, producer and consumer")
        self._closed = True
        step("closing the pool", self.pool.shutdown)
        step("flushing the producer", lambda: self.sink.flush(10.0))
        step("closing the producer", self.sink.close)
        step("closing the consumer", self.source.close)
        log.info("shutdown 5/5: done")


_RECORD_OVERHEAD = 512  # a record's framing beyond key, value and headers, with room to spare
_DLQ_HEAD_BYTES = 64 << 10  # how much of an oversized payload the DLQ keeps


class _Refused:
    """The handle of a send that raised before it reached the bus."""

    def __init__(self, error: BaseException):
        self._error = error

    def is_done(self) -> bool:
        return True

    def error(self) -> BaseException | None:
        return self._error


def _since(iso: str) -> float:
    """Seconds since a validated ISO 8601 time (events are checked to carry a time zone)."""
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return max(0.0, (datetime.now(timezone.utc) - then).total_seconds())
