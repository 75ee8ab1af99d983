"""The DICOMweb front door: STOW-RS (PS3.18 10.5), ``POST /studies`` and
``POST /studies/{StudyInstanceUID}``, ``multipart/related; type="application/dicom"``.

The body must state its length, and a body longer than the study budget is refused before
a byte is read. It is spooled to the store's ``.incoming`` folder and its parts are found in
a memory map of that file, so memory stays bounded. Each part goes through the same
:class:`~triage.gateway.store.InstanceStore` as a C-STORE. The answer is the standard
``application/dicom+json`` store response: 200 when every instance was stored, 202 when some
were refused, 409 when none was.

Each request is served on its own thread (``ThreadingHTTPServer``); the store is thread-safe.
"""
from __future__ import annotations

import json
import logging
import mmap
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from triage import metrics
from triage.errors import InstanceRefused
from triage.events import is_uid
from triage.gateway.config import GatewaySettings
from triage.gateway.scp import server_ssl_context
from triage.gateway.store import DATA_SET_MISMATCH, InstanceStore, Stored, read_header
from triage.multipart import MultipartError, boundary_of, iter_parts, root_type

log = logging.getLogger(__name__)

_DICOM = "application/dicom"
_CHUNK = 1 << 20
_MULTIPART_SLACK = 64 << 20  # delimiters and part headers on top of the study budget


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # one line, not a traceback
        import sys

        exc = sys.exc_info()[1]
        metrics.GW_ASSOCIATIONS_REFUSED.labels("tls" if isinstance(exc, OSError) else "http").inc()
        log.warning("HTTP request from %s dropped (%s)", client_address[0], type(exc).__name__)


class StowServer:
    def __init__(self, settings: GatewaySettings, store: InstanceStore):
        self.settings, self.store = settings, store
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 120  # per socket operation: a sender that stalls is dropped
            server_version = "triage-gateway"
            sys_version = ""

            def do_POST(self):  # noqa: N802
                gateway._post(self)

            def do_GET(self):  # noqa: N802
                self._plain(HTTPStatus.NOT_FOUND if self.path != "/health" else HTTPStatus.OK)

            def _plain(self, status: HTTPStatus, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # the request line may carry UIDs
                pass

        self._httpd = _Server((settings.host, settings.http_port), Handler)
        ctx = server_ssl_context(settings)
        if ctx is not None:  # the handshake runs on the request's own thread, not in accept()
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True,
                                                 do_handshake_on_connect=False)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def start(self) -> int:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="gateway-stow", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _refuse(self, handler, status: HTTPStatus, reason: str, why: str) -> None:
        metrics.GW_ASSOCIATIONS_REFUSED.labels(reason).inc()
        log.warning("STOW-RS request from %s refused: %s", handler.client_address[0], why)
        handler._plain(status, why.encode())

    def _post(self, handler) -> None:
        parts = handler.path.split("?", 1)[0].strip("/").split("/")
        if not self.settings.host_admitted(handler.client_address[0]):
            return self._refuse(handler, HTTPStatus.FORBIDDEN, "host", "address not on the allow-list")
        if parts[0] != "studies" or len(parts) > 2 or (len(parts) == 2 and not is_uid(parts[1])):
            return handler._plain(HTTPStatus.NOT_FOUND)
        study = parts[1] if len(parts) == 2 else None
        ctype = handler.headers.get("Content-Type", "")
        try:
            boundary = boundary_of(ctype)
        except MultipartError as exc:
            return self._refuse(handler, HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "media_type", str(exc))
        if root_type(ctype) not in (None, _DICOM):
            return self._refuse(handler, HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "media_type",
                                "only application/dicom parts are accepted")
        try:
            length = int(handler.headers.get("Content-Length", ""))
        except ValueError:
            return self._refuse(handler, HTTPStatus.LENGTH_REQUIRED, "length", "the body must state its length")
        if not 0 < length <= self.store.max_study_bytes + _MULTIPART_SLACK:
            return self._refuse(handler, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "study_budget",
                                "body is over the study budget")
        spool = self.store.spool_path()
        try:
            if not self._spool(handler, spool, length):
                return self._refuse(handler, HTTPStatus.BAD_REQUEST, "truncated", "body shorter than its length")
            stored, failed = self._store_parts(spool, boundary, study)
        except MultipartError as exc:
            return self._refuse(handler, HTTPStatus.BAD_REQUEST, "multipart", str(exc))
        finally:
            spool.unlink(missing_ok=True)
        status = HTTPStatus.OK if not failed else HTTPStatus.ACCEPTED if stored else HTTPStatus.CONFLICT
        body = json.dumps(_store_response(stored, failed)).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/dicom+json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def _spool(self, handler, spool: Path, length: int) -> bool:
        spool.parent.mkdir(parents=True, exist_ok=True)
        left = length
        with open(spool, "wb") as f:
            while left:
                chunk = handler.rfile.read(min(_CHUNK, left))
                if not chunk:
                    return False
                f.write(chunk)
                left -= len(chunk)
        return True

    def _store_parts(self, spool: Path, boundary: bytes, study: str | None):
        stored: list[Stored] = []
        failed: list[int] = []
        window = self.settings.window_s
        with open(spool, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as body:
            for ctype, start, end in iter_parts(body, boundary):
                part = self.store.spool_path()
                try:
                    if ctype and ctype.split(";")[0].strip().lower() != _DICOM:
                        raise InstanceRefused("a part is not application/dicom", kind="media_type",
                                              status=DATA_SET_MISMATCH)
                    self.store.check_size(end - start)
                    with open(part, "wb") as out:
                        for at in range(start, end, _CHUNK):
                            out.write(body[at:min(end, at + _CHUNK)])
                    if study is not None and read_header(part).study_uid != study:
                        raise InstanceRefused("instance of another study than the request names", kind="bad_uid",
                                              status=DATA_SET_MISMATCH)
                    result = self.store.accept(part, window)
                except InstanceRefused as exc:
                    metrics.GW_INSTANCES.labels("stow", "refused").inc()
                    metrics.GW_REFUSED.labels(exc.kind).inc()
                    log.warning("STOW-RS instance refused (0x%04X): %s", exc.status, exc)
                    failed.append(exc.status)
                    continue
                finally:
                    part.unlink(missing_ok=True)
                metrics.GW_INSTANCES.labels("stow", "stored" if result.new else "duplicate").inc()
                if result.new:
                    metrics.GW_BYTES.labels("stow").inc(result.instance.bytes)
                stored.append(result)
        return stored, failed


def _store_response(stored: list[Stored], failed: list[int]) -> dict:
    """The PS3.18 store instances response, in DICOM JSON."""
    doc: dict = {}
    if stored:
        doc["00081199"] = {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": [s.instance.sop_uid]}} for s in stored]}
    if failed:
        doc["00081198"] = {"vr": "SQ", "Value": [
            {"00081197": {"vr": "US", "Value": [status]}} for status in failed]}
    return doc
