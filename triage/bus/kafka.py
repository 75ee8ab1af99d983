"""Apache Kafka source and sink (kafka-python), behind the :mod:`triage.bus.base` interface.

* The consumer never auto-commits: the host commits, per partition, only offsets whose
  priority events the broker has acknowledged.
* The producer is idempotent with ``acks=all``; events are keyed by StudyInstanceUID.
* Security (TLS, SASL PLAIN/SCRAM) comes from ``TRIAGE_KAFKA_*`` variables or arguments,
  read once in :meth:`KafkaConfig.load` and validated together.

A source or sink belongs to the host's consumer thread; kafka-python's own background
threads (heartbeat, producer I/O) are guarded by the library. kafka-python is pinned to 2.x:
3.0.12 runs rebalance callbacks on an IO loop, and there a callback that outlived the poll
timeout, or two members joining at once, left members without partitions for good.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping

from triage.bus.base import AssignedCallback, Message, RevokedCallback, TopicPartition
from triage.errors import BusError, BusSecurityError, ConfigError

log = logging.getLogger(__name__)

_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str
    group: str = "triage"
    client_id: str = "triage"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    request_timeout_ms: int = 30_000
    max_block_ms: int = 5_000
    max_request_bytes: int = 1_048_576  # the producer's record limit; the broker's message.max.bytes must allow it

    def __post_init__(self) -> None:
        if not self.bootstrap or ":" not in self.bootstrap:
            raise ConfigError(f"bootstrap must be HOST:PORT[,HOST:PORT], not {self.bootstrap!r}")
        if self.security_protocol not in _PROTOCOLS:
            raise ConfigError(f"security protocol must be one of {', '.join(_PROTOCOLS)}")
        sasl = self.security_protocol.startswith("SASL")
        if sasl and self.sasl_mechanism not in _MECHANISMS:
            raise ConfigError(f"SASL needs a mechanism, one of {', '.join(_MECHANISMS)}")
        if sasl and not (self.sasl_username and self.sasl_password):
            raise ConfigError("SASL needs a username and a password")
        if not sasl and self.sasl_mechanism:
            raise ConfigError(f"a SASL mechanism was set but the protocol is {self.security_protocol}")
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ConfigError("heartbeat interval must be at most a third of the session timeout")
        if self.session_timeout_ms >= self.request_timeout_ms:
            raise ConfigError("session timeout must be below the request timeout")
        if self.max_request_bytes < 16 << 10:
            raise ConfigError("max request bytes must be at least 16384")
        if self.max_poll_interval_ms < self.session_timeout_ms:
            raise ConfigError("max poll interval must not be below the session timeout")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "KafkaConfig":
        """Arguments win over ``TRIAGE_KAFKA_<NAME>`` variables (e.g. TRIAGE_KAFKA_SASL_PASSWORD)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = overrides.get(f.name)
            if raw is None:
                raw = environ.get(f"TRIAGE_KAFKA_{f.name.upper()}")
            if raw in (None, ""):
                continue
            try:
                values[f.name] = int(raw) if f.name.endswith(("_ms", "_bytes")) else str(raw)
            except ValueError:
                raise ConfigError(f"{f.name} must be a number, not {raw!r}") from None
        if "bootstrap" not in values:
            raise ConfigError("no Kafka bootstrap servers: pass --bootstrap or set TRIAGE_KAFKA_BOOTSTRAP")
        return cls(**values)

    def client_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"bootstrap_servers": self.bootstrap.split(","), "client_id": self.client_id,
                                "security_protocol": self.security_protocol,
                                "request_timeout_ms": self.request_timeout_ms}
        if self.sasl_mechanism:
            args.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                        sasl_plain_password=self.sasl_password)
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, name):
                args[name] = getattr(self, name)
        return args


# OpenSSL's verify codes that mean "we do not trust who signed it", and the hostname check
_UNTRUSTED = {2, 18, 19, 20, 21, 27}
_VERIFY_WORDS = {10: "has expired", 9: "is not yet valid", 62: "does not name this host"}


def check_connection(config: KafkaConfig, timeout_s: float = 10.0) -> None:
    """Connect to each bootstrap server as the clients will (TCP, TLS handshake, API versions,
    SASL login) and say in one line why not, instead of a client that retries forever.

    Raises :class:`BusSecurityError` when a broker answered but refused us (certificate,
    password, security protocol) and :class:`BusError` when none answered in ``timeout_s``.
    Returns when one server accepted the whole handshake."""
    import ssl

    from kafka import errors as kerr
    from kafka.conn import BrokerConnection, ConnectionStates, get_ip_port_afi

    args = {k: v for k, v in config.client_args().items() if k != "bootstrap_servers"}
    args["request_timeout_ms"] = int(timeout_s * 1000)
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)  # our line says it; kafka-python's would repeat it, with its own words
    unreachable = []
    try:
        for server in config.bootstrap.split(","):
            host, port, afi = get_ip_port_afi(server.strip())
            where = f"{host}:{port}"
            seen: set = set()  # every state the connection entered; one connect() call may pass several
            conn = BrokerConnection(host, port, afi, state_change_callback=lambda _n, _s, c: seen.add(c.state), **args)
            deadline = time.monotonic() + timeout_s
            last = conn.state
            try:
                while time.monotonic() < deadline:
                    state = conn.connect()
                    if state is ConnectionStates.CONNECTED:
                        return
                    if state is ConnectionStates.DISCONNECTED:
                        break
                    last = state
                    time.sleep(0.02)
                else:  # out of time mid-handshake: slow or overloaded, not a refusal
                    unreachable.append(where)
                    continue
            except ssl.SSLCertVerificationError as exc:
                said = _VERIFY_WORDS.get(exc.verify_code)
                if said is None and exc.verify_code in _UNTRUSTED:
                    said = f"is not signed by the CA in ssl_cafile ({config.ssl_cafile or 'the system CAs'})"
                raise BusSecurityError(f"Kafka broker {where}: its TLS certificate {said or 'was refused'}") from None
            except ssl.SSLError:
                raise BusSecurityError(f"Kafka broker {where}: the TLS handshake failed "
                                       f"(security protocol {config.security_protocol}; is the listener TLS?)") from None
            except kerr.SaslAuthenticationFailedError:
                raise BusSecurityError(f"Kafka broker {where}: SASL {config.sasl_mechanism} login as "
                                       f"{config.sasl_username!r} was refused (wrong password or unknown user)") from None
            except kerr.UnsupportedSaslMechanismError:
                raise BusSecurityError(f"Kafka broker {where}: the listener does not offer SASL "
                                       f"{config.sasl_mechanism}") from None
            except kerr.KafkaError as exc:
                raise BusSecurityError(f"Kafka broker {where}: the handshake failed ({type(exc).__name__})") from None
            finally:
                conn.close()
            if ConnectionStates.AUTHENTICATING in (last, *seen) and "SASL" in config.security_protocol:
                # the handshake and API versions went through; the broker hung up on our login (on a
                # busy host that can happen within the one connect() call that sent it)
                raise BusSecurityError(f"Kafka broker {where}: SASL {config.sasl_mechanism} login as "
                                       f"{config.sasl_username!r} was refused (wrong password or unknown user)")
            if last in (ConnectionStates.API_VERSIONS_SEND, ConnectionStates.API_VERSIONS_RECV,
                        ConnectionStates.AUTHENTICATING, ConnectionStates.HANDSHAKE):
                # it accepted TCP, then hung up on (or never answered) what we sent
                want = "PLAINTEXT or SASL_PLAINTEXT" if "SSL" in config.security_protocol else "SSL or SASL_SSL"
                raise BusSecurityError(f"Kafka broker {where}: it accepted the connection but did not answer "
                                       f"{config.security_protocol}; its listener likely wants {want}")
            unreachable.append(where)
    finally:
        kafka_log.setLevel(level)
    raise BusError(f"no Kafka broker answered at {', '.join(unreachable)} (refused, or no answer in {timeout_s:g} s)")


def _tp(tp) -> TopicPartition:
    return TopicPartition(tp.topic, tp.partition)


class KafkaSource:
    def __init__(self, config: KafkaConfig):
        from kafka import KafkaConsumer

        self.config = config
        self._consumer = KafkaConsumer(
            group_id=config.group, enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=config.session_timeout_ms, heartbeat_interval_ms=config.heartbeat_interval_ms,
            max_poll_interval_ms=config.max_poll_interval_ms, metadata_max_age_ms=30_000,
            **config.client_args())

    def subscribe(self, topics: list[str], on_assigned: AssignedCallback, on_revoked: RevokedCallback) -> None:
        """Rebalance callbacks run inside :meth:`poll`, on the consumer thread (kafka-python 2.x),
        so they never race the host's own loop. The final commit for revoked partitions is
        made synchronously before the member rejoins."""
        from kafka import ConsumerRebalanceListener

        source = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                if revoked:
                    source._give_up({_tp(tp) for tp in revoked}, on_revoked, True)

            def on_partitions_assigned(self, assigned):
                on_assigned({_tp(tp) for tp in assigned})

            def on_partitions_lost(self, lost):  # called by clients that know eviction apart
                if lost:
                    source._give_up({_tp(tp) for tp in lost}, on_revoked, False)

        self._await_topics(topics)
        self._consumer.subscribe(topics, listener=Listener())

    def _give_up(self, partitions: set[TopicPartition], on_revoked: RevokedCallback, can_commit: bool) -> None:
        from kafka.errors import KafkaError

        offsets = on_revoked(partitions, can_commit)
        if offsets and can_commit:
            try:
                self._consumer.commit(self._kafka_offsets(offsets))
            except KafkaError as exc:  # the group moved on: the next owner redoes that work
                log.warning("commit before giving up partitions failed (%s); the next owner redoes that work",
                            type(exc).__name__)

    def _await_topics(self, topics: list[str], timeout_s: float = 60.0) -> None:
        """Know each topic's partitions before joining: a join that races the first metadata
        answer gets no partitions and would wait for the next metadata refresh."""
        deadline = time.monotonic() + timeout_s
        for topic in topics:
            while not self._consumer.partitions_for_topic(topic):
                if time.monotonic() > deadline:
                    raise BusError(f"topic {topic} has no partitions (does it exist? is the broker up?)")
                time.sleep(0.2)

    @staticmethod
    def _kafka_offsets(offsets: dict[TopicPartition, int]):
        from kafka import TopicPartition as KTP
        from kafka.structs import OffsetAndMetadata

        return {KTP(tp.topic, tp.partition): OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}

    def poll(self, timeout_s: float, max_records: int) -> list[Message]:
        from kafka.errors import KafkaError

        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max(1, max_records))
        except KafkaError as exc:
            log.warning("poll failed (%s); will poll again", type(exc).__name__)
            batches = {}
        return [Message(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers or ()))
                for records in batches.values() for r in records]

    def assignment(self) -> set[TopicPartition]:
        return {_tp(tp) for tp in self._consumer.assignment()}

    def _kafka_tps(self, partitions: Iterable[TopicPartition]):
        from kafka import TopicPartition as KTP

        assigned = self.assignment()
        return [KTP(tp.topic, tp.partition) for tp in partitions if tp in assigned]

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        tps = self._kafka_tps(partitions)
        if tps:
            self._consumer.pause(*tps)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        tps = self._kafka_tps(partitions)
        if tps:
            self._consumer.resume(*tps)

    def paused(self) -> set[TopicPartition]:
        return {_tp(tp) for tp in self._consumer.paused()}

    def seek(self, offsets: dict[TopicPartition, int]) -> None:
        from kafka import TopicPartition as KTP

        assigned = self.assignment()
        for tp, off in offsets.items():
            if tp in assigned:
                self._consumer.seek(KTP(tp.topic, tp.partition), off)

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        from kafka.errors import KafkaError

        try:
            self._consumer.commit(self._kafka_offsets(offsets))
        except KafkaError as exc:
            raise BusError(f"commit failed ({type(exc).__name__})") from None

    def lag(self) -> dict[TopicPartition, int]:
        from kafka.errors import KafkaError

        tps = list(self._consumer.assignment())
        if not tps:
            return {}
        try:
            ends = self._consumer.end_offsets(tps)
            return {_tp(tp): ends[tp] - (self._consumer.committed(tp) or 0) for tp in tps}
        except KafkaError:
            return {}

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class _Sent:
    def __init__(self, future=None, error: BaseException | None = None):
        self._future, self._error = future, error

    def is_done(self) -> bool:
        return self._future is None or self._future.is_done

    def error(self) -> BaseException | None:
        if self._future is None:
            return self._error
        return self._future.exception if self._future.failed() else None


class KafkaSink:
    def __init__(self, config: KafkaConfig):
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self.max_record_bytes = config.max_request_bytes
        try:
            self._producer = KafkaProducer(acks="all", enable_idempotence=True, linger_ms=5,
                                           max_block_ms=config.max_block_ms, delivery_timeout_ms=120_000,
                                           max_request_size=config.max_request_bytes, **config.client_args())
        except KafkaError as exc:
            raise BusError(f"no Kafka broker answered at {config.bootstrap} ({type(exc).__name__})") from None

    def send(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> _Sent:
        from kafka.errors import KafkaError

        try:
            return _Sent(self._producer.send(topic, key=key, value=value, headers=list(headers or [])))
        except KafkaError as exc:  # e.g. metadata not available while the broker restarts
            return _Sent(error=exc)

    def flush(self, timeout_s: float) -> None:
        from kafka.errors import KafkaError

        try:
            self._producer.flush(timeout=timeout_s)
        except KafkaError as exc:
            log.warning("flush did not complete (%s)", type(exc).__name__)

    def close(self) -> None:
        self._producer.close(timeout=10)


def read_topic(config: KafkaConfig, topic: str, *, from_beginning: bool, idle_timeout_s: float | None):
    """The values of ``topic`` as they arrive, outside any consumer group (nothing is committed);
    stops once nothing has arrived for ``idle_timeout_s`` (None: never)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        consumer = KafkaConsumer(group_id=None, enable_auto_commit=False,
                                 auto_offset_reset="earliest" if from_beginning else "latest", **config.client_args())
    except KafkaError as exc:
        raise BusError(f"no Kafka broker answered at {config.bootstrap} ({type(exc).__name__})") from None
    try:
        last = time.monotonic()
        while topic not in consumer.topics():  # a topic made after we subscribed would stay unseen for minutes
            if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                return
            time.sleep(0.5)
        consumer.subscribe([topic])
        while idle_timeout_s is None or time.monotonic() - last < idle_timeout_s:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    last = time.monotonic()
                    yield record.value
    finally:
        consumer.close(autocommit=False)
