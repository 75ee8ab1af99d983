"""Model manifests: what a model folder says about itself, checked once at load.

A manifest (``models/<name>/manifest.yaml``) states the artifact and its sha256, which
series the model applies to, its input spec, its output names and its findings with
thresholds at named operating points. Nothing about a model is written anywhere else.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from triage.errors import ArtifactHashMismatch, ManifestError
from triage.inference.guard import Envelope
from triage.preprocess import InputSpec
from triage.routing import SeriesMatch

SEVERITIES = ("critical", "high", "moderate", "low")
FORMATS = ("onnx", "torchscript", "monai_bundle")


@dataclass(frozen=True)
class FindingSpec:
    code: str
    label: str
    severity: str
    operating_points: dict[str, float]
    calibration: tuple[float, float] = (1.0, 0.0)  # Platt scaling on the logit: a·logit + b

    def calibrate(self, p: float) -> float:
        return platt(p, *self.calibration)


def platt(p: float, a: float, b: float) -> float:
    """Platt scaling of a probability: sigmoid(a·logit(p) + b); (1, 0) leaves it unchanged."""
    if (a, b) == (1.0, 0.0):
        return float(p)
    p = min(max(float(p), 1e-7), 1 - 1e-7)
    return 1.0 / (1.0 + math.exp(-(a * math.log(p / (1 - p)) + b)))


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    folder: Path
    artifact: str
    format: str
    sha256: str
    applies_to: SeriesMatch
    input_name: str
    input: InputSpec
    probabilities: str
    slice_scores: str | None
    findings: tuple[FindingSpec, ...]
    operating_point: str
    mode: str = "live"  # "shadow": runs and is recorded, never moves a priority (see pipelines/register.py)
    # the inputs it was trained on (see triage/inference/guard.py); None: every finding is
    # reported as not assessable, since nothing says what the model knows
    envelope: Envelope | None = None

    @property
    def artifact_path(self) -> Path:
        return self.folder / self.artifact

    def threshold(self, finding: FindingSpec) -> float:
        return finding.operating_points[self.operating_point]


MODES = ("live", "shadow")


def artifact_digest(path: Path) -> str:
    """sha256 of a file, or of ``models/model.ts`` inside a MONAI bundle folder."""
    if path.is_dir():
        path = path / "models" / "model.ts"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _require(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data or data[key] in (None, ""):
        raise ManifestError(f"'{key}' is required", path=where)
    return data[key]


def _finding(data: Any, op_name: str, where: str) -> FindingSpec:
    if not isinstance(data, dict):
        raise ManifestError("each finding must be a mapping", path=where)
    severity = str(_require(data, "severity", where))
    if severity not in SEVERITIES:
        raise ManifestError(f"severity {severity!r} is not one of {', '.join(SEVERITIES)}", path=where)
    points = _require(data, "operating_points", where)
    try:
        points = {str(k): float(v) for k, v in points.items()}
    except (AttributeError, TypeError, ValueError):
        raise ManifestError("operating_points must map names to thresholds", path=where) from None
    if op_name not in points:
        raise ManifestError(f"operating point {op_name!r} has no threshold", path=where)
    if not all(0.0 <= v <= 1.0 for v in points.values()):
        raise ManifestError("thresholds must lie in [0, 1]", path=where)
    cal = data.get("calibration") or {}
    return FindingSpec(code=str(_require(data, "code", where)), label=str(_require(data, "label", where)),
                       severity=severity, operating_points=points,
                       calibration=(float(cal.get("a", 1.0)), float(cal.get("b", 0.0))))


def load_manifest(folder: str | Path, *, verify: bool = True) -> Manifest:
    """Read and validate ``folder/manifest.yaml``; with ``verify``, refuse a hash mismatch."""
    folder = Path(folder)
    where = f"{folder.name}/manifest.yaml"
    try:
        data = yaml.safe_load((folder / "manifest.yaml").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"cannot read manifest ({type(exc).__name__}: {exc})", path=where) from None
    if not isinstance(data, dict):
        raise ManifestError("manifest must be a mapping", path=where)
    art = _require(data, "artifact", where)
    fmt = str(art.get("format", "onnx"))
    if fmt not in FORMATS:
        raise ManifestError(f"artifact format {fmt!r} is not one of {', '.join(FORMATS)}", path=where)
    inp = _require(data, "input", where)
    outputs = _require(data, "outputs", where)
    op_name = str(data.get("operating_point", "default"))
    findings = tuple(_finding(f, op_name, f"{where}: findings[{i}]")
                     for i, f in enumerate(_require(data, "findings", where)))
    manifest = Manifest(
        name=str(_require(data, "name", where)), version=str(_require(data, "version", where)),
        folder=folder, artifact=str(_require(art, "file", where)), format=fmt,
        sha256=str(_require(art, "sha256", where)).lower(),
        applies_to=SeriesMatch.from_dict(_require(data, "applies_to", where), where),
        input_name=str(inp.get("name", "input")), input=InputSpec.from_dict(inp, where),
        probabilities=str(_require(outputs, "probabilities", where)),
        slice_scores=outputs.get("slice_scores"), findings=findings, operating_point=op_name,
        mode=str(data.get("mode", "live")),
        envelope=Envelope.from_dict(data["envelope"], f"{where}: envelope") if data.get("envelope") else None)
    if manifest.mode not in MODES:
        raise ManifestError(f"mode {manifest.mode!r} is not one of {', '.join(MODES)}", path=where)
    if manifest.name != folder.name:
        raise ManifestError(f"name {manifest.name!r} differs from its folder {folder.name!r}", path=where)
    if verify:
        verify_artifact(manifest)
    return manifest


def verify_artifact(manifest: Manifest) -> None:
    path = manifest.artifact_path
    if not path.exists():
        raise ManifestError(f"artifact {manifest.artifact} is missing", path=f"{manifest.name}/manifest.yaml")
    actual = artifact_digest(path)
    if actual != manifest.sha256:
        raise ArtifactHashMismatch(
            f"sha256 {actual[:12]}… does not match the manifest's {manifest.sha256[:12]}…; refusing to load",
            path=f"{manifest.name}/{manifest.artifact}")
