"""Make a study's DICOM files readable as a local folder, from its ``source.uri``.

* ``file:///path/to/folder``: used in place.
* ``dicomweb+http(s)://host/prefix/studies/{uid}``: WADO-RS retrieve of the whole study
  (``multipart/related; type="application/dicom"``) into a temporary folder.

Connection failures and 5xx answers are :class:`SourceUnavailableError` (retriable); a
4xx answer or an unusable URI is a plain :class:`SourceError`.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

from triage.errors import SourceError, SourceUnavailableError
from triage.multipart import boundary_of, iter_parts

DICOMWEB_TIMEOUT_S = 30.0


@contextlib.contextmanager
def local_study(uri: str, timeout: float = DICOMWEB_TIMEOUT_S) -> Iterator[Path]:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        if not path.exists():
            raise SourceUnavailableError("study folder does not exist (yet)", path=path.name or str(path))
        yield path
        return
    if parsed.scheme in ("dicomweb+http", "dicomweb+https"):
        tmp = Path(tempfile.mkdtemp(prefix="triage-wado-"))
        try:
            _retrieve(uri[len("dicomweb+"):], tmp, timeout)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    raise SourceError(f"unsupported source scheme {parsed.scheme!r}; use file:// or dicomweb+http(s)://")


def _retrieve(url: str, dest: Path, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"Accept": 'multipart/related; type="application/dicom"'})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            content_type = response.headers.get("Content-Type", "")
            body = response.read()
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            raise SourceUnavailableError(f"DICOMweb server answered {exc.code}") from None
        raise SourceError(f"DICOMweb server answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceUnavailableError(f"DICOMweb server not reachable ({type(reason).__name__})") from None
    parts = split_multipart(body, content_type)
    if not parts:
        raise SourceError("DICOMweb answer held no DICOM parts")
    for i, part in enumerate(parts):
        (dest / f"{i:05d}.dcm").write_bytes(part)


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The bodies of a ``multipart/related`` payload, headers stripped."""
    return [body[start:end] for _, start, end in iter_parts(body, boundary_of(content_type))]
