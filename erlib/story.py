"""What the training notebooks share: their runs, their curves, their verdicts.

The library does the work and a notebook tells the story. A notebook asks for the runs of a claim
(:func:`claim_runs`: the same run folders ``python -m erlib claims`` uses), draws them with :func:`curve` (x = epochs
completed, for training-batch and monitor-batch records alike), marks the untrained network and chance
(:func:`baselines`), overlays committed reference runs next to the reader's own (:func:`reference_curves`), and prints
each claim's computed verdict as its takeaway (:func:`takeaway`), so that no sentence states a result its numbers
contradict. :func:`data_banner` makes the synthetic fallback impossible to miss.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from erlib import claims as C
from erlib.plots import METHOD_ORDER, LineStyle, Panel, Series, color_for
from erlib.presets import default_runs_dir, ensure_run, preset_data, spec_config
from erlib.runs import Run, load_run

T = TypeVar("T")

__all__ = [
    "NUM_CLASSES",
    "fixed",
    "train_and_count_collapse",
    "describe_change",
    "f1_expectation",
    "data_banner",
    "claim_runs",
    "ensure_spec",
    "runs_for",
    "curve",
    "epoch_panel",
    "epoch_means",
    "baselines",
    "num_classes",
    "label",
    "method_color",
    "reference_curves",
    "reference_claim_runs",
    "reference_roles",
    "embedding_variant_source",
    "runs_from_reference",
    "CLAIM_FIGURE_KEYS",
    "INFORMATION_PRED",
    "claim_panels",
    "preset_targets",
    "takeaway",
    "verdict_table",
    "last",
    "ETA_LINES",
    "REFERENCE_PRESETS",
]

#: Classes of each dataset name (for chance lines).
NUM_CLASSES = {"cifar10-jpeg75": 10, "cifar10": 10, "cifar100": 100, "stl10": 10, "synthetic": 4}
#: Which committed reference sets a reader's preset is shown: its own, and for the tiny preview those of small too.
REFERENCE_PRESETS = {"tiny": ("tiny", "small"), "small": ("small",), "full": ("full",)}
#: Reference lines of every η panel.
ETA_LINES = [(1.0, "η = 1: the log k ceiling"), (0.0, "η = 0: collapse")]


def _display_markdown(text: str) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        if get_ipython() is not None:
            display(Markdown(text))
            return
    except ImportError:
        pass
    print(text)


def data_banner() -> str:
    """Say where the images come from; a loud warning (and every verdict INCONCLUSIVE) on the synthetic fallback."""
    data = preset_data()
    if data.real:
        text = f"Data: {data.note}."
    else:
        from erlib.presets import SYNTHETIC_WARNING

        text = f"> **⚠ Warning.** {SYNTHETIC_WARNING}"
        warnings.warn(SYNTHETIC_WARNING, stacklevel=2)
    _display_markdown(text)
    return text


# ------------------------------------------------------------------------------------------------------------- runs
def ensure_spec(
    preset: str,
    spec: C.RunSpec,
    runs_dir: str | Path | None = None,
    seed: int = 0,
    callback: Callable[[dict], None] | None = None,
    **overrides,
) -> Run:
    """The finished run of a claim's role in a preset (trained, resumed or reused: :func:`erlib.presets.ensure_run`)."""
    cfg = spec_config(preset, spec, runs_dir=runs_dir or default_runs_dir(preset, seed), seed=seed, **overrides)
    return ensure_run(cfg, callback=callback)


def claim_runs(
    preset: str,
    claim_id: str,
    runs_dir: str | Path | None = None,
    seed: int = 0,
    methods: Iterable[str] | None = None,
    verbose: bool = True,
) -> dict[str, Run]:
    """role → finished run, for every run claim ``claim_id`` reads (restricted to ``methods`` when given)."""
    wanted = set(methods) if methods is not None else None
    out = {}
    for spec in C.CLAIMS[claim_id].runs:
        if wanted is not None and spec.method not in wanted:
            continue
        out[spec.name] = ensure_spec(preset, spec, runs_dir, seed)
        if verbose:
            print(
                f"  {spec.name:26s} {C.epochs_completed(out[spec.name])} epochs, batch "
                f"{out[spec.name].config['batch_size']}, final kNN200 {_fmt(C.final_knn(out[spec.name]))}"
            )
    return out


def runs_for(names: Sequence[str], runs_dir: str | Path) -> dict[str, Run]:
    """Read back run folders that an earlier notebook trained (names are role names)."""
    return {name: load_run(Path(runs_dir) / name) for name in names}


def _fmt(x: float | None) -> str:
    return "–" if x is None else fixed(x)


def fixed(x: float, digits: int = 3, width: int = 0) -> str:
    """``x`` with ``digits`` decimals, right-aligned in ``width``, never as ``-0.000``: a value that rounds to zero is
    printed as ``0.000`` whatever the sign of its rounding noise."""
    return f"{round(float(x), digits) + 0.0:{width}.{digits}f}"


def train_and_count_collapse(train: Callable[[], T]) -> T:
    """Run ``train()`` (e.g. ``lambda: ensure_spec(...)``) and turn the trainer's collapse warnings (monitor η below
    the floor after an epoch) into one printed line per run; other warnings pass through. Returns what ``train``
    returns."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train()
    epochs: dict[str, list[str]] = {}
    for w in caught:
        text = str(w.message)
        if "the representation has collapsed" in text:
            role, _, rest = text.partition(": entropy at its floor after epoch ")
            epochs.setdefault(role, []).append(rest.split(" ")[0])
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for role, where in epochs.items():
        print(
            f"  {role}: the trainer warned that the monitor η fell below the collapse floor {C.COLLAPSE_ETA} "
            f"after epoch(s) {', '.join(where)}"
        )
    return result


def describe_change(run: Run, key: str, what: str, start: int = 0, band: float = C.C2_ETA_BAND) -> str:
    """'<what> went from a (epoch s) to b (epoch e): a rise of d, within ±band (range lo–hi)' from the run's epoch
    records from epoch ``start`` on: a sentence that can only say what the numbers say. The range shows a path that
    wandered further than its two ends."""
    points = [(e, v) for e, v in zip(*C.epoch_series(run, key)) if e >= start]
    if len(points) < 2:
        return f"{what}: fewer than two epoch records from epoch {start} on"
    (e0, v0), (e1, v1) = points[0], points[-1]
    lo, hi = min(v for _, v in points), max(v for _, v in points)
    size = f"{abs(v1 - v0):.3f}"
    if float(size) == 0.0:  # nothing to name a direction for at the precision printed
        change = "no change at three decimals"
    else:
        change = f"a {'rise' if v1 > v0 else 'fall'} of {size}"
    change += f", within ±{band}" if abs(v1 - v0) <= band else f", more than ±{band}"
    return f"{what} went from {v0:.3f} (epoch {e0}) to {v1:.3f} (epoch {e1}): {change} (range {lo:.3f}–{hi:.3f})"


F1_RISING, F1_PLATEAU = ("simclr", "swav"), ("byol", "dino")


def f1_expectation(run: Run, key: str = "monitor_eta_online") -> tuple[str, bool | None, str]:
    """Figure F1's expected shape of a run's η curve, whether the epoch records show it, and the numbers judged.

    * SimCLR, SwAV and every ER variant maximise an entropy term: "rise", shown when the last η exceeds the
      epoch-0 η by more than 0.02;
    * BYOL and DINO have none: "a transient, then a plateau", shown when every η from epoch ``C2_REF_EPOCH`` on lies
      within ±``C2_ETA_BAND`` of the epoch-``C2_REF_EPOCH`` value and above the collapse floor, judged (as claim C2)
      only on runs of at least ``C2_MIN_EPOCHS`` epochs;
    * anything else (DeepCluster-v2): no shape stated.

    ``shows`` is None where nothing is judged; ``detail`` gives the plateau's numbers ("" otherwise)."""
    xs, ys = C.epoch_series(run, key)
    if run.config.get("er") or run.config["method"] in F1_RISING:
        return "rise towards the ceiling", (ys[-1] > ys[0] + 0.02) if len(ys) >= 2 else None, ""
    if run.config["method"] not in F1_PLATEAU:
        return "no shape stated", None, ""
    shape, ref = "a transient, then a plateau", C.value_at_epoch(run, key, C.C2_REF_EPOCH)
    if ref is None or C.epochs_completed(run) < C.C2_MIN_EPOCHS:
        return shape, None, ""
    tail = [y for x, y in zip(xs, ys) if x >= C.C2_REF_EPOCH]
    distance = max(abs(y - ref) for y in tail)
    detail = (
        f"from epoch {C.C2_REF_EPOCH} ({ref:.3f}) on: range {min(tail):.3f}–{max(tail):.3f}, largest distance from "
        f"the epoch-{C.C2_REF_EPOCH} value {distance:.3f} (band ±{C.C2_ETA_BAND})"
    )
    return shape, distance <= C.C2_ETA_BAND and min(tail) >= C.COLLAPSE_ETA, detail


# ----------------------------------------------------------------------------------------------------------- curves
def label(run: Run | Mapping) -> str:
    """``BYOL-ER``, ``DINO (sharpening=False)``: a run's method, variant and distinguishing options."""
    config = run.config if isinstance(run, Run) else run
    name = C._label(config["method"], bool(config.get("er")))
    tag = Path(run.path).name.partition("@")[2] if isinstance(run, Run) else ""
    return f"{name} ({tag})" if tag else name


def method_color(method: str) -> str:
    return color_for(METHOD_ORDER.index(method)) if method in METHOD_ORDER else color_for(7)


def last(run: Run, key: str) -> float | None:
    """The value of ``key`` after the last epoch (monitor keys and kNN)."""
    return C.final_value(run, key)


def curve(
    run: Run,
    key: str,
    name: str | None = None,
    color: str | None = None,
    dash: bool | LineStyle | None = None,
    kind: str | None = None,
) -> Series:
    """A run's curve of ``key`` against epochs completed. ``monitor_*`` and ``knn*`` come from the epoch records
    (epoch 0 = the untrained network), other keys from the training-batch records (``kind`` forces one)."""
    kind = kind or ("epoch" if key.startswith(("monitor_", "knn")) else "train")
    xs, ys = C.epoch_series(run, key) if kind == "epoch" else C.train_series(run, key)
    return Series(
        xs,
        ys,
        name or label(run),
        color or method_color(run.config["method"]),
        dash=bool(run.config.get("er")) if dash is None else dash,
        points=kind == "epoch" and len(xs) < 30,
    )


def epoch_means(run: Run, key: str) -> dict[int, float]:
    """epoch → mean of a training-batch metric over that epoch's records (epoch e holds records in (e − 1, e])."""
    out = {}
    for e in range(1, C.epochs_completed(run) + 1):
        value = C.train_epoch_mean(run, key, e)
        if value is not None:
            out[e] = value
    return out


def epoch_panel(
    runs: Sequence[Run],
    key: str,
    title: str,
    ylabel: str,
    preset: str | None = None,
    hlines: Iterable[tuple[float, str]] = (),
    names: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
) -> Panel:
    """A panel of ``key`` against epochs completed for ``runs`` (names and colours optional), with the committed
    reference runs of the same roles for ``preset`` (:func:`reference_curves`) and the given reference lines."""
    series = [
        curve(run, key, name=names[i] if names else None, color=colors[i] if colors else None)
        for i, run in enumerate(runs)
    ]
    series += [ref for run in runs for ref in reference_curves(Path(run.path).name, key, preset)]
    return Panel(series, title, "epochs completed", ylabel, hlines=list(hlines))


def num_classes(run: Run) -> int:
    return NUM_CLASSES.get(run.config.get("dataset", ""), 10)


def baselines(runs: Iterable[Run], key: str = "knn200") -> list[tuple[float, str]]:
    """Reference lines of a kNN panel: chance (1 / classes) and the untrained network's accuracy on the same bank and
    protocol (the epoch-0 record; the backbone's initial weights depend only on the seed, so it is one value per
    seed and data set — the mean is drawn if runs differ)."""
    runs = list(runs)
    lines = [(1.0 / num_classes(runs[0]), f"chance (1/{num_classes(runs[0])})")] if runs else []
    untrained = [v for v in (C.untrained_knn(r, key) for r in runs) if v is not None]
    if untrained:
        lines.append((sum(untrained) / len(untrained), "untrained network"))
    return lines


def reference_curves(
    role: str, key: str, preset: str | None = None, root: str | Path | None = None, seed: int = 0
) -> list[Series]:
    """Curves of ``role`` from the committed reference sets (``results/``), grey and dotted, labelled with their
    set's label ("CPU reference, small preset, …"), to draw next to the reader's own run of ``preset``: sets of the
    same preset, and for ``tiny`` (the preview of ``small``) the ``small`` sets too (:data:`REFERENCE_PRESETS`).
    Each set contributes its run of ``seed``; a set of several seeds says which one is drawn."""
    from erlib.reproduce import reference_runs

    shown = REFERENCE_PRESETS.get(preset, (preset,)) if preset is not None else None
    out = []
    for i, ref in enumerate(reference_runs(root)):
        if shown is not None and ref.get("preset") is not None and ref["preset"] not in shown:
            continue
        run_dir = Path(ref["path"]) / f"seed{seed}" / role
        if not (run_dir / "config.json").is_file():
            continue
        run = load_run(run_dir)
        several = len({p.name for p in Path(ref["path"]).glob("seed*") if p.is_dir()}) > 1
        drawn = f" — seed {seed} drawn" if several else ""
        series = curve(
            run,
            key,
            name=f"{ref.get('label', 'reference')}{drawn}: {label(run)}",
            color="#888888" if i == 0 else "#BBBBBB",
            dash="dot",
        )
        out.append(series)
    return out


#: Presets whose notebooks read some claims' comparison runs from the committed reference set by default
#: (``"auto"``): on ``small``, C4's eight small-batch runs (notebook 07) and C7's two DINO ablations (notebook 05)
#: would take those notebooks past their 12-minute budget on a 2-core CPU.
REFERENCE_RUNS_PRESETS = ("small",)


def runs_from_reference(choice: str, preset: str, parameter: str = "batch_runs") -> bool:
    """Whether a notebook reads a claim's runs from the committed reference set (:func:`reference_claim_runs`) rather
    than training them: ``"reference"`` yes, ``"train"`` no, ``"auto"`` on the presets of
    :data:`REFERENCE_RUNS_PRESETS`. Any other value of the notebook's ``parameter`` is refused before any work."""
    if choice not in ("auto", "train", "reference"):
        raise ValueError(f"{parameter} must be 'auto', 'train' or 'reference', got {choice!r}")
    return choice == "reference" or (choice == "auto" and preset in REFERENCE_RUNS_PRESETS)


def embedding_variant_source(dino_er_embedding: bool | None, preset: str) -> str:
    """Where notebook 05 takes DINO-ER with ``entropy_on="embedding"`` from: ``"train"`` (True, or None on ``full``),
    ``"reference"`` (None on ``small``: the committed run, since training it too would overrun the notebook's time
    budget) or ``"off"`` (False, or None on ``tiny``). Any other value is refused before any work starts."""
    if dino_er_embedding not in (None, True, False):
        raise ValueError(f"dino_er_embedding must be None, True or False, got {dino_er_embedding!r}")
    if dino_er_embedding is not None:
        return "train" if dino_er_embedding else "off"
    return {"small": "reference", "tiny": "off"}.get(preset, "train")


def reference_roles(
    preset: str, roles: Sequence[str], seed: int = 0, root: str | Path | None = None, why: str = ""
) -> tuple[dict[str, Run], str]:
    """role → run read from a committed reference set (``results/``) instead of trained, and the set's label: the
    most recently exported set of exactly ``preset`` that holds every one of ``roles`` for ``seed``. Used where
    training those runs would overrun a notebook's time budget; the notebook then says that it shows committed runs.
    Raises ``ValueError`` naming ``why`` (the way out) when no set holds them."""
    from erlib.reproduce import reference_runs

    sets = [ref for ref in reference_runs(root) if ref.get("preset") == preset]
    for ref in sorted(sets, key=lambda r: str(r.get("exported", "")), reverse=True):
        seed_dir = Path(ref["path"]) / f"seed{seed}"
        if all((seed_dir / role / "config.json").is_file() for role in roles):
            return {role: load_run(seed_dir / role) for role in roles}, str(ref.get("label", ref["path"]))
    raise ValueError(
        f"no committed reference set of preset {preset!r} holds {', '.join(roles)} for seed {seed}"
        + (f"; {why}" if why else "")
    )


def reference_claim_runs(
    preset: str, claim_id: str, seed: int = 0, root: str | Path | None = None, why: str = "batch_runs = 'train'"
) -> tuple[dict[str, Run], str]:
    """role → run of claim ``claim_id`` read from a committed reference set (:func:`reference_roles`), and the set's
    label: notebooks 05 and 07 read C7's ablations and C4's small-batch runs this way on ``small``, where training
    them would overrun their time budget; the verdict then describes the committed runs, and the notebook says so.
    ``why`` names the notebook parameter that trains them instead."""
    roles = [spec.name for spec in C.CLAIMS[claim_id].runs]
    try:
        return reference_roles(preset, roles, seed, root)
    except ValueError:
        raise ValueError(
            f"no committed reference set of preset {preset!r} holds every run of {claim_id} for seed {seed}; "
            f"train them instead ({why})"
        ) from None


#: A derived figure key: the information the predictions carry, I(X;W) = H(p̄) − mean H(p) on the monitor batch.
INFORMATION_PRED = "information_pred"
#: What each claim's report figure draws: the quantities its criterion reads, as (key, y-axis label). ``monitor_*``
#: and ``knn*`` keys come from the epoch records (epoch 0 = the untrained network), the others from the training
#: batches (:func:`curve`).
CLAIM_FIGURE_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "C2": (
        (C.C2_ETA_KEY, "η of the target projections (monitor)"),
        (C.C2_COSINE_KEY, "mean cosine, prediction · target (monitor)"),
    ),
    "C3": ((C.KNN_KEY, "kNN top-1 (k = 200)"), (C.C3_ETA_KEY, "η of the online projections (monitor)")),
    "C4": ((C.KNN_KEY, "kNN top-1 (k = 200)"),),
    "C5": ((C.KNN_KEY, "kNN top-1 (k = 200)"),),
    "C6": (
        ("marginal_entropy_target", "code marginal entropy (training batches), nats"),
        ("monitor_cross_entropy", "cross-entropy codes · predictions, nats"),
        (INFORMATION_PRED, "I(X;W) = H(p̄) − mean H(p) of the predictions, nats"),
    ),
    "C7": (
        ("monitor_marginal_entropy_target", "teacher H(p̄_t) (monitor), nats"),
        ("monitor_conditional_entropy_target", "teacher mean H(p_t) (monitor), nats"),
    ),
    "C8": (("monitor_infonce", "InfoNCE bound (monitor), nats"), ("monitor_er_bound", "ER estimate (monitor), nats")),
    "C9": (
        (C.C9_ETA_KEY, "η of the online projections, training batches"),
        (f"monitor_{C.C9_ETA_KEY}", "η of the online projections (monitor)"),
    ),
}


def _ceiling_lines(key: str, runs: Sequence[Run]) -> list[tuple[float, str]]:
    """Reference lines of a claim panel: η's 0 and 1, chance and the untrained network for kNN, log K for the entropies
    of K outputs, log k for the bounds estimated on k monitor samples."""
    if "eta_" in key:  # eta_online, monitor_eta_target, ...
        return list(ETA_LINES)
    if key.startswith("knn"):
        return baselines(runs, key)
    if key == INFORMATION_PRED:
        return [(C.C6_MIN_INFORMATION, f"{C.C6_MIN_INFORMATION:g} nat (C6's threshold)"), (0.0, "0: no information")]
    if "entropy" in key:
        sizes = sorted(
            {C.num_prototypes(run) for run in runs if run.config.get("method") in ("swav", "deepcluster", "dino")}
        )
        return [(math.log(k), f"log K (K = {k})") for k in sizes]
    k = runs[0].config.get("monitor_size")
    if key in ("monitor_infonce", "monitor_er_bound") and k:
        return [(math.log(k), f"log k (k = {k})")]
    return []


def _information_curve(run: Run) -> Series:
    """I(X;W) = H(p̄) − mean H(p) of a run's predictions on the monitor batch, at every epoch that logged both."""
    marginal = dict(zip(*C.epoch_series(run, "monitor_marginal_entropy_pred")))
    conditional = dict(zip(*C.epoch_series(run, "monitor_conditional_entropy_pred")))
    epochs = [e for e in marginal if e in conditional]
    values = [marginal[e] - conditional[e] for e in epochs]
    return Series(epochs, values, label(run), dash=bool(run.config.get("er")), points=len(epochs) < 30)


def claim_panels(claim_id: str, runs: Mapping[str, Run | None]) -> list[Panel]:
    """The panels of claim ``claim_id``'s report figure: for each quantity its criterion reads
    (:data:`CLAIM_FIGURE_KEYS`), every run of the claim against epochs completed (one panel per method for the claims
    decided method by method), one colour per run, ER variants dashed, with the panel's reference lines. Runs that
    are missing or never logged the key are left out; an empty list means nothing to draw."""
    present = [run for run in runs.values() if run is not None]
    if C.CLAIMS[claim_id].per_method:
        methods = dict.fromkeys(run.config["method"] for run in present)
        groups = [(C._label(m), [run for run in present if run.config["method"] == m]) for m in methods]
    else:
        groups = [("", present)]
    panels = []
    for key, ylabel in CLAIM_FIGURE_KEYS[claim_id]:
        for title, members in groups:
            series = []
            for i, run in enumerate(members):
                line = _information_curve(run) if key == INFORMATION_PRED else curve(run, key)
                line.color = color_for(i)
                if len(line.x):
                    series.append(line)
            if series:
                hlines = _ceiling_lines(key, members)
                panels.append(Panel(series, title or ylabel, "epochs completed", ylabel, hlines=hlines))
    return panels


def preset_targets(
    runs: Mapping[str, Run], preset: str | None = None, seed: int = 0, root: str | Path | None = None
) -> str:
    """Display the preset's health targets (:mod:`erlib.targets`) of the base runs among ``runs`` (role → Run) as a
    table, then a sentence generated from the checks (how many are met, each missed one with its number), then for
    each committed reference set shown next to ``preset`` (as :func:`reference_curves` chooses them) how many of its
    recorded targets were met in every seed. Returns the markdown."""
    from erlib import targets
    from erlib.reproduce import reference_runs

    checks = {name: targets.check_run(name, run) for name, run in runs.items() if name in targets.BASE_RUNS}
    every = [c for cs in checks.values() for c in cs]
    missed = [c for c in every if c.met is False]
    undecided = [c for c in every if c.met is None]
    sentence = f"**These runs meet {sum(c.met is True for c in every)} of {len(every)} targets.**"
    if undecided:
        sentence += f" {len(undecided)} undecided ({', '.join(sorted({c.measured for c in undecided}))})."
    by_target: dict[str, list] = {}
    for c in missed:
        by_target.setdefault(c.target, []).append(c)
    if missed:
        sentence += " Missed:\n" + "\n".join(
            f"* {target}, {len(cs)} of {sum(c.target == target for c in every)} runs: "
            + "; ".join(f"{c.run} {c.measured}" for c in cs)
            for target, cs in by_target.items()
        )
    parts = ["\n".join(targets.targets_table({seed: checks}).splitlines()[:-2]), "", sentence]
    shown = REFERENCE_PRESETS.get(preset, (preset,)) if preset is not None else None
    for ref in reference_runs(root):
        if not ref.get("targets") or (shown is not None and ref.get("preset") not in shown):
            continue
        recorded = {
            int(s): {n: [targets.TargetCheck.from_dict(c) for c in cs] for n, cs in by_run.items()}
            for s, by_run in ref["targets"].items()
        }
        if any(recorded.values()):
            parts.append(f"\n*{ref.get('label', 'reference')}:* " + targets.targets_table(recorded).splitlines()[-1])
    text = "\n".join(parts)
    _display_markdown(text)
    return text


# --------------------------------------------------------------------------------------------------------- verdicts
_BADGE = {C.PASS: "✅ PASS", C.FAIL: "❌ FAIL", C.INCONCLUSIVE: "⚠ INCONCLUSIVE"}


def takeaway(verdict: C.Verdict) -> str:
    """Print a verdict as a notebook takeaway: claim, status, what the runs measured, the criterion (and why it could
    not be decided); returns the markdown."""
    text = (
        f"**{verdict.claim} — {_BADGE[verdict.status]}: {verdict.title}.** {verdict.sentence}\n\n"
        f"*Criterion (fixed before the run):* {verdict.criterion}"
    )
    if verdict.reason:
        text += f"\n\n*Why it is not decided:* {verdict.reason}"
    _display_markdown(text)
    return text


def verdict_table(verdicts: Iterable[C.Verdict]) -> str:
    """A markdown table of verdicts (claim, status, title), displayed and returned."""
    rows = ["| claim | verdict | what it says |", "| --- | --- | --- |"]
    rows += [f"| {v.claim} | {_BADGE[v.status]} | {html.escape(v.title)} |" for v in verdicts]
    text = "\n".join(rows)
    _display_markdown(text)
    return text
