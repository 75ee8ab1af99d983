"""`triage gateway` against real senders (dcmtk's storescu) and the real broker: what is
sent is on disk as it was received, and each complete study version is one study event."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pydicom
import pytest

from tests.gateway.harness import StoreSCP, dataset_bytes, real_study, storescu, study_events
from tests.helpers import need, ref
from triage.events import parse_study_event

pytestmark = pytest.mark.kafka

THREE_STUDIES = ("98892001/CT5N", "77654033/CR*", "77654033/CT2")


def sop_uids(files: list[Path]) -> set[str]:
    return {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}


def study_uid(path: Path) -> str:
    return pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID


def test_three_studies_at_once_give_three_events_and_files_as_sent(gateways, tmp_path):
    need("storescp")
    files = [f for name in THREE_STUDIES for f in real_study(name)]
    expected_studies = {study_uid(f) for f in files}
    assert len(expected_studies) == 3
    gw = gateways()
    sent = storescu(gw.port, files)
    assert sent.returncode == 0, sent.stderr
    events = study_events(gw.bootstrap, gw.topic, 3)
    assert sorted(e["study_instance_uid"] for e in events) == sorted(expected_studies)
    for e in events:
        study = parse_study_event(e)
        assert study.source.uri == (gw.store / study.study_instance_uid).resolve().as_uri()
    stored = gw.stored()
    assert set(stored) == sop_uids(files)
    # byte for byte what the sender put on the wire: dcmtk's own receiver got the same data sets
    peer = StoreSCP(tmp_path / "storescp").start()
    try:
        assert storescu(peer.port, files).returncode == 0
    finally:
        peer.stop()
    for f in peer.out.rglob("*"):
        if f.is_file():
            uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
            assert dataset_bytes(stored[uid]) == dataset_bytes(f)
    # the pixels are the source file's
    for f in files:
        src = pydicom.dcmread(f)
        got = pydicom.dcmread(stored[src.SOPInstanceUID])
        assert got.PixelData == src.PixelData
    text = gw.metrics()
    assert f'triage_gateway_instances_total{{outcome="stored",protocol="dimse"}} {float(len(files))}' in text
    assert "triage_gateway_studies_completed_total 3.0" in text
    # the log names studies by a hash only: no UID, name or ID from the headers
    log = gw.log_text()
    assert "complete" in log and "published" in log
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for value in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, str(ds.PatientName),
                      ds.PatientID):
            assert not value or value not in log


COMPRESSED = {"MR_small_RLE.dcm": "-xr", "MR_small_jp2klossless.dcm": "-xv", "MR_small_jpeg_ls_lossless.dcm": "-xt",
              "JPEG2000.dcm": "-xw"}  # file -> the storescu option that proposes its transfer syntax


@pytest.mark.parametrize("name", sorted(COMPRESSED))
def test_compressed_instances_are_stored_as_received(gateways, name):
    gw = gateways()
    sent = storescu(gw.port, [ref(name)], extra=[COMPRESSED[name]])
    assert sent.returncode == 0, sent.stderr
    src = pydicom.dcmread(ref(name))
    got = pydicom.dcmread(gw.stored()[src.SOPInstanceUID])
    assert got.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
    assert got.PixelData == src.PixelData
    [event] = study_events(gw.bootstrap, gw.topic, 1)
    assert event["study_instance_uid"] == src.StudyInstanceUID


def test_a_pause_longer_than_the_window_gives_a_second_version_with_every_instance(gateways):
    files = real_study("98892003/MR700")
    gw = gateways(window_s=1.0)
    first, second = files[:5], files[5:]
    assert storescu(gw.port, first).returncode == 0
    [v1] = study_events(gw.bootstrap, gw.topic, 1)
    assert storescu(gw.port, second).returncode == 0
    events = study_events(gw.bootstrap, gw.topic, 2)
    assert len(events) == 2
    v1, v2 = events
    assert v1["study_instance_uid"] == v2["study_instance_uid"]
    assert v2["received_at"] > v1["received_at"]
    folder = Path(parse_study_event(v2).source.uri.removeprefix("file://"))
    assert {p.stem for p in folder.glob("*/*.dcm")} == sop_uids(files)
    db = sqlite3.connect(gw.store / ".gateway" / "state.sqlite")
    assert db.execute("SELECT version, instances, state FROM studies ORDER BY version").fetchall() == [
        (1, 5, "published"), (2, len(second), "published")]


def test_slow_sender_across_the_window_is_one_study(gateways):
    files = real_study("77654033/CT2")
    gw = gateways(window_s=2.5)
    for f in files:  # one instance at a time, each well inside the window
        assert storescu(gw.port, [f]).returncode == 0
        time.sleep(0.8)
    events = study_events(gw.bootstrap, gw.topic, 1, timeout=30)
    time.sleep(3)
    assert len(study_events(gw.bootstrap, gw.topic, 2, timeout=2)) == 1
    assert events[0]["study_instance_uid"] == study_uid(files[0])


def test_a_repeated_instance_is_stored_once_and_counted_once(gateways):
    files = real_study("77654033/CR*")
    gw = gateways()
    assert storescu(gw.port, files + files[:1]).returncode == 0
    before = gw.stored()[pydicom.dcmread(files[0]).SOPInstanceUID].stat()
    [event] = study_events(gw.bootstrap, gw.topic, 1)
    assert storescu(gw.port, files[:1]).returncode == 0  # after publication too: nothing new, no new version
    time.sleep(2)
    assert len(study_events(gw.bootstrap, gw.topic, 2, timeout=2)) == 1
    after = gw.stored()[pydicom.dcmread(files[0]).SOPInstanceUID].stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert len(gw.stored()) == len(files)
    assert 'triage_gateway_instances_total{outcome="duplicate",protocol="dimse"} 2.0' in gw.metrics()


def test_refused_calling_ae_and_over_budget_instance_store_nothing(gateways):
    gw = gateways(extra=["--allow", "MODALITY1", "--max-instance-bytes", "3000"])
    refused = storescu(gw.port, [ref("CT_small.dcm")], calling="INTRUDER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr
    big = storescu(gw.port, [ref("CT_small.dcm")], calling="MODALITY1", extra=["-v"])  # 39 kB, budget 3000 B
    assert big.returncode != 0
    assert "Refused: OutOfResources" in big.stdout + big.stderr, big.stdout + big.stderr
    assert gw.stored() == {}
    ok = storescu(gw.port, real_study("77654033/CR1"), calling="MODALITY1")
    assert ok.returncode == 0 and len(gw.stored()) == 1
    text = gw.metrics()
    assert 'triage_gateway_associations_refused_total{reason="calling_ae"} 1.0' in text
    assert 'triage_gateway_refused_total{reason="instance_budget"} 1.0' in text
