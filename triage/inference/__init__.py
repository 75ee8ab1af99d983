"""Model manifests, the registry and the backends that run models."""
from triage.inference.manifest import Manifest, load_manifest
from triage.inference.registry import ModelRegistry, check_models

__all__ = ["Manifest", "ModelRegistry", "check_models", "load_manifest"]
