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


@pytest.mark.parametrize("kind", ["head_ct", "head_cta", "head_ct_fracture"])
def test_independent_head_cts_decode_with_their_physics(tmp_path, kind):
    from pipelines.evalgen.generate import KINDS, generate, independent_kind
    from triage.dicom import decode_series, scan_study

    rows = generate(kind, 4, 9101, tmp_path / "ind", matrix=96, progress=False)
    finding, contrast = KINDS[kind][1], KINDS[kind][2]
    assert len(rows) == 4 and independent_kind(finding) == kind and {r["finding"] for r in rows} == {finding}
    for row in rows:
        (series,) = scan_study(tmp_path / "ind" / "studies" / row["study_id"])[:1]
        assert series.contrast == contrast
        vol = decode_series(series)
        brain = vol.array[(vol.array > 0) & (vol.array < 80)]
        assert brain.size > 1000 and 20 < float(np.median(brain)) < 50  # brain reads as brain, in HU
        if int(row["label"]):
            assert (tmp_path / "ind" / row["mask"]).exists() and float(row["lesion_ml"]) > 0


@pytest.mark.parametrize("draw", ["head_cta", "head_ct_fracture"])
def test_an_independent_heads_lesion_reads_as_its_finding(draw):
    """An occluded artery is dark (opacified arteries are 220 HU or more); a fracture is a gap,
    darker than the bone around it."""
    from pipelines.evalgen import head

    found = 0
    for i in range(4):
        d = getattr(head, draw)(np.random.default_rng([31, i]), True, matrix=128)
        if not d["label"]:
            continue
        found += 1
        assert d["kind"] != "none" and d["lesion_ml"] > 0
        lesion = float(np.median(d["hu"][d["mask"]]))
        assert lesion < (150.0 if draw == "head_cta" else float(np.median(d["hu"][d["hu"] > 700])) - 200)
    assert found >= 3


@pytest.mark.parametrize("kind", ["chest_ct_pneumothorax", "chest_ct_pericardial", "chest_cta_pe",
                                  "chest_cta_dissection"])
def test_independent_chest_cts_decode_as_chests_and_their_positives_carry_the_finding(tmp_path, kind):
    from pipelines.evalgen.generate import KINDS, generate, independent_kind
    from triage.dicom import decode_series, scan_study

    rows = generate(kind, 4, 9102, tmp_path / "ind", matrix=96, progress=False)
    finding = KINDS[kind][1]
    assert independent_kind(finding) == kind and {r["finding"] for r in rows} == {finding}
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


def test_independent_radiographs_are_stored_as_films_are_and_read_alike(tmp_path):
    """Films of 10 to 16 bits, MONOCHROME1 or 2, decode onto one scale: the mediastinum brighter
    than the lungs, whatever the storage."""
    from pipelines.evalgen.generate import generate, independent_kind
    from tests.helpers import read_films

    assert independent_kind("pneumothorax", radiograph=True) == "chest_radiograph"
    rows = generate("chest_radiograph", 6, 9103, tmp_path / "ind", matrix=96, progress=False)
    stored = set()
    for row, storage, mediastinum, lungs in read_films(tmp_path / "ind", rows):
        stored.add(storage)
        assert mediastinum > lungs + 300, row["study_id"]
        if int(row["label"]):
            assert (tmp_path / "ind" / row["mask"]).exists() and float(row["lesion_ml"]) > 0
    assert len(stored) > 1
