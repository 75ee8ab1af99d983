"""Test helpers: real reference DICOM files, series built from them, and tiny test-time models.

Nothing here is a model that claims to detect anything: the ONNX graphs built below
compute a plain statistic of the input (its maximum) so tests can predict their output.
"""
from __future__ import annotations

import copy
import hashlib
import os
import shutil
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from pydicom.uid import generate_uid

from triage.demo import find_test_file

ROOT = Path(__file__).resolve().parents[1]  # the checkout


def ref(name: str) -> Path:
    path = find_test_file(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed (pip install pydicom-data)")
    return path


def write_series(folder: Path, n: int = 6, *, spacing: float = 2.5, names=None, source: str = "CT_small.dcm",
                 mutate=None) -> list[Path]:
    """Write ``n`` slices of a real CT file as one series, stepping ImagePositionPatient.

    Each slice's pixels are offset by its index (so slice order is visible in the volume).
    ``names`` gives file names (default: slice order); ``mutate(i, ds)`` may alter a slice.
    """
    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(ref(source))
    series_uid = generate_uid(entropy_srcs=[str(folder), source])
    normal = np.cross(np.array(base.ImageOrientationPatient[:3], float), np.array(base.ImageOrientationPatient[3:], float))
    origin = np.array(base.ImagePositionPatient, float)
    paths = []
    for i in range(n):
        ds = copy.deepcopy(base)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = n - i  # deliberately opposite to the spatial order
        ds.ImagePositionPatient = [float(v) for v in origin + normal * spacing * i]
        ds.SliceThickness = spacing
        arr = ds.pixel_array.astype(np.int16) + np.int16(i)
        ds.PixelData = arr.tobytes()
        if mutate:
            mutate(i, ds)
        name = names[i] if names else f"slice{i:03d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        paths.append(folder / name)
    return paths


def build_max_model(path: Path, *, scale: float = 0.05, centre: float = 0.5) -> None:
    """An ONNX graph: prob = sigmoid((max(x) - centre) / scale); slice score = max per slice."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, "D", "H", "W"])
    prob = helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1])
    slices = helper.make_tensor_value_info("slices", TensorProto.FLOAT, ["N", 1, "D"])
    consts = [helper.make_tensor("centre", TensorProto.FLOAT, [], [centre]),
              helper.make_tensor("scale", TensorProto.FLOAT, [], [scale])]
    nodes = [
        helper.make_node("ReduceMax", ["input"], ["per_slice"], axes=[3, 4], keepdims=0),  # N,1,D
        helper.make_node("Identity", ["per_slice"], ["slices"]),
        helper.make_node("ReduceMax", ["per_slice"], ["m"], axes=[2], keepdims=0),  # N,1
        helper.make_node("Sub", ["m", "centre"], ["d"]),
        helper.make_node("Div", ["d", "scale"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["prob"]),
    ]
    graph = helper.make_graph(nodes, "max_statistic", [x], [prob, slices], initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# a training envelope wide enough for any test volume (the guard has its own tests)
OPEN_ENVELOPE = {"n_studies": 1, "field_mm": {a: [0.0, 1e5] for a in "zyx"},
                 "spacing_mm": {a: [0.0, 100.0] for a in "zyx"},
                 "intensity_percentiles": {p: [-1e5, 1e5] for p in ("p25", "p50", "p75")},
                 "saturated_fraction": [0.0, 1.0]}


def make_model_dir(root: Path, name: str = "brightspot", *, modality=("CT",), severity="critical",
                   threshold: float = 0.5, window=(0, 100), shape=(4, 32, 32), fmt="onnx",
                   applies_to: dict | None = None, artifact_builder=build_max_model,
                   envelope: dict | None = OPEN_ENVELOPE, mode: str | None = None) -> Path:
    """A model folder with a manifest, as ``pipelines/register`` will write them; its training
    envelope takes any test volume unless ``envelope`` says otherwise (None: no envelope)."""
    folder = root / name
    artifact = "model.onnx" if fmt == "onnx" else "model.ts"
    artifact_builder(folder / artifact)
    manifest = {
        "name": name, "version": "0.0.1-test",
        "artifact": {"file": artifact, "format": fmt, "sha256": sha256(folder / artifact)},
        "applies_to": applies_to if applies_to is not None else {"modality": list(modality)},
        "input": {"name": "input", "shape": list(shape), "window": {"lower": window[0], "upper": window[1]},
                  "normalise": "window"},
        "outputs": {"probabilities": "prob", "slice_scores": "slices"},
        "findings": [{"code": name, "label": f"test finding {name}", "severity": severity,
                      "operating_points": {"default": threshold, "high_sensitivity": threshold / 2}}],
        "operating_point": "default",
    }
    if envelope is not None:
        manifest["envelope"] = envelope
    if mode is not None:
        manifest["mode"] = mode
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    (folder / "card.md").write_text("Test-time model computing the input maximum. Detects nothing.\n")
    return folder


def promoted_models(dest: Path, keep_in_shadow: tuple[str, ...] = ("pe",)) -> Path:
    """A copy of the committed models with each promoted to live (as an operator would, by editing
    its manifest), but those named: for tests of what a live finding does to a priority. The
    committed models run in shadow until they meet their targets beyond our own generator."""
    from pipelines.register import update_manifest

    shutil.copytree(ROOT / "models", dest)
    for manifest in sorted(dest.glob("*/manifest.yaml")):
        if manifest.parent.name not in keep_in_shadow:
            update_manifest(manifest.parent, mode="live")
    return dest


def rules_file(path: Path, rules: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"rules": rules}))
    return path


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def need(*tools: str) -> None:
    """Skip (fail under CI=true) when a Debian tool is missing; .ci/run installs them all
    (dcmtk, orthanc, orthanc-dicomweb, dicom3tools, prometheus, openssl)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        why = f"needs {', '.join(missing)} (Debian packages; .ci/run installs them)"
        if in_ci():
            pytest.fail(why)
        pytest.skip(why)


def _loopback_peer_pid(local_port: int) -> int | None:
    """The PID of the process holding the loopback TCP socket bound to ``local_port``."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == local_port:
                inode = cols[9]
    if inode is None:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == f"socket:[{inode}]":
                    return int(proc.name)
        except OSError:
            continue
    return None


class StudyServer:
    """DICOMweb WADO-RS over loopback serving study folders, with an optional delay per study:
    GET /wado/<delay_s>/studies/<name> answers after delay_s seconds (a slow PACS).

    Two names are hostile peers rather than studies: ``hang`` accepts the request and never
    answers (until the server closes, at most two minutes), and ``kill-client`` SIGKILLs the
    triage worker process that asked, as a native decoder crash or the OOM killer would."""

    def __init__(self, root: Path):
        self.root = root
        server_root = root
        closing = self._closing = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                parts = self.path.strip("/").split("/")
                if len(parts) != 4 or parts[0] != "wado" or parts[2] != "studies":
                    self.send_response(404)
                    self.end_headers()
                    return
                time.sleep(float(parts[1]))
                if parts[3] == "hang":
                    closing.wait(120)
                    return
                if parts[3] == "kill-client":
                    pid = _loopback_peer_pid(self.client_address[1])
                    # only ever a triage worker process that this test suite started
                    if pid and b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(pid, signal.SIGKILL)
                    return
                folder = server_root / parts[3]
                if parts[3] == "busy" or not folder.is_dir():
                    self.send_response(503 if parts[3] == "busy" else 404)
                    self.end_headers()
                    return
                boundary = "b0undary"
                body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f.read_bytes()
                                + b"\r\n" for f in sorted(folder.iterdir()))
                body += f"--{boundary}--\r\n".encode()
                self.send_response(200)
                self.send_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={boundary}')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def uri(self, name: str, delay_s: float = 0.0) -> str:
        return f"dicomweb+http://127.0.0.1:{self.server.server_address[1]}/wado/{delay_s:g}/studies/{name}"

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines ``dciodvfy`` (dicom3tools) reports for one file; skips the test where the
    tool is missing, fails it under CI=true (.ci/run installs it)."""
    import shutil
    import subprocess

    import pytest

    tool = shutil.which("dciodvfy")
    if tool is None:
        if in_ci():
            pytest.fail("dciodvfy (Debian package dicom3tools) is not installed; .ci/run installs it")
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    out = subprocess.run([tool, str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def read_films(dataset: Path, rows: list[dict]):
    """Each written radiograph of ``rows`` as the runtime decodes it: yields the row, its stored
    (BitsStored, PhotometricInterpretation), and the median of the mediastinum and of the lungs
    in a band across the upper chest (display scale, bright = dense)."""
    import numpy as np

    from triage.dicom import decode_series, scan_study

    for row in rows:
        (series,) = scan_study(dataset / "studies" / row["study_id"])[:1]
        header = series.headers[0]
        vol = decode_series(series)
        assert vol.modality == "DX" and vol.array.shape[0] == 1
        r, c = vol.array.shape[1:]
        band = vol.array[0, int(0.35 * r):int(0.45 * r)]
        mediastinum = float(np.median(band[:, int(0.47 * c):int(0.53 * c)]))
        lungs = float(np.median(np.concatenate([band[:, int(0.2 * c):int(0.3 * c)], band[:, int(0.7 * c):int(0.8 * c)]],
                                               axis=1)))
        yield row, (int(header.BitsStored), str(header.PhotometricInterpretation)), mediastinum, lungs
