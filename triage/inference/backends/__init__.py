"""Model backends: small modules behind one contract, chosen by explicit priority."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from triage.errors import BackendUnavailableError


class Session(Protocol):
    """A loaded model. One per model per process; not shared across processes."""

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class RuntimeOptions:
    """How backends may use the machine; read once at start (see :mod:`triage.settings`)."""

    providers: str = "auto"  # auto | cpu | cuda
    threads: int = 1


@dataclass(frozen=True)
class Backend:
    name: str
    formats: tuple[str, ...]
    priority: int  # higher wins when several backends read the same format
    missing: Callable[[], str | None]  # None when usable, else the sentence saying what to install
    load: Callable[[Path, tuple[str, ...], RuntimeOptions], Session]


def _backends() -> list[Backend]:
    from triage.inference.backends import monai, onnx

    return sorted([onnx.BACKEND, monai.BACKEND], key=lambda b: -b.priority)


def backend_for(fmt: str) -> Backend:
    """The highest-priority available backend for an artifact format."""
    candidates = [b for b in _backends() if fmt in b.formats]
    reasons = []
    for backend in candidates:
        missing = backend.missing()
        if missing is None:
            return backend
        reasons.append(missing)
    raise BackendUnavailableError("; ".join(reasons) or f"no backend reads format {fmt!r}")
