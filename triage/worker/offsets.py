"""Per-partition offset tracking for out-of-order completion.

Studies finish in any order; a partition's committable offset is the lowest offset not
yet finished (or one past the highest seen when all are done), so a commit never passes
unfinished work. Used by the host's consumer thread only; not thread-safe.
"""
from __future__ import annotations

import time

from triage.bus.base import TopicPartition


class OffsetTracker:
    def __init__(self) -> None:
        self._pending: dict[TopicPartition, dict[int, float]] = {}  # offset -> when it was added (monotonic)
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def add(self, tp: TopicPartition, offset: int) -> None:
        self._pending.setdefault(tp, {}).setdefault(offset, time.monotonic())
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def done(self, tp: TopicPartition, offset: int) -> None:
        if tp in self._pending:
            self._pending[tp].pop(offset, None)

    def in_flight(self, tp: TopicPartition | None = None) -> int:
        if tp is not None:
            return len(self._pending.get(tp, ()))
        return sum(len(s) for s in self._pending.values())

    def resume_point(self, tp: TopicPartition) -> int | None:
        """Where reading must restart so nothing unfinished is skipped (None: nothing seen)."""
        if tp not in self._next:
            return None
        pending = self._pending.get(tp)
        return min(pending) if pending else self._next[tp]

    def committable(self) -> dict[TopicPartition, int]:
        """Offsets that can be committed now and were not committed before."""
        out = {}
        for tp, nxt in self._next.items():
            pending = self._pending.get(tp)
            offset = min(pending) if pending else nxt
            if self._committed.get(tp) != offset:
                out[tp] = offset
        return out

    def oldest_pending_age(self, now: float | None = None) -> dict[TopicPartition, float]:
        """Per tracked partition, seconds since the lowest unfinished offset arrived (0: none)."""
        now = time.monotonic() if now is None else now
        out = {}
        for tp in self._next:
            pending = self._pending.get(tp)
            out[tp] = now - pending[min(pending)] if pending else 0.0
        return out

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Drop revoked partitions: this member must never commit for them again."""
        for tp in partitions:
            self._pending.pop(tp, None)
            self._next.pop(tp, None)
            self._committed.pop(tp, None)
