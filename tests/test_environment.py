"""The project's environment files agree with each other, and the package metadata is sound."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from packaging.specifiers import SpecifierSet

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


def test_binder_pins_the_cpu_builds_of_the_ci_versions():
    main, pins = requirements(ROOT / "requirements.txt"), requirements(ROOT / "constraints.txt")
    binder = requirements(ROOT / "binder" / "requirements.txt")
    assert "download.pytorch.org/whl/cpu" in (ROOT / "binder" / "requirements.txt").read_text()
    for name in ("torch", "torchvision"):
        assert binder[name] == pins[name] + "+cpu", (name, binder[name], pins[name])
    assert not {"jupyterlab", "ipywidgets", "ipykernel", "pytest", "pytest-xdist", "selenium"} & set(binder)
    others = {
        n: (main.get(n), binder[n]) for n in binder if n not in ("torch", "torchvision") and main.get(n) != binder[n]
    }
    assert not others, f"binder/requirements.txt and requirements.txt disagree: {others}"
    assert "pip install" in (ROOT / "binder" / "postBuild").read_text()


def test_constraints_pin_every_requirement_inside_its_range():
    main, pins = requirements(ROOT / "requirements.txt"), requirements(ROOT / "constraints.txt")
    assert set(main) == set(pins), set(main) ^ set(pins)
    for name, spec in main.items():
        assert pins[name].startswith("==") and SpecifierSet(spec).contains(pins[name][2:]), (name, spec, pins[name])
    assert pins["torch"] == "==2.14.1" and pins["torchvision"] == "==0.29.1"
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_gitignore_keeps_outputs_out():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert {"runs/", "data/cache/", ".venv/"} <= set(ignored)


def test_the_training_and_notebook_modules_import_without_torchvision():
    """torchvision costs about 3 s per process to import (it pulls in torch._dynamo): the CLI, every notebook kernel
    and every training process that builds no ResNet skips it; building a ResNet imports it then."""
    import subprocess
    import sys

    code = (
        "import sys; import erlib.train, erlib.story, erlib.claims, erlib.presets, erlib.__main__; "
        "assert 'torchvision' not in sys.modules, 'imported torchvision'; "
        "from erlib.nn import build_backbone; build_backbone('convnet_tiny'); assert 'torchvision' not in sys.modules; "
        "build_backbone('resnet18_cifar'); assert 'torchvision' in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_make_mutate_prints_the_score_per_module_over_the_mutants_checked():
    """scripts/mutation_score.awk reads `mutmut results --all true`: killed and timed-out mutants over those checked,
    per module (a method's or a class method's mutants under their module); a module not run is named as such."""
    results = "\n".join(
        [
            "    erlib.bounds.x_er_bound__mutmut_1: killed",
            "    erlib.bounds.x_er_bound__mutmut_2: survived",
            "    erlib.bounds.x_kde_entropy__mutmut_1: timeout",
            "    erlib.methods.swav.xǁSwAVǁ__init____mutmut_3: killed",
            "    erlib.augment.x_blur__mutmut_1: not checked",
        ]
    )
    out = subprocess.run(
        ["awk", "-F: ", "-f", str(ROOT / "scripts" / "mutation_score.awk")],
        input=results,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert sorted(" ".join(line.split()) for line in out) == [
        "erlib.augment not checked (1 mutants)",
        "erlib.bounds 2 of 3 killed 66.7 %",
        "erlib.methods.swav 1 of 1 killed 100.0 %",
    ]
