"""``triage demo``: the worker host on the in-process bus, over sample studies.

Sample studies are real DICOM files that ship with pydicom (and with the
``pydicom-data`` wheel when installed), copied into one folder per study, plus a corrupt
study and one with no images, so every status shows up. They run through the same host,
pool and pipeline as ``triage worker``; only the bus differs.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pydicom

from triage.bus.memory import MemoryBroker, MemorySink, MemorySource
from triage.events import STUDY_SCHEMA, PriorityEvent, StudyEvent, now_iso, parse_study_event, to_json
from triage.pipeline import Pipeline
from triage.settings import Settings
from triage.worker.host import Host, HostOptions, Topics
from triage.worker.pool import WorkerPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    name: str
    files: tuple[str, ...]
    requested_priority: str | None
    patient_class: str | None
    note: str


# (file names are looked up in pydicom's test files, then in pydicom-data)
SAMPLES = (
    Sample("head-ct-cq500", ("693_UNCR.dcm",), "ROUTINE", "emergency", "head CT slice (CQ500), ER patient"),
    Sample("chest-cr-pa", ("RG1_UNCR.dcm",), None, "inpatient", "chest radiograph, PA"),
    Sample("ct-small", ("CT_small.dcm",), "STAT", "emergency", "CT, STAT order"),
    Sample("enhanced-mr", ("emri_small.dcm",), "LOW", "outpatient", "enhanced multi-frame MR"),
    Sample("mr-jpeg-ls", ("MR_small_jpeg_ls_lossless.dcm",), "HIGH", "inpatient", "MR, JPEG-LS compressed"),
    Sample("enhanced-ct", ("eCT_Supplemental.dcm",), None, None, "enhanced CT, two frames"),
    Sample("report-only", ("test-SR.dcm",), "ROUTINE", "outpatient", "a structured report, no images"),
    Sample("truncated-ct", ("CT_small.dcm",), "MEDIUM", "outpatient", "corrupt: file cut off in its header"),
)
TRUNCATE = {"truncated-ct": 600}  # bytes kept: the transfer broke off early


def _candidates() -> list[Path]:
    dirs = [Path(pydicom.__file__).parent / "data" / "test_files"]
    try:
        import data_store  # the pydicom-data wheel

        dirs.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return dirs


def find_test_file(name: str) -> Path | None:
    """A DICOM file shipped in pydicom or pydicom-data, by name; never downloads."""
    for d in _candidates():
        if (d / name).exists():
            return d / name
    return None


def make_samples(root: Path) -> list[tuple[Sample, StudyEvent]]:
    """Copy each available sample into ``root/<name>/`` and build its study event."""
    out = []
    for i, sample in enumerate(SAMPLES, 1):
        paths = [find_test_file(f) for f in sample.files]
        if not all(paths):
            log.info("sample %s skipped: its files are not installed (pip install pydicom-data)", sample.name)
            continue
        folder = root / sample.name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for p in paths:
            shutil.copy(p, folder / p.name)
            if sample.name in TRUNCATE:
                with open(folder / p.name, "r+b") as f:
                    f.truncate(TRUNCATE[sample.name])
        uid = _study_uid(paths[0], i)
        out.append((sample, parse_study_event({
            "schema": STUDY_SCHEMA, "study_instance_uid": uid, "source": {"uri": folder.resolve().as_uri()},
            "received_at": now_iso(), "accession_number": f"DEMO{i:04d}",
            "requested_priority": sample.requested_priority, "patient_class": sample.patient_class})))
    return out


def _study_uid(path: Path, i: int) -> str:
    try:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True, force=True).get("StudyInstanceUID", ""))
    except Exception:  # a deliberately corrupt sample: fall back to a generated UID
        uid = ""
    return f"{uid}.{i}" if uid and len(uid) < 60 else f"2.25.{1000 + i}"


_ORDERS = (("ROUTINE", "emergency"), ("ROUTINE", "inpatient"), (None, "emergency"), ("LOW", "outpatient"))


def extra_studies(folder: Path, start: int) -> list[tuple[Sample, StudyEvent]]:
    """Each subfolder of ``folder`` (e.g. phantoms from ``python -m pipelines.synth``) as a study,
    with a varied but routine order, so only the models can move it up the worklist."""
    out = []
    for i, study in enumerate(sorted(p for p in folder.iterdir() if p.is_dir()), start):
        requested, patient = _ORDERS[i % len(_ORDERS)]
        sample = Sample(study.name, (), requested, patient, "extra study")
        uid = _folder_uid(study, i)
        out.append((sample, parse_study_event({
            "schema": STUDY_SCHEMA, "study_instance_uid": uid, "source": {"uri": study.resolve().as_uri()},
            "received_at": now_iso(), "accession_number": f"DEMO{i:04d}", "requested_priority": requested,
            "patient_class": patient})))
    return out


def _folder_uid(folder: Path, i: int) -> str:
    first = next(iter(sorted(folder.glob("*.dcm"))), None)
    return _study_uid(first, i) if first else f"2.25.{1000 + i}"


def run_demo(settings: Settings, out: Path, progress: bool = True, extra: list[Path] | None = None) -> list[PriorityEvent]:
    from triage import metrics

    out.mkdir(parents=True, exist_ok=True)
    samples = make_samples(out / "studies")
    next_index = len(SAMPLES) + 1
    for folder in extra or []:
        added = extra_studies(folder, next_index)
        samples += added
        next_index += len(added)
    broker = MemoryBroker(partitions=2)
    topics = Topics()
    for _, study in samples:
        broker.produce(topics.studies, study.study_instance_uid.encode(), to_json(study).encode())
    metrics.serve(settings.metrics_port, settings.metrics_host)
    pipeline = Pipeline.from_settings(settings)
    events: list[PriorityEvent] = []
    bar = _progress(len(samples), progress)
    host = Host(MemorySource(broker), MemorySink(broker), WorkerPool(settings, settings.processes), pipeline,
                topics=topics, options=HostOptions(max_in_flight=2 * settings.processes, drain_timeout_s=60),
                on_event=lambda e: (events.append(e), bar.update(1)))
    host.run(until=lambda: len(events) >= len(samples))
    bar.close()
    with open(out / "priority-events.jsonl", "w") as f:
        for m in broker.messages(topics.priority):
            f.write(json.dumps(json.loads(m.value)) + "\n")
    return events


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="scoring studies", unit="study", disable=not enabled, leave=False)


def worklist_table(events: list[PriorityEvent]) -> str:
    """The worklist, most urgent first, as a plain-text table."""
    rows = [("#", "LEVEL", "SCORE", "STATUS", "ACCESSION", "FINDINGS", "SHADOW", "REASONS")]
    ordered = sorted(events, key=lambda e: (-e.priority.score, e.accession_number or ""))
    for n, e in enumerate(ordered, 1):
        shown = [f"{f.code} {f.probability:.2f}" for f in e.findings if f.positive]
        shown += [f"{f.code} not assessed" for f in e.findings if f.assessable is False]
        findings = ", ".join(shown) or ("none positive" if e.findings else "-")
        shadow = ", ".join(f"{f.code} {f.probability:.2f}{' +' if f.positive else ''}"
                           f"{' not assessed' if f.assessable is False else ''}"
                           for f in e.shadow_findings or []) or "-"
        reasons = "; ".join(e.priority.reasons)
        if e.error is not None:
            reasons = f"{reasons}; {e.error.message}" if reasons else e.error.message
        rows.append((str(n), e.priority.level.value, f"{e.priority.score:5.1f}", e.status.value,
                     e.accession_number or "-", findings, shadow, reasons))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
        if r is rows[0]:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 7)
    return "\n".join(lines)


def summary(events: list[PriorityEvent], out: Path) -> str:
    counts: dict[str, int] = {}
    for e in events:
        counts[e.status.value] = counts.get(e.status.value, 0) + 1
    parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    text = f"{len(events)} studies: {parts}. Events: {out / 'priority-events.jsonl'}"
    shadow = sorted({f.model.name for e in events for f in e.shadow_findings or []})
    if shadow:
        text += (f"\nIn shadow (recorded under SHADOW, never moving a priority): {', '.join(shadow)}. "
                 "Each model's card says why.")
    return text

