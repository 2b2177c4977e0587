"""Run the numbered notebooks headless with papermill, in order, and leave a report a person can open.

Every notebook has a cell tagged ``parameters`` with at least ``preset`` ("tiny" for a CPU in minutes, "full" for a
GPU node) and ``output_dir`` (where it saves its figures). :func:`run_notebooks` writes, under
``<out_root>/<timestamp>/``,

* ``NN_name.ipynb`` — the executed notebook, and ``NN_name.html`` — the same rendered by nbconvert, its plotly figures
  interactive offline (plotly.js is embedded in the page, nothing is fetched from a CDN);
* ``NN_name/`` — its figures, each as ``<figure>.png`` and an interactive ``<figure>.html``;
* ``index.html`` — one page linking every rendered notebook, every executed notebook and every figure.

It prints one line per notebook (``[3/9] 03_contrastive ... ok 1.2 min``): no per-cell progress bars, and the
kernels' own log lines (such as their transport warning) are kept out of the terminal. Every argument is checked
before the first notebook starts: an unknown parameter name, a value of the wrong type, an empty ``only`` list or an
unknown notebook raise a one-line :class:`ValueError` and nothing runs.
"""

from __future__ import annotations

import ast
import html
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from erlib.presets import PRESETS  # one list of presets

__all__ = [
    "NOTEBOOK_DIR",
    "PRESETS",
    "NotebookResult",
    "find_notebooks",
    "notebook_parameters",
    "run_notebooks",
    "parse_value",
    "summary_table",
    "render_html",
    "write_index",
    "INDEX",
]

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
#: The report page of a run folder.
INDEX = "index.html"
#: Parameters the runner sets itself for every notebook.
_RUNNER_PARAMETERS = ("preset", "output_dir")
#: Extra command-line arguments of every kernel: its own log (connection and transport notices) at ERROR only.
_KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=ERROR"]


@dataclass
class NotebookResult:
    """Outcome of one executed notebook: its status ("ok" or "failed"), minutes, and the files it left."""

    name: str
    status: str
    minutes: float
    output: Path
    figures: Path
    error: str = ""
    html: Path | None = None


def find_notebooks(only: list[str] | None = None, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks in order; ``only`` keeps those whose name starts with one of the given prefixes.

    ``only=None`` means all of them; a list that names nothing (``[""]``, from ``--only ,``) is an error, as is a
    prefix no notebook has."""
    books = sorted(p for p in Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))
    if not books:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {notebook_dir}")
    if only is None:
        return books
    wanted = [o.strip() for o in only if o.strip()]
    if not wanted:
        raise ValueError(
            f"--only {','.join(only)!r} names no notebook; give comma-separated prefixes such as "
            f"--only 01,02 (available: {', '.join(p.stem for p in books)})"
        )
    missing = [w for w in wanted if not any(p.name.startswith(w) for p in books)]
    if missing:
        raise ValueError(f"--only: no notebook starts with {missing}; available: {[p.stem for p in books]}")
    return [p for p in books if any(p.name.startswith(w) for w in wanted)]


def notebook_parameters(path: Path) -> dict[str, Any]:
    """The names assigned in a notebook's ``parameters`` cell, with their default values (``...`` where the default
    is not a literal)."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise ValueError(f"{Path(path).name} has no cell tagged 'parameters'; tag its first code cell 'parameters'")
    source = "".join(cells[0]["source"]) if isinstance(cells[0]["source"], list) else cells[0]["source"]
    defaults: dict[str, Any] = {}
    for node in ast.parse(source).body:
        targets: list[ast.expr]
        value: ast.expr | None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name):
                try:
                    defaults[target.id] = ast.literal_eval(value) if value is not None else ...
                except ValueError:
                    defaults[target.id] = ...
    return defaults


def parse_value(text: str):
    """A command-line parameter value as a Python literal when it is one (``3``, ``0.5``, ``True``), else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _kind(value: Any) -> str | None:
    """The type family a parameter value is checked against: bool, number, str, list (None: not checked)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list | tuple):
        return "list"
    return None


def _route_parameters(books: list[Path], parameters: dict[str, Any]) -> dict[Path, dict[str, Any]]:
    """For each notebook, the given parameters it declares; a ValueError for a name no selected notebook declares,
    a name the runner sets itself, or a value whose type differs from the notebook's default."""
    for key in parameters:
        if key in _RUNNER_PARAMETERS:
            fix = "use --preset" if key == "preset" else "choose the root folder with --out"
            raise ValueError(f"parameter {key!r} is set by the runner for every notebook; {fix}")
    declared = {book: notebook_parameters(book) for book in books}
    for key, value in parameters.items():
        owners = [book for book, names in declared.items() if key in names]
        if not owners:
            names = sorted({name for names in declared.values() for name in names} - set(_RUNNER_PARAMETERS))
            which = ", ".join(b.stem for b in books) if len(books) <= 3 else f"the {len(books)} selected notebooks"
            raise ValueError(f"unknown parameter {key!r} for {which}; their parameters: {', '.join(names)}")
        for book in owners:
            default = declared[book][key]
            want, got = _kind(default), _kind(value)
            if want is not None and got is not None and want != got:
                raise ValueError(
                    f"parameter {key!r} of {book.stem} is a {want} (default {default!r}), got "
                    f"{value!r} ({got}); pass e.g. -p {key} {default!r}"
                )
    return {book: {k: v for k, v in parameters.items() if k in declared[book]} for book in books}


def run_notebooks(
    preset: str = "tiny",
    only: list[str] | None = None,
    parameters: dict | None = None,
    out_root: Path | str = "runs/notebooks",
    notebook_dir: Path = NOTEBOOK_DIR,
    progress: bool = True,
    cell_timeout: int = 1800,
    stream: TextIO | None = None,
    render: bool = True,
) -> list[NotebookResult]:
    """Execute the notebooks with papermill; returns one :class:`NotebookResult` per notebook (failures included).

    ``parameters`` go to the notebooks that declare them (each name must be declared by at least one selected
    notebook). A cell running longer than ``cell_timeout`` seconds fails its notebook instead of hanging the batch.
    ``progress`` prints one line per notebook to ``stream`` (default stdout). ``render`` writes each notebook's HTML
    and the run's ``index.html``."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if isinstance(cell_timeout, bool) or not isinstance(cell_timeout, int) or cell_timeout < 1:
        raise ValueError(f"cell_timeout={cell_timeout!r}: give a whole number of seconds >= 1")
    books = find_notebooks(only, notebook_dir)
    routed = _route_parameters(books, dict(parameters or {}))
    import papermill as pm

    stream = stream or sys.stdout
    run_dir = Path(out_root) / datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    results: list[NotebookResult] = []
    for i, book in enumerate(books, start=1):
        figures = (run_dir / book.stem).resolve()
        output = run_dir / book.name
        params = {"preset": preset, "output_dir": str(figures), **routed[book]}
        if progress:
            print(f"[{i}/{len(books)}] {book.stem} ... ", end="", file=stream, flush=True)
        start = time.perf_counter()
        try:
            pm.execute_notebook(
                str(book),
                str(output),
                parameters=params,
                cwd=str(book.parent),
                progress_bar=False,
                log_output=False,
                kernel_name="python3",
                execution_timeout=cell_timeout,
                extra_arguments=_KERNEL_ARGUMENTS,
            )
            status, error = "ok", ""
        except Exception as exc:  # papermill raises PapermillExecutionError with the failing cell
            status, error = "failed", f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc) else ''}"
        result = NotebookResult(book.stem, status, (time.perf_counter() - start) / 60, output, figures, error)
        if render and output.is_file():
            try:
                result.html = render_html(output, run_dir / f"{book.stem}.html")
            except Exception as exc:  # a notebook that ran must not be reported failed because its HTML did not
                result.error = (result.error + "; " if result.error else "") + f"HTML not rendered: {exc}"
        results.append(result)
        if render:
            write_index(results, run_dir, preset=preset, parameters=parameters or {})
        if progress:
            print(f"{'ok' if status == 'ok' else 'FAILED'} {result.minutes:.1f} min", file=stream, flush=True)
    return results


def summary_table(results: list[NotebookResult]) -> str:
    """A plain-text table: notebook, status, minutes, where its output is."""
    rows = [("notebook", "status", "minutes", "executed notebook")]
    rows += [(r.name, r.status, f"{r.minutes:.2f}", str(r.output)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        if r.error:
            lines.append(f"{r.name}: {r.error}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# HTML: every executed notebook rendered, and one index page
# ----------------------------------------------------------------------------------------------------------------------

_PLOTLY_MIME = "application/vnd.plotly.v1+json"
_WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
_WIDGET_NOTE = (
    "<p><em>An interactive widget was here: open the notebook in JupyterLab to use it "
    "(widgets need a running kernel).</em></p>"
)


def render_html(notebook: Path | str, html_path: Path | str) -> Path:
    """Render an executed notebook to a standalone HTML page (nbconvert's lab template).

    Each plotly figure becomes an interactive ``<div>`` drawn by plotly.js, which is embedded once in the page, so
    the figures work offline; widget outputs (they need a kernel) become a short note. Math is typeset by MathJax
    where the page can reach it."""
    import nbformat
    import plotly.io as pio
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    nb.metadata.pop("widgets", None)  # no widget manager from a CDN
    first = True
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if _PLOTLY_MIME in data:
                figure = pio.from_json(json.dumps(data.pop(_PLOTLY_MIME)), skip_invalid=True)
                data["text/html"] = pio.to_html(
                    figure, include_plotlyjs=first, full_html=False, config={"displaylogo": False}
                )
                first = False
            elif _WIDGET_MIME in data:
                out["data"] = {"text/html": _WIDGET_NOTE}
    exporter = HTMLExporter(template_name="lab")
    exporter.require_js_url = ""  # plotly.js registers itself as window.Plotly without an AMD loader
    body, _ = exporter.from_notebook_node(nb)
    path = Path(html_path)
    path.write_text(body, encoding="utf-8")
    return path


def _href(path: Path, root: Path) -> str:
    return quote(Path(path).resolve().relative_to(root.resolve()).as_posix())


def write_index(
    results: list[NotebookResult], run_dir: Path | str, preset: str = "", parameters: dict | None = None
) -> Path:
    """Write ``index.html`` in ``run_dir``: per notebook its status, minutes, rendered and executed notebook, and
    every figure (a thumbnail of the PNG, linked to the interactive HTML). All links are relative to ``run_dir``."""
    root = Path(run_dir)
    esc = html.escape
    rows = []
    for r in results:
        links = []
        if r.html is not None and r.html.is_file():
            links.append(f'<a href="{_href(r.html, root)}">rendered</a>')
        if r.output.is_file():
            links.append(f'<a href="{_href(r.output, root)}">notebook (.ipynb)</a>')
        figures = []
        for png in sorted(r.figures.glob("*.png")) if r.figures.is_dir() else []:
            interactive = png.with_suffix(".html")
            target = interactive if interactive.is_file() else png
            figures.append(
                f'<figure><a href="{_href(target, root)}"><img src="{_href(png, root)}" '
                f'alt="{esc(png.stem)}" loading="lazy"></a><figcaption>{esc(png.stem)} · '
                f'<a href="{_href(png, root)}">PNG</a>'
                + (f' · <a href="{_href(interactive, root)}">interactive</a>' if interactive.is_file() else "")
                + "</figcaption></figure>"
            )
        status = f'<span class="{esc(r.status)}">{esc(r.status)}</span>'
        error = f'<div class="error">{esc(r.error)}</div>' if r.error else ""
        rows.append(
            f"<section><h2>{esc(r.name)} — {status} <small>{r.minutes:.1f} min</small></h2>{error}"
            f'<p>{" · ".join(links)}</p><div class="figures">{"".join(figures)}</div></section>'
        )
    params = ", ".join(f"{esc(k)} = {esc(repr(v))}" for k, v in (parameters or {}).items())
    summary = f"preset <b>{esc(preset)}</b>" + (f"; parameters: {params}" if params else "") if preset else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>erlib notebooks — {esc(root.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.15em; margin-top: 1.6em; }} small {{ color: #666; font-weight: normal; }}
.ok {{ color: #007a4d; }} .failed {{ color: #b00020; }} .error {{ color: #b00020; font-family: monospace; }}
.figures {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; width: 270px; }} figure img {{ width: 270px; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.8em; color: #444; }}
</style></head><body>
<h1>erlib notebooks, run {esc(root.name)}</h1>
<p>{summary}. {sum(r.status == "ok" for r in results)} of {len(results)} notebooks ran. Each figure links to its
interactive version (plotly, offline); each notebook to its rendered page and the executed <code>.ipynb</code>.</p>
{"".join(rows)}
</body></html>
"""
    path = root / INDEX
    path.write_text(page, encoding="utf-8")
    return path
