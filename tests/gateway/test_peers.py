"""The gateway with real peers besides storescu: Orthanc as the sending PACS feeding the worker
pool, dicomweb-client over STOW-RS, and dcmtk and an HTTPS client over TLS."""
from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest

from tests.gateway.harness import real_study, storescu, study_events
from tests.helpers import need, ref, write_series

pytestmark = pytest.mark.kafka


def test_orthanc_to_gateway_to_pool_gives_a_priority_event(orthanc, gateways, pool, tmp_path):
    files = write_series(tmp_path / "ct4", 4)
    uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    gw = gateways(window_s=1.0, topic=pool.studies)
    orthanc.send_to("TRIAGE", gw.port, orthanc.upload(files))
    assert len(gw.stored()) == 4
    pool.start_host(processes=1)
    events = pool.wait_for({uid}, timeout=120)
    [event] = events[uid]
    assert event["status"] == "scored"
    assert [f["code"] for f in event["findings"]] == ["brightspot"]
    # what the README shows a user to watch the feed with
    shown = subprocess.run([sys.executable, "-m", "triage.cli", "events", "--bootstrap", pool.broker.bootstrap,
                            "--topic", pool.priority, "--from-beginning", "--count", "1", "--idle-timeout", "30"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout.splitlines()[0])["event_id"] == event["event_id"]


def _stow_client(gw, **kwargs):
    from dicomweb_client.api import DICOMwebClient

    scheme = "https" if kwargs else "http"
    return DICOMwebClient(url=f"{scheme}://127.0.0.1:{gw.http_port}", **kwargs)


def test_stow_rs_with_dicomweb_client_stores_and_publishes(gateways):
    files = real_study("77654033/CT2")
    gw = gateways(window_s=1.0)
    answer = _stow_client(gw).store_instances([pydicom.dcmread(f) for f in files])
    assert len(answer.ReferencedSOPSequence) == len(files)
    assert set(gw.stored()) == {pydicom.dcmread(f).SOPInstanceUID for f in files}
    [event] = study_events(gw.bootstrap, gw.topic, 1)
    assert event["study_instance_uid"] == pydicom.dcmread(files[0]).StudyInstanceUID
    assert 'triage_gateway_instances_total{outcome="stored",protocol="stow"} 4.0' in gw.metrics()


def _post(url: str, body: bytes, ctype: str, context=None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _multipart(parts: list[bytes], boundary: str = "b0und") -> tuple[bytes, str]:
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_stow_rs_refuses_what_is_not_dicom_and_keeps_the_rest(gateways):
    gw = gateways(window_s=1.0, extra=["--max-instance-bytes", "20000"])
    url = f"http://127.0.0.1:{gw.http_port}/studies"
    good = real_study("77654033/CR1")[0].read_bytes()
    body, ctype = _multipart([good, b"not a dicom file at all", ref("CT_small.dcm").read_bytes()])
    status, raw = _post(url, body, ctype)
    assert status == 202  # some stored, some refused
    answer = json.loads(raw)
    assert len(answer["00081199"]["Value"]) == 1
    assert sorted(v["00081197"]["Value"][0] for v in answer["00081198"]["Value"]) == [0xA700, 0xC000]
    assert len(gw.stored()) == 1
    assert _post(url, b"{}", "application/json")[0] == 415
    assert _post(url, *_multipart([b"garbage"]))[0] == 409  # nothing stored
    body, ctype = _multipart([good])
    assert _post(url, body[:-20], ctype)[0] == 400  # cut off before its closing delimiter
    assert len(gw.stored()) == 1


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def pki(tmp_path) -> dict[str, Path]:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
    need("openssl")
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=triage test CA",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=triage test {name}",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
                 "-CAcreateserial", "-days", "1", "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.crt"))
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}


def test_tls_only_gateway_takes_tls_and_refuses_plain(gateways, pki):
    gw = gateways(window_s=1.0, extra=["--tls-cert", str(pki["server_crt"]), "--tls-key", str(pki["server_key"]),
                                       "--tls-ca", str(pki["ca_crt"])])
    files = real_study("77654033/CR*")
    tls = ["+tls", str(pki["client_key"]), str(pki["client_crt"]), "+cf", str(pki["ca_crt"])]
    sent = storescu(gw.port, files, extra=tls)
    assert sent.returncode == 0, sent.stderr
    assert len(gw.stored()) == len(files)
    plain = storescu(gw.port, [ref("CT_small.dcm")])
    assert plain.returncode != 0
    no_client_cert = storescu(gw.port, [ref("CT_small.dcm")], extra=["+tla", "+cf", str(pki["ca_crt"])])
    assert no_client_cert.returncode != 0
    assert len(gw.stored()) == len(files)
    [event] = study_events(gw.bootstrap, gw.topic, 1)
    # HTTPS for STOW-RS: the same certificates
    context = ssl.create_default_context(cafile=str(pki["ca_crt"]))
    context.load_cert_chain(str(pki["client_crt"]), str(pki["client_key"]))
    status, _ = _post(f"https://127.0.0.1:{gw.http_port}/studies", *_multipart([ref("CT_small.dcm").read_bytes()]),
                      context=context)
    assert status == 200
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP to the TLS port: dropped
        _post(f"http://127.0.0.1:{gw.http_port}/studies", *_multipart([ref("CT_small.dcm").read_bytes()]))
