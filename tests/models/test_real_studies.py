"""Real images from the packages we depend on, presumed negative (their truth is unknown): none
may come out positive at any committed model's default operating point, live or shadow."""
from __future__ import annotations

import pytest

from tests.helpers import ROOT, in_ci
from triage.demo import find_test_file


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    from pipelines.evaluate import REAL_STUDIES, real_studies

    if not any(find_test_file(f) for f in REAL_STUDIES):
        why = "pydicom-data is not installed (a test dependency: make install-test)"
        if in_ci():
            pytest.fail(why)
        pytest.skip(why)
    scored = real_studies(ROOT / "models", tmp_path_factory.mktemp("real"))
    names = {p.name for p in (ROOT / "models").iterdir() if (p / "manifest.yaml").exists()}
    assert set(scored) == names  # every committed model is judged
    return scored


def test_no_real_study_is_positive_for_any_committed_model(scored):
    positives = {name: [r["file"] for r in out["files"] if r["positive"]] for name, out in scored.items()}
    assert not any(positives.values()), positives


def test_the_real_chest_radiograph_reaches_the_radiograph_model(scored):
    """A check that the scoring is not vacuous: the real chest CR is routed and read."""
    rows = {r["file"]: r for r in scored["pneumothorax_cxr"]["files"]}
    assert rows["RG1_UNCR.dcm"]["routed"] and rows["RG1_J2KR.dcm"]["routed"]
    assert 0.0 <= rows["RG1_UNCR.dcm"]["probability"] <= 1.0
