"""triage/dicom/codecs.py: which codec decodes what, and that the GIL-free one decodes the
same pixels as pydicom's default, on every JPEG 2000 file pydicom and pydicom-data ship."""
from __future__ import annotations

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.encaps import encapsulate

from tests.helpers import ref
from triage.dicom import decode_series, scan_study
from triage.dicom.codecs import missing, plugin_for, register

# Every JPEG 2000 file the two packages ship that pydicom can decode at all.
J2K_FILES = ["693_J2KR.dcm", "693_J2KI.dcm", "MR2_J2KR.dcm", "MR2_J2KI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm",
             "RG3_J2KR.dcm", "RG3_J2KI.dcm", "US1_J2KR.dcm", "US1_J2KI.dcm", "emri_small_jpeg_2k_lossless.dcm",
             "explicit_VR-UN.dcm", "GDCMJ2K_TextGBR.dcm", "J2K_pixelrep_mismatch.dcm", "JPEG2000.dcm",
             "MR_small_jp2klossless.dcm", "SC_rgb_gdcm_KY.dcm", "examples_jpeg2k.dcm"]


def _pixels(name: str, plugin: str) -> np.ndarray:
    ds = pydicom.dcmread(ref(name))
    ds.pixel_array_options(decoding_plugin=plugin)
    return ds.pixel_array


def test_jpeg_2000_and_htj2k_go_to_the_codec_that_releases_the_gil():
    for syntax in (uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K):
        assert plugin_for(syntax) == "imagecodecs", syntax.name
    # the others keep pydicom's plugins, first available in our stated order
    assert plugin_for(uid.JPEGLSLossless) == "pylibjpeg"
    assert plugin_for(uid.RLELossless) == "pylibjpeg"
    assert plugin_for(uid.ExplicitVRLittleEndian) == ""  # read natively, no codec


def test_a_plugin_that_cannot_run_says_what_it_lacks():
    import importlib.util

    lacks = missing(uid.JPEGLSLossless)
    # neither is a dependency of ours; whichever this environment lacks is named with what it needs
    absent = [plugin for plugin, module in (("gdcm", "gdcm"), ("pyjpegls", "jpeg_ls"))
              if importlib.util.find_spec(module) is None]
    assert absent
    for plugin in absent:
        assert any(line.startswith(f"{plugin} - requires") for line in lacks), lacks


@pytest.mark.parametrize("name", J2K_FILES)
def test_imagecodecs_decodes_the_same_pixels_as_pylibjpeg(name):
    register()
    ours, theirs = _pixels(name, "imagecodecs"), _pixels(name, "pylibjpeg")
    assert ours.dtype == theirs.dtype
    assert np.array_equal(ours, theirs)


def test_htj2k_lossless_decodes_bit_exact_against_the_uncompressed_file(tmp_path):
    """No HTJ2K file ships in our packages: one is made from MR_small with OpenJPH."""
    plain = pydicom.dcmread(ref("MR_small.dcm"))
    ds = pydicom.dcmread(ref("MR_small.dcm"))
    ds.PixelData = encapsulate([imagecodecs.htj2k_encode(plain.pixel_array, reversible=True)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uid.HTJ2KLossless
    for folder, dataset in (("htj2k", ds), ("plain", plain)):
        (tmp_path / folder).mkdir()
        dataset.save_as(tmp_path / folder / "MR_small.dcm")
    (a,), (b,) = scan_study(tmp_path / "htj2k"), scan_study(tmp_path / "plain")
    assert np.array_equal(decode_series(a).array, decode_series(b).array)


def test_a_jpeg_2000_series_decoded_on_two_threads_matches_one_thread(tmp_path):
    for i in range(4):
        ds = pydicom.dcmread(ref("693_J2KR.dcm"))
        ds.SOPInstanceUID = uid.generate_uid(entropy_srcs=["codecs", str(i)])
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.InstanceNumber = i + 1
        ds.save_as(tmp_path / f"{i}.dcm")
    (series,) = scan_study(tmp_path)
    one, two = decode_series(series, threads=1), decode_series(series, threads=2)
    assert np.array_equal(one.array, two.array)
    expected = _pixels("693_J2KR.dcm", "pylibjpeg").astype(np.float32) * float(ds.get("RescaleSlope", 1)) \
        + float(ds.get("RescaleIntercept", 0))
    assert all(np.array_equal(one.array[k], expected) for k in range(4))
