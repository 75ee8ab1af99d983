"""triage/fetch.py: file:// in place; DICOMweb WADO-RS retrieve from a real Orthanc (its DICOMweb\nplugin), and from a hostile peer for what Orthanc will not do (answer 503, or stall)."""
from __future__ import annotations

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.helpers import StudyServer, ref
from triage.dicom import decode_series, scan_study
from triage.errors import SourceError, SourceUnavailableError
from triage.fetch import local_study


@pytest.fixture
def wado(tmp_path):
    """The hostile peer: answers 503 (busy), or slowly (see tests.helpers.StudyServer)."""
    server = StudyServer(tmp_path)
    yield server
    server.close()


@pytest.fixture(scope="module")
def mixed_study(orthanc, tmp_path_factory):
    """CT_small and MR_small as one study of its own, uploaded to the real Orthanc.

    The Orthanc is shared by the session (the gateway tests send CT_small-derived series to it),
    so this study gets a fresh StudyInstanceUID rather than CT_small's."""
    folder = tmp_path_factory.mktemp("mixed")
    study = generate_uid(entropy_srcs=["test_fetch.mixed_study"])
    ct = pydicom.dcmread(ref("CT_small.dcm"))
    mr = pydicom.dcmread(ref("MR_small.dcm"))
    for ds, name in ((ct, "CT_small.dcm"), (mr, "MR_small.dcm")):
        ds.StudyInstanceUID = study
        ds.PatientID, ds.PatientName = "FETCH1", "Fetch^Test"  # Orthanc keys a study by patient too
        ds.save_as(folder / name)
    orthanc.upload(sorted(folder.iterdir()))
    return study


def test_dicomweb_study_is_retrieved_from_orthanc_and_decodes(orthanc, mixed_study):
    with local_study(orthanc.wado_uri(mixed_study)) as folder:
        series = scan_study(folder)
        assert sorted(s.modality for s in series) == ["CT", "MR"]
        mr = next(s for s in series if s.modality == "MR")
        assert decode_series(mr).array.shape == (1, 64, 64)
        ct = next(s for s in series if s.modality == "CT")
        assert decode_series(ct).array.shape == (1, 128, 128)
        kept = folder
    assert not kept.exists()  # the temporary copy is removed


def test_unknown_study_on_orthanc_is_a_client_error(orthanc):
    with pytest.raises(SourceError, match="answered 404") as err:
        with local_study(orthanc.wado_uri("1.2.3.4.5.6.7.8.9")):
            pass
    assert not err.value.retriable


def test_server_errors_are_retriable(wado):
    with pytest.raises(SourceUnavailableError, match="answered 503"):
        with local_study(wado.uri("busy")):
            pass


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
