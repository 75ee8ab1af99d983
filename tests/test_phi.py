"""No PHI in events, logs or metrics: run real files that carry patient names, grep every output."""
from __future__ import annotations

import re
import subprocess
import sys
import urllib.request

import pydicom

from tests.helpers import ROOT, ref
from triage.demo import SAMPLES


def _phi_values() -> set[str]:
    values = set()
    for sample in SAMPLES:
        for name in sample.files:
            ds = pydicom.dcmread(ref(name), stop_before_pixels=True, force=True)
            for keyword in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs",
                            "InstitutionName", "ReferringPhysicianName"):
                value = str(ds.get(keyword, "") or "").strip()
                # pure digits would also match inside UIDs, which events must carry
                if len(value) >= 4 and not value.isdigit() and value not in {"Anonymized", "NONE"}:
                    values.add(value)
                    values.update(p for p in re.split(r"\^", value) if len(p) >= 4 and not p.isdigit())
    return values


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_outputs_carry_no_patient_identifiers(tmp_path):
    phi = _phi_values()
    assert "CompressedSamples^CT1" in phi and "CQ500-CT-310" in phi  # the test would catch them
    port = _free_port()
    # the demo as a user runs it, then its own /metrics, scraped before the process ends
    proc = subprocess.Popen([sys.executable, "-c", f"""
import sys, urllib.request
from triage.cli import main
rc = main(["-v", "demo", "--out", r"{tmp_path / 'out'}", "--metrics-port", "{port}", "--no-progress"])
print("=== metrics ===")
print(urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
sys.exit(rc)
"""], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    stdout, exposition = stdout.split("=== metrics ===")
    assert "triage_studies_total" in exposition
    events = (tmp_path / "out" / "priority-events.jsonl").read_text()
    assert events.count("\n") == len(SAMPLES)
    for name, text in (("stdout", stdout), ("stderr/logs", stderr), ("events", events), ("metrics", exposition)):
        for value in phi:
            assert value not in text, f"{value!r} leaked into {name}"


def test_metrics_endpoint_serves_pipeline_metrics_without_phi(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", f"""
import sys, time, urllib.request
from pathlib import Path
from triage.demo import run_demo
from triage.settings import Settings
run_demo(Settings(metrics_port={port}, processes=1), Path(r'{tmp_path / "out"}'), progress=False)
print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=10).read().decode())
"""], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr
    assert 'triage_studies_total{status="no_applicable_model"}' in stdout
    assert 'triage_failures_total{reason="empty_study"} 1.0' in stdout
    assert 'triage_stage_seconds_bucket{le="0.01",stage="decode"}' in stdout
    for value in _phi_values():
        assert value not in stdout
