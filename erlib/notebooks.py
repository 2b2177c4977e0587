"""Run the numbered notebooks headless with papermill, in order, and summarise what happened.

Every notebook has a cell tagged ``parameters`` with at least ``preset`` ("tiny" for a CPU in minutes, "full" for a
GPU node) and ``output_dir`` (where it saves its static figures). The runner writes, under
``runs/notebooks/<timestamp>/``, each executed notebook and a folder of its figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

__all__ = ["NOTEBOOK_DIR", "PRESETS", "NotebookResult", "find_notebooks", "run_notebooks", "parse_value"]

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
PRESETS = ("tiny", "full")


@dataclass
class NotebookResult:
    """Outcome of one executed notebook."""

    name: str
    status: str  # "ok" or "failed"
    minutes: float
    output: Path
    figures: Path
    error: str = ""


def find_notebooks(only: list[str] | None = None, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The numbered notebooks in order; ``only`` keeps those whose name starts with one of the given prefixes."""
    books = sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb"))
    if not books:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {notebook_dir}")
    if only:
        wanted = [o.strip() for o in only if o.strip()]
        chosen = [p for p in books if any(p.name.startswith(w) for w in wanted)]
        missing = [w for w in wanted if not any(p.name.startswith(w) for p in books)]
        if missing:
            raise ValueError(f"--only: no notebook starts with {missing}; available: {[p.stem for p in books]}")
        books = chosen
    return books


def parse_value(text: str):
    """A command-line parameter value as a Python literal when it is one (``3``, ``0.5``, ``True``), else a string."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_notebooks(preset: str = "tiny", only: list[str] | None = None, parameters: dict | None = None,
                  out_root: Path | str = "runs/notebooks", notebook_dir: Path = NOTEBOOK_DIR,
                  progress: bool = True, cell_timeout: int = 1800) -> list[NotebookResult]:
    """Execute the notebooks with papermill; returns one :class:`NotebookResult` per notebook (failures included).

    A cell running longer than ``cell_timeout`` seconds fails its notebook instead of hanging the batch."""
    import papermill as pm

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    books = find_notebooks(only, notebook_dir)
    run_dir = Path(out_root) / datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for book in books:
        figures = (run_dir / book.stem).resolve()
        output = run_dir / book.name
        params = {"preset": preset, "output_dir": str(figures), **(parameters or {})}
        start = time.perf_counter()
        try:
            pm.execute_notebook(str(book), str(output), parameters=params, cwd=str(book.parent),
                                progress_bar=progress, kernel_name="python3", execution_timeout=cell_timeout)
            status, error = "ok", ""
        except Exception as exc:  # papermill raises PapermillExecutionError with the failing cell
            status, error = "failed", f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc) else ''}"
        results.append(NotebookResult(book.stem, status, (time.perf_counter() - start) / 60, output, figures, error))
    return results


def summary_table(results: list[NotebookResult]) -> str:
    """A plain-text table: notebook, status, minutes, where its output is."""
    rows = [("notebook", "status", "minutes", "executed notebook")]
    rows += [(r.name, r.status, f"{r.minutes:.2f}", str(r.output)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        if r.error:
            lines.append(f"{r.name}: {r.error}")
    return "\n".join(lines)
