r"""The health targets of the CPU presets, checked on the ten base runs (each method and its ER variant).

The claims (:mod:`erlib.claims`) test the paper; these targets test the recipe: a preset is only fit to test the
paper if its base runs learn and stay healthy. Each target is a fixed threshold, stated before any run:

* every base run beats the untrained network by at least :data:`MIN_KNN_GAIN` in kNN200 accuracy (final epoch minus
  epoch 0, same bank and protocol);
* every base run ends with the monitor-batch η of its online embeddings at least :data:`MIN_FINAL_ETA`
  (η = (H̃ + κ) / log k, the normalised KDE entropy of :func:`erlib.bounds.normalized_entropy`: 0 for a collapsed
  batch, 1 when every kernel sees only itself; the trainer warns of collapse below 0.05, so 0.3 asks for a clearly
  spread batch, not merely an uncollapsed one);
* DINO and DINO-ER: the teacher's marginal entropy H(p̄_t) is at least 0.8 log K and its mean conditional entropy
  H(p_t) at most 0.5 log K at the last epoch (DINO's informative regime, between uniform outputs and one dominant
  output; the thresholds of claim C7);
* SwAV and SwAV-ER: the Sinkhorn codes keep a marginal entropy of at least 0.95 log K in every training record from
  epoch 1 on, and the predictions carry I(X;W) = H(p̄) − mean H(p) ≥ 1 nat at the last epoch (claim C6's thresholds);
* DeepCluster-v2 and its ER variant: the k-means clusters and the predictions each carry I(X;W) ≥ 1 nat.

A check is met (True) or missed (False; also when the value it reads is NaN or infinite), or undecided (None) when
the run was trained on synthetic data, has not finished the epochs its config plans, or lacks the key it reads.
Pure: no torch; runs are :class:`erlib.claims.RunLike`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from erlib import claims as C
from erlib.fileio import atomic_write_text

__all__ = [
    "MIN_KNN_GAIN",
    "MIN_FINAL_ETA",
    "ETA_KEY",
    "BASE_RUNS",
    "TargetCheck",
    "check_run",
    "check_runs_dir",
    "targets_table",
    "write_targets",
]

MIN_KNN_GAIN = 0.08  # kNN200 accuracy, as a fraction (8 points)
MIN_FINAL_ETA = 0.3
ETA_KEY = "monitor_eta_online"
#: the ten base runs, by their run-folder names
BASE_RUNS = tuple(f"{m}-er" if er else m for m in C.C5_METHODS for er in (False, True))


@dataclass(frozen=True)
class TargetCheck:
    """One target on one run: ``met`` is True, False, or None (undecided: ``measured`` says why)."""

    run: str
    target: str
    criterion: str
    measured: str
    met: bool | None
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return {True: "met", False: "missed", None: "undecided"}[self.met]

    def to_dict(self) -> dict:
        return {**asdict(self), "status": self.status}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TargetCheck:
        """The check :meth:`to_dict` wrote (``status`` is derived from ``met`` and not read)."""
        return cls(**{k: data[k] for k in ("run", "target", "criterion", "measured", "met")}, numbers=data["numbers"])


def _fraction(value: float, k: int) -> str:
    return f"{value / math.log(k):.2f} log K"


NON_FINITE = "non-finite (NaN or infinite)"


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _last(run: C.RunLike, key: str) -> float | None | str:
    """``key`` at the last epoch: a float, None when absent, or :data:`NON_FINITE` when present but NaN or ±∞."""
    last = C.last_epoch_record(run)
    raw = last.get(key) if last else None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and not _is_finite(raw):
        return NON_FINITE
    return C.final_value(run, key)


def _knn_gain(name: str, run: C.RunLike) -> TargetCheck:
    criterion = f"final kNN200 − untrained kNN200 ≥ {100 * MIN_KNN_GAIN:.0f} points"
    final, untrained = _last(run, C.KNN_KEY), C.untrained_knn(run)
    if isinstance(final, str):
        return TargetCheck(name, "kNN gain", criterion, final, False)
    if final is None or untrained is None:
        return TargetCheck(name, "kNN gain", criterion, "no kNN at epoch 0 or at the last epoch", None)
    gain = final - untrained
    measured = f"{100 * gain:+.1f} points, {100 * untrained:.1f} % → {100 * final:.1f} %"
    return TargetCheck(name, "kNN gain", criterion, measured, C.knn_at_least(gain, MIN_KNN_GAIN), {"gain": gain})


def _final_eta(name: str, run: C.RunLike) -> TargetCheck:
    criterion = f"monitor η of the online embeddings at the last epoch ≥ {MIN_FINAL_ETA}"
    eta = _last(run, ETA_KEY)
    if isinstance(eta, str):
        return TargetCheck(name, "final η", criterion, eta, False)
    if eta is None:
        return TargetCheck(name, "final η", criterion, f"no {ETA_KEY} at the last epoch", None)
    return TargetCheck(name, "final η", criterion, f"{eta:.2f}", eta >= MIN_FINAL_ETA, {"eta": eta})


def _dino_entropies(name: str, run: C.RunLike) -> TargetCheck:
    criterion = (
        f"teacher H(p̄_t) ≥ {C.C7_FULL_MARGINAL_FRACTION} log K and mean H(p_t) ≤ "
        f"{C.C7_FULL_CONDITIONAL_FRACTION} log K at the last epoch"
    )
    marginal = _last(run, "monitor_marginal_entropy_target")
    conditional = _last(run, "monitor_conditional_entropy_target")
    if isinstance(marginal, str) or isinstance(conditional, str):
        return TargetCheck(name, "teacher entropies", criterion, NON_FINITE, False)
    if marginal is None or conditional is None:
        return TargetCheck(name, "teacher entropies", criterion, "no teacher entropies at the last epoch", None)
    k = C.num_prototypes(run)
    met = C.dino_regime(marginal, conditional, k) == "informative"
    measured = f"H(p̄_t) {_fraction(marginal, k)}, H(p_t) {_fraction(conditional, k)}"
    numbers = {"marginal": marginal, "conditional": conditional, "K": k}
    return TargetCheck(name, "teacher entropies", criterion, measured, met, numbers)


def _information(name: str, run: C.RunLike, which: str) -> TargetCheck:
    """I(X;W) = H(p̄) − mean H(p) at the last epoch, of the predictions (``which="pred"``) or the targets."""
    label = {"pred": "I(X;W) of the predictions", "target": "I(X;W) of the clusters"}[which]
    criterion = f"H(p̄) − mean H(p) ≥ {C.C6_MIN_INFORMATION:g} nat at the last epoch (monitor batch)"
    marginal = _last(run, f"monitor_marginal_entropy_{which}")
    conditional = _last(run, f"monitor_conditional_entropy_{which}")
    if isinstance(marginal, str) or isinstance(conditional, str):
        return TargetCheck(name, label, criterion, NON_FINITE, False)
    if marginal is None or conditional is None:
        return TargetCheck(name, label, criterion, f"no {which} entropies at the last epoch", None)
    info = marginal - conditional
    return TargetCheck(name, label, criterion, f"{info:.2f} nats", info >= C.C6_MIN_INFORMATION, {"information": info})


def _swav_codes(name: str, run: C.RunLike) -> TargetCheck:
    criterion = f"code marginal entropy ≥ {C.C6_CODE_MARGINAL_FRACTION} log K in every training record from epoch 1"
    key = "marginal_entropy_target"
    late = [
        r for r in C.train_records(run) if key in r and isinstance(r.get("epoch"), (int, float)) and r["epoch"] >= 1
    ]
    if any(not _is_finite(r[key]) for r in late):
        return TargetCheck(name, "code marginal", criterion, NON_FINITE, False)
    codes = [float(r[key]) for r in late]
    if not codes:
        return TargetCheck(name, "code marginal", criterion, f"no {key} from epoch 1 on", None)
    k = C.num_prototypes(run)
    met = min(codes) >= C.C6_CODE_MARGINAL_FRACTION * math.log(k)
    return TargetCheck(name, "code marginal", criterion, f"min {_fraction(min(codes), k)}", met, {"min": min(codes)})


def check_run(name: str, run: C.RunLike) -> list[TargetCheck]:
    """Every target that applies to ``run`` (named ``name``, e.g. "swav-er"): the kNN gain and the final η for all,
    and the method's own (DINO's teacher entropies; SwAV's code marginal and information; DeepCluster-v2's). All are
    undecided on synthetic data and on a run that has not finished its planned epochs (``config["epochs"]``)."""
    method = run.config.get("method")
    checks = [_knn_gain(name, run), _final_eta(name, run)]
    if method == "dino":
        checks.append(_dino_entropies(name, run))
    elif method == "swav":
        checks += [_swav_codes(name, run), _information(name, run, "pred")]
    elif method == "deepcluster":
        checks += [_information(name, run, "target"), _information(name, run, "pred")]
    done, planned = C.epochs_completed(run), run.config.get("epochs")
    reason = ""
    if C.is_synthetic(run):
        reason = "synthetic data"
    elif done < 1:
        reason = "untrained: no epoch after epoch 0"
    elif isinstance(planned, int) and done < planned:
        reason = f"unfinished: {done} of {planned} epochs"
    if reason:
        checks = [TargetCheck(c.run, c.target, c.criterion, reason, None) for c in checks]
    return checks


def check_runs_dir(runs_dir: str | Path, names: Sequence[str] = BASE_RUNS) -> dict[str, list[TargetCheck]]:
    """run name → its checks, for each of ``names`` with a run folder under ``runs_dir`` (absent ones are left out)."""
    from erlib.runs import load_run  # reading folders is the one thing that needs erlib.runs

    runs_dir = Path(runs_dir)
    return {n: check_run(n, load_run(runs_dir / n)) for n in names if (runs_dir / n / "config.json").is_file()}


def targets_table(per_seed: Mapping[int, Mapping[str, Sequence[TargetCheck]]]) -> str:
    """A markdown table: one row per run and target, the measured value in each seed (✓ met, ✗ missed, ? undecided)
    and how many seeds met it; then the count of targets met in every seed."""
    seeds = sorted(per_seed)
    rows: dict[tuple[str, str], dict[int, TargetCheck]] = {}
    for seed in seeds:
        for checks in per_seed[seed].values():
            for check in checks:
                rows.setdefault((check.run, check.target), {})[seed] = check
    mark = {True: "✓", False: "✗", None: "?"}
    lines = [
        "| run | target | criterion | " + " | ".join(f"seed {s}" for s in seeds) + " | met in |",
        "| --- | --- | --- | " + " | ".join("---" for _ in seeds) + " | ---: |",
    ]
    always = partial = 0
    for (run, target), by_seed in rows.items():
        cells = [f"{mark[by_seed[s].met]} {by_seed[s].measured}" if s in by_seed else "— (no run)" for s in seeds]
        met = sum(1 for c in by_seed.values() if c.met)
        always += met == len(seeds)
        partial += len(by_seed) < len(seeds)
        criterion = next(iter(by_seed.values())).criterion
        lines.append(f"| {run} | {target} | {criterion} | " + " | ".join(cells) + f" | {met} of {len(by_seed)} |")
    summary = f"{always} of {len(rows)} targets met in every seed ({len(seeds)} seed(s))"
    if partial:
        summary += f"; {partial} of them lack the run in some seed"
    lines += ["", summary + "."]
    return "\n".join(lines)


def write_targets(per_seed: Mapping[int, Mapping[str, Sequence[TargetCheck]]], out_dir: str | Path) -> Path:
    """Write ``targets.md`` (the table of :func:`targets_table`) and ``targets.json`` into ``out_dir``; return the
    markdown path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = [
        "# Preset targets",
        "",
        "The health targets of the preset's base runs (`erlib.targets`); ✓ met, ✗ missed, ? undecided.",
        "",
    ]
    md = out_dir / "targets.md"
    atomic_write_text(md, "\n".join(header) + targets_table(per_seed) + "\n")
    data = {str(s): {n: [c.to_dict() for c in cs] for n, cs in runs.items()} for s, runs in per_seed.items()}
    atomic_write_text(out_dir / "targets.json", json.dumps(data, indent=2, allow_nan=False) + "\n")
    return md
