"""triage/dicom/decode.py and scan.py on real DICOM files from pydicom and pydicom-data."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from tests.helpers import ref, write_series
from triage.dicom import decode_series, scan_study
from triage.dicom.scan import survey_study
from triage.errors import (CorruptFileError, DecodeError, EmptyStudyError, MissingGeometryError,
                           MixedOrientationError, UnevenSpacingError, VolumeTooLargeError)

# Compressed file → its uncompressed twin (pydicom-data's *_UNCR files are the decoded
# reversible *_J2KR; pydicom's MR_small_* are re-encodings of MR_small).
LOSSLESS_PAIRS = [
    ("MR_small_implicit.dcm", "MR_small.dcm", "implicit VR little endian"),
    ("MR_small_bigendian.dcm", "MR_small.dcm", "explicit VR big endian"),
    ("MR_small_RLE.dcm", "MR_small.dcm", "RLE lossless"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", "JPEG-LS lossless"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm", "JPEG 2000 lossless"),
    ("693_J2KR.dcm", "693_UNCR.dcm", "JPEG 2000 lossless, head CT"),
    ("RG1_J2KR.dcm", "RG1_UNCR.dcm", "JPEG 2000 lossless, chest radiograph"),
    ("emri_small_RLE.dcm", "emri_small.dcm", "RLE, enhanced MR multi-frame"),
    ("emri_small_big_endian.dcm", "emri_small.dcm", "big endian, enhanced MR multi-frame"),
    ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm", "JPEG-LS, enhanced MR multi-frame"),
    ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm", "JPEG 2000, enhanced MR multi-frame"),
    ("JPEG-LL.dcm", None, "JPEG lossless (process 14): no twin ships, compared with pydicom"),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", None, "JPEG lossless SV1, 8 bit: compared with pydicom"),
    ("image_dfl.dcm", None, "deflated explicit VR little endian: compared with pydicom"),
]

# Lossy files: decoded against the uncompressed original within a stated tolerance.
LOSSY = [
    ("693_J2KI.dcm", "693_UNCI.dcm", 0.0, "JPEG 2000 lossy: *_UNCI is its decoded twin"),
    ("MR2_J2KI.dcm", "MR2_UNCI.dcm", 0.0, "JPEG 2000 lossy, MR"),
    ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb.dcm", 8.0, "JPEG baseline (colour, kept as luminance)"),
    ("JPGExtended.dcm", "JPEG2000_UNC.dcm", 130.0, "JPEG extended 12-bit (NM)"),
]


def _decode_file(tmp_path, name):
    """Decode one reference file. Several ship without any pixel spacing, which decode refuses
    (never a silent 1 mm); those copies are given one, the pixel data left as it is."""
    folder = tmp_path / name.replace(".", "_")
    folder.mkdir()
    ds = pydicom.dcmread(ref(name))
    measured = any(v and min(float(x) for x in v) > 0 for v in (ds.get("PixelSpacing"), ds.get("ImagerPixelSpacing"))) \
        or any("PixelMeasuresSequence" in g for g in ds.get("SharedFunctionalGroupsSequence", []))
    if measured:
        shutil.copy(ref(name), folder / name)
    else:
        ds.PixelSpacing = [0.5, 0.5]
        ds.save_as(folder / name)
    (series,) = scan_study(folder)
    return decode_series(series)


@pytest.mark.parametrize("compressed,plain,what", LOSSLESS_PAIRS)
def test_lossless_copies_decode_bit_exact(tmp_path, compressed, plain, what):
    a = _decode_file(tmp_path, compressed)
    b = _decode_file(tmp_path, plain) if plain else None
    if b is None:  # no uncompressed twin ships: compare with pydicom's own decode + modality LUT
        ds = pydicom.dcmread(ref(compressed))
        expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)[np.newaxis]
        assert np.array_equal(a.array, expected), what
        return
    assert a.array.shape == b.array.shape, what
    assert np.array_equal(a.array, b.array), what
    assert a.spacing_zyx == b.spacing_zyx


@pytest.mark.parametrize("lossy,plain,tolerance,what", LOSSY)
def test_lossy_transfer_syntaxes_decode_close_to_original(tmp_path, lossy, plain, tolerance, what):
    a = _decode_file(tmp_path, lossy)
    b = _decode_file(tmp_path, plain)
    assert a.array.shape == b.array.shape
    assert float(np.abs(a.array - b.array).max()) <= tolerance, what


def test_ct_values_are_hounsfield_units(tmp_path):
    vol = _decode_file(tmp_path, "CT_small.dcm")
    ds = pydicom.dcmread(ref("CT_small.dcm"))
    raw = ds.pixel_array.astype(np.float64)
    expected = raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(vol.array[0], expected.astype(np.float32))
    assert vol.array.dtype == np.float32
    assert vol.spacing_zyx[1:] == (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))
    assert vol.origin == tuple(float(v) for v in ds.ImagePositionPatient)


def test_series_sorted_along_normal_not_by_name_or_instance_number(tmp_path):
    names = [f"{n}.dcm" for n in ("zeta", "alpha", "mid", "b", "omega", "c")]
    random.Random(7).shuffle(names)
    write_series(tmp_path / "shuffled", 6, names=names)
    write_series(tmp_path / "ordered", 6)
    (s1,) = scan_study(tmp_path / "shuffled")
    (s2,) = scan_study(tmp_path / "ordered")
    v1, v2 = decode_series(s1), decode_series(s2)
    assert np.array_equal(v1.array, v2.array)
    # slice i carries +i: ascending along the normal means the offsets ascend too
    base = v1.array[0]
    for i in range(6):
        assert np.array_equal(v1.array[i] - base, np.full_like(base, i))
    assert v1.spacing_zyx[0] == pytest.approx(2.5)
    assert v1.origin == v2.origin


def test_enhanced_ct_multiframe_geometry(tmp_path):
    vol = _decode_file(tmp_path, "eCT_Supplemental.dcm")
    ds = pydicom.dcmread(ref("eCT_Supplemental.dcm"))
    assert vol.shape == (2, 512, 512)
    assert vol.spacing_zyx[0] == pytest.approx(10.0)
    iop = np.array(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])  # (0, 0, -1) here: rows run towards patient right
    positions = [np.array(f.PlanePositionSequence[0].ImagePositionPatient, float)
                 for f in ds.PerFrameFunctionalGroupsSequence]
    first = min(positions, key=lambda p: p @ normal)
    assert vol.origin == pytest.approx(tuple(first))
    assert vol.direction[:, 2] == pytest.approx(normal)


def test_radiograph_is_one_slice_volume_with_monochrome1_inverted_on_its_declared_window(tmp_path):
    vol = _decode_file(tmp_path, "RG1_UNCR.dcm")  # a real MONOCHROME1 CR, window 15000/30000
    ds = pydicom.dcmread(ref("RG1_UNCR.dcm"))
    assert vol.shape == (1, int(ds.Rows), int(ds.Columns))
    raw = ds.pixel_array.astype(np.float32)
    # bright is high, on the film's declared range (PS3.3's linear window: 0..29999), read onto 0..4095
    assert np.allclose(vol.array[0], (29999 - raw) * (4095 / 29999), atol=1e-2)


def test_monochrome1_gives_the_same_numbers_whatever_the_image_holds(tmp_path):
    """A film whose content changes (here: a bright marker burnt into one corner) must not
    move every other pixel's value, as inverting on the image's own min and max did."""
    def film(folder, marker):
        ds = pydicom.dcmread(ref("RG1_UNCR.dcm"))
        del ds.WindowCenter, ds.WindowWidth  # the BitsStored range (15 bits) then applies
        ds.PixelSpacing = [0.2, 0.2]
        arr = ds.pixel_array.copy()
        if marker:
            arr[:40, :40] = 0  # MONOCHROME1: 0 is the brightest
        ds.PixelData = arr.tobytes()
        folder.mkdir()
        ds.save_as(folder / "cr.dcm")
        (series,) = scan_study(folder)
        return decode_series(series).array[0]

    plain, marked = film(tmp_path / "a", False), film(tmp_path / "b", True)
    assert np.array_equal(plain[100:, 100:], marked[100:, 100:])
    assert marked[0, 0] == 4095  # the brightest a 15-bit film declares


def _film(folder: Path, bits: int, photometric: str = "MONOCHROME2", window: bool = False,
          voi_lut: bool = False) -> np.ndarray:
    """The same real chest film (RG1, 15 bits) stored at ``bits`` bits, as ``photometric``, with
    or without a window or VOI LUT that declares its range; decoded."""
    ds = pydicom.dcmread(ref("RG1_UNCR.dcm"))
    for key in ("WindowCenter", "WindowWidth"):
        if key in ds:
            delattr(ds, key)
    dense = (1 << 15) - 1 - ds.pixel_array.astype(np.float64)  # MONOCHROME1 on disk: bright = low
    top = (1 << bits) - 1
    stored = np.rint(dense * top / ((1 << 15) - 1))
    if photometric == "MONOCHROME1":
        stored = top - stored
    ds.PhotometricInterpretation = photometric
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.PixelSpacing = [0.2, 0.2]
    if window:  # a window wider than the stored range: values read relative to it
        ds.WindowCenter, ds.WindowWidth = top / 2 + 0.5, top + 1
    if voi_lut:
        item = pydicom.Dataset()
        item.LUTDescriptor = [top + 1 if top + 1 < 65536 else 0, 0, 16]
        item.LUTData = np.array([0, 65535], np.uint16).tobytes()  # its output is not read
        ds.VOILUTSequence = [item]
    ds.PixelData = stored.astype(np.uint16).tobytes()
    folder.mkdir(parents=True)
    ds.save_as(folder / "cr.dcm")
    (series,) = scan_study(folder)
    return decode_series(series).array[0]


@pytest.mark.parametrize("bits, photometric, window, voi_lut", [
    (12, "MONOCHROME2", False, False), (14, "MONOCHROME1", False, False), (15, "MONOCHROME2", True, False),
    (16, "MONOCHROME1", False, True), (16, "MONOCHROME2", True, False)])
def test_a_film_reads_the_same_whatever_its_bit_depth_and_photometric_interpretation(tmp_path, bits, photometric,
                                                                                       window, voi_lut):
    reference = _film(tmp_path / "ref", 12)
    other = _film(tmp_path / "other", bits, photometric, window, voi_lut)
    assert reference.min() >= 0 and reference.max() <= 4095
    # quantisation is the only difference: half a 12-bit step for the reference, half a step of
    # ``bits`` (on the 12-bit scale) for the other, plus float rounding
    assert np.abs(other - reference).max() <= 0.5 + 0.5 * 4095 / ((1 << bits) - 1) + 1e-2
    assert np.abs(other - reference).mean() < 0.3


def test_several_series_in_one_study_and_non_images_skipped(tmp_path):
    study = tmp_path / "study"
    write_series(study / "ct", 4)
    mr = pydicom.dcmread(ref("MR_small.dcm"))
    mr.StudyInstanceUID = pydicom.dcmread(study / "ct" / "slice000.dcm").StudyInstanceUID
    mr.save_as(study / "mr.dcm")
    shutil.copy(ref("test-SR.dcm"), study / "report.dcm")
    shutil.copy(ref("liver_1frame.dcm"), study / "seg.dcm")
    series = scan_study(study)
    assert sorted(s.modality for s in series) == ["CT", "MR"]
    ct = next(s for s in series if s.modality == "CT")
    assert ct.n_slices == 4 and len(ct.files) == 4


# --- errors: exact type, file named -----------------------------------------------------
def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyStudyError, match="empty: study folder holds no files"):
        scan_study(tmp_path / "empty")


def test_folder_with_only_a_report_has_no_image_series(tmp_path):
    (tmp_path / "sr").mkdir()
    shutil.copy(ref("test-SR.dcm"), tmp_path / "sr" / "report.dcm")
    with pytest.raises(EmptyStudyError, match="no image series"):
        scan_study(tmp_path / "sr")


def test_a_file_that_is_not_dicom_is_skipped_and_named(tmp_path):
    write_series(tmp_path / "s", 2)
    (tmp_path / "s" / "notes.txt").write_text("hello")
    survey = survey_study(tmp_path / "s")
    assert [s.n_slices for s in survey.series] == [2]
    assert survey.notes == ["notes.txt: skipped, not a DICOM file (no DICM preamble)"]


def test_only_files_that_are_not_dicom_is_a_corrupt_study_naming_the_first(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.txt").write_text("hello")
    with pytest.raises(CorruptFileError, match=r"^a\.txt: not a DICOM file"):
        scan_study(tmp_path / "s")


def test_truncated_header_fails_its_series_and_is_named(tmp_path):
    write_series(tmp_path / "s", 3)
    path = tmp_path / "s" / "slice001.dcm"
    path.write_bytes(path.read_bytes()[:600])
    survey = survey_study(tmp_path / "s")
    named = [str(e) for _, e in survey.failed] + survey.notes
    assert any(n.startswith("slice001.dcm: ") for n in named), named


def test_truncated_pixel_data_is_found_from_the_header(tmp_path):
    (tmp_path / "s").mkdir()
    shutil.copy(ref("MR_truncated.dcm"), tmp_path / "s" / "MR_truncated.dcm")
    with pytest.raises(CorruptFileError, match=r"^MR_truncated\.dcm: pixel data length does not match"):
        scan_study(tmp_path / "s")


def test_missing_slice_position_is_named(tmp_path):
    def drop(i, ds):
        if i == 2:
            del ds.ImagePositionPatient

    write_series(tmp_path / "s", 4, mutate=drop)
    (series,) = scan_study(tmp_path / "s")
    with pytest.raises(MissingGeometryError, match=r"^slice002\.dcm: slice has no ImagePositionPatient"):
        decode_series(series)


def test_uneven_spacing_names_the_slice_after_the_gap(tmp_path):
    write_series(tmp_path / "s", 6)
    (tmp_path / "s" / "slice003.dcm").unlink()
    (series,) = scan_study(tmp_path / "s")
    with pytest.raises(UnevenSpacingError, match=r"^slice004\.dcm: gap of 5\.00 mm where the series spacing is 2\.50"):
        decode_series(series)


def test_duplicate_positions_are_uneven_spacing(tmp_path):
    def same(i, ds):
        if i == 3:
            ds.ImagePositionPatient = [float(v) for v in pydicom.dcmread(ref("CT_small.dcm")).ImagePositionPatient]

    write_series(tmp_path / "s", 4, mutate=same)
    (series,) = scan_study(tmp_path / "s")
    with pytest.raises(UnevenSpacingError, match="same position"):
        decode_series(series)


def test_mixed_orientations_are_named(tmp_path):
    def tilt(i, ds):
        if i == 1:
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # a coronal slice in an axial series

    write_series(tmp_path / "s", 4, mutate=tilt)
    (series,) = scan_study(tmp_path / "s")
    with pytest.raises(MixedOrientationError, match=r"^slice001\.dcm: orientation"):
        decode_series(series)


def test_voxel_budget_is_checked_before_pixels_are_read(tmp_path, monkeypatch):
    write_series(tmp_path / "s", 4)
    (series,) = scan_study(tmp_path / "s")
    calls = []
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: calls.append(a))
    monkeypatch.setattr("triage.dicom.decode._read_native", lambda *a, **k: calls.append(a))
    monkeypatch.setattr("triage.dicom.decode.np.empty", lambda *a, **k: calls.append(a))
    with pytest.raises(VolumeTooLargeError, match=r"^slice000\.dcm: series of 4x128x128 = 65,536 voxels is over the budget of 50,000"):
        decode_series(series, max_voxels=50_000)
    assert calls == []  # nothing was read, nothing allocated


def test_huge_declared_dimensions_fail_on_budget_not_memory(tmp_path):
    def huge(i, ds):
        ds.Rows = 60000
        ds.Columns = 60000

    write_series(tmp_path / "s", 2, mutate=huge)
    with pytest.raises(VolumeTooLargeError, match="over the budget"):
        scan_study(tmp_path / "s")


def test_every_decode_error_is_one_family():
    for cls in (CorruptFileError, EmptyStudyError, MissingGeometryError, MixedOrientationError,
                UnevenSpacingError, VolumeTooLargeError):
        assert issubclass(cls, DecodeError) and cls.retriable is False


def _twelve_bit(slope: float = 1.0, intercept: float = -1024.0):
    """12-bit unsigned CT, as most scanners store it; high bits hold an overlay to be dropped."""
    def mutate(i, ds):
        stored = (np.arange(ds.Rows * ds.Columns, dtype=np.uint16).reshape(ds.Rows, ds.Columns) * 7 + i) % 4096
        stored[0, :4] |= 0xF000  # bits above BitsStored
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored.tobytes()
    return mutate


@pytest.mark.parametrize("slope,intercept,dtype", [(1.0, -1024.0, np.int16), (0.5, -1024.0, np.float32),
                                                   (1.0, -1024.5, np.float32)])
def test_whole_hounsfield_units_decode_to_int16_and_the_rest_to_float_with_the_same_values(
        tmp_path, slope, intercept, dtype):
    write_series(tmp_path / "s", 3, mutate=_twelve_bit(slope, intercept))
    (series,) = scan_study(tmp_path / "s")
    vol = decode_series(series)
    assert vol.array.dtype == dtype
    for z, path in enumerate(sorted((tmp_path / "s").iterdir(), key=lambda p: -pydicom.dcmread(p).InstanceNumber)):
        ds = pydicom.dcmread(path)
        expected = apply_modality_lut(ds.pixel_array & 0x0FFF, ds).astype(np.float32)
        assert np.array_equal(vol.array[z], expected)
    assert vol.array.min() >= intercept and vol.array.max() <= 4095 * slope + intercept  # the overlay bits dropped
