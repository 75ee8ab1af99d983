"""A complete in-process bus: partitioned topics, one consumer group, commits, pause/resume.

It is the embedded default of ``triage demo`` and of unit tests of the worker host. It is
not a model of Kafka's failure modes; those are tested against a real broker.
The broker is guarded by one lock and may be shared between threads of one process.
"""
from __future__ import annotations

import threading
import time
import zlib
from typing import Iterable

from triage.bus.base import AssignedCallback, Message, RevokedCallback, TopicPartition


class MemoryBroker:
    def __init__(self, partitions: int = 2):
        self.default_partitions = partitions
        self._topics: dict[str, list[list[Message]]] = {}
        self._committed: dict[tuple[str, TopicPartition], int] = {}
        self._lock = threading.Condition()

    def _topic(self, name: str) -> list[list[Message]]:
        if name not in self._topics:
            self._topics[name] = [[] for _ in range(self.default_partitions)]
        return self._topics[name]

    def produce(self, topic: str, key: bytes | None, value: bytes,
                headers: list[tuple[str, bytes]] | None = None) -> Message:
        with self._lock:
            parts = self._topic(topic)
            p = zlib.crc32(key) % len(parts) if key else 0
            msg = Message(topic, p, len(parts[p]), key, value, tuple(headers or ()))
            parts[p].append(msg)
            self._lock.notify_all()
            return msg

    def messages(self, topic: str) -> list[Message]:
        with self._lock:
            return [m for part in self._topic(topic) for m in part]

    def partitions(self, topic: str) -> set[TopicPartition]:
        with self._lock:
            return {TopicPartition(topic, i) for i in range(len(self._topic(topic)))}

    def end_offset(self, tp: TopicPartition) -> int:
        with self._lock:
            return len(self._topic(tp.topic)[tp.partition])

    def committed(self, group: str, tp: TopicPartition) -> int:
        with self._lock:
            return self._committed.get((group, tp), 0)

    def commit(self, group: str, offsets: dict[TopicPartition, int]) -> None:
        with self._lock:
            for tp, off in offsets.items():
                self._committed[(group, tp)] = off

    def read(self, tps: set[TopicPartition], positions: dict[TopicPartition, int], timeout_s: float,
             max_records: int) -> list[Message]:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                out: list[Message] = []
                for tp in sorted(tps):
                    part = self._topic(tp.topic)[tp.partition]
                    out.extend(part[positions[tp]:positions[tp] + max_records - len(out)])
                    if len(out) >= max_records:
                        break
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                self._lock.wait(remaining)


class _Done:
    def is_done(self) -> bool:
        return True

    def error(self) -> BaseException | None:
        return None


class MemorySource:
    """The single member of its group: it is assigned every partition of its topics."""

    def __init__(self, broker: MemoryBroker, group: str = "triage"):
        self.broker, self.group = broker, group
        self._assigned: set[TopicPartition] = set()
        self._paused: set[TopicPartition] = set()
        self._position: dict[TopicPartition, int] = {}

    def subscribe(self, topics: list[str], on_assigned: AssignedCallback, on_revoked: RevokedCallback) -> None:
        self._assigned = set().union(*(self.broker.partitions(t) for t in topics))
        self._position = {tp: self.broker.committed(self.group, tp) for tp in self._assigned}
        on_assigned(set(self._assigned))

    def poll(self, timeout_s: float, max_records: int) -> list[Message]:
        active = self._assigned - self._paused
        if not active:
            time.sleep(timeout_s)
            return []
        out = self.broker.read(active, self._position, timeout_s, max_records)
        for m in out:
            self._position[m.tp] = m.offset + 1
        return out

    def assignment(self) -> set[TopicPartition]:
        return set(self._assigned)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused |= set(partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._paused -= set(partitions)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def seek(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, off in offsets.items():
            if tp in self._assigned:
                self._position[tp] = off

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.broker.commit(self.group, offsets)

    def lag(self) -> dict[TopicPartition, int]:
        return {tp: self.broker.end_offset(tp) - self.broker.committed(self.group, tp) for tp in self._assigned}

    def close(self) -> None:
        self._assigned = set()


class MemorySink:
    max_record_bytes = 1 << 20  # Kafka's default producer limit, so the host behaves the same on both

    def __init__(self, broker: MemoryBroker):
        self.broker = broker

    def send(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> _Done:
        self.broker.produce(topic, key, value, headers)
        return _Done()

    def flush(self, timeout_s: float) -> None:
        return None

    def close(self) -> None:
        return None
