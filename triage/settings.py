"""Settings: read once at start (arguments first, then ``TRIAGE_*`` environment), validated together.

Nothing here reads the environment at import time, and building a :class:`Settings` has
no side effects (no models are loaded).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from triage.dicom.scan import ScanLimits
from triage.errors import ConfigError
from triage.inference.backends import RuntimeOptions


@dataclass(frozen=True)
class Settings:
    models_dir: Path | None = None  # None: the models/ folder of this checkout
    rules: Path | None = None  # None: triage/config/routing.yaml
    policy: Path | None = None  # None: triage/config/policy.yaml
    max_voxels: int = 512 * 512 * 4000  # per series, and per file (frames x rows x columns x samples)
    max_files: int = 20_000  # per study folder, counted before any is opened
    max_study_bytes: int = 16 << 30  # per study folder, summed before any file is opened
    max_inflated_bytes: int = 2 << 30  # a deflated dataset, once inflated
    decode_threads: int = 2
    providers: str = "auto"
    processes: int = 2
    ort_threads: int = 0  # 0: cores / processes, so N processes do not oversubscribe the cores
    fetch_timeout_s: int = 60  # DICOMweb retrieve timeout per socket operation
    study_deadline_s: float = 300.0  # wall clock for one study: fetch, decode and inference together
    metrics_port: int = 0  # 0: do not serve /metrics
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.providers not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"providers must be auto, cpu or cuda, not {self.providers!r}")
        if self.processes < 1:
            raise ConfigError("processes must be at least 1")
        if min(self.max_voxels, self.max_files, self.max_study_bytes, self.max_inflated_bytes) < 1:
            raise ConfigError("max_voxels, max_files, max_study_bytes and max_inflated_bytes must be positive")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics port {self.metrics_port} is out of range")
        if self.decode_threads < 1 or self.ort_threads < 0:
            raise ConfigError("thread counts must be positive")
        if not self.study_deadline_s > 0:
            raise ConfigError("study deadline must be a positive number of seconds")
        for name in ("models_dir", "rules", "policy"):
            value = getattr(self, name)
            if value is not None and not Path(value).exists():
                raise ConfigError(f"{name.replace('_', ' ')} {value} does not exist")

    @property
    def scan_limits(self) -> ScanLimits:
        return ScanLimits(max_files=self.max_files, max_bytes=self.max_study_bytes, max_voxels=self.max_voxels,
                          max_inflated_bytes=self.max_inflated_bytes)

    @property
    def runtime(self) -> RuntimeOptions:
        threads = self.ort_threads or max(1, (os.cpu_count() or 1) // self.processes)
        return RuntimeOptions(providers=self.providers, threads=threads)

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> "Settings":
        """Arguments (``overrides``, ``None`` meaning unset) win over ``TRIAGE_<NAME>`` variables."""
        return load_settings(cls, "TRIAGE_", overrides, environ)


def load_settings(cls: type, prefix: str, overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Any:
    """Build the settings dataclass ``cls`` once: ``overrides`` (``None`` meaning unset) win over
    ``<prefix><NAME>`` environment variables, which win over the defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(cls):
        if not f.init:
            continue
        raw = (overrides or {}).get(f.name)
        if raw is None:
            raw = environ.get(f"{prefix}{f.name.upper()}")
        if raw is None or raw == "":
            continue
        values[f.name] = _coerce(f.name, f.type, raw)
    return cls(**values)


def _coerce(name: str, type_name: Any, raw: Any) -> Any:
    text = str(type_name)
    if not isinstance(raw, str):
        return raw
    try:
        if "Path" in text:
            return Path(raw)
        if "int" in text:
            return int(raw)
        if "float" in text:
            return float(raw)
        return str(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
