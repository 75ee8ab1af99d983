"""Where studies come from and where events go: one interface, two implementations."""
from triage.bus.base import Message, SendHandle, Sink, Source, TopicPartition

__all__ = ["Message", "SendHandle", "Sink", "Source", "TopicPartition"]
