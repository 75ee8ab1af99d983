"""MONAI/torch backend: a TorchScript file, or a MONAI bundle folder (``models/model.ts``).

torch is imported only when a model of this kind is loaded, so the runtime image never
needs it. The module returns outputs in the order the manifest lists them.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from triage.errors import InferenceError, ModelError


def missing() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "the MONAI backend needs torch: pip install 'triage[train]'"
    return None


class TorchSession:
    def __init__(self, path: Path, outputs: tuple[str, ...], options) -> None:
        import torch

        self._torch = torch
        if path.is_dir():
            path = path / "models" / "model.ts"
        self._device = "cuda" if options.providers != "cpu" and torch.cuda.is_available() else "cpu"
        if options.providers == "cuda" and self._device != "cuda":
            raise ModelError("providers=cuda was asked for, but torch sees no CUDA device")
        torch.set_num_threads(max(1, int(options.threads)))
        try:
            self._module = torch.jit.load(str(path), map_location=self._device).eval()
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelError(f"torch cannot load the TorchScript file ({str(exc).splitlines()[0][:200]})",
                             path=path.name) from None
        self._outputs = list(outputs)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        try:
            with torch.inference_mode():
                result = self._module(torch.from_numpy(x).to(self._device))
        except RuntimeError as exc:
            raise InferenceError(f"torch failed ({type(exc).__name__})") from None
        if isinstance(result, torch.Tensor):
            result = (result,)
        return {name: t.detach().cpu().numpy() for name, t in zip(self._outputs, result) if name}


def load(path: Path, outputs: tuple[str, ...], options) -> TorchSession:
    return TorchSession(path, outputs, options)


def _backend():
    from triage.inference.backends import Backend

    return Backend(name="torch", formats=("torchscript", "monai_bundle"), priority=50,
                   missing=missing, load=load)


BACKEND = _backend()
