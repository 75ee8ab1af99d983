"""The gateway's durable memory, one SQLite file under the store: every instance received,
every study version with its quiet window, and the outbox of study events.

A study version is ``open`` while instances arrive, ``queued`` once its window has passed and
its study event is written to the outbox (one transaction), and ``published`` when the
broker has acknowledged that event. An instance that arrives after its study left ``open``
opens the next version. Nothing here is ever deleted.

Thread-safety: one connection, guarded by ``_lock``; each method is one transaction. It is
shared by the association threads, the STOW-RS threads and the publisher thread.
"""
from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from triage.events import RequestedPriority

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
  sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL,
  version INTEGER NOT NULL, bytes INTEGER NOT NULL, arrived_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS studies (
  study_uid TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL,
  first_at REAL NOT NULL, last_at REAL NOT NULL, window_s REAL NOT NULL,
  instances INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,
  accession TEXT, requested_priority TEXT,
  PRIMARY KEY (study_uid, version));
CREATE INDEX IF NOT EXISTS studies_state ON studies (state, last_at);
CREATE TABLE IF NOT EXISTS outbox (
  study_uid TEXT NOT NULL, version INTEGER NOT NULL, payload TEXT NOT NULL,
  last_at REAL NOT NULL, queued_at REAL NOT NULL, published_at REAL,
  PRIMARY KEY (study_uid, version));
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (published_at);
"""

# the more urgent of two orders wins: a study's requested priority is never lowered by a later instance
_URGENCY = {RequestedPriority.LOW: 0, RequestedPriority.ROUTINE: 1, RequestedPriority.MEDIUM: 2,
            RequestedPriority.HIGH: 3, RequestedPriority.STAT: 4}


def most_urgent(*priorities: RequestedPriority | None) -> RequestedPriority | None:
    return max((p for p in priorities if p is not None), key=_URGENCY.__getitem__, default=None)


@dataclass(frozen=True)
class Instance:
    study_uid: str
    series_uid: str
    sop_uid: str
    bytes: int
    accession: str | None = None
    requested_priority: RequestedPriority | None = None


@dataclass(frozen=True)
class StudyVersion:
    study_uid: str
    version: int
    last_at: float
    instances: int
    accession: str | None
    requested_priority: RequestedPriority | None


@dataclass(frozen=True)
class OutboxEntry:
    study_uid: str
    version: int
    payload: str
    last_at: float


class StudyState:
    def __init__(self, path: Path):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit survives a crash (kill -9) but its last transactions may not survive a
        # power cut. That is enough, because the durable record of an instance is its fsynced file
        # (rows lost that way are recovered from the store at start-up), a lost intent re-queues
        # the study, and a lost "published" mark only publishes it again.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self):
        return _Transaction(self._db)

    def known(self, sop_uid: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM instances WHERE sop_uid=?", (sop_uid,)).fetchone() is not None

    def known_in(self, study_uid: str) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT sop_uid FROM instances WHERE study_uid=?", (study_uid,))}

    def study_bytes(self, study_uid: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM instances WHERE study_uid=?",
                                   (study_uid,)).fetchone()
            return int(row[0])

    def record(self, inst: Instance, now: float, window_s: float) -> bool:
        """Add an instance to its study's open version (opening one if needed). False if this
        SOP Instance UID was already recorded: a resend is counted once."""
        with self._lock, self._tx() as db:
            if db.execute("SELECT 1 FROM instances WHERE sop_uid=?", (inst.sop_uid,)).fetchone():
                return False
            row = db.execute("SELECT version, requested_priority FROM studies WHERE study_uid=? AND state='open'",
                             (inst.study_uid,)).fetchone()
            if row is None:
                top = db.execute("SELECT COALESCE(MAX(version), 0) FROM studies WHERE study_uid=?",
                                 (inst.study_uid,)).fetchone()[0]
                version, priority = top + 1, None
                db.execute("INSERT INTO studies (study_uid, version, state, first_at, last_at, window_s) "
                           "VALUES (?, ?, 'open', ?, ?, ?)", (inst.study_uid, version, now, now, window_s))
            else:
                version, priority = row[0], RequestedPriority(row[1]) if row[1] else None
            priority = most_urgent(priority, inst.requested_priority)
            db.execute("INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?)",
                       (inst.sop_uid, inst.study_uid, inst.series_uid, version, inst.bytes, now))
            db.execute("UPDATE studies SET last_at=?, window_s=?, instances=instances+1, bytes=bytes+?, "
                       "accession=COALESCE(accession, ?), requested_priority=? WHERE study_uid=? AND version=?",
                       (now, window_s, inst.bytes, inst.accession, priority.value if priority else None,
                        inst.study_uid, version))
            return True

    def due(self, now: float) -> list[StudyVersion]:
        """Open versions whose quiet window has passed."""
        with self._lock:
            rows = self._db.execute(
                "SELECT study_uid, version, last_at, instances, accession, requested_priority FROM studies "
                "WHERE state='open' AND last_at + window_s <= ? ORDER BY last_at", (now,)).fetchall()
        return [StudyVersion(r[0], r[1], r[2], r[3], r[4], RequestedPriority(r[5]) if r[5] else None) for r in rows]

    def queue(self, version: StudyVersion, payload: str, now: float) -> bool:
        """Close a version and record its study event in the outbox, in one transaction. False if
        an instance arrived since it was found due (the window starts again)."""
        with self._lock, self._tx() as db:
            changed = db.execute("UPDATE studies SET state='queued' WHERE study_uid=? AND version=? "
                                 "AND state='open' AND last_at=?",
                                 (version.study_uid, version.version, version.last_at)).rowcount
            if changed:
                db.execute("INSERT INTO outbox VALUES (?, ?, ?, ?, ?, NULL)",
                           (version.study_uid, version.version, payload, version.last_at, now))
            return bool(changed)

    def pending(self) -> list[OutboxEntry]:
        with self._lock:
            rows = self._db.execute("SELECT study_uid, version, payload, last_at FROM outbox "
                                    "WHERE published_at IS NULL ORDER BY queued_at").fetchall()
        return [OutboxEntry(*r) for r in rows]

    def mark_published(self, entry: OutboxEntry, now: float) -> None:
        with self._lock, self._tx() as db:
            db.execute("UPDATE outbox SET published_at=? WHERE study_uid=? AND version=?",
                       (now, entry.study_uid, entry.version))
            db.execute("UPDATE studies SET state='published' WHERE study_uid=? AND version=?",
                       (entry.study_uid, entry.version))

    def counts(self) -> dict[str, int]:
        """Study versions by state, and the outbox depth, for metrics and the start-up line."""
        with self._lock:
            out = {s: n for s, n in self._db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state")}
            out["outbox"] = self._db.execute("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL").fetchone()[0]
        return out


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any error."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
