"""``multipart/related`` bodies (RFC 2046), the envelope of DICOMweb: WADO-RS answers that
:mod:`triage.fetch` reads and STOW-RS requests that the gateway receives.

Parts are found by position in any buffer that has ``find`` and slicing (``bytes`` or an
``mmap`` of a spooled body), so a large body is never copied whole.
"""
from __future__ import annotations

import re
from typing import Iterator, Protocol

from triage.errors import SourceError

_BOUNDARY = re.compile(r'boundary="?([^";,\s]{1,200})"?', re.IGNORECASE)
_TYPE = re.compile(r'type="?([^";\s]+)"?', re.IGNORECASE)
MAX_HEADER_BYTES = 8192


class Buffer(Protocol):
    def find(self, sub: bytes, start: int = ..., end: int = ...) -> int: ...
    def __getitem__(self, index: slice) -> bytes: ...


class MultipartError(SourceError):
    kind = "multipart"


def boundary_of(content_type: str) -> bytes:
    if not content_type.strip().lower().startswith("multipart/related"):
        raise MultipartError("body is not multipart/related")
    match = _BOUNDARY.search(content_type)
    if not match:
        raise MultipartError("body is not multipart (no boundary)")
    return match.group(1).encode()


def root_type(content_type: str) -> str | None:
    """The ``type`` parameter of a multipart/related content type, lower-cased."""
    match = _TYPE.search(content_type)
    return match.group(1).lower() if match else None


def iter_parts(buf: Buffer, boundary: bytes) -> Iterator[tuple[str, int, int]]:
    """``(content type of the part, start, end)`` of each body part, in order."""
    delimiter = b"--" + boundary
    pos = buf.find(delimiter)
    if pos < 0:
        raise MultipartError("body holds no part delimiter")
    while True:
        pos += len(delimiter)
        if buf[pos:pos + 2] == b"--":
            return
        line_end = buf.find(b"\r\n", pos)
        head_end = buf.find(b"\r\n\r\n", line_end) if line_end >= 0 else -1
        if head_end < 0 or head_end - line_end > MAX_HEADER_BYTES:
            raise MultipartError("a part has no end to its headers")
        headers = buf[line_end + 2:head_end].decode("latin-1")
        start = head_end + 4
        end = buf.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise MultipartError("the last part is cut off (no closing delimiter)")
        ctype = next((h.split(":", 1)[1].strip() for h in headers.split("\r\n")
                      if h.lower().startswith("content-type:")), "")
        yield ctype, start, end
        pos = end + 2
