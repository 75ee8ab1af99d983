"""triage/fetch.py: file:// in place, DICOMweb WADO-RS multipart retrieve over loopback."""
from __future__ import annotations

import shutil

import pydicom
import pytest

from tests.helpers import StudyServer, ref
from triage.dicom import decode_series, scan_study
from triage.errors import SourceError, SourceUnavailableError
from triage.fetch import local_study


@pytest.fixture
def wado(tmp_path):
    (tmp_path / "study").mkdir()
    shutil.copy(ref("CT_small.dcm"), tmp_path / "study")
    mr = pydicom.dcmread(ref("MR_small.dcm"))  # one study: the MR series joins the CT's study
    mr.StudyInstanceUID = pydicom.dcmread(ref("CT_small.dcm")).StudyInstanceUID
    mr.save_as(tmp_path / "study" / "MR_small.dcm")
    server = StudyServer(tmp_path)
    yield server
    server.close()


def test_dicomweb_study_is_retrieved_and_decodes(wado):
    with local_study(wado.uri("study")) as folder:
        series = scan_study(folder)
        assert sorted(s.modality for s in series) == ["CT", "MR"]
        mr = next(s for s in series if s.modality == "MR")
        assert decode_series(mr).array.shape == (1, 64, 64)
        kept = folder
    assert not kept.exists()  # the temporary copy is removed


def test_server_errors_are_retriable_and_client_errors_are_not(wado):
    with pytest.raises(SourceUnavailableError, match="answered 503"):
        with local_study(wado.uri("busy")):
            pass
    with pytest.raises(SourceError, match="answered 404") as err:
        with local_study(wado.uri("unknown")):
            pass
    assert not err.value.retriable


def test_slow_server_times_out_as_retriable(wado):
    with pytest.raises(SourceUnavailableError, match="not reachable"):
        with local_study(wado.uri("study", delay_s=3), timeout=0.5):
            pass


def test_unreachable_server_is_retriable():
    with pytest.raises(SourceUnavailableError, match="not reachable"):
        with local_study("dicomweb+http://127.0.0.1:9/studies/1.2.3", timeout=2):
            pass


def test_unknown_scheme_is_refused():
    with pytest.raises(SourceError, match="unsupported source scheme 's3'"):
        with local_study("s3://bucket/study"):
            pass


def test_file_uri_is_used_in_place(tmp_path):
    with local_study(tmp_path.as_uri()) as folder:
        assert folder == tmp_path
