"""Real peers for the gateway tests: `triage gateway` as its own process (so it can be killed
with SIGKILL), dcmtk's storescu/echoscu/storescp as senders and reference receiver, and
Orthanc with its DICOMweb plugin as a sending PACS and a WADO-RS server."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


from tests.bus.kafka_harness import create_topics, free_port, read_all
from tests.helpers import ROOT

DICOMDIR_TESTS = "dicomdirtests"  # real multi-instance studies shipped with pydicom


def real_study(name: str) -> list[Path]:
    """The files of one real study from pydicom's test data, e.g. ``77654033/CR*``."""
    import pydicom.data

    root = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent / DICOMDIR_TESTS
    files = sorted(p for p in root.glob(f"{name}/*") if p.is_file())
    assert files, name
    return files


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before port {port} opened")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


@dataclass
class GatewayProc:
    bootstrap: str
    store: Path
    topic: str
    window_s: float = 1.0
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)  # e.g. a secured broker's TRIAGE_KAFKA_* settings
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def log(self) -> Path:
        return self.store.parent / f"gateway-{self.store.name}.log"

    def start(self) -> "GatewayProc":
        cmd = [sys.executable, "-m", "triage.cli", "gateway", "--bootstrap", self.bootstrap, "--store",
               str(self.store), "--port", str(self.port), "--http-port", str(self.http_port), "--window-s",
               str(self.window_s), "--topic", self.topic, "--metrics-port", str(self.metrics_port), *self.extra]
        out = open(self.log, "a")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        self.starts += 1
        wait_port(self.port, proc=self.proc)
        wait_port(self.http_port, proc=self.proc)
        return self

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(10)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stored(self) -> dict[str, Path]:
        """SOP Instance UID -> file, for every instance in the store."""
        return {p.stem: p for p in self.store.glob("*/*/*.dcm")}


def storescu(port: int, files: list[Path], *, calling: str = "SENDER", called: str = "TRIAGE",
             extra: list[str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-aet", calling, "-aec", called, *(extra or []), "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=timeout)


def study_events(bootstrap: str, topic: str, count: int, timeout: float = 60.0) -> list[dict]:
    """The study events on ``topic``, once there are ``count`` of them (or time is up)."""
    records = read_all(bootstrap, topic, until=lambda rs: len(rs) >= count, timeout=timeout)
    return [json.loads(r.value) for r in records]


def new_topic(bootstrap: str, name: str) -> str:
    create_topics(bootstrap, [name], partitions=2)
    return name


def dataset_bytes(path: Path) -> bytes:
    """A Part 10 file's data set as encoded, after the preamble and file meta."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with open(path, "rb") as f:
        read_preamble(f, False)
        _read_file_meta_info(f)
        start = f.tell()
    return path.read_bytes()[start:]


@dataclass
class StoreSCP:
    """dcmtk's own receiver: what a C-STORE really carried, for comparison, and the peer of
    the throughput benchmark."""

    out: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def start(self) -> "StoreSCP":
        self.out.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(["storescp", "-aet", "TRIAGE", "-od", str(self.out), "-uf", "+B", "-dhl",
                                      str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     env={**os.environ, "TCP_NODELAY": "1"})  # dcmtk: Nagle off only if asked
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class Orthanc:
    """Orthanc on free loopback ports, with the DICOMweb plugin, and triage as a modality."""

    home: Path
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> "Orthanc":
        self.home.mkdir(parents=True, exist_ok=True)
        plugin = next((p for p in ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
                                   "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so") if os.path.exists(p)), None)
        config = {"Name": "triage-tests", "StorageDirectory": str(self.home / "db"),
                  "IndexDirectory": str(self.home / "db"), "HttpPort": self.http_port,
                  "DicomPort": self.dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": False, "HttpServerEnabled": True,
                  "Plugins": [plugin] if plugin else [],
                  "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
        (self.home / "orthanc.json").write_text(json.dumps(config))
        self.proc = subprocess.Popen(["Orthanc", str(self.home / "orthanc.json")],
                                     stdout=open(self.home / "orthanc.log", "w"), stderr=subprocess.STDOUT)
        wait_port(self.http_port, proc=self.proc)
        if plugin is None or self.rest("GET", "/plugins/dicom-web").get("ID") != "dicom-web":
            raise AssertionError("Orthanc started without its DICOMweb plugin")
        return self

    def rest(self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json"):
        request = urllib.request.Request(self.url + path, data=body, method=method, headers={"Content-Type": ctype})
        with urllib.request.urlopen(request, timeout=60) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def send_to(self, ae_title: str, port: int, study_ids: set[str]) -> None:
        """Ask Orthanc, over its REST API, to C-STORE studies to a modality on loopback."""
        self.rest("PUT", "/modalities/triage", json.dumps({"AET": ae_title, "Host": "127.0.0.1", "Port": port}).encode())
        self.rest("POST", "/modalities/triage/store",
                  json.dumps({"Resources": sorted(study_ids), "Synchronous": True}).encode())

    def wado_uri(self, study_uid: str) -> str:
        return f"dicomweb+http://127.0.0.1:{self.http_port}/dicom-web/studies/{study_uid}"

    def upload(self, files: list[Path]) -> set[str]:
        """Orthanc's study IDs of the uploaded files."""
        return {self.rest("POST", "/instances", f.read_bytes(), "application/dicom")["ParentStudy"] for f in files}

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
