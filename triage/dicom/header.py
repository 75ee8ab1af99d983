"""A header reader for the files nearly every site sends: a DICOM file (preamble and meta
group) whose data set is explicit VR little endian, which every encapsulated (compressed)
syntax is too. It walks the elements up to the pixel data once, keeps the small values, and
converts a value only when asked for it; pydicom builds a full :class:`~pydicom.Dataset` of
converted elements for every file, which is most of what a study's scan cost.

Anything it does not handle returns ``None`` and goes to pydicom, which handles everything:
implicit VR or big endian data sets, deflate, a file without the preamble, an element of
undefined length that is not a sequence, and anything inconsistent (a length past the end of the file).
So this module never decides that a file is broken, except for one check it shares with
pydicom's path: sequences nested deeper than the budget.

Chosen by measurement (issue 26) on the benchmark's 300 files of 512×512, reading the tags
routing and geometry need: pydicom ``dcmread(stop_before_pixels=True)`` 72–87 ms, pydicom with
``specific_tags`` 79 ms, GDCM's ``Scanner`` (python-gdcm, C++) 24 ms with nothing converted, this
reader 20–25 ms with every element kept. GDCM would have added a dependency, and a C++ parser of
hostile bytes whose crash takes the worker process down; this one bounds its work and hands
anything unusual to pydicom.
"""
from __future__ import annotations

import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from pydicom.datadict import dictionary_VR, tag_for_keyword

from triage.errors import CorruptFileError

# explicit VR little endian, and the encapsulated syntaxes (JPEG family, JPEG 2000, HTJ2K, RLE),
# whose data sets are explicit VR little endian too; anything else (implicit, big endian,
# deflate, a private syntax) is pydicom's to read
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_ENCAPSULATED = ("1.2.840.10008.1.2.4.", "1.2.840.10008.1.2.5")
_FIRST_READ = 16 << 10  # most headers fit; a longer one is read again, larger
_MAX_HEADER = 8 << 20  # past this, pydicom reads it (with its large values left on disk)
# VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_VRS = _LONG_VRS | frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
                              b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_VR_NAMES = {vr: vr.decode() for vr in _VRS}
_TEXT_ONE_VALUE = frozenset({"LT", "ST", "UT", "UR"})  # never split at backslashes
_BINARY = {vr: (code, struct.calcsize(code)) for vr, code in
           {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}.items()}
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # where pydicom's stop_before_pixels stops
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_KEPT = 64 << 10  # a value longer than this stays on disk; asking for it raises
_MAX_ELEMENTS = 100_000  # per file, nested ones included; past it, pydicom reads the file
_SHORT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<I")


class _TooLarge:
    """A value longer than ``_MAX_KEPT``, left on disk."""


class _Unsupported(Exception):
    """This file is for pydicom to read."""


class _NeedMore(Exception):
    """The header runs past what was read of the file."""


class Header:
    """The data set of one file, up to its pixel data, as the scan and the decoder read it:
    ``get(keyword, default)``, ``keyword in header``, ``header.Keyword`` and ``file_meta``,
    with pydicom's value types (str, int, float, or a list of them where a value is multiple),
    but a UID is a plain str: pydicom's UID class logs an invalid value, and no value may reach
    a log.
    A sequence reads as a list of its items, each a :class:`Header`.

    A value is converted when first asked for and kept; two threads asking at once at worst
    convert it twice (each dict operation is atomic under the GIL), so a header may be shared."""

    __slots__ = ("_raw", "_cache", "file_meta")

    def __init__(self, raw: dict[int, tuple[str, object]], file_meta: "Header | None" = None):
        self._raw = raw
        self._cache: dict[int, object] = {}
        self.file_meta = file_meta

    def get(self, keyword: str, default=None):
        tag = _TAGS.get(keyword) or _tag(keyword)
        if tag in self._cache:
            return self._cache[tag]
        raw = self._raw.get(tag)
        if raw is None:
            return default
        value = self._cache[tag] = _convert(*raw)
        return value

    def __contains__(self, keyword: str) -> bool:
        return _tag(keyword) in self._raw

    def __getattr__(self, keyword: str):
        if keyword.startswith("_") or keyword not in self:
            raise AttributeError(keyword)
        return self.get(keyword)


_TAGS: dict[str, int] = {}


def _tag(keyword: str) -> int:
    tag = _TAGS.get(keyword)
    if tag is None:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise KeyError(f"{keyword} is not a DICOM keyword")
        _TAGS[keyword] = tag
    return tag


def _convert(vr: str, value):
    """A kept value as pydicom gives it; raises ValueError for a number that is not one."""
    if isinstance(value, _TooLarge):
        raise ValueError("value too large to keep")
    if vr == "SQ":
        return value
    if vr in _BINARY:
        code, size = _BINARY[vr]
        count = len(value) // size
        if count == 0:
            return None
        numbers = struct.unpack(f"<{count}{code}", value[:count * size])
        return numbers[0] if count == 1 else list(numbers)
    if vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN", "AT"):
        return value
    text = value.decode("latin-1")
    if vr == "UI":
        text = text.rstrip("\0 ")
    elif vr in _TEXT_ONE_VALUE:
        return text.rstrip(" \0")
    else:
        text = text.rstrip(" \0")
    parts = text.split("\\")
    if vr in ("DS", "IS"):
        if not text.strip():
            return None
        numbers = [_number(p, vr) for p in parts]
        return numbers[0] if len(numbers) == 1 else numbers
    parts = [p.strip() if vr in ("CS", "DA", "TM", "DT", "AS") else p for p in parts]
    return parts[0] if len(parts) == 1 else parts


def _number(text: str, vr: str):
    text = text.strip()
    number = float(text)  # raises ValueError on anything that is not a number
    if vr == "IS":
        if not math.isfinite(number) or number != int(number):
            raise ValueError("IS value is not a whole number")
        return int(number)
    return number


def read_fast(path: Path, max_depth: int, name: str) -> tuple[Header, int] | None:
    """``(header, offset of the pixel element)``, or None where pydicom must read the file.

    Raises :class:`CorruptFileError`, naming the file as ``name``, only for sequences nested
    past ``max_depth``."""
    # read, never mapped: a file cut short by another process while mapped would kill this
    # one; and unbuffered, which halves the cost of opening 300 files
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO put in a file's place must not block
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        size = info.st_size
        want = _FIRST_READ
        while True:
            src = _Source(os.pread(fd, min(want, size), 0), size)
            try:
                return _parse(src, max_depth, name)
            except (_NeedMore, struct.error):  # struct: a header read past the end of what was read
                if len(src.data) >= size or want >= _MAX_HEADER:
                    return None
                want *= 8
            except (_Unsupported, IndexError, UnicodeDecodeError):
                return None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Source:
    data: bytes  # the file's first bytes
    size: int  # the whole file's


def _parse(src: _Source, max_depth: int, name: str) -> tuple[Header, int]:
    if src.size < 144 or src.data[128:132] != b"DICM":
        raise _Unsupported
    meta: dict[int, tuple[str, object]] = {}
    pos = _elements(src, 132, src.size, meta, depth=0, max_depth=max_depth, name=name, group=2, counter=[0])
    ts = meta.get(0x00020010)
    if ts is None or not isinstance(ts[1], bytes):
        raise _Unsupported
    syntax = ts[1].decode("ascii", "replace").rstrip("\0 ")
    if syntax != _EXPLICIT_LE and not syntax.startswith(_ENCAPSULATED):
        raise _Unsupported
    raw: dict[int, tuple[str, object]] = {}
    offset = _elements(src, pos, src.size, raw, depth=0, max_depth=max_depth, name=name, group=None, counter=[0])
    return Header(raw, Header(meta)), offset


def _elements(src: _Source, pos: int, end: int | None, out: dict, *, depth: int, max_depth: int, name: str,
              group: int | None, counter: list[int]) -> int:
    """Walk elements from ``pos`` to ``end`` (or an item delimiter, when ``end`` is None).

    ``group``: stop at the first element of another group (the meta group); at the top level
    (``depth`` 0, ``group`` None) stop at the pixel data. Returns where the walk stopped."""
    buf = src.data
    limit = src.size if end is None else end
    at_top = depth == 0 and group is None
    head, long_length, vr_names = _SHORT.unpack_from, _LONG.unpack_from, _VR_NAMES
    while pos < limit:
        counter[0] += 1
        if counter[0] > _MAX_ELEMENTS:
            raise _Unsupported
        g, e, raw_vr, length = head(buf, pos)
        tag = g << 16 | e
        if group is not None and g != group:
            return pos
        if at_top and tag in _PIXEL_TAGS:
            return pos
        if tag == _ITEM_END:
            if end is not None:
                raise _Unsupported
            return pos + 8
        if g == 0xFFFE:
            raise _Unsupported  # an item or delimiter where an element belongs
        vr = vr_names.get(raw_vr)
        if vr is None:
            raise _Unsupported
        if raw_vr in _LONG_VRS:
            length = long_length(buf, pos + 8)[0]
            pos += 12
        else:
            pos += 8
        if vr == "SQ":
            if depth + 1 > max_depth:
                raise CorruptFileError(f"sequences nested deeper than {max_depth}", path=name)
            pos, items = _sequence(src, pos, length, depth=depth + 1, max_depth=max_depth, name=name, counter=counter)
            out[tag] = ("SQ", items)
            continue
        if length == _UNDEFINED:
            raise _Unsupported  # an encapsulated value or an implicit sequence before the pixel data
        if pos + length > limit:
            raise _Unsupported
        if length <= _MAX_KEPT and pos + length > len(buf):
            raise _NeedMore
        out[tag] = (vr if vr != "UN" else _known_vr(tag), buf[pos:pos + length] if length <= _MAX_KEPT else _TooLarge())
        pos += length
        if pos > _MAX_HEADER:
            raise _Unsupported  # a header this long is pydicom's, which leaves large values on disk
    if end is None or pos != end:
        raise _Unsupported  # ran off the file, or past the end of the enclosing item
    return pos


_DICTIONARY_VR: dict[int, str] = {}


def _known_vr(tag: int) -> str:
    """The VR a public element written as UN has in the dictionary, as pydicom reads it
    (``replace_un_with_known_vr``); UN for a private or unknown one. An implicit-VR sequence
    inside UN is pydicom's to read."""
    vr = _DICTIONARY_VR.get(tag)
    if vr is None:
        try:
            vr = dictionary_VR(tag) if tag >> 16 & 1 == 0 else "UN"
        except KeyError:
            vr = "UN"
        vr = vr.split(" or ")[0] if vr not in ("US or SS or OW", "US or OW") else "US"
        _DICTIONARY_VR[tag] = vr
    if vr == "SQ":
        raise _Unsupported
    return vr


def _sequence(src: _Source, pos: int, length: int, *, depth: int, max_depth: int, name: str,
              counter: list[int]) -> tuple[int, list[Header]]:
    """Walk a sequence's items; returns where it ends, and its items."""
    buf = src.data
    end = None if length == _UNDEFINED else pos + length
    if end is not None and end > src.size:
        raise _Unsupported
    items: list[Header] = []
    while end is None or pos < end:
        tag = _LONG.unpack_from(buf, pos)[0]
        tag = (tag & 0xFFFF) << 16 | tag >> 16
        item_length = _LONG.unpack_from(buf, pos + 4)[0]
        pos += 8
        if tag == _SEQ_END and end is None:
            return pos, items
        if tag != _ITEM:
            raise _Unsupported
        item_end = None if item_length == _UNDEFINED else pos + item_length
        raw: dict[int, tuple[str, object]] = {}
        items.append(Header(raw))
        pos = _elements(src, pos, item_end, raw, depth=depth, max_depth=max_depth, name=name, group=None,
                        counter=counter)
    if pos != end:
        raise _Unsupported
    return pos, items
