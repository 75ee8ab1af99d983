"""Per-model figures on the benchmark's 300-slice head CT: ONNX Runtime (what we serve) against
the same network in torch eval mode, and our whole study path against the MONAI-native path an
ML engineer would write (MONAI LoadImage + MONAI transforms + the torch network)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from benchmarks.measure import median_time, row


def _torch_model(folder: Path):
    """The registered torch weights of a model, or None (registered without them, or no torch)."""
    try:
        from pipelines.train import load_model
    except ImportError:
        return None
    weights = folder / "weights.pt"
    return load_model(weights)[0] if weights.exists() else None


def _monai_native(study: Path, model, spec):
    """Load, window, resize and run, the MONAI way; returns the study probability."""
    import torch
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Resize, ScaleIntensityRange

    lower, upper = spec.window
    shape_xyz = tuple(reversed(spec.shape))
    transforms = Compose([LoadImage(reader="PydicomReader", image_only=True), EnsureChannelFirst(),
                          ScaleIntensityRange(a_min=lower, a_max=upper, b_min=0.0, b_max=1.0, clip=True),
                          Resize(spatial_size=shape_xyz, mode="trilinear")])
    x = torch.as_tensor(transforms(str(study))).permute(0, 3, 2, 1)[None].float()  # [1, 1, z, y, x]
    with torch.inference_mode():
        prob, _ = model(x)
    return float(prob.reshape(-1)[0])


def bench_models(study: Path, models_dir: Path, repeats: int, log) -> list[dict]:
    import torch

    from triage.dicom import decode_series, scan_study
    from triage.inference.registry import ModelRegistry
    from triage.preprocess import preprocess

    registry = ModelRegistry(models_dir)
    if not registry.manifests:
        log("models: none registered, no inference figures")
        return []
    torch.set_num_threads(2)
    (series,) = scan_study(study)
    volume = decode_series(series)
    rows = []
    for name, manifest in sorted(registry.manifests.items()):
        session = registry.session(name)
        x = preprocess(volume.array, volume.spacing_zyx, manifest.input)
        t_pre = median_time(lambda: preprocess(volume.array, volume.spacing_zyx, manifest.input), repeats)
        t_ort = median_time(lambda: session.run(x), repeats)
        model = _torch_model(manifest.folder)
        t_torch = None
        if model is not None:
            def eager():
                with torch.inference_mode():
                    model(torch.from_numpy(x))
            t_torch = median_time(eager, repeats)
        rows.append(row(f"infer_ort_vs_torch_{name}", t_ort * 1e3, None if t_torch is None else t_torch * 1e3, "ms",
                        note=f"input {'x'.join(map(str, manifest.input.shape))}; peer: the same network, torch eval"))
        rows.append(row(f"preprocess_and_infer_ms_{name}", (t_pre + t_ort) * 1e3, None, "ms",
                        note=f"{volume.shape[0]}-slice study: resample + window + ONNX Runtime (target ≤ 1000)"))
        log(f"  {name}: preprocess {t_pre * 1e3:.0f} ms, ONNX Runtime {t_ort * 1e3:.0f} ms, torch "
            f"{'-' if t_torch is None else f'{t_torch * 1e3:.0f} ms'}")
    rows += bench_shared_preprocessing(volume, registry, repeats, log)
    return rows


def bench_study(study: Path, models_dir: Path, repeats: int, log, suffix: str = "") -> list[dict]:
    """ich alone, as the peer runs it (the shipped rules also send a head CT to skull_fracture):
    our whole study path against the MONAI-native path, on ``study``; the row's name ends in
    ``suffix``."""
    from triage.dicom import scan_study
    from triage.events import now_iso, parse_study_event
    from triage.inference.registry import ModelRegistry
    from triage.pipeline import Pipeline
    from triage.settings import Settings

    registry = ModelRegistry(models_dir)
    if "ich" not in registry.manifests or (model := _torch_model(registry.manifests["ich"].folder)) is None:
        return []
    rules = Path(tempfile.mkdtemp(prefix="triage-bench-")) / "ich-only.yaml"
    rules.write_text(yaml.safe_dump({"rules": [{"name": "head-ct", "match": {"modality": "CT"}, "models": ["ich"]}]}))
    pipeline = Pipeline.from_settings(Settings(models_dir=models_dir, rules=rules, processes=1))
    event = parse_study_event({"schema": "triage.study/v1", "study_instance_uid": "2.25.1",
                               "source": {"uri": study.as_uri()}, "received_at": now_iso()})

    def ours():
        outcome = pipeline.process(event)
        assert outcome.error is None, outcome.error

    n = scan_study(study)[0].n_slices
    t_ours = median_time(ours, repeats)
    t_native = median_time(lambda: _monai_native(study, model, registry.manifests["ich"].input), repeats)
    log(f"  study ({n} slices): ours {t_ours * 1e3:.0f} ms, MONAI-native {t_native * 1e3:.0f} ms")
    return [row(f"study_vs_monai_native{suffix}", t_ours * 1e3, t_native * 1e3, "ms",
                note=f"ich alone on the {n}-slice study: our pipeline (scan, decode, route, guard, infer, score) "
                     "vs MONAI LoadImage + transforms + torch network (target ≥ 5)")]


# The models a contrast chest CT angiogram is routed to (rules.yaml): one series, three inputs.
CHEST_CTA = ("aortic_dissection", "pe", "pneumothorax")


def bench_shared_preprocessing(volume, registry, repeats: int, log) -> list[dict]:
    """Preprocessing for several models on one series, as the pipeline does it (one cache per
    series), against each model alone with SimpleITK's linear resample, the path before."""
    from benchmarks.peers import simpleitk_resample
    from triage.preprocess import preprocess, resample

    rows = []
    if "ich" in registry.manifests:
        shape = registry.manifests["ich"].input.shape
        ours = median_time(lambda: resample(volume.array, volume.spacing_zyx, shape), repeats)
        peer = median_time(lambda: simpleitk_resample(volume.array, shape), repeats)
        rows.append(row("resample_vs_simpleitk", ours * 1e3, peer * 1e3, "ms",
                        note=f"linear, {'x'.join(map(str, volume.shape))} to {'x'.join(map(str, shape))} (ich's grid); "
                             "peer: SimpleITK Resample, the same values to float rounding"))
        log(f"  resample: ours {ours * 1e3:.0f} ms, SimpleITK {peer * 1e3:.0f} ms")
    specs = [registry.manifests[n].input for n in CHEST_CTA if n in registry.manifests]
    if len(specs) < 2:
        return rows

    def shared():
        cache: dict = {}
        for spec in specs:
            preprocess(volume.array, volume.spacing_zyx, spec, cache=cache)

    def before():
        for spec in specs:
            if spec.antialias:
                preprocess(volume.array, volume.spacing_zyx, spec)
            else:
                simpleitk_resample(volume.array, spec.shape)

    ours, peer = median_time(shared, repeats), median_time(before, repeats)
    rows.append(row("preprocess_chest_cta_models", ours * 1e3, peer * 1e3, "ms",
                    note=f"{' + '.join(CHEST_CTA[:len(specs)])} on one {volume.shape[0]}-slice series, one shared cache; "
                         "peer: each alone, linear inputs through SimpleITK (the path before)"))
    log(f"  chest CTA preprocessing ({len(specs)} models): shared {ours * 1e3:.0f} ms, before {peer * 1e3:.0f} ms")
    return rows


def bench_shadow(study: Path, models_dir: Path, work: Path, repeats: int, log) -> list[dict]:
    """The same network twice on one study, live and in shadow: the event reports the shadow
    model's time in ``timings_ms.shadow``, apart from the live models' ``infer``."""
    import shutil

    import yaml

    from triage.events import now_iso, parse_study_event
    from triage.pipeline import Pipeline
    from triage.settings import Settings

    if not (models_dir / "ich" / "manifest.yaml").exists():
        return []
    models = work / "shadow-models"
    shutil.copytree(models_dir / "ich", models / "ich", ignore=shutil.ignore_patterns("weights.pt"))
    shutil.copytree(models / "ich", models / "ich_shadow")
    doc = yaml.safe_load((models / "ich" / "manifest.yaml").read_text())
    (models / "ich" / "manifest.yaml").write_text(yaml.safe_dump({**doc, "mode": "live"}))  # shipped in shadow
    (models / "ich_shadow" / "manifest.yaml").write_text(yaml.safe_dump({**doc, "name": "ich_shadow", "mode": "shadow"}))
    rules = work / "shadow-rules.yaml"
    rules.write_text(yaml.safe_dump({"rules": [{"name": "ct", "match": {"modality": "CT"},
                                                "models": ["ich", "ich_shadow"]}]}))
    pipeline = Pipeline.from_settings(Settings(models_dir=models, rules=rules, processes=1))
    event = parse_study_event({"schema": "triage.study/v1", "study_instance_uid": "2.25.2",
                               "source": {"uri": study.as_uri()}, "received_at": now_iso()})
    timings = [pipeline.process(event).event.timings_ms for _ in range(max(1, repeats))]
    live = sorted(t.infer for t in timings)[len(timings) // 2]
    shadow = sorted(t.shadow or 0.0 for t in timings)[len(timings) // 2]
    log(f"  shadow: live infer {live:.0f} ms, shadow {shadow:.0f} ms (reported apart)")
    return [row("shadow_time_reported_separately", live, shadow, "ms",
                note="ich live and the same network in shadow on one study: timings_ms.infer (live only) "
                     "vs timings_ms.shadow, each in its own field; below 1 because the shadow copy reuses "
                     "the live model's resample (one per series and input)")]
