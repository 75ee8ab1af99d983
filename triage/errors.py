"""One error family for the whole pipeline.

Every error the pipeline raises on purpose is a :class:`TriageError`. Callers decide
what to do by reading attributes, not by long ``isinstance`` chains:

* ``kind``: a short stable string that goes into the ``failed`` priority event, the DLQ
  headers and the ``failures`` metric label.
* ``retriable``: whether trying the same study again later may succeed (a source that is
  not reachable yet), or whether it never will (a corrupt file).

Messages name the file and the reason, and never carry tag values, so they are safe to
log and to publish (no PHI).
"""
from __future__ import annotations


def printable(text: str) -> str:
    """``text`` fit for one line of a log or an event: control characters escaped (a sender's
    file name may hold a newline or a terminal escape)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


class TriageError(Exception):
    kind = "internal"
    retriable = False

    def __init__(self, message: str, *, path: str | None = None):
        path = printable(path) if path else path
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


# --- input events --------------------------------------------------------------------
class SchemaError(TriageError):
    """An event that does not match its published JSON schema."""

    kind = "schema"


class UnknownSchemaError(SchemaError):
    kind = "unknown_schema"


# --- fetching a study -----------------------------------------------------------------
class SourceError(TriageError):
    kind = "source"


class SourceUnavailableError(SourceError):
    """The study's source cannot be reached now; it may be later."""

    kind = "source_unavailable"
    retriable = True


# --- decode ---------------------------------------------------------------------------
class DecodeError(TriageError):
    kind = "decode"


class EmptyStudyError(DecodeError):
    kind = "empty_study"


class CorruptFileError(DecodeError):
    kind = "corrupt_file"


class MissingGeometryError(DecodeError):
    kind = "missing_geometry"


class UnevenSpacingError(DecodeError):
    kind = "uneven_spacing"


class MixedOrientationError(DecodeError):
    kind = "mixed_orientation"


class InconsistentSeriesError(DecodeError):
    kind = "inconsistent_series"


class VolumeTooLargeError(DecodeError):
    kind = "volume_too_large"


class StudyTooLargeError(DecodeError):
    """A study folder past its file-count or byte budget; nothing in it was opened."""

    kind = "study_too_large"


class MixedStudiesError(DecodeError):
    """One folder holding more than one StudyInstanceUID."""

    kind = "mixed_studies"


class UnsupportedImageError(DecodeError):
    kind = "unsupported_image"


# --- models ---------------------------------------------------------------------------
class ModelError(TriageError):
    kind = "model"


class ManifestError(ModelError):
    kind = "manifest"


class ArtifactHashMismatch(ModelError):
    kind = "hash_mismatch"


class BackendUnavailableError(ModelError):
    """A backend whose optional dependency is not installed."""

    kind = "backend_unavailable"


class InferenceError(ModelError):
    kind = "inference"


# --- running a study in a worker process ----------------------------------------------
class WorkerError(TriageError):
    """A study that a worker process could not finish, whatever its files hold."""

    kind = "worker"


class StudyTimeoutError(WorkerError):
    """The study ran past its deadline (fetch, decode and inference together); its process was killed."""

    kind = "timeout"


class WorkerCrashError(WorkerError):
    """The study's worker process died under it as many times as the crash budget allows."""

    kind = "worker_crash"


# --- configuration --------------------------------------------------------------------
class ConfigError(TriageError):
    """Routing rules, priority policy or settings that do not validate."""

    kind = "config"


# --- bus ------------------------------------------------------------------------------
class BusError(TriageError):
    kind = "bus"
    retriable = True


class BusSecurityError(BusError):
    """The broker answered but refused us: an untrusted certificate, a refused SASL login, or
    a security protocol that does not match the listener. Retrying cannot help."""

    kind = "bus_security"
    retriable = False


# --- gateway --------------------------------------------------------------------------
class InstanceRefused(TriageError):
    """An instance the gateway will not store. ``status`` is the DICOM C-STORE status the
    sender sees; ``kind`` labels the refusal in metrics."""

    kind = "refused"

    def __init__(self, message: str, *, kind: str, status: int, path: str | None = None):
        super().__init__(message, path=path)
        self.kind = kind
        self.status = status
