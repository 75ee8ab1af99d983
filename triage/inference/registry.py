"""The model registry: the installed models of one process, and their sessions.

A registry reads every ``<models>/<name>/manifest.yaml`` once, verifies each artifact's
sha256, and creates each model's session on first use and keeps it. It belongs to one
process and is not thread-safe: each worker process builds its own.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triage.dicom.decode import Volume
from triage.errors import InferenceError, ModelError
from triage.events import Finding, ModelRef, config_digest
from triage.inference.backends import RuntimeOptions, Session, backend_for
from triage.inference.guard import Measures, assess, measure_volume
from triage.inference.manifest import Manifest, load_manifest
from triage.preprocess import body_centre, preprocess, to_source_slice

log = logging.getLogger(__name__)

# A checkout (or editable install) keeps its models beside the package; an installed
# package reads ./models unless TRIAGE_MODELS_DIR or --models says otherwise.
_CHECKOUT_MODELS = Path(__file__).resolve().parents[2] / "models"
DEFAULT_MODELS = _CHECKOUT_MODELS if (_CHECKOUT_MODELS.parent / "pyproject.toml").exists() else Path("models")


@dataclass(frozen=True)
class ModelCheck:
    folder: str
    ok: bool
    message: str
    manifest: Manifest | None = None


def check_models(models_dir: str | Path | None = None) -> list[ModelCheck]:
    """Validate every model folder under ``models_dir`` (default: the shipped models/), manifest and hash."""
    results = []
    root = Path(models_dir) if models_dir else DEFAULT_MODELS
    if not root.is_dir():
        return results
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        try:
            m = load_manifest(folder)
        except ModelError as exc:
            results.append(ModelCheck(folder.name, False, str(exc)))
        else:
            results.append(ModelCheck(folder.name, True, "manifest valid, sha256 verified", m))
    return results


class ModelRegistry:
    def __init__(self, models_dir: str | Path | None = None, options: RuntimeOptions | None = None):
        self.models_dir = Path(models_dir) if models_dir else DEFAULT_MODELS
        self.options = options or RuntimeOptions()
        self.manifests: dict[str, Manifest] = {}
        for check in check_models(self.models_dir):
            if not check.ok:
                raise ModelError(check.message)  # never serve from a folder that fails verification
            self.manifests[check.manifest.name] = check.manifest
        self._sessions: dict[str, Session] = {}

    @property
    def fingerprint(self) -> str:
        """Identifies the model set, each manifest whole (version, artifact sha256, thresholds
        and operating point, what it applies to); part of every event_id."""
        return config_digest(sorted(self.manifests.values(), key=lambda m: m.name)) if self.manifests else "none"

    def session(self, name: str) -> Session:
        if name not in self._sessions:
            m = self.manifests[name]
            backend = backend_for(m.format)
            outputs = (m.probabilities, m.slice_scores or "")
            self._sessions[name] = backend.load(m.artifact_path, outputs, self.options)
        return self._sessions[name]

    def warm_up(self) -> None:
        for name in self.manifests:
            self.session(name)

    def infer(self, name: str, volume: Volume, measures: Measures | None = None,
              cache: dict | None = None) -> list[Finding]:
        """Run one model on one decoded series; one :class:`Finding` per manifest finding. A
        series outside the model's training envelope (``measures``: the guard's view of it,
        measured here when not given) gives findings that are not assessable: their
        probability stands, and they are never positive. ``cache``: one dict per volume,
        passed to every model that reads it, so preprocessing they share is done once."""
        m = self.manifests[name]
        outside = assess(m.name, m.envelope, measures or measure_volume(volume), m.input.window)
        x = preprocess(volume.array, volume.spacing_zyx, m.input, volume.z_positions, cache)
        started = time.perf_counter()
        out = self.session(name).run(x)
        log.debug("model %s ran in %.1f ms", name, (time.perf_counter() - started) * 1e3)
        probs = np.asarray(out.get(m.probabilities), dtype=np.float64).reshape(-1)
        if probs.size != len(m.findings) or not np.all(np.isfinite(probs)):
            raise InferenceError(f"model {name} returned {probs.size} probabilities for "
                                 f"{len(m.findings)} findings, or non-finite values")
        slices = out.get(m.slice_scores) if m.slice_scores else None
        ref = ModelRef(name=m.name, version=m.version, sha256=m.sha256)
        findings = []
        for i, spec in enumerate(m.findings):
            p = min(1.0, max(0.0, spec.calibrate(float(probs[i]))))
            threshold = m.threshold(spec)
            key_slice = None
            if slices is not None:
                scores = np.asarray(slices, dtype=np.float64).reshape(len(m.findings), -1)[i]
                centre_z = body_centre(volume.array, m.input, cache)[0] if m.input.physical else None
                key_slice = to_source_slice(int(np.argmax(scores)), scores.size, volume.shape[0], m.input, centre_z,
                                            volume.spacing_zyx[0])
            findings.append(Finding(code=spec.code, label=spec.label, probability=round(p, 6),
                                    threshold=threshold, positive=outside is None and p >= threshold, model=ref,
                                    series_instance_uid=volume.series_instance_uid, key_slice=key_slice,
                                    assessable=outside is None, not_assessable_reason=outside))
        return findings
