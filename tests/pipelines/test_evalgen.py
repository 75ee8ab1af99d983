"""pipelines/evalgen: the independent evaluation generator shares no drawing code with the
training generator, and writes studies the runtime reads."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT

SYNTH, EVALGEN = ROOT / "pipelines" / "synth", ROOT / "pipelines" / "evalgen"
# what evalgen may take from pipelines.synth: the study container and the DICOM writer, no drawing
ALLOWED = {("pipelines.synth.common", "Phantom"), ("pipelines.synth.write", "write_study"),
           ("pipelines.synth.write", "write_labels")}


def imports(folder: Path) -> set[tuple[str, str]]:
    out = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                out |= {(node.module, a.name) for a in node.names}
            elif isinstance(node, ast.Import):
                out |= {(a.name, "") for a in node.names}
    return out


def functions(folder: Path) -> dict[str, str]:
    """Each function's body, as an AST dump with its names kept: identical code reads identical."""
    out = {}
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                out[f"{path.name}:{node.name}"] = ast.dump(ast.Module(body=node.body, type_ignores=[]))
    return out


def test_the_two_generators_share_no_drawing_code():
    taken = {(m, n) for m, n in imports(EVALGEN) if m.startswith("pipelines.synth")}
    assert taken <= ALLOWED, f"evalgen draws with the training generator's code: {sorted(taken - ALLOWED)}"
    assert not any(m.startswith("pipelines.evalgen") for m, _ in imports(SYNTH))
    ours, theirs = functions(EVALGEN), functions(SYNTH)
    shared = {a: b for a, body in ours.items() for b, other in theirs.items() if body == other}
    assert not shared, f"the same code in both generators: {shared}"


def test_nothing_trains_or_calibrates_on_the_independent_generator():
    for path in [ROOT / "pipelines" / n for n in ("train.py", "dataset.py", "envelope.py")] + list(SYNTH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any("evalgen" in n for n in names), f"{path.name} reads the evaluation-only generator"


def test_independent_head_cts_decode_with_their_physics(tmp_path):
    from pipelines.evalgen.generate import generate
    from triage.dicom import decode_series, scan_study

    rows = generate("head_ct", 4, 9101, tmp_path / "ind", matrix=96, progress=False)
    assert len(rows) == 4 and {r["finding"] for r in rows} == {"ich"}
    for row in rows:
        (series,) = scan_study(tmp_path / "ind" / "studies" / row["study_id"])[:1]
        vol = decode_series(series)
        brain = vol.array[(vol.array > 0) & (vol.array < 80)]
        assert brain.size > 1000 and 20 < float(np.median(brain)) < 50  # brain reads as brain, in HU
        if int(row["label"]):
            assert (tmp_path / "ind" / row["mask"]).exists() and float(row["lesion_ml"]) > 0


@pytest.mark.parametrize("kind", ["chest_ct_pneumothorax", "chest_ct_pericardial", "chest_cta_pe",
                                  "chest_cta_dissection"])
def test_independent_chest_cts_decode_as_chests_and_their_positives_carry_the_finding(tmp_path, kind):
    from pipelines.evalgen.generate import FOR_FINDING, KINDS, generate
    from triage.dicom import decode_series, scan_study

    rows = generate(kind, 4, 9102, tmp_path / "ind", matrix=96, progress=False)
    finding = KINDS[kind][1]
    assert FOR_FINDING[finding] == kind and {r["finding"] for r in rows} == {finding}
    assert any(int(r["label"]) for r in rows)
    for row in rows:
        (series,) = scan_study(tmp_path / "ind" / "studies" / row["study_id"])[:1]
        vol = decode_series(series)
        lung = vol.array[(vol.array > -950) & (vol.array < -600)]
        soft = vol.array[(vol.array > -150) & (vol.array < 150)]
        assert lung.size > 1000 and soft.size > lung.size / 4  # aerated lung and a body around it, in HU
        expected = {"chest_cta_pe": True, "chest_cta_dissection": True, "chest_ct_pericardial": False}.get(kind)
        if expected is not None:  # the pneumothorax kind comes with and without contrast
            assert series.contrast == expected
        if int(row["label"]):
            assert (tmp_path / "ind" / row["mask"]).exists() and float(row["lesion_ml"]) > 0
