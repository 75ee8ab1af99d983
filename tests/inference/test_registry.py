"""triage/inference: manifests, sha256 verification, backends and the registry."""
from __future__ import annotations

import numpy as np
import pytest
import yaml

from tests.helpers import make_model_dir, sha256
from triage.dicom.decode import Volume
from triage.errors import ArtifactHashMismatch, BackendUnavailableError, ManifestError, ModelError
from triage.inference.backends import RuntimeOptions, backend_for
from triage.inference.backends.onnx import choose_providers
from triage.inference.manifest import load_manifest
from triage.inference.registry import ModelRegistry, check_models


def _volume(peak: float, depth: int = 8, at: int = 5) -> Volume:
    arr = np.zeros((depth, 32, 32), np.float32)
    arr[at, 10:14, 10:14] = peak
    return Volume(arr, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), "1.2.3.4", "CT")


def test_registry_runs_an_onnx_model_and_reports_findings(tmp_path):
    make_model_dir(tmp_path, "brightspot", shape=(8, 32, 32))
    reg = ModelRegistry(tmp_path, RuntimeOptions(threads=1))
    (hot,) = reg.infer("brightspot", _volume(90.0))  # window 0..100 → 0.9 → sigmoid(8) ≈ 1
    (cold,) = reg.infer("brightspot", _volume(10.0))
    assert hot.positive and hot.probability > 0.99 and hot.key_slice == 5
    assert not cold.positive and cold.probability < 0.01
    assert hot.model.sha256 == sha256(tmp_path / "brightspot" / "model.onnx")
    assert hot.series_instance_uid == "1.2.3.4"


def test_sessions_are_created_once_and_reused(tmp_path):
    make_model_dir(tmp_path, "brightspot")
    reg = ModelRegistry(tmp_path)
    assert reg.session("brightspot") is reg.session("brightspot")


def test_hash_mismatch_is_refused(tmp_path):
    folder = make_model_dir(tmp_path, "brightspot")
    with open(folder / "model.onnx", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ArtifactHashMismatch, match=r"brightspot/model.onnx: sha256 .* does not match"):
        load_manifest(folder)
    with pytest.raises(ModelError):
        ModelRegistry(tmp_path)
    (check,) = check_models(tmp_path)
    assert not check.ok


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["findings"][0].update(severity="urgent"), "severity 'urgent' is not one of"),
    (lambda m: m["findings"][0]["operating_points"].pop("default"), "operating point 'default' has no threshold"),
    (lambda m: m["artifact"].update(format="tflite"), "artifact format 'tflite'"),
    (lambda m: m.update(name="other"), "differs from its folder"),
    (lambda m: m.pop("applies_to"), "'applies_to' is required"),
])
def test_invalid_manifests_name_the_problem(tmp_path, edit, message):
    folder = make_model_dir(tmp_path, "brightspot")
    doc = yaml.safe_load((folder / "manifest.yaml").read_text())
    edit(doc)
    (folder / "manifest.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ManifestError, match=message):
        load_manifest(folder)


def test_provider_choice():
    assert choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"
    assert choose_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ModelError, match="no CUDA provider"):
        choose_providers("cuda", ["CPUExecutionProvider"])


def test_backend_for_format_prefers_by_priority():
    assert backend_for("onnx").name == "onnxruntime"
    assert backend_for("torchscript").name == "torch"
    with pytest.raises(BackendUnavailableError, match="no backend reads format"):
        backend_for("tflite")


def test_torch_backend_missing_dependency_says_what_to_install(monkeypatch):
    import importlib.util

    from triage.inference.backends import monai

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert monai.missing() == "the MONAI backend needs torch: pip install 'triage[train]'"


def _torchscript_max_model(path):
    torch = pytest.importorskip("torch")

    class MaxModel(torch.nn.Module):
        def forward(self, x):
            per_slice = x.amax(dim=(3, 4))
            return torch.sigmoid((per_slice.amax(dim=2) - 0.5) / 0.05), per_slice

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(MaxModel()).save(str(path))


def test_torchscript_backend_matches_onnx_on_the_same_input(tmp_path):
    make_model_dir(tmp_path / "a", "brightspot", shape=(8, 32, 32))
    make_model_dir(tmp_path / "b", "brightspot", shape=(8, 32, 32), fmt="torchscript",
                   artifact_builder=_torchscript_max_model)
    onnx_reg, torch_reg = ModelRegistry(tmp_path / "a"), ModelRegistry(tmp_path / "b")
    for peak in (30.0, 48.0, 52.0, 80.0):
        (a,), (b,) = onnx_reg.infer("brightspot", _volume(peak)), torch_reg.infer("brightspot", _volume(peak))
        assert abs(a.probability - b.probability) <= 1e-5
        assert a.key_slice == b.key_slice == 5
