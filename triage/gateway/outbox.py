"""Complete studies to the bus, at least once: the study event is written to the outbox in
the same transaction that closes the study version, sent with the producer's ``acks=all``
and idempotence, and marked published only once the broker has acknowledged it. A crash
anywhere in between leaves the row pending, and it is sent again after the restart; a
duplicate study event names the same files, so the worker gives it the same ``event_id``.

The publisher runs on its own thread and owns the sink; it shares only the state.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from triage import metrics
from triage.bus.base import SendHandle, Sink
from triage.errors import TriageError
from triage.events import STUDY_SCHEMA, parse_study_event, study_ref, to_json
from triage.gateway.state import OutboxEntry, StudyState, StudyVersion

log = logging.getLogger(__name__)

CONNECT_BACKOFF_S = 5.0


def study_event_json(root: Path, version: StudyVersion) -> str:
    """The study event of one complete version: the study's folder on the shared store, and
    the last instance's arrival as ``received_at``."""
    event = parse_study_event({
        "schema": STUDY_SCHEMA, "study_instance_uid": version.study_uid,
        "source": {"uri": (root / version.study_uid).resolve().as_uri()},
        "received_at": datetime.fromtimestamp(version.last_at, timezone.utc).isoformat(timespec="milliseconds"),
        "accession_number": version.accession,
        "requested_priority": version.requested_priority.value if version.requested_priority else None})
    return to_json(event)


class Publisher:
    """``connect`` makes the sink; it is called again after a failure, so a gateway started
    while the broker is down receives and stores studies, and publishes once it is back."""

    def __init__(self, state: StudyState, connect: Callable[[], Sink], topic: str, root: Path, *,
                 clock: Callable[[], float] = time.time, send_timeout_s: float = 10.0):
        self.state, self.connect, self.topic, self.root = state, connect, topic, root
        self.clock = clock
        self.send_timeout_s = send_timeout_s
        self.sink: Sink | None = None
        self._connect_after = 0.0
        self._in_flight: dict[tuple[str, int], tuple[OutboxEntry, SendHandle]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> int:
        """Queue every study whose window has passed, send what is pending, record the
        acknowledged. Returns how many were published."""
        now = self.clock()
        for version in self.state.due(now):
            if self.state.queue(version, study_event_json(self.root, version), now):
                metrics.GW_STUDIES.inc()
                log.info("study %s version %d complete (%d instances)", study_ref(version.study_uid),
                         version.version, version.instances)
        pending = self.state.pending()
        metrics.GW_OUTBOX.set(len(pending))
        if pending and self.sink is None:
            if now < self._connect_after:
                return 0
            try:
                self.sink = self.connect()
            except TriageError as exc:
                self._connect_after = self.clock() + CONNECT_BACKOFF_S
                log.warning("%s; %d study event(s) wait in the outbox", exc, len(pending))
                return 0
        for entry in pending:
            key = (entry.study_uid, entry.version)
            if key not in self._in_flight:
                self._in_flight[key] = (entry, self.sink.send(self.topic, entry.study_uid.encode(),
                                                              entry.payload.encode()))
        if self._in_flight:
            self.sink.flush(self.send_timeout_s)
        published = 0
        for key, (entry, handle) in list(self._in_flight.items()):
            if not handle.is_done():
                continue
            del self._in_flight[key]
            error = handle.error()
            if error is not None:
                metrics.SEND_RETRIES.labels("studies").inc()
                log.warning("study %s version %d not acknowledged (%s); it stays in the outbox",
                            study_ref(entry.study_uid), entry.version, type(error).__name__)
                continue
            self._published(entry)
            published += 1
        metrics.GW_OUTBOX.set(len(pending) - published)
        return published

    def _published(self, entry: OutboxEntry) -> None:
        now = self.clock()
        self.state.mark_published(entry, now)
        metrics.GW_PUBLISH_SECONDS.observe(max(0.0, now - entry.last_at))
        log.info("study %s version %d published", study_ref(entry.study_uid), entry.version)

    def start(self, interval_s: float = 0.25) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    if not self.step():
                        self._stop.wait(interval_s)
                except Exception as exc:  # noqa: BLE001 - the loop must outlive one bad step
                    log.error("publisher step failed (%s); trying again", type(exc).__name__)
                    self._stop.wait(1.0)

        self._thread = threading.Thread(target=loop, name="gateway-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self.sink is not None:
            self.sink.close()
