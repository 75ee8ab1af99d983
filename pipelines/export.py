"""Export a trained model to ONNX (dynamic batch axis) and check parity with ONNX Runtime.

The parity check runs torch and ONNX Runtime on the held-out images; a maximum absolute
difference above 1e-4 in any output stops the export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

PARITY_TOLERANCE = 1e-4


class ParityError(RuntimeError):
    pass


def export_onnx(model, spec, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros((1, 1, *spec.shape), dtype=torch.float32)
    torch.onnx.export(model.eval(), (example,), str(path), input_names=["input"], output_names=["prob", "slices"],
                      dynamic_axes={"input": {0: "batch"}, "prob": {0: "batch"}, "slices": {0: "batch"}},
                      opset_version=17, dynamo=False)


def parity(model, path: Path, images: np.ndarray, batch: int = 4) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = images[i:i + batch].astype(np.float32)
            t_prob, t_slices = (o.numpy() for o in model(torch.from_numpy(x)))
            o_prob, o_slices = session.run(["prob", "slices"], {"input": x})
            worst = max(worst, float(np.abs(t_prob - o_prob).max()), float(np.abs(t_slices - o_slices).max()))
    if worst > PARITY_TOLERANCE:
        raise ParityError(f"torch and ONNX Runtime differ by {worst:.2e} (> {PARITY_TOLERANCE:g}); export stopped")
    return worst
