"""triage/dicom/header.py: the fast header reader reads what pydicom reads, on every real
file pydicom and pydicom-data ship, and leaves to pydicom what it does not handle."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.multival import MultiValue

from triage.dicom.header import read_fast
from triage.errors import CorruptFileError

# every keyword the scan, the decoder and the gateway read from a header
KEYWORDS = ("Modality", "Rows", "Columns", "SeriesInstanceUID", "SOPClassUID", "StudyInstanceUID", "SOPInstanceUID",
            "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation",
            "PhotometricInterpretation", "BodyPartExamined", "SeriesDescription", "ContrastBolusAgent",
            "ContrastBolusRoute", "SliceThickness", "ImageOrientationPatient", "ImagePositionPatient", "RescaleSlope",
            "RescaleIntercept", "PixelSpacing", "ImagerPixelSpacing", "SpacingBetweenSlices", "WindowCenter",
            "WindowWidth", "AccessionNumber", "RequestedProcedurePriority")
SEQUENCES = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "VOILUTSequence",
             "ContrastBolusAgentSequence", "RequestAttributesSequence")


def _plain(value):
    """A value as the code uses it: numbers as numbers, text as text, empty as None."""
    if isinstance(value, (MultiValue, list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):  # DSfloat too
        return round(float(value), 6)
    if isinstance(value, int):  # IS too
        return int(value)
    if isinstance(value, bytes):
        return value
    return None if value in (None, "") else str(value)


def _with_pydicom(path: str):
    with open(path, "rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        return ds, fp.tell()


def _real_files() -> list[str]:
    files = []
    for path in get_testdata_files("*"):
        try:
            _with_pydicom(path)
        except Exception:  # not DICOM, or nothing pydicom reads either
            continue
        files.append(path)
    return files


REAL = _real_files()


def test_most_real_files_take_the_fast_path():
    fast = [p for p in REAL if read_fast(Path(p), 16, "x") is not None]
    assert len(REAL) > 50 and len(fast) > len(REAL) / 2


@pytest.mark.parametrize("path", REAL, ids=lambda p: Path(p).name)
def test_the_fast_path_reads_what_pydicom_reads(path):
    read = read_fast(Path(path), 16, "x")
    if read is None:
        return  # pydicom reads it, as before
    header, offset = read
    ds, expected_offset = _with_pydicom(path)
    assert offset == expected_offset
    for keyword in KEYWORDS:
        assert (keyword in header) == (keyword in ds), keyword
        if keyword not in ds:
            continue
        ours = header.get(keyword) if _convertible(ds, keyword) else None
        assert _plain(ours) == _plain(ds.get(keyword) if _convertible(ds, keyword) else None), keyword
    for keyword in SEQUENCES:
        if keyword in ds:
            assert len(header.get(keyword)) == len(ds[keyword].value), keyword
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and "PixelMeasuresSequence" in shared[0]:
        ours = header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        theirs = shared[0].PixelMeasuresSequence[0]
        assert _plain(ours.get("PixelSpacing")) == _plain(theirs.get("PixelSpacing"))


def _convertible(ds, keyword: str) -> bool:
    """pydicom keeps a number it cannot read as its text (badVR.dcm's NumberOfFrames '1A');
    ours raises ValueError on it. Both are unusable, and every caller treats them so."""
    value = ds.get(keyword)
    try:
        [float(v) for v in (value if isinstance(value, MultiValue) else [value])
         if ds[keyword].VR in ("IS", "DS") and v not in (None, "")]
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm",
                                  "no_meta.dcm"])
def test_what_it_does_not_handle_goes_to_pydicom(name):
    assert read_fast(Path(get_testdata_file(name)), 16, "x") is None


def test_a_header_cut_short_goes_to_pydicom(tmp_path):
    src = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    _, offset = _with_pydicom(get_testdata_file("CT_small.dcm"))
    for cut in (100, 140, 300, offset // 2, offset - 3):
        (tmp_path / "cut.dcm").write_bytes(src[:cut])
        assert read_fast(tmp_path / "cut.dcm", 16, "x") is None, cut


def test_an_element_longer_than_the_file_goes_to_pydicom(tmp_path):
    data = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    at = data.index(b"\x08\x00\x60\x00CS")  # Modality
    data[at + 6:at + 8] = (60000).to_bytes(2, "little")
    (tmp_path / "long.dcm").write_bytes(bytes(data[:at + 4000]))
    assert read_fast(tmp_path / "long.dcm", 16, "x") is None


def test_sequences_nested_past_the_budget_are_refused_naming_the_file(tmp_path):
    src = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    meta_end = 144 + int.from_bytes(src[140:144], "little")
    open_seq = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    close_seq = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    (tmp_path / "deep.dcm").write_bytes(src[:meta_end] + open_seq * 5 + close_seq * 5)
    header, _ = read_fast(tmp_path / "deep.dcm", 5, "deep.dcm")
    assert len(header.get("ReferencedSeriesSequence")) == 1
    with pytest.raises(CorruptFileError, match=r"^deep\.dcm: sequences nested deeper than 4"):
        read_fast(tmp_path / "deep.dcm", 4, "deep.dcm")


def test_a_header_longer_than_the_first_read_is_read_whole(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.add_new(0x00291010, "OB", b"\x01" * (200 << 10))  # a private element past the first read
    ds.add_new(0x00291011, "OB", b"\x02" * (30 << 10))
    ds.save_as(tmp_path / "long.dcm")
    header, offset = read_fast(tmp_path / "long.dcm", 16, "x")
    _, expected_offset = _with_pydicom(str(tmp_path / "long.dcm"))
    assert offset == expected_offset > 200 << 10
    assert header.get("Rows") == ds.Rows and header.get("RescaleIntercept") == float(ds.RescaleIntercept)


def test_a_window_that_is_no_number_is_read_as_no_window(tmp_path):
    """A value read lazily may turn out not to be a number when it is asked for: the radiograph's
    window is then ignored, as if absent, never an exception out of the decoder."""
    from triage.dicom import decode_series, scan_study

    src = Path(get_testdata_file("RG3_UNCR.dcm"))
    ds = pydicom.dcmread(src)
    del ds.WindowCenter
    (tmp_path / "none").mkdir()
    ds.save_as(tmp_path / "none" / "rg.dcm")
    data = bytearray(src.read_bytes())
    at = data.index(b"\x28\x00\x50\x10DS")  # WindowCenter, explicit VR: tag, VR, 2-byte length, value
    length = int.from_bytes(data[at + 6:at + 8], "little")
    data[at + 8:at + 8 + length] = b"a5c".ljust(length, b" ")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "rg.dcm").write_bytes(bytes(data))
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "rg.dcm").write_bytes(src.read_bytes())
    volumes = {k: decode_series(scan_study(tmp_path / k)[0]).array for k in ("none", "bad", "good")}
    assert np.array_equal(volumes["bad"], volumes["none"])
    assert not np.array_equal(volumes["good"], volumes["none"])  # the window does change the scale
