"""A real Prometheus (Debian package ``prometheus``) on a free loopback port, scraping the
targets a test names every second, with triage's alert rules loaded."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.bus.kafka_harness import free_port
from tests.helpers import ROOT

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"


@dataclass
class Prometheus:
    home: Path
    targets: dict[str, list[str]]  # job name -> host:port
    port: int = 0
    proc: subprocess.Popen | None = None

    def start(self) -> "Prometheus":
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copy(ALERTS, self.home / "alerts.yml")
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": ["alerts.yml"],
                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": hosts}]}
                                     for job, hosts in self.targets.items()]}
        (self.home / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.home / 'prometheus.yml'}", f"--storage.tsdb.path={self.home / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=open(self.home / "prometheus.log", "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2).status == 200:
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError(f"prometheus exited: {(self.home / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.3)
        raise AssertionError("prometheus not ready after 60 s")

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it returns nothing."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, expr: str, want, timeout: float = 60.0) -> float:
        """Until ``want(value)`` holds; returns the value."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.value(expr)
            if v is not None and not math.isnan(v) and want(v):
                return v
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr} is {v} after {timeout:g} s")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
