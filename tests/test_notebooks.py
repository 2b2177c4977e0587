"""Every numbered notebook is stored clean, has a papermill `parameters` cell, and executes headless in the `tiny`
preset, leaving its figures behind."""

from __future__ import annotations

import json

import pytest

from erlib.__main__ import main
from erlib.notebooks import NOTEBOOK_DIR, find_notebooks, parse_value, run_notebooks

NOTEBOOKS = find_notebooks()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs_and_has_parameters(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip the outputs"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0], "the first code cell must be the one tagged 'parameters'"
    source = "".join(tagged[0]["source"])
    assert 'preset = "tiny"' in source and "output_dir" in source
    assert nb["cells"][0]["cell_type"] == "markdown", "a notebook opens with its title and what it teaches"


@pytest.fixture(scope="session")
def shared_runs_dir(tmp_path_factory):
    """One runs folder for the whole series, as `python -m erlib notebooks` uses: later notebooks reuse earlier runs."""
    return tmp_path_factory.mktemp("notebook-runs")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_in_tiny_preset_and_saves_figures(path, tmp_path, shared_runs_dir):
    params = {"runs_dir": str(shared_runs_dir)} if "runs_dir" in parameters_source(path) else {}
    [result] = run_notebooks("tiny", only=[path.stem], parameters=params, out_root=tmp_path, progress=False)
    assert result.status == "ok", result.error
    pngs = sorted(result.figures.glob("*.png"))
    assert len(pngs) >= 2, f"{path.stem} saved {len(pngs)} static figures"
    assert all(p.stat().st_size > 10_000 for p in pngs)
    executed = json.loads(result.output.read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert injected and str(result.figures) in "".join(injected[0]["source"])


def parameters_source(path) -> str:
    nb = json.loads(path.read_text())
    return "".join(next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))["source"])


@pytest.mark.slow
def test_injected_parameter_takes_effect(tmp_path):
    # the quickstart trains the method and epochs it is given: the run folder must show them
    params = {"runs_dir": str(tmp_path / "runs"), "method": "simclr", "er": False, "epochs": 1}
    [result] = run_notebooks("tiny", only=["00"], parameters=params, out_root=tmp_path, progress=False)
    assert result.status == "ok", result.error
    config = json.loads((tmp_path / "runs" / "simclr" / "config.json").read_text())
    assert config["method"] == "simclr" and config["er"] is False and config["epochs"] == 1


def test_cli_rejects_unknown_notebook(capsys):
    with pytest.raises(ValueError, match="no notebook starts with"):
        main(["notebooks", "--only", "99"])


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("True") is True
    assert parse_value("byol") == "byol"


def test_notebook_dir_is_the_repository_folder():
    assert NOTEBOOK_DIR.name == "notebooks" and (NOTEBOOK_DIR.parent / "pyproject.toml").exists()
