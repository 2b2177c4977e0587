"""Reproduce the claims: train the runs they need in a preset (reusing finished ones), decide them, write a report,
and export reference runs for the repository's ``results/``.

``python -m erlib claims --preset small`` is :func:`reproduce`. The runs live where the notebooks keep theirs
(``runs/notebook-runs/<preset>``, one folder per seed other than 0), under the role names of
:data:`erlib.claims.CLAIMS`, so the notebooks and the claims share them. With several seeds a claim PASSes only if it
passes in every seed, FAILs only if it fails in every seed, and is INCONCLUSIVE otherwise (the report gives the count).
"""

from __future__ import annotations

import json
import platform
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from erlib import claims as C
from erlib import targets as T
from erlib.fileio import atomic_write_text
from erlib.presets import RUN_ACTIONS, default_runs_dir, ensure_run, run_action, spec_config
from erlib.runs import META, load_run

__all__ = [
    "ClaimsResult",
    "PlannedRun",
    "claim_configs",
    "plan_runs",
    "format_plan",
    "PLAN_WORDS",
    "combine_seeds",
    "reproduce",
    "export_results",
    "reference_runs",
    "reference_table",
    "write_figures",
    "run_provenance",
    "check_extra_roles",
    "seed_runs_dir",
]


@dataclass
class ClaimsResult:
    """What :func:`reproduce` did: the verdicts per seed, the combined verdicts, the report files, the wall time."""

    preset: str
    seeds: list[int]
    per_seed: dict[int, list[C.Verdict]]
    combined: list[C.Verdict]
    report: tuple[Path, Path] | None = None
    minutes: float = 0.0
    run_minutes: dict[str, float] = field(default_factory=dict)
    #: seed → base run → its preset-target checks (:mod:`erlib.targets`), for the base runs present
    targets: dict[int, dict[str, list[T.TargetCheck]]] = field(default_factory=dict)
    targets_report: Path | None = None
    #: claim → its report figure (``figures/<claim>.png``; the interactive ``.html`` beside it), first seed's runs
    figures: dict[str, Path] = field(default_factory=dict)


def seed_runs_dir(preset: str, seed: int, runs_root: str | Path | None = None) -> Path:
    """The folder of one seed's claim runs: ``runs_root/seed<k>`` when a root is given, else the notebooks' own
    (``runs/notebook-runs/<preset>[-seed<k>]``)."""
    return Path(runs_root) / f"seed{seed}" if runs_root else Path(default_runs_dir(preset, seed))


def claim_configs(
    preset: str, claim_ids: Iterable[str] | None = None, seed: int = 0, runs_dir: str | Path | None = None
) -> list:
    """The TrainConfigs of every run the claims read, in the preset, named by their roles."""
    runs_dir = str(runs_dir or default_runs_dir(preset, seed))
    return [spec_config(preset, spec, runs_dir=runs_dir, seed=seed) for spec in C.required_runs(claim_ids)]


@dataclass(frozen=True)
class PlannedRun:
    """One run the claims need, and what :func:`reproduce` would do with it (:data:`erlib.presets.RUN_ACTIONS`)."""

    seed: int
    name: str
    action: str
    epochs_left: int
    #: optimiser steps left: ``epochs_left`` times the steps of one epoch (``train_subset // batch_size``); ``None``
    #: when the run trains on a whole dataset (the ``full`` preset, the synthetic stand-in), known only once loaded
    steps_left: int | None


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if not seeds or repeated:
        raise ValueError(f"seeds {seeds} name seed {repeated[0]} twice" if repeated else "no seeds given: name one")
    return seeds


def plan_runs(
    preset: str,
    claim_ids: Iterable[str] | None = None,
    seeds: Sequence[int] = (0,),
    runs_root: str | Path | None = None,
) -> list[PlannedRun]:
    """What ``reproduce(preset, claim_ids, seeds, runs_root=runs_root)`` would train, resume and reuse, seed by seed,
    looking at the run folders only (nothing is trained or changed)."""
    plan = []
    for seed in _check_seeds(seeds):
        for cfg in claim_configs(preset, claim_ids, seed, seed_runs_dir(preset, seed, runs_root)):
            action, epochs_left = run_action(cfg)
            steps = epochs_left * (cfg.train_subset // cfg.batch_size) if cfg.train_subset else None
            plan.append(PlannedRun(seed, cfg.name, action, epochs_left, steps))
    return plan


#: how :func:`format_plan` words each action
PLAN_WORDS = {
    "train": "to train",
    "resume": "to resume",
    "retrain": "to train afresh (their folders hold another configuration or record format)",
}


def format_plan(plan: Sequence[PlannedRun]) -> str:
    """The plan as a table (one line per run; steps "?" where the data decide them) and a total."""
    width = max([len("run"), *(len(p.name) for p in plan)])
    lines = [f"{'seed':>4}  {'run':<{width}}  {'action':<8} {'epochs':>6} {'steps':>7}"]
    lines += [
        f"{p.seed:>4}  {p.name:<{width}}  {p.action:<8} {p.epochs_left:>6} "
        + f"{'?' if p.steps_left is None else format(p.steps_left, ','):>7}"
        for p in plan
    ]
    count = {a: sum(p.action == a for p in plan) for a in RUN_ACTIONS}
    todo = ", ".join(f"{count[a]} {w}" for a, w in PLAN_WORDS.items() if count[a]) or "nothing to train"
    epochs = sum(p.epochs_left for p in plan)
    steps = [p.steps_left for p in plan if p.epochs_left]
    total = f"; {epochs} epochs to train" if epochs else ""
    if epochs and None not in steps:
        total += f" ({sum(s or 0 for s in steps):,} optimiser steps)"
    return "\n".join([*lines, f"{len(plan)} runs: {todo}, {count['reuse']} finished (reused){total}"])


def combine_seeds(per_seed: dict[int, list[C.Verdict]]) -> list[C.Verdict]:
    """One verdict per claim over the seeds: PASS if every seed passes, FAIL if every seed fails, else INCONCLUSIVE
    with the counts; the sentence and numbers are the first seed's."""
    seeds = sorted(per_seed)
    out = []
    for i, first in enumerate(per_seed[seeds[0]]):
        statuses = [per_seed[s][i].status for s in seeds]
        if len(seeds) == 1:
            out.append(first)
            continue
        counts = {s: statuses.count(s) for s in C.STATUSES if statuses.count(s)}
        tally = ", ".join(f"{status} in {n} of {len(seeds)} seeds" for status, n in counts.items())
        status = statuses[0] if len(set(statuses)) == 1 else C.INCONCLUSIVE
        reason = first.reason if len(set(statuses)) == 1 else f"the seeds disagree: {tally}"
        numbers = {"seeds": dict(zip(map(str, seeds), statuses)), **first.numbers}
        out.append(
            replace(
                first,
                status=status,
                reason=reason,
                numbers=numbers,
                sentence=f"{first.sentence} (over seeds {seeds}: {tally})",
            )
        )
    return out


def _progress_note(seconds: float, epochs: int, epochs_left: int, train_seconds: float, epochs_trained: int) -> str:
    """``"2.4 min"`` for a trained run (``"reused"`` for a finished one), then the time left at the pace so far: the
    seconds per epoch trained so far times the epochs left (rough where runs differ in cost per epoch; a batch-32 run
    takes 1.1 to 1.5 times as long as a batch-128 one of the same epochs)."""
    note = f"{seconds / 60:.1f} min" if epochs else "reused"
    if epochs_left and epochs_trained:
        minutes = epochs_left * train_seconds / epochs_trained / 60
        left = f"about {minutes:.0f} min" if minutes >= 1 else "under a minute"
        note += f"; {left} left ({epochs_left} epoch{'s' * (epochs_left > 1)} to train)"
    return note


def reproduce(
    preset: str,
    claim_ids: Iterable[str] | None = None,
    seeds: Sequence[int] = (0,),
    out_dir: str | Path | None = None,
    train: bool = True,
    runs_root: str | Path | None = None,
    progress: bool = True,
) -> ClaimsResult:
    """Train (``train=True``, reusing finished runs) what the claims need for each seed, decide them, and write the
    report (report.md, report.json, figures) into ``out_dir`` when given."""
    ids = list(claim_ids) if claim_ids is not None else list(C.CLAIMS)
    seeds = _check_seeds(seeds)
    start = time.perf_counter()
    per_seed, run_minutes, targets = {}, {}, {}
    # for the time left: each run's epochs still to train (read from the folders once, before any training) and the
    # pace so far
    plan = (
        {(p.seed, p.name): p.epochs_left for p in plan_runs(preset, ids, seeds, runs_root)}
        if train and progress
        else {}
    )
    epochs_left, epochs_trained, train_seconds = sum(plan.values()), 0, 0.0
    for seed in seeds:
        runs_dir = seed_runs_dir(preset, seed, runs_root)
        configs = claim_configs(preset, ids, seed, runs_dir)
        if train:
            for i, cfg in enumerate(configs, 1):
                t0 = time.perf_counter()
                if progress:
                    print(f"[seed {seed}, {i}/{len(configs)}] {cfg.name} ...", end=" ", file=sys.stderr, flush=True)
                epochs = plan.get((seed, cfg.name), 0)
                ensure_run(cfg.__class__(**{**cfg.to_dict(), "progress": False}))
                seconds = time.perf_counter() - t0
                run_minutes[f"seed{seed}/{cfg.name}"] = round(seconds / 60, 2)
                epochs_trained, train_seconds, epochs_left = (
                    epochs_trained + epochs,
                    train_seconds + seconds,
                    max(0, epochs_left - epochs),
                )
                if progress:
                    print(_progress_note(seconds, epochs, epochs_left, train_seconds, epochs_trained), file=sys.stderr)
        per_seed[seed] = C.decide_all(runs_dir, ids)
        targets[seed] = T.check_runs_dir(runs_dir)
    result = ClaimsResult(
        preset,
        list(seeds),
        per_seed,
        combine_seeds(per_seed),
        minutes=(time.perf_counter() - start) / 60,
        run_minutes=run_minutes,
        targets=targets if any(targets.values()) else {},
    )
    if out_dir is not None:
        result.report = C.write_report(result.combined, out_dir)
        if result.targets:
            result.targets_report = T.write_targets(result.targets, out_dir)
        _append_references(result.report[0], result.combined, preset)
        first = seed_runs_dir(preset, seeds[0], runs_root)
        result.figures = write_figures(first, ids, per_seed[seeds[0]], Path(out_dir) / "figures")
        if result.figures:
            lines = ["", f"## Figures (seed {seeds[0]})", ""]
            lines += [
                f"- {cid}: [{p.name}](figures/{p.name}) (interactive: figures/{p.stem}.html)"
                for cid, p in result.figures.items()
            ]
            atomic_write_text(result.report[0], result.report[0].read_text() + "\n".join(lines) + "\n")
        summary = {
            "preset": preset,
            "seeds": list(seeds),
            "minutes": round(result.minutes, 2),
            "run_minutes": run_minutes,
            "machine": machine_description(),
            "command": " ".join(sys.argv),
            "per_seed": {str(s): [v.to_dict() for v in vs] for s, vs in per_seed.items()},
            "targets": {
                str(s): {n: [c.to_dict() for c in cs] for n, cs in t.items()} for s, t in result.targets.items()
            },
        }
        atomic_write_text(Path(out_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")
    return result


def write_figures(
    runs_dir: str | Path, claim_ids: Iterable[str], verdicts: Sequence[C.Verdict], out_dir: str | Path
) -> dict[str, Path]:
    """One figure per claim with runs to draw: the quantities its criterion reads, for its runs under ``runs_dir``
    (:func:`erlib.story.claim_panels`), titled with the verdict; ``<claim>.png`` and ``<claim>.html`` in ``out_dir``.
    Returns claim → PNG path."""
    from erlib.plots import show
    from erlib.story import claim_panels

    status = {v.claim: v.status for v in verdicts}
    out = {}
    for claim_id in claim_ids:
        panels = claim_panels(claim_id, C.load_claim_runs(runs_dir, claim_id))  # type: ignore[arg-type]
        if panels:
            title = f"{claim_id} ({status.get(claim_id, '?')}): {C.CLAIMS[claim_id].title}"
            out[claim_id] = show(panels, claim_id, out_dir, title=title, display=False)["png"]
    return out


def reference_table(verdicts: Sequence[C.Verdict], references: Sequence[dict]) -> list[str]:
    """Markdown lines: the reader's verdicts next to those recorded in each committed reference set (its label,
    preset and command; the status per claim, combined over its seeds as :func:`combine_seeds` does)."""
    if not references:
        return []
    ids = [v.claim for v in verdicts]
    lines = [
        "",
        "## Next to the committed reference runs",
        "",
        "The verdicts of these runs next to those of the reference sets committed in `results/` (same claim "
        "functions; a reference set's verdict is combined over its seeds).",
        "",
        "| claim | these runs | "
        + " | ".join(C._cell(str(ref.get("label", ref["path"].name))) for ref in references)
        + " |",
        "| --- | --- | " + " | ".join("---" for _ in references) + " |",
    ]
    recorded = []
    for ref in references:
        per_seed = {int(seed): [C.Verdict.from_dict(v) for v in vs] for seed, vs in (ref.get("verdicts") or {}).items()}
        combined = {v.claim: v.status for v in combine_seeds(per_seed)} if per_seed else {}
        recorded.append(combined)
    for claim_id, v in zip(ids, verdicts):
        cells = [rec.get(claim_id, "—") for rec in recorded]
        lines.append(f"| {claim_id} | {v.status} | " + " | ".join(cells) + " |")
    lines.append("")
    for ref in references:
        lines.append(
            f"- {ref.get('label', ref['path'].name)}: preset `{ref.get('preset')}`, command `{ref.get('command')}`, "
            f"machine {ref.get('machine')}, erlib commit {str(ref.get('commit'))[:10]} ({ref['path']})."
        )
    return lines


def _append_references(report_md: Path, verdicts: Sequence[C.Verdict], preset: str) -> None:
    from erlib.story import REFERENCE_PRESETS

    shown = REFERENCE_PRESETS.get(preset, (preset,))
    refs = [r for r in reference_runs() if r.get("preset") in (None, *shown)]
    lines = reference_table(verdicts, refs)
    if lines:
        atomic_write_text(report_md, report_md.read_text() + "\n".join(lines) + "\n")


def machine_description() -> str:
    """The machine in a few words: the CUDA card, or the CPU model and its core count."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{model}, {os.cpu_count()} cores ({socket.gethostname()})"


# --------------------------------------------------------------------------------------------------- results/
def check_extra_roles(roles: Iterable[str]) -> list[str]:
    """``roles`` if each is one run folder name (letters, digits and ``._@+=,-``, no leading dot); else a
    ``ValueError`` naming the first that is not."""
    from erlib.config import RUN_NAME_PATTERN

    roles = list(roles)
    for role in roles:
        if not isinstance(role, str) or not RUN_NAME_PATTERN.fullmatch(role) or role in (".", ".."):
            raise ValueError(
                f"extra role {role!r} is not a run folder name (letters, digits and ._@+=,- ; no '/', no leading "
                "dot), e.g. dino-er@entropy_on=embedding"
            )
    return roles


def export_results(
    runs_dirs: dict[int, Path],
    dest: str | Path,
    label: str,
    command: str,
    claim_ids=None,
    preset: str | None = None,
    extra_roles: Sequence[str] = (),
) -> Path:
    """Copy the claims' runs (config.json, metrics.jsonl, meta.json; never a checkpoint) from ``runs_dirs`` (seed →
    folder) into ``dest/seed<k>/<role>/``, and write ``dest/summary.json``: the label ("CPU reference, small
    preset"), the command, the machine, erlib's commit, the claims exported (None: all), the verdicts computed from
    the copied runs and how the runs were made (:func:`run_provenance`). ``extra_roles`` are run folders outside the
    claims copied the same way where present (e.g. ``dino-er@entropy_on=embedding``, which notebook 05 compares);
    each must be one folder name."""
    check_extra_roles(extra_roles)
    dest = Path(dest)
    per_seed, targets = {}, {}
    roles = [spec.name for spec in C.required_runs(claim_ids)] + list(extra_roles)
    for seed, src in runs_dirs.items():
        for role in dict.fromkeys(roles):
            run_dir = Path(src) / role
            if not (run_dir / "config.json").is_file():
                continue
            target = dest / f"seed{seed}" / role
            target.mkdir(parents=True, exist_ok=True)
            for name in ("config.json", "metrics.jsonl", META):
                if (run_dir / name).is_file():
                    shutil.copyfile(run_dir / name, target / name)
        per_seed[seed] = [v.to_dict() for v in C.decide_all(dest / f"seed{seed}", claim_ids)]
        checks = T.check_runs_dir(dest / f"seed{seed}")
        targets[seed] = {name: [c.to_dict() for c in cs] for name, cs in checks.items()}
    meta = next((load_run(p).meta for p in dest.glob("seed*/*") if (p / "config.json").is_file()), {})
    summary = {
        "label": label,
        "preset": preset,
        "command": command,
        "machine": machine_description(),
        "commit": meta.get("commit"),
        "exported": datetime.now().isoformat(timespec="seconds"),
        "claims": list(claim_ids) if claim_ids is not None else None,
        "extra_roles": list(extra_roles),
        "verdicts": per_seed,
        "targets": targets,
        "provenance": run_provenance(dest),
    }
    atomic_write_text(dest / "summary.json", json.dumps(summary, indent=2) + "\n")
    return dest


def run_provenance(set_dir: str | Path) -> dict[str, dict[str, int]]:
    """How the runs of a reference set were made, from their ``meta.json``: the number of runs per erlib commit, per
    command line and per execution path ("cpu bf16 AVX512"), so that a set whose runs span several commits or were
    trained by several commands says so (``summary.json``'s ``commit`` is one run's)."""
    counts: dict[str, dict[str, int]] = {"commits": {}, "commands": {}, "execution": {}}
    for run_dir in sorted(Path(set_dir).glob("seed*/*")):
        if not (run_dir / "config.json").is_file():
            continue
        meta = load_run(run_dir).meta or {}
        ex = meta.get("execution") or {}
        keys = {
            "commits": str(meta.get("commit")),
            "commands": str(meta.get("command")),
            "execution": " ".join(str(ex.get(k)) for k in ("device", "precision", "cpu_capability") if ex.get(k)),
        }
        for field_name, key in keys.items():
            counts[field_name][key] = counts[field_name].get(key, 0) + 1
    return counts


def reference_runs(root: str | Path | None = None) -> list[dict]:
    """The committed reference sets under ``root``: each its ``summary.json`` plus ``path`` (its folder); the
    notebooks overlay their runs, labelled, next to the reader's own."""
    from erlib.data import ROOT

    out = []
    for summary in sorted(Path(root or ROOT / "results").glob("*/summary.json")):
        data = json.loads(summary.read_text())
        out.append({**data, "path": summary.parent})
    return out
