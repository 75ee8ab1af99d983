"""The team's hostile-input corpus, made at test time from real reference files: every class of
broken or hostile study folder a hospital's systems send, each run through ``triage score`` as
a user runs it. Each case asserts the status, exit code, error kind and the file named, at
most 3 lines on stderr and no traceback, and that the patient identifiers planted in the tags
a sender could misuse (Modality, BodyPartExamined, SeriesDescription, NumberOfFrames,
SliceThickness, the UIDs) appear nowhere in what triage printed."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from tests.helpers import ROOT, make_model_dir, ref, rules_file, write_series

NAME, PID, BIRTH = "Quimbly^Zyxwert", "PID88X4213", "19610401"
PHI = (NAME, "Quimbly", "Zyxwert", PID, BIRTH)


def _plant(ds) -> None:
    """The patient's own identifiers, where they belong and in one tag they do not."""
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = NAME, PID, BIRTH
    ds.SeriesDescription = f"HEAD {PID} {BIRTH}"
    ds.BodyPartExamined = "HEAD"


def _series(folder: Path, n: int = 6, mutate=None, **kw) -> list[Path]:
    def both(i, ds):
        _plant(ds)
        if mutate:
            mutate(i, ds)
    return write_series(folder, n, mutate=both, **kw)


def _set_raw(ds, keyword: str, value: str) -> None:
    """Put text into a numeric-string tag as is (pydicom would refuse it on assignment)."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    vr = pydicom.datadict.dictionary_VR(tag)
    ds[tag] = pydicom.dataelem.RawDataElement(pydicom.tag.Tag(tag), vr, len(value), value.encode(), 0, False, True)


# --- the corpus: each builder makes one study folder ---------------------------------------
def many_frames(d):
    _series(d, 1, mutate=lambda i, ds: setattr(ds, "NumberOfFrames", 999_999_999))


def deflate_bomb(d):
    _series(d, 2)
    ds = pydicom.dcmread(d / "slice001.dcm")
    ds.add_new(0x00291010, "OB", b"\x00" * (4 << 20))  # a private element of 4 MiB zeros
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(d / "slice001.dcm")  # pydicom deflates it: about 4 KiB on disk


def deep_nesting(d):
    d.mkdir(parents=True)
    src = ref("CT_small.dcm").read_bytes()
    meta_end = 144 + int.from_bytes(src[140:144], "little")
    depth = 20_000
    open_seq = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    close_seq = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    (d / "deep.dcm").write_bytes(src[:meta_end] + open_seq * depth + close_seq * depth)


def fifo_beside(d):
    _series(d, 6)
    os.mkfifo(d / "pipe.dcm")


def link_outside(d):
    _series(d, 6)
    (d / "elsewhere.dcm").symlink_to("/etc/passwd")


def rgb_ct(d):
    def rgb(i, ds):
        arr = np.repeat(ds.pixel_array.astype(np.uint16)[..., None], 3, axis=2)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.PixelRepresentation = 0
        ds.PixelData = arr.tobytes()
    _series(d, 6, mutate=rgb)


def _slope(value):
    def build(d):
        _series(d, 6, mutate=lambda i, ds: _set_raw(ds, "RescaleSlope", value) if i == 3 else None)
    return build


def nan_position(d):
    _series(d, 6, mutate=lambda i, ds: _set_raw(ds, "ImagePositionPatient", "0\\NaN\\1") if i == 2 else None)


def _spacing(value):
    def change(i, ds):
        if value is None:
            del ds.PixelSpacing
        elif i == 4 or value != "differs":
            ds.PixelSpacing = [0.4, 0.4] if value == "differs" else value
    return lambda d: _series(d, 6, mutate=change)


def bits_stored(d):
    _series(d, 6, mutate=lambda i, ds: setattr(ds, "BitsStored", 20) if i == 1 else None)


def claims_4gb(d):
    _series(d, 6)
    path = d / "slice002.dcm"
    data = bytearray(path.read_bytes())
    at = data.rfind(b"\xe0\x7f\x10\x00OW")
    data[at + 8:at + 12] = (0xFFFFFFF0).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def two_studies(d):
    _series(d / "a", 6)
    _series(d / "b", 6, mutate=lambda i, ds: setattr(ds, "StudyInstanceUID", generate_uid()), source="CT_small.dcm")


def cut_to_a_third_unrouted(d):
    for p in _series(d, 4, mutate=lambda i, ds: setattr(ds, "Modality", "PT")):
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])


def thickness_unreadable(d):
    _series(d, 6, mutate=lambda i, ds: _set_raw(ds, "SliceThickness", f"{PID}"))


def dicm_garbage_beside(d):
    _series(d, 6)
    (d / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + os.urandom(300))


def readme_and_thumbnail(d):
    _series(d, 6)
    (d / "README.txt").write_text("sent by the PACS")
    (d / "thumb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)


def one_bad_series_one_good(d):
    _series(d / "good", 6)
    _series(d / "bad", 6, mutate=lambda i, ds: _set_raw(ds, "RescaleSlope", "0") if i == 2 else None,
            source="CT_small.dcm", names=[f"b{i}.dcm" for i in range(6)])


def duplicate_file(d):
    _series(d, 6)
    shutil.copy(d / "slice003.dcm", d / "slice003-again.dcm")


def garbage_jpeg2000(d):
    d.mkdir(parents=True)
    ds = pydicom.dcmread(ref("693_J2KI.dcm"))
    _plant(ds)
    ds.save_as(d / "j2k.dcm")
    data = bytearray((d / "j2k.dcm").read_bytes())
    mid = len(data) - len(data) // 3
    data[mid:mid + 2000] = os.urandom(2000)
    (d / "j2k.dcm").write_bytes(bytes(data))


def hostile_name(d):
    _series(d, 6)
    (d / "evil\n\x1b[2Jname.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 64)


def modality_holds_the_id(d):
    _series(d, 2, mutate=lambda i, ds: setattr(ds, "Modality", PID))


def body_part_holds_the_name(d):
    _series(d, 2, mutate=lambda i, ds: setattr(ds, "BodyPartExamined", NAME))


def frames_holds_the_id(d):
    _series(d, 2, mutate=lambda i, ds: _set_raw(ds, "NumberOfFrames", PID))


def name_in_the_uids(d):
    _series(d, 6, mutate=lambda i, ds: setattr(ds, "SeriesInstanceUID", f"1.2.{NAME}"))


def sequential_spacing(d):
    # 2.5 mm through the posterior fossa, then 5 mm: written at positions 0, 2.5, 5, 7.5, 12.5, 17.5, 22.5
    positions = [0, 2.5, 5, 7.5, 12.5, 17.5, 22.5]
    base = np.array(pydicom.dcmread(ref("CT_small.dcm")).ImagePositionPatient, float)
    _series(d, 7, mutate=lambda i, ds: setattr(ds, "ImagePositionPatient",
                                               [float(base[0]), float(base[1]), float(base[2] + positions[i])]))


def missing_slice(d):
    _series(d, 7)
    (d / "slice003.dcm").unlink()


def gantry_tilt(d):
    base = np.array(pydicom.dcmread(ref("CT_small.dcm")).ImagePositionPatient, float)
    _series(d, 6, mutate=lambda i, ds: setattr(ds, "ImagePositionPatient",
                                               [float(base[0]), float(base[1] + 0.9 * i), float(base[2] + 2.5 * i)]))


def too_many_files(d):
    _series(d, 6)


CASES = {
    # name: (builder, status, kind, file the message names, also in reasons, extra env)
    "999,999,999 frames": (many_frames, "failed", "volume_too_large", "slice000.dcm", None, {}),
    "deflate bomb": (deflate_bomb, "scored", None, None, "slice001.dcm: skipped, deflated dataset inflates past",
                     {"TRIAGE_MAX_INFLATED_BYTES": str(1 << 20)}),
    "sequences 20,000 deep": (deep_nesting, "failed", "corrupt_file", "deep.dcm", None, {}),
    "named pipe beside": (fifo_beside, "scored", None, None, "pipe.dcm: skipped, not a regular file", {}),
    "link outside the folder": (link_outside, "scored", None, None, "elsewhere.dcm: skipped, a link that leads outside", {}),
    "RGB CT": (rgb_ct, "failed", "unsupported_image", "slice000.dcm", None, {}),
    "RescaleSlope 0": (_slope("0"), "failed", "corrupt_file", "slice003.dcm", None, {}),
    "RescaleSlope NaN": (_slope("NaN"), "failed", "corrupt_file", "slice003.dcm", None, {}),
    "RescaleSlope inf": (_slope("inf"), "failed", "corrupt_file", "slice003.dcm", None, {}),
    "RescaleSlope 1e300": (_slope("1e300"), "failed", "corrupt_file", "slice003.dcm", None, {}),
    "NaN position": (nan_position, "failed", "missing_geometry", "slice002.dcm", None, {}),
    "PixelSpacing negative": (_spacing([-0.5, -0.5]), "failed", "missing_geometry", "slice000.dcm", None, {}),
    "PixelSpacing zero": (_spacing([0, 0]), "failed", "missing_geometry", "slice000.dcm", None, {}),
    "PixelSpacing missing": (_spacing(None), "failed", "missing_geometry", "slice000.dcm", None, {}),
    "PixelSpacing differs": (_spacing("differs"), "failed", "inconsistent_series", "slice004.dcm", None, {}),
    "BitsStored above BitsAllocated": (bits_stored, "failed", "corrupt_file", "slice001.dcm", None, {}),
    "pixel element claims 4 GB": (claims_4gb, "failed", "corrupt_file", "slice002.dcm", None, {}),
    "two studies in one folder": (two_studies, "failed", "mixed_studies", "b/slice000.dcm", None, {}),
    "unrouted series cut to a third": (cut_to_a_third_unrouted, "failed", "corrupt_file", "slice000.dcm", None, {}),
    "SliceThickness unreadable": (thickness_unreadable, "scored", None, None, None, {}),
    "DICM plus garbage beside": (dicm_garbage_beside, "scored", None, None, "broken.dcm: skipped", {}),
    "README and thumbnail beside": (readme_and_thumbnail, "scored", None, None, "README.txt: skipped, not a DICOM", {}),
    "one bad series, one good": (one_bad_series_one_good, "scored", None, None, "bad/b2.dcm: RescaleSlope", {}),
    "the same file twice": (duplicate_file, "scored", None, None, "slice003.dcm: dropped, the same instance as slice003-again.dcm", {}),
    "garbage JPEG 2000": (garbage_jpeg2000, "failed", "corrupt_file", "j2k.dcm", None, {}),
    "newline and escape in a name": (hostile_name, "scored", None, None, "evil\\x0a\\x1b[2Jname.dcm: skipped", {}),
    "Modality holds the patient ID": (modality_holds_the_id, "no_applicable_model", None, None, "(other)", {}),
    "BodyPartExamined holds the patient name": (body_part_holds_the_name, "no_applicable_model", None, None,
                                                "no model applies to 1 series (CT)", {}),
    "NumberOfFrames holds the patient ID": (frames_holds_the_id, "failed", "corrupt_file", "slice000.dcm", None, {}),
    "patient name in the UIDs": (name_in_the_uids, "failed", "corrupt_file", "slice000.dcm", None, {}),
    "sequential head CT, two spacings": (sequential_spacing, "scored", None, None, None, {}),
    "a slice missing": (missing_slice, "failed", "uneven_spacing", "slice004.dcm", None, {}),
    "gantry tilt": (gantry_tilt, "failed", "unsupported_image", "slice005.dcm", None, {}),
    "more files than the budget": (too_many_files, "failed", "study_too_large", None, None, {"TRIAGE_MAX_FILES": "4"}),
}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile-model")
    make_model_dir(root / "models", "brightspot", window=(0, 2000), shape=(4, 64, 64))
    rules = rules_file(root / "rules.yaml", [{"name": "head", "match": {"modality": "CT", "body_part": "HEAD",
                                                                      "slice_thickness_mm": [0.5, 6]},
                                              "models": ["brightspot"]}])
    return root / "models", rules


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_study_folder(case, tmp_path, model):
    build, status, kind, named, reason, env = CASES[case]
    folder = tmp_path / "study"
    build(folder)
    r = subprocess.run([sys.executable, "-m", "triage.cli", "score", str(folder), "--models", str(model[0]),
                        "--rules", str(model[1])], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, **env})
    assert r.stdout, r.stderr
    event = json.loads(r.stdout)
    lines = r.stderr.strip().splitlines()
    assert len(lines) <= 3 and "Traceback" not in r.stderr, r.stderr
    assert event["status"] == status, (event["status"], event["error"], event["priority"]["reasons"])
    assert r.returncode == (1 if status == "failed" else 0)
    if kind:
        assert event["error"]["kind"] == kind, event["error"]
    if named:
        assert event["error"]["message"].startswith(f"{named}: "), event["error"]["message"]
    if reason:
        assert any(reason in line for line in event["priority"]["reasons"]), event["priority"]["reasons"]
    for text in (r.stdout, r.stderr):
        assert "\x1b" not in text and "\n\x1b" not in text
        for value in PHI:
            assert value not in text, f"{value!r} leaked"


def test_the_byte_identical_copy_is_dropped_and_the_study_reads_as_one(tmp_path):
    from triage.dicom.scan import survey_study

    duplicate_file(tmp_path / "s")
    (series,) = survey_study(tmp_path / "s").series
    assert series.n_slices == 6


def test_budgets_refuse_before_any_per_frame_work_or_allocation(tmp_path, monkeypatch):
    import tracemalloc

    from triage.dicom import decode
    from triage.dicom.scan import survey_study
    from triage.errors import VolumeTooLargeError

    many_frames(tmp_path / "s")
    calls = []
    monkeypatch.setattr(decode, "_frame_geometry", lambda *a, **k: calls.append(a))
    tracemalloc.start()
    survey = survey_study(tmp_path / "s")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert survey.series == [] and isinstance(survey.failed[0][1], VolumeTooLargeError)
    assert calls == [] and peak < 20 << 20


def test_the_deflate_budget_stops_inflating_at_the_budget(tmp_path):
    from triage.dicom.scan import ScanLimits, read_header
    from triage.errors import CorruptFileError

    deflate_bomb(tmp_path / "s")
    with pytest.raises(CorruptFileError, match=r"^slice001\.dcm: deflated dataset inflates past 1,048,576 bytes"):
        read_header(tmp_path / "s", "slice001.dcm", ScanLimits(max_inflated_bytes=1 << 20))
    ds, _ = read_header(tmp_path / "s", "slice001.dcm")  # under the default budget it reads
    assert len(ds[0x00291010].value) == 4 << 20


def test_sequential_spacing_is_decoded_on_its_positions_and_a_gap_is_not(tmp_path):
    from triage.dicom import decode_series, scan_study
    from triage.errors import UnevenSpacingError
    from triage.preprocess import uniform_z

    sequential_spacing(tmp_path / "seq")
    (series,) = scan_study(tmp_path / "seq")
    vol = decode_series(series)
    assert vol.z_positions.tolist() == pytest.approx([0, 2.5, 5, 7.5, 12.5, 17.5, 22.5])
    even, step = uniform_z(vol.array, vol.z_positions)
    assert step == pytest.approx(2.5) and even.shape[0] == 10
    assert np.allclose(even[4], (vol.array[3] + vol.array[4]) / 2)  # 10 mm: halfway between 7.5 and 12.5
    assert np.array_equal(even[5], vol.array[4])  # 12.5 mm is a slice of its own
    missing_slice(tmp_path / "gap")
    (series,) = scan_study(tmp_path / "gap")
    with pytest.raises(UnevenSpacingError):
        decode_series(series)


@pytest.mark.parametrize("agent,route,description,contrast", [
    ("NONE", None, None, False), ("NO", None, None, False), ("N/A", None, None, False),
    ("NO CONTRAST", None, None, False), ("0", None, None, False), ("", None, None, False),
    (None, None, "HEAD W/O", False), (None, None, None, False),
    ("Omnipaque 350", None, None, True), ("IV", None, None, True), ("ORAL", None, None, True),
    (None, "IV", None, True), (None, "ORAL", None, True), (None, None, "CTA HEAD", True),
    (None, None, "HEAD C+", True),
])
def test_contrast_vocabulary(agent, route, description, contrast):
    from triage.dicom.scan import is_contrast

    assert is_contrast(agent, False, route, description) is contrast


def test_worker_logs_and_dlq_headers_carry_no_identifier_of_a_hostile_study(tmp_path):
    """The worker side of the PHI check: its log lines and DLQ records, on the in-process bus."""
    import logging

    from tests.worker.test_host_memory import _event
    from triage.bus.memory import MemoryBroker, MemorySink, MemorySource
    from triage.pipeline import Pipeline
    from triage.settings import Settings
    from triage.worker.host import Host, HostOptions
    from triage.worker.pool import WorkerPool

    for name in ("frames_holds_the_id", "hostile_name", "modality_holds_the_id"):
        globals()[name](tmp_path / name)
    make_model_dir(tmp_path / "models", "brightspot", window=(0, 2000), shape=(4, 64, 64))
    rules = rules_file(tmp_path / "rules.yaml", [{"name": "ct", "match": {"modality": "CT"}, "models": ["brightspot"]}])
    settings = Settings(models_dir=tmp_path / "models", rules=rules, processes=1)
    broker = MemoryBroker(partitions=1)
    for i, name in enumerate(("frames_holds_the_id", "hostile_name", "modality_holds_the_id")):
        broker.produce("triage.studies", b"k", _event(f"1.2.77.{i}", tmp_path / name))
    log_file = tmp_path / "host.log"
    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    workers_log = open(tmp_path / "workers.log", "w")
    saved_stderr = os.dup(2)
    os.dup2(workers_log.fileno(), 2)  # the worker processes inherit it: their log lines land here
    try:
        events = []
        host = Host(MemorySource(broker), MemorySink(broker), WorkerPool(settings, 1), Pipeline.from_settings(settings),
                    options=HostOptions(), on_event=events.append)
        host.run(until=lambda: len(events) >= 3)
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        workers_log.close()
        logging.getLogger().removeHandler(handler)
    assert "[worker " in (tmp_path / "workers.log").read_text()  # the workers' own lines were captured
    dlq = broker.messages("triage.dlq")
    assert dlq, "the failed study was dead-lettered"
    texts = [log_file.read_text(), (tmp_path / "workers.log").read_text()] + [repr(m.headers) for m in dlq] + [m.value.decode() for m in
                                                                     broker.messages("triage.priority")]
    for text in texts:
        for value in PHI:
            assert value not in text


def test_a_huge_element_in_the_header_stays_on_disk(tmp_path):
    import tracemalloc

    from triage.dicom.scan import read_header

    _series(tmp_path / "s", 1)
    path = tmp_path / "s" / "slice000.dcm"
    ds = pydicom.dcmread(path)
    ds.add_new(0x00291010, "OB", b"\x01" * (32 << 20))
    ds.save_as(path)
    tracemalloc.start()
    header, offset = read_header(tmp_path / "s", "slice000.dcm")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20  # the 32 MiB value was not read
    assert offset > 32 << 20 and path.read_bytes()[offset:offset + 4] == b"\xe0\x7f\x10\x00"
