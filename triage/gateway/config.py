"""The gateway's settings: arguments first, then ``TRIAGE_GATEWAY_*`` variables, validated
together once at start. Building them has no side effects (nothing is opened or bound)."""
from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from triage.errors import ConfigError
from triage.settings import Settings, load_settings

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 printable characters, no backslash
ANY_AE = "*"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class AllowRule:
    """One ``AE[@HOST]`` entry: a calling AE title (``*``: any) and the networks it may call from
    (a host name is resolved once, at start)."""

    ae_title: str
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = LOOPBACK

    def admits(self, ae_title: str | None, address: str) -> bool:
        return (self.ae_title in (ANY_AE, ae_title)) and _in(address, self.networks)


def _in(address: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in n for n in networks if n.version == ip.version)


def parse_allow(text: str) -> tuple[AllowRule, ...]:
    """``AE[@HOST],...`` where HOST is an address, a network (10.0.0.0/8) or a host name.
    An entry without a host may call from loopback only."""
    rules = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        ae, _, host = entry.partition("@")
        ae = ae.strip()
        if ae != ANY_AE and not _AE_TITLE.match(ae):
            raise ConfigError(f"allow-list entry {entry!r}: an AE title is 1 to 16 printable characters")
        rules.append(AllowRule(ae, _networks(host.strip(), entry) if host else LOOPBACK))
    return tuple(rules)


def _networks(host: str, entry: str):
    try:
        return (ipaddress.ip_network(host, strict=False),)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        raise ConfigError(f"allow-list entry {entry!r}: host {host!r} does not resolve") from None
    return tuple(sorted({ipaddress.ip_network(i[4][0]) for i in infos}, key=str))


def parse_windows(text: str) -> dict[str, float]:
    """``AE=SECONDS,...``: a quiet window per calling AE title."""
    out = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        ae, sep, seconds = entry.rpartition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if not sep or not _AE_TITLE.match(ae.strip()) or not 0 < value <= 3600:
            raise ConfigError(f"window entry {entry!r}: use AE=SECONDS, with 0 < SECONDS <= 3600")
        out[ae.strip()] = value
    return out


@dataclass(frozen=True)
class GatewaySettings:
    store: Path | None = None
    ae_title: str = "TRIAGE"
    host: str = "0.0.0.0"  # listen on every interface; the allow-list decides who gets in
    port: int = 11112
    http_port: int = 8042  # STOW-RS; 0: off
    window_s: float = 5.0
    ae_windows: str = ""  # AE=SECONDS,...
    allow: str = ""  # AE[@HOST],...; empty: any AE title, from loopback only
    topic: str = "triage.studies"
    max_instance_bytes: int = 2 << 30
    max_study_bytes: int = Settings.max_study_bytes  # what a worker will read; more is refused here first
    tls_cert: Path | None = None  # with tls_key: DICOM TLS and HTTPS only
    tls_key: Path | None = None
    tls_ca: Path | None = None  # also require client certificates signed by this CA
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    allow_rules: tuple[AllowRule, ...] = field(default=(), init=False, repr=False)
    windows: Mapping[str, float] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.store is None:
            raise ConfigError("the gateway needs a store folder: pass --store or set TRIAGE_GATEWAY_STORE")
        if not _AE_TITLE.match(self.ae_title) or self.ae_title.strip() != self.ae_title:
            raise ConfigError("the AE title must be 1 to 16 printable characters, no backslash, no outer spaces")
        for name in ("port", "http_port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"{name.replace('_', ' ')} {getattr(self, name)} is out of range")
        if self.port and self.port == self.http_port:
            raise ConfigError("the DICOM port and the HTTP port must differ")
        if not 0 < self.window_s <= 3600:
            raise ConfigError("the quiet window must be between 0 and 3600 seconds")
        if not 0 < self.max_instance_bytes <= self.max_study_bytes:
            raise ConfigError("max instance bytes must be positive and at most max study bytes")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("TLS needs both a certificate and its key")
        if self.tls_ca and not self.tls_cert:
            raise ConfigError("a client CA was set without a server certificate and key")
        for name in ("tls_cert", "tls_key", "tls_ca"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise ConfigError(f"{name.replace('_', ' ')} {value} is not a file")
        object.__setattr__(self, "allow_rules", parse_allow(self.allow) or (AllowRule(ANY_AE),))
        object.__setattr__(self, "windows", parse_windows(self.ae_windows))

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    def window_for(self, calling_ae: str | None) -> float:
        return self.windows.get(calling_ae or "", self.window_s)

    def admits(self, calling_ae: str | None, address: str) -> bool:
        return any(r.admits(calling_ae, address) for r in self.allow_rules)

    def host_admitted(self, address: str) -> bool:
        """An HTTP client has no AE title: it may call from any network an allow rule names."""
        return any(_in(address, r.networks) for r in self.allow_rules)

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None,
             environ: Mapping[str, str] | None = None) -> "GatewaySettings":
        """Arguments (``None`` meaning unset) win over ``TRIAGE_GATEWAY_<NAME>`` variables."""
        return load_settings(cls, "TRIAGE_GATEWAY_", overrides, environ)
