"""The typed study and priority events, and the JSON Schemas published from them.

The dataclasses here are the single definition of both wire formats: ``schemas/*.json``
are generated from them (``triage schemas --write``) and a test fails if the files drift.
Events validate once, where they enter (:func:`parse_study_event`,
:func:`parse_priority_event`); code after that trusts them.

This module sits at the bottom of the project: it imports only :mod:`triage.errors`.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

from triage.errors import SchemaError, UnknownSchemaError

STUDY_SCHEMA = "triage.study/v1"
PRIORITY_SCHEMA = "triage.priority/v1"

# DICOM's UI value is digits and dots, at most 64 characters; real devices also send
# letters, hyphens and the like, and such a study is scored rather than failed. Spaces,
# carets and other punctuation are refused: they are what names and free text look like.
_UID = r"^[0-9A-Za-z._+-]{1,64}$"
MAX_EVENT_BYTES = 1 << 20  # a study event is a few hundred bytes; anything past this is refused unread
_SALVAGE_MAX_BYTES = 16 << 20  # invalid events up to this size are parsed to recover their order fields
_SOURCE = r"^(file://|dicomweb\+https?://).+"
UNKNOWN_SOURCE = "file:///unknown"  # the source of a study known only by its UID


class RequestedPriority(str, enum.Enum):
    """DICOM Requested Procedure Priority (0040,1003)."""

    STAT = "STAT"
    HIGH = "HIGH"
    ROUTINE = "ROUTINE"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


class PatientClass(str, enum.Enum):
    EMERGENCY = "emergency"
    INPATIENT = "inpatient"
    OUTPATIENT = "outpatient"


class Status(str, enum.Enum):
    SCORED = "scored"
    NO_APPLICABLE_MODEL = "no_applicable_model"
    FAILED = "failed"


class Level(str, enum.Enum):
    STAT = "STAT"
    URGENT = "URGENT"
    ROUTINE = "ROUTINE"


class UpsPriority(str, enum.Enum):
    """DICOM UPS Scheduled Procedure Step Priority (0074,1200)."""

    HIGH = "HIGH"
    MEDIUM = "MEDIUM"
    LOW = "LOW"


class FhirPriority(str, enum.Enum):
    """FHIR ``request-priority`` value set."""

    STAT = "stat"
    ASAP = "asap"
    URGENT = "urgent"
    ROUTINE = "routine"


def _meta(description: str, omit_if_none: bool = False, **schema: Any) -> dict[str, Any]:
    return {"description": description, "schema": schema, "omit_if_none": omit_if_none}


@dataclass(frozen=True)
class Source:
    # Forward compatibility: fields a newer producer adds are ignored, never an error.
    OPEN: ClassVar[bool] = True
    uri: str = field(metadata=_meta("file:///path/to/folder or dicomweb+http(s)://host/…/studies/{uid}", pattern=_SOURCE))


@dataclass(frozen=True)
class StudyEvent:
    """A study that has arrived and waits for triage (topic ``triage.studies``), as UTF-8 JSON of
    at most 1 MiB. Fields this version does not know are ignored, so a newer producer's
    additions never fail a study."""

    OPEN: ClassVar[bool] = True
    study_instance_uid: str = field(metadata=_meta("DICOM StudyInstanceUID; also the Kafka key", pattern=_UID, maxLength=64))
    source: Source = field(metadata=_meta("Where the worker can read the study's DICOM files"))
    received_at: str = field(metadata=_meta("When the study arrived, ISO 8601 with time zone", format="date-time"))
    accession_number: str | None = field(default=None, metadata=_meta("Order accession number", maxLength=64))
    requested_priority: RequestedPriority | None = field(default=None, metadata=_meta("Priority carried by the order"))
    patient_class: PatientClass | None = field(default=None, metadata=_meta("Encounter class of the patient"))
    schema: str = field(default=STUDY_SCHEMA, metadata=_meta("Schema identifier", const=STUDY_SCHEMA))


@dataclass(frozen=True)
class ModelRef:
    name: str = field(metadata=_meta("Model name"))
    version: str = field(metadata=_meta("Model version"))
    sha256: str = field(metadata=_meta("sha256 of the model artifact", pattern=r"^[0-9a-f]{64}$"))


@dataclass(frozen=True)
class Finding:
    code: str = field(metadata=_meta("Finding code, e.g. ich", pattern=r"^[a-z0-9_]+$"))
    label: str = field(metadata=_meta("Human-readable finding name"))
    probability: float = field(metadata=_meta("Calibrated probability", minimum=0, maximum=1))
    threshold: float = field(metadata=_meta("Threshold of the operating point in use", minimum=0, maximum=1))
    positive: bool = field(metadata=_meta("probability >= threshold, on an assessable series"))
    model: ModelRef = field(metadata=_meta("The model that produced the finding"))
    series_instance_uid: str = field(metadata=_meta("Series the finding was read on", pattern=_UID, maxLength=64))
    key_slice: int | None = field(default=None, metadata=_meta("0-based slice index (sorted along the slice normal) that best shows the finding", minimum=0))
    assessable: bool | None = field(default=None, metadata=_meta(
        "false: the series lies outside what the model was trained on (see not_assessable_reason); the "
        "probability is reported, but the finding is never positive and never raises the priority. "
        "Absent in events from before the input guard", omit_if_none=True))
    not_assessable_reason: str | None = field(default=None, metadata=_meta(
        "Why the finding could not be assessed, in triage's words; absent when assessable",
        maxLength=300, omit_if_none=True))


@dataclass(frozen=True)
class Priority:
    score: float = field(metadata=_meta("0 (routine) to 100 (most urgent)", minimum=0, maximum=100))
    level: Level = field(metadata=_meta("Worklist level"))
    dicom_ups: UpsPriority = field(metadata=_meta("DICOM UPS priority"))
    fhir: FhirPriority = field(metadata=_meta("FHIR request priority"))
    reasons: list[str] = field(default_factory=list, metadata=_meta("Short reasons for the priority"))


@dataclass(frozen=True)
class ErrorInfo:
    kind: str = field(metadata=_meta("Stable error kind, e.g. corrupt_file"))
    message: str = field(metadata=_meta("One line naming the file and the reason; never PHI"))


@dataclass(frozen=True)
class Timings:
    decode: float = field(metadata=_meta("Fetch and decode, ms", minimum=0))
    infer: float = field(metadata=_meta("Preprocess and inference of the live models, ms", minimum=0))
    score: float = field(metadata=_meta("Priority policy, ms", minimum=0))
    total: float = field(metadata=_meta("Whole pipeline, ms", minimum=0))
    shadow: float | None = field(default=None, metadata=_meta(
        "Preprocess and inference of shadow models, ms (part of total, not of infer); absent when none ran",
        minimum=0, omit_if_none=True))


@dataclass(frozen=True)
class PriorityEvent:
    """The triage result for one study (topic ``triage.priority``)."""

    event_id: str = field(metadata=_meta(
        "Deterministic from everything that can change the priority: the study UID, its input instances, the "
        "model set (versions, sha256, thresholds), the routing rules, the priority policy, the order's requested "
        "priority and patient class, and the status. The same inputs give the same id, so a repeat delivery "
        "can be dropped. Two events for one study with different ids: the later produced_at wins, and a "
        "priority is never lowered on the strength of an older event", pattern=r"^[0-9a-f]{32}$"))
    study_instance_uid: str = field(metadata=_meta("DICOM StudyInstanceUID", pattern=_UID, maxLength=64))
    accession_number: str | None = field(metadata=_meta("Order accession number", maxLength=64))
    status: Status = field(metadata=_meta("scored, no_applicable_model or failed"))
    priority: Priority = field(metadata=_meta("The priority to sort the worklist by"))
    findings: list[Finding] = field(metadata=_meta("One entry per finding per model run"))
    error: ErrorInfo | None = field(metadata=_meta("Why the study failed, or null"))
    timings_ms: Timings = field(metadata=_meta("Stage timings"))
    produced_at: str = field(metadata=_meta("When the event was produced, ISO 8601", format="date-time"))
    schema: str = field(default=PRIORITY_SCHEMA, metadata=_meta("Schema identifier", const=PRIORITY_SCHEMA))
    shadow_findings: list[Finding] | None = field(default=None, metadata=_meta(
        "Findings of models running in shadow: recorded for evaluation, never part of the priority. "
        "Absent when no shadow model ran", omit_if_none=True))


# --- JSON Schema generation -----------------------------------------------------------
def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _type_schema(tp: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(tp):
        return _object_schema(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [m.value for m in tp]}
    if typing.get_origin(tp) is list:
        return {"type": "array", "items": _type_schema(typing.get_args(tp)[0])}
    return {str: {"type": "string"}, int: {"type": "integer"}, float: {"type": "number"}, bool: {"type": "boolean"}}[tp]


def _object_schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        inner, nullable = _unwrap_optional(hints[f.name])
        prop = _type_schema(inner)
        prop.update(f.metadata.get("schema", {}))
        if nullable:
            prop = {"anyOf": [prop, {"type": "null"}]}
        prop["description"] = f.metadata.get("description", "")
        props[f.name] = prop
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if "schema" in props:
        required.insert(0, "schema")
    return {"type": "object", "properties": props, "required": required,
            "additionalProperties": bool(getattr(cls, "OPEN", False))}


def json_schema(cls: type, schema_id: str, title: str) -> dict[str, Any]:
    doc = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_id, "title": title,
           "description": " ".join((cls.__doc__ or "").split())}
    doc.update(_object_schema(cls))
    return doc


SCHEMA_FILES = {
    "study-event.v1.json": (StudyEvent, STUDY_SCHEMA, "triage study event v1"),
    "priority-event.v1.json": (PriorityEvent, PRIORITY_SCHEMA, "triage priority event v1"),
}


def published_schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema document, as published in ``schemas/``."""
    return {name: json_schema(cls, sid, title) for name, (cls, sid, title) in SCHEMA_FILES.items()}


# --- parsing and validation -----------------------------------------------------------
def _check_constraints(value: Any, schema: dict[str, Any], where: str) -> None:
    # Messages name the field and the rule, never the value: a sender may put anything,
    # PHI included, into a malformed field, and these messages reach logs and DLQ headers.
    if "pattern" in schema and not re.fullmatch(schema["pattern"], value):
        raise SchemaError(f"{where}: does not match {schema['pattern']}")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise SchemaError(f"{where}: longer than {schema['maxLength']} characters")
    if "minimum" in schema and value < schema["minimum"]:
        raise SchemaError(f"{where}: {value} is below {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        raise SchemaError(f"{where}: {value} is above {schema['maximum']}")
    if schema.get("format") == "date-time":
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise SchemaError(f"{where}: not an ISO 8601 date-time") from None
        if parsed.tzinfo is None:
            raise SchemaError(f"{where}: date-time has no time zone")


def _parse(tp: Any, value: Any, where: str, constraints: dict[str, Any]) -> Any:
    inner, nullable = _unwrap_optional(tp)
    if value is None:
        if nullable:
            return None
        raise SchemaError(f"{where}: must not be null")
    if dataclasses.is_dataclass(inner):
        return _parse_object(inner, value, where)
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        try:
            return inner(value)
        except ValueError:
            allowed = ", ".join(m.value for m in inner)
            raise SchemaError(f"{where}: not one of {allowed}") from None
    if typing.get_origin(inner) is list:
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected a list")
        item_tp = typing.get_args(inner)[0]
        return [_parse(item_tp, v, f"{where}[{i}]", {}) for i, v in enumerate(value)]
    ok = {str: lambda v: isinstance(v, str),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          bool: lambda v: isinstance(v, bool)}[inner]
    if not ok(value):
        raise SchemaError(f"{where}: expected {inner.__name__}, got {type(value).__name__}")
    _check_constraints(value, constraints, where)
    return float(value) if inner is float else value


def _parse_object(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected an object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown and not getattr(cls, "OPEN", False):
        raise SchemaError(f"{where}: unknown field(s) {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        path = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SchemaError(f"{path}: required field is missing")
            continue
        kwargs[name] = _parse(hints[name], data[name], path, f.metadata.get("schema", {}))
    return cls(**kwargs)


_SAFE_SCHEMA_NAME = re.compile(r"^[a-z]+(\.[a-z]+)*/v[0-9]{1,3}$")


def _decode(raw: str | bytes | None) -> Any:
    """JSON from the wire, bounded: size first, then UTF-8, then parse (depth guarded)."""
    if raw is None:
        raise SchemaError("empty message (null value)")
    if len(raw) > MAX_EVENT_BYTES:
        raise SchemaError(f"event is {len(raw)} bytes, over the {MAX_EVENT_BYTES} byte limit")
    return _json(raw)


def _json(raw: str | bytes) -> Any:
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise SchemaError("not UTF-8 text") from None
    try:
        return json.loads(raw)
    except RecursionError:
        raise SchemaError("JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise SchemaError(f"not valid JSON (line {exc.lineno} column {exc.colno})") from None
    except ValueError:
        raise SchemaError("not valid JSON") from None


def _load(raw: str | bytes | dict[str, Any] | None, expected: str, cls: type) -> Any:
    if not isinstance(raw, dict):
        raw = _decode(raw)
    if not isinstance(raw, dict):
        raise SchemaError("an event must be a JSON object")
    found = raw.get("schema")
    if found != expected:
        # the value is echoed only when it looks like a schema name: a sender may put anything there
        shown = f" {found!r}" if isinstance(found, str) and _SAFE_SCHEMA_NAME.match(found) else ""
        raise UnknownSchemaError(f"unknown schema{shown}; this worker reads {expected!r}")
    return _parse_object(cls, raw, "")


def parse_study_event(raw: str | bytes | dict[str, Any]) -> StudyEvent:
    """Validate an incoming study event; raises :class:`SchemaError` naming the field."""
    return _load(raw, STUDY_SCHEMA, StudyEvent)


def is_uid(value: Any) -> bool:
    """Whether ``value`` is a UID as events carry them (see ``_UID``)."""
    return isinstance(value, str) and re.fullmatch(_UID, value) is not None


def salvage_study_event(raw: str | bytes | None) -> StudyEvent | None:
    """What can be read of an event that failed validation: its StudyInstanceUID and, where
    each is valid on its own, the order's fields (so a ``failed`` event keeps a STAT order's
    floor). None when no valid UID can be read. Bounded: a payload past a size limit is not
    parsed, only searched near its start for the UID."""
    if raw is None:
        return None
    doc: Any = None
    if len(raw) <= _SALVAGE_MAX_BYTES:
        try:
            doc = _json(raw)
        except SchemaError:
            doc = None
    if not isinstance(doc, dict):
        head = raw[:65536] if isinstance(raw, str) else bytes(raw[:65536]).decode("utf-8", "replace")
        match = re.search(r'"study_instance_uid"\s*:\s*"([^"\\]{1,64})"', head)
        doc = {"study_instance_uid": match.group(1)} if match else {}
    uid = doc.get("study_instance_uid")
    if not isinstance(uid, str) or not re.fullmatch(_UID, uid):
        return None

    def read(name: str, enum_type: type[enum.Enum] | None = None) -> Any:
        value = doc.get(name)
        if not isinstance(value, str):
            return None
        if enum_type is None:
            return value if len(value) <= 64 else None
        for member in enum_type:
            if value.strip().lower() == member.value.lower():
                return member
        return None

    received = doc.get("received_at")
    try:
        _check_constraints(received, {"format": "date-time"}, "received_at")
    except (SchemaError, AttributeError, TypeError):
        received = now_iso()
    return StudyEvent(study_instance_uid=uid, source=Source(uri=UNKNOWN_SOURCE), received_at=received,
                      accession_number=read("accession_number"),
                      requested_priority=read("requested_priority", RequestedPriority),
                      patient_class=read("patient_class", PatientClass))


def parse_priority_event(raw: str | bytes | dict[str, Any]) -> PriorityEvent:
    return _load(raw, PRIORITY_SCHEMA, PriorityEvent)


def to_dict(event: Any) -> dict[str, Any]:
    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            # optional additions to a v1 schema appear only when set
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)
                    if not (f.metadata.get("omit_if_none") and getattr(value, f.name) is None)}
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, list):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        return value

    data = convert(event)
    return {"schema": data.pop("schema"), **data}


def to_json(event: Any) -> str:
    return json.dumps(to_dict(event), separators=(",", ":"), sort_keys=False)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def config_digest(value: Any) -> str:
    """A stable digest of a configuration value (dataclasses, mappings, sets, patterns, enums,
    numbers): equal values give equal digests in any process on any host. A path counts by
    its last component only, so where a checkout lives does not matter."""
    def canon(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: canon(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, dict):
            return {str(canon(k)): canon(x) for k, x in v.items()}
        if isinstance(v, (set, frozenset)):
            return sorted((canon(x) for x in v), key=lambda x: json.dumps(x, sort_keys=True))
        if isinstance(v, (list, tuple)):
            return [canon(x) for x in v]
        if isinstance(v, re.Pattern):
            return {"pattern": v.pattern, "flags": int(v.flags)}
        if hasattr(v, "__fspath__"):
            return os.path.basename(os.fspath(v))
        return v

    return make_event_id(json.dumps(canon(value), sort_keys=True, separators=(",", ":")))


def make_event_id(*parts: str) -> str:
    """A stable 128-bit hex id from the given parts (order matters)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def study_ref(uid: str) -> str:
    """A short, non-reversible reference to a study for logs (no UIDs in logs)."""
    return hashlib.sha256(uid.encode()).hexdigest()[:10]
