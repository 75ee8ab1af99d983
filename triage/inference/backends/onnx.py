"""ONNX Runtime backend: the serving default. CUDA when present and allowed, else CPU."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from triage.errors import InferenceError, ModelError

log = logging.getLogger(__name__)


def missing() -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "the ONNX backend needs onnxruntime: pip install onnxruntime"
    return None


def choose_providers(requested: str, available: list[str]) -> list[str]:
    """Execution providers for ``requested`` (auto | cpu | cuda) given what the build offers."""
    if requested == "cpu":
        return ["CPUExecutionProvider"]
    if requested == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ModelError("providers=cuda was asked for, but this onnxruntime has no CUDA provider "
                             "(pip install onnxruntime-gpu)")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxSession:
    def __init__(self, path: Path, outputs: tuple[str, ...], options) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(options.threads))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        providers = choose_providers(options.providers, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"ONNX Runtime cannot load the model ({str(exc).splitlines()[0][:200]})",
                             path=path.name) from None
        log.info("onnx session %s on %s, %d thread(s)", path.parent.name,
                 self._session.get_providers()[0], so.intra_op_num_threads)
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o for o in outputs if o]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(self._outputs, {self._input: x})
        except Exception as exc:
            raise InferenceError(f"ONNX Runtime failed ({type(exc).__name__})") from None
        return dict(zip(self._outputs, values))


def load(path: Path, outputs: tuple[str, ...], options) -> OnnxSession:
    return OnnxSession(path, outputs, options)


def _backend():
    from triage.inference.backends import Backend

    return Backend(name="onnxruntime", formats=("onnx",), priority=100, missing=missing, load=load)


BACKEND = _backend()
