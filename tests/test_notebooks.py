"""Every numbered notebook is stored clean, has a papermill `parameters` cell, and executes headless in the `tiny`
preset, leaving its figures behind; the runner checks its arguments before any work, prints one line per notebook and
writes a report page whose every link works."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import nbformat
import pytest

from erlib.__main__ import main
from erlib.notebooks import (
    INDEX,
    NOTEBOOK_DIR,
    _route_parameters,
    find_notebooks,
    notebook_parameters,
    parse_value,
    run_notebooks,
)

NOTEBOOKS = find_notebooks()
#: The notebook executions in two groups that run side by side on the two xdist workers, sharing one runs folder:
#: 03-05 train the ten base runs that 06 and 08 read; 07 trains its sweeps, reusing (or waiting for) the base runs it
#: shares with 03-05. Each group takes about half of the notebooks' time.
NOTEBOOK_GROUPS = {"00": "b", "01": "b", "02": "b", "03": "a", "04": "a", "05": "a", "06": "a", "07": "b", "08": "a"}


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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_papermill_reads_every_parameter_with_its_help(path, caplog):
    """papermill parses each `name = value  # help` line of the parameters cell (a line it cannot parse is dropped from
    `papermill --help-notebook` and logged as a warning in every headless run)."""
    import ast
    import logging

    from papermill.translators import PythonTranslator

    source = parameters_source(path)
    assigned = [n.targets[0].id for n in ast.parse(source).body if isinstance(n, ast.Assign)]
    with caplog.at_level(logging.WARNING, logger="papermill"):
        parsed = PythonTranslator.inspect({"source": source})
    assert not [r for r in caplog.records if "Unable to parse" in r.getMessage()], caplog.text
    assert [p.name for p in parsed] == assigned


@pytest.mark.slow
@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.xdist_group(f"notebooks-{NOTEBOOK_GROUPS[p.stem[:2]]}")) for p in NOTEBOOKS],
    ids=[p.stem for p in NOTEBOOKS],
)
def test_notebook_executes_headless_and_saves_figures(path, tmp_path, shared_runs_dir):
    """Each notebook runs to the end headless and writes its page and figures. Those that train run the tiny preset
    (`make demo`) on the shared runs folder; 01 and 02 train nothing and share one set of settings for tiny and small,
    so they run as the small series passes them (`python -m erlib notebooks --preset small`), which covers both."""
    trains = "runs_dir" in parameters_source(path)
    params = {"runs_dir": str(shared_runs_dir)} if trains else {}
    preset = "tiny" if trains else "small"
    [result] = run_notebooks(preset, only=[path.stem], parameters=params, out_root=tmp_path, progress=False)
    assert result.status == "ok", result.error
    assert result.html is not None and result.html.stat().st_size > 1_000_000  # plotly.js embedded
    assert not broken_links(result.output.parent / INDEX)
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
    config = json.loads((tmp_path / "runs" / "simclr@epochs=1" / "config.json").read_text())  # not the shared run
    assert config["method"] == "simclr" and config["er"] is False and config["epochs"] == 1


def test_cli_rejects_unknown_notebook(capsys):
    # the CLI turns the runner's ValueError into "error: ..." (exit 2) or lets it through; either way it names the cause
    try:
        code = main(["notebooks", "--only", "99"])
    except ValueError as exc:
        assert "no notebook starts with" in str(exc)
    except SystemExit as exc:
        assert exc.code == 2 and "no notebook starts with" in capsys.readouterr().err
    else:
        assert code == 2 and "no notebook starts with" in capsys.readouterr().err


def test_only_that_names_no_notebook_is_an_error_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="names no notebook; give comma-separated prefixes"):
        run_notebooks("tiny", only=",".split(","), out_root=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_parameter_is_an_error_naming_the_notebooks_parameters(tmp_path):
    with pytest.raises(
        ValueError,
        match=r"unknown parameter 'nosuchparam' for 01_mi_bounds, 02_estimators; "
        r"their parameters: .*kappa.*toy_rho",
    ):
        run_notebooks("tiny", only=["01", "02"], parameters={"nosuchparam": 1}, out_root=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_parameter_values_and_runner_parameters_are_checked(tmp_path):
    with pytest.raises(ValueError, match="parameter 'seed' of 01_mi_bounds is a number .* got 'abc'"):
        run_notebooks("tiny", only=["01"], parameters={"seed": "abc"}, out_root=tmp_path)
    with pytest.raises(ValueError, match="'output_dir' is set by the runner .* --out"):
        run_notebooks("tiny", only=["01"], parameters={"output_dir": "x"}, out_root=tmp_path)
    with pytest.raises(ValueError, match="'preset' is set by the runner .* --preset"):
        run_notebooks("tiny", only=["01"], parameters={"preset": "full"}, out_root=tmp_path)
    with pytest.raises(ValueError, match="cell_timeout=0"):
        run_notebooks("tiny", only=["01"], cell_timeout=0, out_root=tmp_path)
    assert not list(tmp_path.iterdir())


def test_parameters_go_only_to_the_notebooks_that_declare_them():
    books = find_notebooks(["00", "01"])
    routed = _route_parameters(books, {"runs_dir": "/tmp/x", "seed": 3, "kappa": 5})
    assert routed[books[0]] == {"runs_dir": "/tmp/x", "seed": 3}
    assert routed[books[1]] == {"seed": 3, "kappa": 5}


def test_notebook_parameters_reads_the_parameters_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            'a = 1      # a comment\nb: float = 0.5\nc = [1, 2]\nd = len("x")\n', metadata={"tags": ["parameters"]}
        )
    ]
    nbformat.write(nb, tmp_path / "00_x.ipynb")
    assert notebook_parameters(tmp_path / "00_x.ipynb") == {"a": 1, "b": 0.5, "c": [1, 2], "d": ...}
    nb.cells[0].metadata = {}
    nbformat.write(nb, tmp_path / "01_y.ipynb")
    with pytest.raises(ValueError, match="01_y.ipynb has no cell tagged 'parameters'"):
        notebook_parameters(tmp_path / "01_y.ipynb")


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.targets += [value for key, value in attrs if key in ("href", "src") and value]


def _sources(page: str) -> list[str]:
    parser = _Links()
    parser.feed(page)
    return parser.targets


def broken_links(index: Path) -> list[str]:
    """Links and image sources of an index page that do not resolve to an existing file next to it."""
    parser = _Links()
    parser.feed(index.read_text(encoding="utf-8"))
    assert parser.targets, f"{index} links nothing"
    return [t for t in parser.targets if not (index.parent / unquote(t)).is_file()]


def mini_notebook(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {path.stem}"),
        nbformat.v4.new_code_cell('preset = "tiny"\noutput_dir = ""\nseed = 0', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(body),
    ]
    nbformat.write(nb, path)


def test_runner_prints_one_line_per_notebook_and_writes_a_report_that_works(tmp_path, capfd):
    books = tmp_path / "books"
    books.mkdir()
    mini_notebook(
        books / "00_alpha.ipynb",
        "from erlib.plots import Panel, Series, show\n"
        "show(Panel([Series([1, 2, 3], [seed, 2, 3], 'a')], 'alpha'), 'alpha_fig', output_dir)\n"
        "show(Panel([Series([1, 2], [2, 1], 'b')], 'beta'), 'beta_fig', output_dir)\n"
        "import ipywidgets\nipywidgets.IntSlider(3)",
    )
    mini_notebook(books / "01_broken.ipynb", "raise RuntimeError('this notebook fails on purpose')")
    results = run_notebooks("tiny", parameters={"seed": 7}, out_root=tmp_path / "out", notebook_dir=books)
    out, err = capfd.readouterr()
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("[1/2] 00_alpha ... ok ") and lines[0].endswith(" min")
    assert lines[1].startswith("[2/2] 01_broken ... FAILED ")
    assert "Kernel is running over TCP" not in err + out and "Executing" not in err + out  # no kernel log, no bars
    assert [r.status for r in results] == ["ok", "failed"] and "this notebook fails on purpose" in results[1].error
    run_dir = results[0].output.parent
    index = run_dir / INDEX
    assert not broken_links(index)
    page = index.read_text(encoding="utf-8")
    for target in (
        "00_alpha.html",
        "00_alpha.ipynb",
        "00_alpha/alpha_fig.png",
        "00_alpha/alpha_fig.html",
        "00_alpha/beta_fig.png",
        "01_broken.html",
        "01_broken.ipynb",
    ):
        assert f'"{target}"' in page, target
    rendered = (run_dir / "00_alpha.html").read_text(encoding="utf-8")
    assert rendered.count("Plotly.newPlot") == 2  # both figures drawn by plotly.js ...
    assert rendered.count("window.PlotlyConfig") == 1 and len(rendered) > 3_000_000  # ... embedded, once
    assert not [src for src in _sources(rendered) if "plot" in src.lower()]  # not from a CDN
    assert "open the notebook in JupyterLab" in rendered  # the widget's place is explained
    assert "RuntimeError" in (run_dir / "01_broken.html").read_text(encoding="utf-8")


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("True") is True
    assert parse_value("byol") == "byol"


def test_notebook_dir_is_the_repository_folder():
    assert NOTEBOOK_DIR.name == "notebooks" and (NOTEBOOK_DIR.parent / "pyproject.toml").exists()
