"""The project's environment files agree with each other, and the package metadata is sound."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def requirements(path: Path) -> dict[str, str]:
    """name -> version specifier, for every requirement line (options and comments skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)\s*(.*)$", line)
        assert m, f"{path}: cannot parse requirement line {line!r}"
        out[m.group(1).lower().replace("_", "-")] = m.group(2).replace(" ", "")
    return out


def test_binder_requirements_agree_with_requirements_txt():
    main = requirements(ROOT / "requirements.txt")
    binder = requirements(ROOT / "binder" / "requirements.txt")
    common = set(main) & set(binder)
    assert {"torch", "torchvision", "ipywidgets", "papermill"} <= common
    disagree = {name: (main[name], binder[name]) for name in common if main[name] != binder[name]}
    assert not disagree, f"binder/requirements.txt and requirements.txt disagree: {disagree}"
    assert "download.pytorch.org/whl/cpu" in (ROOT / "binder" / "requirements.txt").read_text()  # CPU torch
    assert "pip install" in (ROOT / "binder" / "postBuild").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_gitignore_keeps_outputs_out():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {"runs/", "data/cache/", ".venv/"} <= set(ignored)
