"""One instance into the study store, durably: budgets first, then its header (UIDs and order
fields, nothing else), then fsync, a no-clobber link into
``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, an fsync of the
folder, and only then the record in :class:`~triage.gateway.state.StudyState`. The file is
kept exactly as received; it is never decoded here.

Spooled files live in ``<root>/.incoming`` (the same filesystem, so the link is atomic), and
the state in ``<root>/.gateway``. The workers' scan skips both: dot folders are not studies.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from triage.dicom import scan
from triage.errors import DecodeError, InstanceRefused
from triage.events import RequestedPriority, is_uid
from triage.gateway.state import Instance, StudyState, most_urgent

log = logging.getLogger(__name__)

# C-STORE statuses (PS3.4 B.2.3) the sender sees
OUT_OF_RESOURCES = 0xA700
DATA_SET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000

_HEADER_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_MAX_ACCESSION = 16  # DICOM SH


@dataclass(frozen=True)
class Stored:
    instance: Instance
    new: bool  # False: this SOP Instance UID was already stored; nothing was replaced
    path: Path


def read_header(path: Path, expected_sop: str | None = None) -> Instance:
    """The UIDs and order fields of a spooled instance, read with the workers' own hardened
    header reader (no pixel data, large values left on disk, pydicom kept quiet), and checked."""
    try:
        ds, _ = scan.read_header(path.parent, path.name)
        uids = [str(ds.get(k, "") or "").strip() for k in _HEADER_TAGS[:3]]
        accession = str(ds.get("AccessionNumber", "") or "").strip()
        priority = _requested_priority(ds)
    except DecodeError as exc:
        raise InstanceRefused(f"header cannot be read ({exc.kind})", kind="unreadable",
                              status=CANNOT_UNDERSTAND) from None
    except Exception as exc:  # noqa: BLE001 - a hostile header may break the parser anywhere
        raise InstanceRefused(f"header cannot be read ({type(exc).__name__})", kind="unreadable",
                              status=CANNOT_UNDERSTAND) from None
    if not all(is_uid(u) and u.strip(".") for u in uids):
        raise InstanceRefused("study, series or SOP instance UID is missing or not a UID", kind="bad_uid",
                              status=CANNOT_UNDERSTAND)
    if expected_sop is not None and uids[2] != expected_sop.strip():
        raise InstanceRefused("SOP instance UID differs from the one the request announced", kind="bad_uid",
                              status=DATA_SET_MISMATCH)
    if not (accession.isprintable() and len(accession) <= _MAX_ACCESSION) or "\\" in accession:
        accession = ""
    return Instance(study_uid=uids[0], series_uid=uids[1], sop_uid=uids[2], bytes=path.stat().st_size,
                    accession=accession or None, requested_priority=priority)


def _requested_priority(ds) -> RequestedPriority | None:
    """(0040,1003) at the top level, or in an item of the Request Attributes Sequence (0040,0275)."""
    candidates = [ds.get("RequestedProcedurePriority")]
    for item in (ds.get("RequestAttributesSequence") or [])[:16]:
        candidates.append(item.get("RequestedProcedurePriority"))
    found = [RequestedPriority(str(c).strip().upper()) for c in candidates
             if c and str(c).strip().upper() in RequestedPriority.__members__]
    return most_urgent(*found)


class InstanceStore:
    """Thread-safe: the filesystem's no-clobber link and the state's lock serialise writers."""

    def __init__(self, root: Path, state: StudyState, *, max_instance_bytes: int, max_study_bytes: int):
        self.root = root
        self.incoming = root / ".incoming"
        self.state = state
        self.max_instance_bytes = max_instance_bytes
        self.max_study_bytes = max_study_bytes

    def spool_path(self) -> Path:
        return self.incoming / f"{uuid.uuid4().hex}.part"

    def check_size(self, size: int) -> None:
        """Refuse an instance that is over budget before anything is read or written."""
        if size > self.max_instance_bytes:
            raise InstanceRefused(f"instance of {size} bytes is over the {self.max_instance_bytes}-byte budget",
                                  kind="instance_budget", status=OUT_OF_RESOURCES)

    def accept(self, spooled: Path, window_s: float, expected_sop: str | None = None) -> Stored:
        """Store one spooled instance (the caller removes the spool file afterwards)."""
        self.check_size(spooled.stat().st_size)
        inst = read_header(spooled, expected_sop)
        final = self.root / inst.study_uid / inst.series_uid / f"{inst.sop_uid}.dcm"
        if self.state.known(inst.sop_uid):
            return Stored(inst, False, final)
        if self.state.study_bytes(inst.study_uid) + inst.bytes > self.max_study_bytes:
            raise InstanceRefused(f"study would pass its {self.max_study_bytes}-byte budget", kind="study_budget",
                                  status=OUT_OF_RESOURCES)
        try:
            self._place(spooled, final)
        except OSError as exc:  # a full or failing disk: the sender keeps the instance and retries
            raise InstanceRefused(f"instance could not be written ({exc.strerror or type(exc).__name__})",
                                  kind="storage", status=OUT_OF_RESOURCES) from None
        new = self.state.record(inst, time.time(), window_s)
        return Stored(inst, new, final)

    def _place(self, spooled: Path, final: Path) -> None:
        with open(spooled, "rb+") as f:
            os.fsync(f.fileno())
        for folder in (final.parent.parent, final.parent):  # a new folder's own entry must be durable too
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                _fsync_dir(folder.parent)
        try:
            os.link(spooled, final)  # never replaces: a file already there is kept as it is
        except FileExistsError:
            return
        except OSError as exc:
            if exc.errno != 18:  # EXDEV: the spool is on another filesystem; copy it beside, then link
                raise
            beside = self.spool_path()
            shutil.copyfile(spooled, beside)
            try:
                self._place(beside, final)
            finally:
                beside.unlink(missing_ok=True)
            return
        _fsync_dir(final.parent)

    def reconcile(self, window_s: float) -> int:
        """Record instances that reached the store but not the state (a crash between the link
        and the record; their sender was never told they were stored). Nothing is deleted."""
        found = 0
        for study in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            known = self.state.known_in(study.name)
            for path in sorted(study.glob("*/*.dcm")):
                if path.stem in known:
                    continue
                try:
                    inst = read_header(path)
                except InstanceRefused:
                    continue
                if (inst.study_uid, inst.series_uid, inst.sop_uid) == (study.name, path.parent.name, path.stem):
                    found += self.state.record(inst, path.stat().st_mtime, window_s)
        leftovers = sum(1 for _ in self.incoming.glob("*")) if self.incoming.exists() else 0
        if leftovers:
            log.warning("%d partly received file(s) from an earlier run are in %s; they were never "
                        "acknowledged to a sender and are left for inspection", leftovers, self.incoming)
        return found


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
