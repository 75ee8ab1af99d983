"""bench-quick writes its own files and never touches the committed full-run results."""
import json

from benchmarks.run import write_results


def _doc(mode):
    return {"mode": mode, "results": [{"name": "decode", "ours": 1.0, "peer": 2.0, "unit": "s", "ratio": 2.0,
                                       "note": ""}]}


def test_quick_run_leaves_the_full_run_results_alone(tmp_path):
    full = write_results(_doc("full"), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    quick = write_results(_doc("quick"), tmp_path)
    assert full.name == "latest.json" and quick.name == "quick.json"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before} == before
    assert json.loads(quick.read_text())["mode"] == "quick"
    assert "| decode |" in (tmp_path / "quick.md").read_text()
