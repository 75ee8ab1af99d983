"""Which codec decodes a compressed series: pydicom's decoder plugins, in our order.

pydicom's plugin contract is the one way a codec is chosen. This module adds one plugin to
it, ``imagecodecs``, for JPEG 2000 and HTJ2K: its OpenJPEG build releases the GIL while it
decodes, so the decode threads of :func:`triage.dicom.decode.decode_series` run on every
core (pylibjpeg-openjpeg holds the GIL: two threads decode no faster than one). The order
below is explicit, never import order; each plugin that cannot run says what it lacks.

This module is also the plugin module pydicom imports (``is_available``,
``DECODER_DEPENDENCIES``, ``_decode_frame``), as its contract asks.
"""
from __future__ import annotations

import threading
from functools import lru_cache

from pydicom import uid
from pydicom.pixels.common import PhotometricInterpretation as PI
from pydicom.pixels.decoders.base import DecodeRunner, get_decoder

# First available wins, per transfer syntax. pydicom's own names for its plugins.
PRIORITY = ("imagecodecs", "pylibjpeg", "gdcm", "pyjpegls", "pillow", "pydicom")

_J2K = (uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K)
DECODER_DEPENDENCIES = {syntax: ("imagecodecs>=2024.1.1",) for syntax in _J2K}
_registered = threading.Lock()
_done = False


def _imagecodecs():
    try:
        import imagecodecs
    except ImportError:
        return None
    return imagecodecs if getattr(imagecodecs, "JPEG2K", None) and imagecodecs.JPEG2K.available else None


def is_available(syntax: str) -> bool:
    """The plugin contract: can this plugin decode ``syntax`` here."""
    return syntax in DECODER_DEPENDENCIES and _imagecodecs() is not None


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One frame's codestream to pixel bytes in the container pydicom expects, as the
    pylibjpeg plugin returns them: sized by the codestream's precision, colour as RGB."""
    codecs = _imagecodecs()
    # A series of many files is decoded in parallel across files by the caller's threads; one
    # large frame (a radiograph) asks for OpenJPEG's own threads instead.
    arr = codecs.jpeg2k_decode(src, numthreads=int(runner.get_option("j2k_threads", 1)))
    if runner.photometric_interpretation in (PI.YBR_ICT, PI.YBR_RCT):
        runner.set_option("photometric_interpretation", PI.RGB)  # OpenJPEG applies the inverse transform
    runner.set_option("bits_allocated", arr.dtype.itemsize * 8)
    return arr.tobytes()


def register() -> None:
    """Add the ``imagecodecs`` plugin to pydicom's JPEG 2000 decoders, once per process.
    pydicom's ``add_plugin`` is not thread-safe, hence the lock."""
    global _done
    with _registered:
        if _done:
            return
        for syntax in _J2K:
            decoder = get_decoder(syntax)
            if "imagecodecs" not in decoder._available and "imagecodecs" not in decoder._unavailable:
                decoder.add_plugin("imagecodecs", ("triage.dicom.codecs", "_decode_frame"))
        _done = True


@lru_cache(maxsize=None)
def plugin_for(syntax: str) -> str:
    """The plugin that decodes ``syntax`` here: the first of :data:`PRIORITY` available,
    "" for syntaxes pydicom decodes itself (uncompressed, deflated) or cannot decode."""
    register()
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        return ""
    available = decoder.available_plugins
    return next((name for name in PRIORITY if name in available), "")


def missing(syntax: str) -> list[str]:
    """What each plugin that cannot decode ``syntax`` here lacks, in pydicom's words
    (package names only: nothing from a file)."""
    register()
    try:
        return list(get_decoder(syntax).missing_dependencies)
    except NotImplementedError:
        return []
