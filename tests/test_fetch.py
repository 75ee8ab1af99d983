"""triage/fetch.py: file:// in place, DICOMweb WADO-RS multipart retrieve over loopback."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.helpers import ref
from triage.dicom import decode_series, scan_study
from triage.errors import SourceError, SourceUnavailableError
from triage.fetch import local_study

BOUNDARY = "triage-test-boundary"


class _Wado(BaseHTTPRequestHandler):
    files = [ref("MR_small.dcm"), ref("CT_small.dcm")]

    def do_GET(self):  # noqa: N802 (http.server API)
        if self.path.startswith("/dicom-web/studies/1.2.3"):
            body = b""
            for f in self.files:
                body += (f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").encode() + f.read_bytes() + b"\r\n"
            body += f"--{BOUNDARY}--\r\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={BOUNDARY}')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith("/dicom-web/studies/busy"):
            self.send_response(503)
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def wado():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Wado)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"dicomweb+http://127.0.0.1:{server.server_address[1]}/dicom-web"
    server.shutdown()


def test_dicomweb_study_is_retrieved_and_decodes(wado):
    with local_study(f"{wado}/studies/1.2.3") as folder:
        series = scan_study(folder)
        assert sorted(s.modality for s in series) == ["CT", "MR"]
        mr = next(s for s in series if s.modality == "MR")
        assert decode_series(mr).array.shape == (1, 64, 64)
        kept = folder
    assert not kept.exists()  # the temporary copy is removed


def test_server_errors_are_retriable_and_client_errors_are_not(wado):
    with pytest.raises(SourceUnavailableError, match="answered 503"):
        with local_study(f"{wado}/studies/busy"):
            pass
    with pytest.raises(SourceError, match="answered 404") as err:
        with local_study(f"{wado}/studies/unknown"):
            pass
    assert not err.value.retriable


def test_unreachable_server_is_retriable():
    with pytest.raises(SourceUnavailableError, match="not reachable"):
        with local_study("dicomweb+http://127.0.0.1:9/studies/1.2.3", timeout=2):
            pass


def test_unknown_scheme_is_refused():
    with pytest.raises(SourceError, match="unsupported source scheme 's3'"):
        with local_study("s3://bucket/study"):
            pass


def test_file_uri_is_used_in_place(tmp_path):
    with local_study(tmp_path.as_uri()) as folder:
        assert folder == tmp_path
