"""The gateway's life: start-up (state opened, strays recorded, doors opened, publisher
started) and the written shutdown sequence. Nothing in the store is deleted at start-up:
studies still being received keep their windows, and complete ones not yet acknowledged
are published."""
from __future__ import annotations

import logging
import tempfile
import threading
from typing import Callable

from triage import metrics
from triage.bus.base import Sink
from triage.gateway.config import GatewaySettings
from triage.gateway.outbox import Publisher
from triage.gateway.state import StudyState
from triage.gateway.store import InstanceStore

log = logging.getLogger(__name__)


class Gateway:
    def __init__(self, settings: GatewaySettings, connect: Callable[[], Sink]):
        self.settings = settings
        root = settings.store.resolve()
        (root / ".gateway").mkdir(parents=True, exist_ok=True)
        (root / ".incoming").mkdir(exist_ok=True)
        self.state = StudyState(root / ".gateway" / "state.sqlite")
        self.store = InstanceStore(root, self.state, max_instance_bytes=settings.max_instance_bytes,
                                   max_study_bytes=settings.max_study_bytes)
        self.publisher = Publisher(self.state, connect, settings.topic, root)
        self._stopped = threading.Event()
        self._scp = self._stow = None

    def start(self) -> None:
        from triage.gateway.scp import StorageSCP
        from triage.gateway.stow import StowServer

        # pynetdicom spools each dataset through tempfile: keep it on the store's filesystem,
        # so the move into place is one atomic link
        tempfile.tempdir = str(self.store.incoming)
        strays = self.store.reconcile(self.settings.window_s)
        counts = self.state.counts()
        log.info("store %s: %d open, %d queued, %d published study versions; %d recovered instance(s)",
                 self.store.root, counts.get("open", 0), counts.get("queued", 0), counts.get("published", 0), strays)
        metrics.GW_OUTBOX.set(counts["outbox"])
        self.publisher.start()
        if self.settings.port:
            self._scp = StorageSCP(self.settings, self.store)
            port = self._scp.start()
            log.info("DICOM%s: AE %s on port %d", " TLS" if self.settings.tls else "", self.settings.ae_title, port)
        if self.settings.http_port:
            self._stow = StowServer(self.settings, self.store)
            port = self._stow.start()
            log.info("STOW-RS on http%s://%s:%d/studies", "s" if self.settings.tls else "", self.settings.host, port)
        metrics.serve(self.settings.metrics_port, self.settings.metrics_host)

    def wait(self) -> None:
        self._stopped.wait()

    def stop(self) -> None:
        self._stopped.set()

    def shutdown(self, drain_s: float = 10.0) -> None:
        """Stop receiving; give the publisher one last pass for what is due; close. What is not
        published stays in the outbox for the next start."""
        steps: list[tuple[str, Callable[[], None]]] = [
            ("stop accepting associations", lambda: self._scp and self._scp.stop()),
            ("stop STOW-RS", lambda: self._stow and self._stow.stop()),
            ("stop the publisher", lambda: self.publisher.stop(drain_s)),
            ("close the state", self.state.close),
        ]
        for what, action in steps:
            log.info("shutdown: %s", what)
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - every later step must still run
                log.error("shutdown: %s failed (%s)", what, type(exc).__name__)
