"""The source/sink interface the worker host is written against.

:mod:`triage.bus.memory` implements it in-process (the demo and fast unit tests) and
:mod:`triage.bus.kafka` on Apache Kafka. The host only ever sees these types.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple, Protocol


class TopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None  # None: a tombstone, which a sender may produce like any other record
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


class SendHandle(Protocol):
    """What :meth:`Sink.send` returns: done once the bus acknowledged (or refused) the record."""

    def is_done(self) -> bool: ...

    def error(self) -> BaseException | None: ...


AssignedCallback = Callable[[set[TopicPartition]], None]


# Called when partitions are taken away; ``can_commit`` is False when the member was
# evicted and the partitions are already lost. The host stops taking work for them and
# returns the offsets of finished work to commit before they go to their next owner.
RevokedCallback = Callable[[set[TopicPartition], bool], dict[TopicPartition, int]]


class Source(Protocol):
    def subscribe(self, topics: list[str], on_assigned: AssignedCallback, on_revoked: RevokedCallback) -> None: ...

    def poll(self, timeout_s: float, max_records: int) -> list[Message]: ...

    def assignment(self) -> set[TopicPartition]: ...

    def pause(self, partitions: Iterable[TopicPartition]) -> None: ...

    def resume(self, partitions: Iterable[TopicPartition]) -> None: ...

    def paused(self) -> set[TopicPartition]: ...

    def seek(self, offsets: dict[TopicPartition, int]) -> None:
        """Read these assigned partitions from the given offsets next."""

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit, per partition, the offset of the next message to read."""

    def lag(self) -> dict[TopicPartition, int]: ...

    def close(self) -> None: ...


class Sink(Protocol):
    max_record_bytes: int  # the largest record (key, value and headers) the bus accepts

    def send(self, topic: str, key: bytes, value: bytes,
             headers: list[tuple[str, bytes]] | None = None) -> SendHandle: ...

    def flush(self, timeout_s: float) -> None: ...

    def close(self) -> None: ...
