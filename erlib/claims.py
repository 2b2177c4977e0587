r"""Claim verdicts computed from runs: one function per claim (C2–C9), criteria fixed in code.

The paper (Rodríguez-Gálvez et al., "The Role of Entropy and Reconstruction in Multi-View Self-Supervised Learning",
ICML 2023) states in its abstract that distillation methods (BYOL, DINO) "explicitly maximize the reconstruction term
and implicitly encourage a stable entropy", that clustering methods (DeepCluster, SwAV) maximise the mutual
information, and that the ER variants are competitive and stable with smaller batch sizes and smaller EMA
coefficients; C6–C9 follow from the derivations (``docs/theory.md``, section "Claims"). Each claim function here takes
run folders read back (:class:`erlib.runs.Run`, or a mapping role → Run) and returns a :class:`Verdict`: PASS, FAIL or
INCONCLUSIVE, the criterion as a sentence, the numbers it used, and one plain sentence of what the runs measured — the
sentence a notebook prints as its takeaway, so that no notebook states a result its numbers contradict.

Every threshold is a named module constant and every criterion sentence is built from them, before any run is seen.
A verdict is INCONCLUSIVE, with the reason, when a run is missing, does not match its role (method, ER flag, options,
batch size), is shorter than the claim needs, was trained on the synthetic fallback dataset, or lacks a key the
criterion reads.

:data:`CLAIMS` describes, for each claim, the runs it needs abstractly (:class:`RunSpec`: method, ER flag, method
option overrides, batch-size role) so that a command can train what is missing; a run's role name is the run folder
name it is looked up under (:func:`load_claim_runs`). :func:`write_report` writes ``report.md`` and ``report.json``.

Pure: no training and no torch — records are plain dicts (``import erlib.claims`` does not import torch).

Record format (see :mod:`erlib.runs`): "train" records carry the training-batch metrics with ``epoch`` = epochs
completed as a float; "epoch" records carry ``monitor_<key>`` for the fixed monitor batch and ``knn200`` / ``knn20``,
with ``epoch`` = epochs completed (an int), one of them at epoch 0 (the untrained network).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

__all__ = [
    "PASS",
    "FAIL",
    "INCONCLUSIVE",
    "STATUSES",
    "KNN_KEY",
    "COLLAPSE_ETA",
    "SYNTHETIC_DATASET",
    "RunLike",
    "RunSpec",
    "ClaimSpec",
    "Verdict",
    "CLAIMS",
    "epoch_records",
    "train_records",
    "last_epoch_record",
    "epochs_completed",
    "epoch_series",
    "monitor_series",
    "train_series",
    "value_at_epoch",
    "final_value",
    "final_knn",
    "untrained_knn",
    "train_epoch_mean",
    "is_synthetic",
    "num_prototypes",
    "c2_byol_entropy_stable",
    "c3_small_ema",
    "c4_small_batches",
    "c5_er_competitive",
    "c6_clustering_maximises_mi",
    "c7_dino_centering_sharpening",
    "dino_regime",
    "c8_infonce_and_er_below_log_k",
    "c9_batch_size_and_monitor_entropy",
    "decide",
    "decide_all",
    "required_runs",
    "load_claim_runs",
    "write_report",
    "read_report",
    "format_verdicts",
]

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
STATUSES = (PASS, FAIL, INCONCLUSIVE)

#: The kNN accuracy the verdicts compare (weighted kNN top-1, k = 200, t = 0.1, cosine, backbone features).
KNN_KEY = "knn200"
#: kNN accuracies are multiples of 1 / (test images) but are logged in float32, so the difference of two can miss a
#: threshold it sits on by about 1e-8 (0.266 − 0.246 = 0.0199999958). A difference within this of a threshold counts
#: as reaching it; it is far below the resolution of any accuracy (1e-4 for 10,000 test images).
KNN_TOLERANCE = 1e-6
#: η below this is a collapsed representation (the trainer warns below it).
COLLAPSE_ETA = 0.05
#: ``config["dataset"]`` of the fallback data used when no real images are available.
SYNTHETIC_DATASET = "synthetic"
SYNTHETIC_REASON = (
    "trained on the synthetic fallback dataset (no real images were available), so the numbers show "
    "the mechanics, not the paper's claims"
)

# Method defaults a verdict needs when a run's config leaves them out (config.json holds only the overrides);
# tests/test_claims.py checks them against erlib.methods.
DEFAULT_NUM_PROTOTYPES = {"swav": 3000, "deepcluster": 3000, "dino": 4096}  # K (DeepCluster-v2: the first head's)


# ---------------------------------------------------------------------------------------------------------------------
# Runs, specs, verdicts
# ---------------------------------------------------------------------------------------------------------------------


@runtime_checkable
class RunLike(Protocol):
    """What a verdict reads from a run: :class:`erlib.runs.Run` or anything with these attributes."""

    path: Path
    config: dict
    records: list[dict]


@dataclass(frozen=True)
class RunSpec:
    """A run a claim needs, described abstractly; :attr:`name` is its role and the run folder it is looked up under.

    ``method_options`` are overrides the run must have (e.g. ``{"tau_base": 0.0}``); options not named keep the
    preset's values. ``batch="small"``: a batch several times smaller than the preset's (e.g. 64 against 256), with
    the learning rate scaled linearly; ``"base"``: the preset's batch. ``required=False``: trained for comparison
    and reported when present, not needed for the verdict.
    """

    method: str
    er: bool = False
    method_options: dict = field(default_factory=dict, hash=False)
    batch: str = "base"
    required: bool = True

    def __post_init__(self) -> None:
        if self.batch not in ("base", "small"):
            raise ValueError(f"RunSpec.batch must be 'base' or 'small', got {self.batch!r}")

    @property
    def tag(self) -> str:
        """``tau_base=0.0``, ``bs-small``, ``sharpening=False``: what distinguishes the run from the preset's."""
        parts = [f"{key}={value}" for key, value in sorted(self.method_options.items())]
        return ",".join(parts + (["bs-small"] if self.batch == "small" else []))

    @property
    def name(self) -> str:
        """``byol``, ``byol-er@tau_base=0.0``, ``simclr@bs-small``: the role and the run folder name."""
        base = self.method + ("-er" if self.er else "")
        return base + (f"@{self.tag}" if self.tag else "")

    def mismatch(self, run: RunLike) -> str | None:
        """Why ``run`` cannot play this role (method, ER flag or an option differs), or None if it can."""
        config = run.config
        er = bool(config.get("er", False))
        if config.get("method") != self.method or er != self.er:
            got = f"{config.get('method')}{'-er' if er else ''}"
            return f"the run given as {self.name} ({run.path}) is {got}, not {self.method}{'-er' if self.er else ''}"
        options = config.get("method_options") or {}
        for key, value in self.method_options.items():
            if key not in options or options[key] != value:
                return (
                    f"the run given as {self.name} ({run.path}) has {key}={options.get(key, '<preset default>')}, "
                    f"not {key}={value}"
                )
        return None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "method": self.method,
            "er": self.er,
            "method_options": dict(self.method_options),
            "batch": self.batch,
            "required": self.required,
        }


@dataclass(frozen=True)
class Verdict:
    """The outcome of one claim on given runs.

    ``status``: PASS / FAIL / INCONCLUSIVE; ``criterion``: the fixed criterion, as a sentence; ``numbers``: every value
    the decision used (nested per method for the multi-method claims); ``sentence``: what the runs measured, in plain
    words (a notebook's takeaway); ``reason``: why it is INCONCLUSIVE ("" otherwise); ``runs``: role → run folder.
    """

    claim: str
    title: str
    status: str
    criterion: str
    numbers: dict
    sentence: str
    reason: str = ""
    runs: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == PASS

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        names = ("claim", "title", "status", "criterion", "numbers", "sentence", "reason", "runs")
        missing = [n for n in names[:6] if n not in data]
        if missing:
            raise ValueError(f"a verdict record lacks {missing}; it must hold {list(names)}")
        if data["status"] not in STATUSES:
            raise ValueError(f"verdict status must be one of {STATUSES}, got {data['status']!r}")
        return cls(**{n: data[n] for n in names if n in data})

    def __str__(self) -> str:
        return f"{self.claim} {self.status}: {self.sentence}"


@dataclass(frozen=True)
class ClaimSpec:
    """A claim: its id and title, its criterion sentence, the epochs its runs need, the runs, and its function.

    ``per_method=True``: the runs come in groups of one method each and the claim is decided over the methods whose
    runs are given (at least one method, each one complete).
    """

    id: str
    title: str
    criterion: str
    min_epochs: int
    runs: tuple[RunSpec, ...]
    decide: Callable[[Any], Verdict]
    per_method: bool = False

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.runs)

    def spec(self, role: str) -> RunSpec:
        for spec in self.runs:
            if spec.name == role:
                return spec
        raise ValueError(f"{self.id} has no run role {role!r}; its roles are {list(self.roles)}")


# ---------------------------------------------------------------------------------------------------------------------
# Reading records (helpers the notebooks use too)
# ---------------------------------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite real number as a float, else None (missing, NaN, a string...)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def epoch_records(run: RunLike) -> list[dict]:
    """The run's "epoch" records in order of ``epoch`` (epochs completed); of two with the same epoch the later wins."""
    by_epoch: dict[int, dict] = {}
    for record in run.records:
        if record.get("kind") == "epoch" and _number(record.get("epoch")) is not None:
            by_epoch[int(record["epoch"])] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def train_records(run: RunLike) -> list[dict]:
    """The run's "train" records in order of ``step``."""
    records = [r for r in run.records if r.get("kind") == "train" and _number(r.get("step")) is not None]
    return sorted(records, key=lambda r: r["step"])


def last_epoch_record(run: RunLike) -> dict | None:
    """The record of the last completed epoch, or None if the run has none."""
    records = epoch_records(run)
    return records[-1] if records else None


def epochs_completed(run: RunLike) -> int:
    """Epochs the run completed (its last "epoch" record), 0 if it has none."""
    last = last_epoch_record(run)
    return int(last["epoch"]) if last else 0


def epoch_series(run: RunLike, key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of ``key`` in the "epoch" records that hold a finite value of it."""
    xs, ys = [], []
    for record in epoch_records(run):
        value = _number(record.get(key))
        if value is not None:
            xs.append(int(record["epoch"]))
            ys.append(value)
    return xs, ys


def monitor_series(run: RunLike, key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of a monitor-batch metric: ``key`` with or without its ``monitor_`` prefix."""
    return epoch_series(run, key if key.startswith("monitor_") else f"monitor_{key}")


def train_series(run: RunLike, key: str) -> tuple[list[float], list[float]]:
    """(epochs completed as floats, values) of a training-batch metric."""
    xs, ys = [], []
    for record in train_records(run):
        value, epoch = _number(record.get(key)), _number(record.get("epoch"))
        if value is not None and epoch is not None:
            xs.append(epoch)
            ys.append(value)
    return xs, ys


def value_at_epoch(run: RunLike, key: str, epoch: int) -> float | None:
    """``key`` in the record of epoch ``epoch`` (epochs completed), or None."""
    for e, value in zip(*epoch_series(run, key)):
        if e == epoch:
            return value
    return None


def final_value(run: RunLike, key: str) -> float | None:
    """``key`` in the record of the last completed epoch, or None (also when only earlier epochs hold it)."""
    last = last_epoch_record(run)
    return _number(last.get(key)) if last else None


def final_knn(run: RunLike, key: str = KNN_KEY) -> float | None:
    """The kNN accuracy after the last epoch."""
    return final_value(run, key)


def untrained_knn(run: RunLike, key: str = KNN_KEY) -> float | None:
    """The kNN accuracy of the untrained network (the epoch-0 record), on the same bank and protocol as the others."""
    return value_at_epoch(run, key, 0)


def knn_at_least(difference: float, threshold: float) -> bool:
    """``difference >= threshold`` for a difference of two kNN accuracies, up to their float32 logging
    (:data:`KNN_TOLERANCE`): a gain of exactly 2 points counts as 2 points."""
    return difference >= threshold - KNN_TOLERANCE


def knn_gain(run: RunLike, key: str = KNN_KEY) -> float | None:
    """Final kNN accuracy minus the untrained network's (epoch 0), or None when either is missing."""
    final, untrained = final_knn(run, key), untrained_knn(run, key)
    return None if final is None or untrained is None else final - untrained


def train_epoch_mean(run: RunLike, key: str, epoch: int) -> float | None:
    """Mean of a training-batch metric over the records of epoch ``epoch`` (``epoch - 1 < record epoch <= epoch``)."""
    values = [v for x, v in zip(*train_series(run, key)) if epoch - 1 < x <= epoch]
    return sum(values) / len(values) if values else None


def is_synthetic(run: RunLike) -> bool:
    """Whether the run was trained on the synthetic fallback dataset."""
    return run.config.get("dataset") == SYNTHETIC_DATASET


def num_prototypes(run: RunLike) -> int:
    """K of a clustering or DINO run: ``num_prototypes`` (SwAV; DeepCluster-v2's first head) or ``out_dim`` (DINO)."""
    method: Any = run.config.get("method")  # a JSON value from config.json: normally a method name
    options = run.config.get("method_options") or {}
    value = options.get("out_dim" if method == "dino" else "num_prototypes", DEFAULT_NUM_PROTOTYPES.get(method))
    if isinstance(value, (list, tuple)):
        value = value[0]
    if value is None:
        raise ValueError(
            f"run {run.path} is a {method} run: it has no categorical head (K); pass a SwAV, DeepCluster or DINO run"
        )
    return int(value)


# ---------------------------------------------------------------------------------------------------------------------
# Deciding a claim: resolving the runs, collecting the reasons it cannot be decided, building the verdict
# ---------------------------------------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _points(x: float) -> str:
    return f"{100 * x:+.1f} points"


def _label(method: str, er: bool = False) -> str:
    names = {"simclr": "SimCLR", "deepcluster": "DeepCluster-v2", "swav": "SwAV", "byol": "BYOL", "dino": "DINO"}
    return names.get(method, method) + ("-ER" if er else "")


class _Decision:
    """The runs of one claim resolved to roles, the reasons it cannot be decided yet, and the verdict builder."""

    def __init__(self, claim_id: str, runs: RunLike | Mapping[str, RunLike | None]):
        self.spec = CLAIMS[claim_id]
        self.runs = _resolve_roles(self.spec, runs)
        self.problems: list[str] = []
        self.numbers: dict = {}
        given = {role: run for role, run in self.runs.items() if run is not None}
        self.methods: list[str] = []
        if self.spec.per_method:
            for method in dict.fromkeys(spec.method for spec in self.spec.runs):
                roles = [s.name for s in self.spec.runs if s.method == method and s.required]
                if any(role in given for role in roles):
                    absent = [role for role in roles if role not in given]
                    if absent:
                        self.problems.append(f"{_label(method)} is incomplete: run(s) {absent} missing")
                    else:
                        self.methods.append(method)
            if not self.methods and not self.problems:
                self.problems.append(
                    f"no runs given; {self.spec.id} needs, for at least one method, the runs "
                    f"{[s.name for s in self.spec.runs if s.required]}"
                )
        else:
            absent = [s.name for s in self.spec.runs if s.required and s.name not in given]
            if absent:
                self.problems.append(f"run(s) {absent} missing")
        synthetic = [role for role, run in given.items() if is_synthetic(run)]
        if synthetic:
            self.problems.insert(0, f"the run(s) {synthetic} were {SYNTHETIC_REASON}")
        self.mismatched = False
        for role, run in given.items():
            wrong = self.spec.spec(role).mismatch(run)
            if wrong:
                self.problems.append(wrong)
                self.mismatched = True
        short = {
            role: epochs_completed(run) for role, run in given.items() if epochs_completed(run) < self.spec.min_epochs
        }
        if short:
            listed = ", ".join(f"{role}: {n}" for role, n in short.items())
            self.problems.append(
                f"too short to decide: {self.spec.id} needs runs of at least {self.spec.min_epochs} "
                f"epochs (epochs completed — {listed})"
            )

    @property
    def structurally_complete(self) -> bool:
        """Every run the decision reads is present and plays its role (the numbers can be computed)."""
        if self.mismatched:
            return False
        if self.spec.per_method:
            return bool(self.methods)
        return all(self.runs.get(s.name) is not None for s in self.spec.runs if s.required)

    def run(self, role: str) -> RunLike:
        run = self.runs.get(role)
        if run is None:
            raise KeyError(role)
        return run

    def need(self, value: float | None, what: str) -> float | None:
        """``value``, recording that ``what`` is absent when it is None."""
        if value is None:
            self.problems.append(f"{what} is absent")
        return value

    def verdict(self, passed: bool | None, measured: str | None) -> Verdict:
        """PASS / FAIL from ``passed`` unless a problem makes the claim INCONCLUSIVE."""
        runs = {role: str(run.path) for role, run in self.runs.items() if run is not None}
        common: dict[str, Any] = dict(
            claim=self.spec.id, title=self.spec.title, criterion=self.spec.criterion, numbers=self.numbers, runs=runs
        )
        if self.problems or passed is None:
            reason = "; ".join(self.problems) or "the criterion could not be evaluated"
            sentence = f"Inconclusive: {reason}" + (f" (measured anyway: {measured})." if measured else ".")
            return Verdict(status=INCONCLUSIVE, sentence=sentence, reason=reason, **common)
        assert measured is not None, "a decided verdict (passed is not None) needs its measured sentence"
        return Verdict(status=PASS if passed else FAIL, sentence=measured[0].upper() + measured[1:] + ".", **common)


def _resolve_roles(spec: ClaimSpec, runs: RunLike | Mapping[str, RunLike | None]) -> dict[str, RunLike | None]:
    if isinstance(runs, RunLike):
        required = [s.name for s in spec.runs if s.required]
        if len(required) != 1:
            raise ValueError(
                f"{spec.id} needs a mapping of role -> Run with the roles {list(spec.roles)}, "
                f"got a single run ({runs.path})"
            )
        return {required[0]: runs}
    if not isinstance(runs, Mapping):
        raise ValueError(
            f"runs for {spec.id} must be a Run or a mapping of role -> Run (roles {list(spec.roles)}), "
            f"got {type(runs).__name__}"
        )
    unknown = [role for role in runs if role not in spec.roles]
    if unknown:
        raise ValueError(f"{spec.id} has no run role(s) {unknown}; its roles are {list(spec.roles)}")
    for role, run in runs.items():
        if run is not None and not isinstance(run, RunLike):
            raise ValueError(
                f"runs[{role!r}] for {spec.id} must be a Run (path, config, records) or None, got {type(run).__name__}"
            )
    return {role: runs.get(role) for role in spec.roles}


# ---------------------------------------------------------------------------------------------------------------------
# C2 — BYOL: entropy stable, reconstruction rising
# ---------------------------------------------------------------------------------------------------------------------

C2_ETA_KEY = "monitor_eta_target"
C2_COSINE_KEY = "monitor_reconstruction"
#: the first epoch of the plateau: the initial transient is over after two epochs
C2_REF_EPOCH = 2
C2_ETA_BAND = 0.05
C2_MIN_COSINE_RISE = 0.1
C2_MIN_EPOCHS = 10
C2_CRITERION = (
    f"BYOL (original, the preset's τ_base): the monitor-batch η of the target projections ({C2_ETA_KEY}) stays "
    f"within ±{C2_ETA_BAND} of its epoch-{C2_REF_EPOCH} value at every epoch from {C2_REF_EPOCH} to the last, and "
    f"above the collapse floor η = {COLLAPSE_ETA}, while the monitor-batch mean cosine between prediction and target "
    f"({C2_COSINE_KEY}) rises by at least {C2_MIN_COSINE_RISE} from epoch {C2_REF_EPOCH} to the last epoch; runs of "
    f"at least {C2_MIN_EPOCHS} epochs."
)


def c2_byol_entropy_stable(runs: RunLike | Mapping[str, RunLike | None]) -> Verdict:
    """C2: BYOL keeps the entropy stable while the reconstruction rises (the paper's abstract). See
    :data:`C2_CRITERION`; ``runs`` is the BYOL run (or ``{"byol": run}``)."""
    d = _Decision("C2", runs)
    if not d.structurally_complete:
        return d.verdict(None, None)
    run = d.run("byol")
    eta = [(e, v) for e, v in zip(*epoch_series(run, C2_ETA_KEY)) if e >= C2_REF_EPOCH]
    eta_ref = d.need(value_at_epoch(run, C2_ETA_KEY, C2_REF_EPOCH), f"{C2_ETA_KEY} at epoch {C2_REF_EPOCH}")
    cos_ref = d.need(value_at_epoch(run, C2_COSINE_KEY, C2_REF_EPOCH), f"{C2_COSINE_KEY} at epoch {C2_REF_EPOCH}")
    cos_end = d.need(final_value(run, C2_COSINE_KEY), f"{C2_COSINE_KEY} at the last epoch")
    if eta_ref is None or cos_ref is None or cos_end is None:
        return d.verdict(None, None)
    values = [v for _, v in eta]
    deviation = max(abs(v - eta_ref) for v in values)
    last = epochs_completed(run)
    d.numbers.update(
        epochs=last,
        eta_ref=eta_ref,
        eta_min=min(values),
        eta_max=max(values),
        eta_max_deviation=deviation,
        cosine_ref=cos_ref,
        cosine_final=cos_end,
        cosine_rise=cos_end - cos_ref,
    )
    for key, value in (("knn_untrained", untrained_knn(run)), ("knn_final", final_knn(run))):
        if value is not None:
            d.numbers[key] = value
    stable = deviation <= C2_ETA_BAND and min(values) >= COLLAPSE_ETA
    rises = cos_end - cos_ref >= C2_MIN_COSINE_RISE
    measured = (
        f"BYOL's target η on the monitor batch {'stayed' if deviation <= C2_ETA_BAND else 'did not stay'} "
        f"within ±{C2_ETA_BAND} of its epoch-{C2_REF_EPOCH} value {eta_ref:.3f} (it ranged "
        f"{min(values):.3f}–{max(values):.3f} over epochs {C2_REF_EPOCH}–{last}"
        f"{', below the collapse floor' if min(values) < COLLAPSE_ETA else ''}), while the mean cosine "
        f"between prediction and target went from {cos_ref:.3f} to {cos_end:.3f} "
        f"({cos_end - cos_ref:+.3f}; the criterion asks for +{C2_MIN_COSINE_RISE})"
    )
    return d.verdict(stable and rises, measured)


# ---------------------------------------------------------------------------------------------------------------------
# C3 — small EMA coefficient
# ---------------------------------------------------------------------------------------------------------------------

C3_METHODS = ("byol", "dino")
C3_ETA_KEY = "monitor_eta_online"  # the ER variants' entropy term is on the online projections
C3_MIN_KNN_GAIN = 0.05
C3_ETA_RETAINED = 0.5
#: "hurts": the original at τ_base = 0 ends at least 1 kNN point or 0.02 η below the original at the preset's τ_base
#: (one point is about one binomial standard error of a kNN accuracy on 2,500 test images)
C3_HURT_KNN = 0.01
C3_HURT_ETA = 0.02
C3_MIN_EPOCHS = 10
C3_TAU0 = {"tau_base": 0.0}
C3_CRITERION = (
    f"For each of BYOL and DINO whose runs are given, at τ_base = 0: the ER variant's final {KNN_KEY} is at least "
    f"{100 * C3_MIN_KNN_GAIN:.0f} points above the original's, and its monitor η ({C3_ETA_KEY}) never falls below "
    f"{C3_ETA_RETAINED} × its epoch-1 value (which must be at least the collapse floor {COLLAPSE_ETA}); and the "
    f"original is hurt by the small coefficient: at τ_base = 0 it ends at least {100 * C3_HURT_KNN:.0f} kNN point or "
    f"{C3_HURT_ETA} η below the original at the preset's τ_base. PASS when every method given meets all three; runs of "
    f"at least {C3_MIN_EPOCHS} epochs."
)


def c3_small_ema(runs: Mapping[str, RunLike | None]) -> Verdict:
    """C3: a small EMA coefficient hurts the originals while the ER variants stay stable (the paper's abstract). See
    :data:`C3_CRITERION`; roles ``byol``, ``byol@tau_base=0.0``, ``byol-er@tau_base=0.0`` (and ``byol-er``, reported
    when given), the same for ``dino``."""
    d = _Decision("C3", runs)
    if not d.structurally_complete:
        return d.verdict(None, None)
    parts, verdicts = [], []
    for method in d.methods:
        hi, orig0 = d.run(method), d.run(f"{method}@tau_base=0.0")
        er0 = d.run(f"{method}-er@tau_base=0.0")
        tau_hi = (hi.config.get("method_options") or {}).get("tau_base")
        if tau_hi is not None and not _number(tau_hi):
            d.problems.append(f"the run given as {method} has tau_base={tau_hi}; it must be the preset's (> 0)")
        knn_er0 = d.need(final_knn(er0), f"{KNN_KEY} at the last epoch of {er0.path}")
        knn_orig0 = d.need(final_knn(orig0), f"{KNN_KEY} at the last epoch of {orig0.path}")
        knn_hi = d.need(final_knn(hi), f"{KNN_KEY} at the last epoch of {hi.path}")
        eta_er1 = d.need(value_at_epoch(er0, C3_ETA_KEY, 1), f"{C3_ETA_KEY} at epoch 1 of {er0.path}")
        eta_orig0 = d.need(final_value(orig0, C3_ETA_KEY), f"{C3_ETA_KEY} at the last epoch of {orig0.path}")
        eta_hi = d.need(final_value(hi, C3_ETA_KEY), f"{C3_ETA_KEY} at the last epoch of {hi.path}")
        if (
            knn_er0 is None
            or knn_orig0 is None
            or knn_hi is None
            or eta_er1 is None
            or eta_orig0 is None
            or eta_hi is None
        ):
            continue
        eta_er_min = min(v for e, v in zip(*epoch_series(er0, C3_ETA_KEY)) if e >= 1)
        gain = knn_er0 - knn_orig0
        stable = eta_er1 >= COLLAPSE_ETA and eta_er_min >= C3_ETA_RETAINED * eta_er1
        hurt = knn_at_least(knn_hi - knn_orig0, C3_HURT_KNN) or eta_hi - eta_orig0 >= C3_HURT_ETA
        ok = knn_at_least(gain, C3_MIN_KNN_GAIN) and stable and hurt
        numbers = dict(
            tau_base_high=tau_hi if tau_hi is not None else "preset default",
            knn_er_tau0=knn_er0,
            knn_orig_tau0=knn_orig0,
            knn_gain=gain,
            eta_er_epoch1=eta_er1,
            eta_er_min=eta_er_min,
            eta_er_min_ratio=eta_er_min / eta_er1 if eta_er1 else 0.0,
            knn_orig_high=knn_hi,
            eta_orig_high=eta_hi,
            eta_orig_tau0=eta_orig0,
            original_hurt=hurt,
            passed=ok,
        )
        er_hi = d.runs.get(f"{method}-er")
        if er_hi is not None and final_knn(er_hi) is not None:
            numbers["knn_er_high"] = final_knn(er_hi)
        d.numbers[method] = numbers
        verdicts.append(ok)
        orig, er = _label(method), _label(method, True)
        parts.append(
            f"at τ_base = 0 {er} ended at kNN {_pct(knn_er0)} against {orig}'s {_pct(knn_orig0)} "
            f"({_points(gain)}, {100 * C3_MIN_KNN_GAIN:.0f} needed) with its η "
            f"{'never falling' if eta_er_min >= C3_ETA_RETAINED * eta_er1 else 'falling'} below "
            f"{C3_ETA_RETAINED} × its epoch-1 value {eta_er1:.3f} (lowest {eta_er_min:.3f}), and {orig} "
            f"{'was' if hurt else 'was not'} hurt by τ_base = 0 (kNN {_points(knn_orig0 - knn_hi)}, "
            f"η {eta_orig0 - eta_hi:+.3f} against the preset's τ_base)"
        )
    measured = "; ".join(parts) if parts else None
    return d.verdict(all(verdicts) if verdicts else None, measured)


# ---------------------------------------------------------------------------------------------------------------------
# C4 — small batches
# ---------------------------------------------------------------------------------------------------------------------

C4_METHODS = ("simclr", "swav", "byol", "dino")
C4_MIN_EPOCHS = 10
C4_CRITERION = (
    f"For each method given (SimCLR, SwAV without a queue, BYOL, DINO), the drop of the final {KNN_KEY} from the "
    f"preset's batch to a small batch (same epochs, learning rate scaled linearly) is larger for the original than for "
    f"its ER variant; PASS when that holds for a strict majority of the methods given; runs of at least "
    f"{C4_MIN_EPOCHS} epochs."
)


def _batch_size(run: RunLike) -> int | None:
    value = run.config.get("batch_size")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def c4_small_batches(runs: Mapping[str, RunLike | None]) -> Verdict:
    """C4: small batches hurt the originals more than the ER variants, for most methods (the paper's abstract). See
    :data:`C4_CRITERION`; roles ``simclr``, ``simclr-er``, ``simclr@bs-small``, ``simclr-er@bs-small``, the same for
    ``swav``, ``byol`` and ``dino``."""
    d = _Decision("C4", runs)
    if not d.structurally_complete:
        return d.verdict(None, None)
    parts, holds = [], []
    for method in d.methods:
        roles = {
            (er, small): f"{method}{'-er' if er else ''}{'@bs-small' if small else ''}"
            for er in (False, True)
            for small in (False, True)
        }
        batches = {key: _batch_size(d.run(role)) for key, role in roles.items()}
        orig_base, orig_small = batches[False, False], batches[False, True]
        er_base, er_small = batches[True, False], batches[True, True]
        if (
            orig_base is None
            or orig_small is None
            or er_base is None
            or er_small is None
            or not orig_small < orig_base
            or (orig_small != er_small or orig_base != er_base)
        ):
            d.problems.append(
                f"{_label(method)}: the batch sizes { ({roles[k]: v for k, v in batches.items()}) } are "
                "not a small batch below the preset's, the same for the original and the ER variant"
            )
            continue
        knn = {
            key: d.need(final_knn(d.run(role)), f"{KNN_KEY} at the last epoch of {role}") for key, role in roles.items()
        }
        knn_orig_base, knn_orig_small = knn[False, False], knn[False, True]
        knn_er_base, knn_er_small = knn[True, False], knn[True, True]
        if knn_orig_base is None or knn_orig_small is None or knn_er_base is None or knn_er_small is None:
            continue
        drop_orig = knn_orig_base - knn_orig_small
        drop_er = knn_er_base - knn_er_small
        holds.append(drop_orig - drop_er > KNN_TOLERANCE)  # equal drops (up to float32) do not hold
        d.numbers[method] = dict(
            batch_base=orig_base,
            batch_small=orig_small,
            knn_orig_base=knn_orig_base,
            knn_orig_small=knn_orig_small,
            knn_er_base=knn_er_base,
            knn_er_small=knn_er_small,
            drop_orig=drop_orig,
            drop_er=drop_er,
            holds=holds[-1],
        )
        parts.append(f"{_label(method)} {_points(-drop_orig)} against {_label(method, True)} {_points(-drop_er)}")
    if not holds:
        return d.verdict(None, None)
    d.numbers.update(methods_holding=sum(holds), methods=len(holds))
    majority = sum(holds) > len(holds) / 2
    measured = (
        f"going to the small batch, the originals lost more kNN accuracy than their ER variants for "
        f"{sum(holds)} of {len(holds)} method(s) (kNN change from the preset's batch to the small one, negative = "
        f"lost: {'; '.join(parts)})"
    )
    return d.verdict(majority, measured)


# ---------------------------------------------------------------------------------------------------------------------
# C5 — the ER variants are competitive
# ---------------------------------------------------------------------------------------------------------------------

C5_METHODS = ("simclr", "deepcluster", "swav", "byol", "dino")
C5_MARGIN = 0.03
#: a variant "learned" when its final kNN exceeds its untrained (epoch-0) kNN by this much
C5_MIN_LEARNING = 0.02
C5_MIN_EPOCHS = 10
C5_CRITERION = (
    f"For each method given, the ER variant's final {KNN_KEY} is at least the original's minus "
    f"{100 * C5_MARGIN:.0f} points (hence so is their mean over the methods); a method where neither variant learned "
    f"(final kNN less than {100 * C5_MIN_LEARNING:.0f} points above the untrained network's) cannot show it; runs of "
    f"at least {C5_MIN_EPOCHS} epochs at the preset's batch."
)


def c5_er_competitive(runs: Mapping[str, RunLike | None]) -> Verdict:
    """C5: the ER variants are competitive with the originals (the paper's abstract). See :data:`C5_CRITERION`;
    roles ``simclr``, ``simclr-er``, the same for ``deepcluster``, ``swav``, ``byol`` and ``dino``."""
    d = _Decision("C5", runs)
    if not d.structurally_complete:
        return d.verdict(None, None)
    parts, gaps, within = [], [], []
    for method in d.methods:
        orig, er = d.run(method), d.run(f"{method}-er")
        knn_orig = d.need(final_knn(orig), f"{KNN_KEY} at the last epoch of {method}")
        knn_er = d.need(final_knn(er), f"{KNN_KEY} at the last epoch of {method}-er")
        knn0_orig = d.need(untrained_knn(orig), f"{KNN_KEY} at epoch 0 of {method}")
        knn0_er = d.need(untrained_knn(er), f"{KNN_KEY} at epoch 0 of {method}-er")
        if knn_orig is None or knn_er is None or knn0_orig is None or knn0_er is None:
            continue
        learned = knn_at_least(max(knn_orig - knn0_orig, knn_er - knn0_er), C5_MIN_LEARNING)
        if not learned:
            d.problems.append(
                f"neither {_label(method)} nor {_label(method, True)} learned (final kNN "
                f"{_pct(knn_orig)} / {_pct(knn_er)}, untrained {_pct(knn0_orig)} / {_pct(knn0_er)})"
            )
        gap = knn_er - knn_orig
        gaps.append(gap)
        within.append(knn_at_least(gap, -C5_MARGIN))
        d.numbers[method] = dict(
            knn_orig=knn_orig,
            knn_er=knn_er,
            knn_untrained_orig=knn0_orig,
            knn_untrained_er=knn0_er,
            gap=gap,
            within_margin=within[-1],
            learned=learned,
        )
        parts.append(
            f"{_label(method, True)} {_pct(knn_er)} against {_label(method)} {_pct(knn_orig)} ({_points(gap)})"
        )
    if not gaps:
        return d.verdict(None, None)
    mean_gap = sum(gaps) / len(gaps)
    d.numbers.update(mean_gap=mean_gap, methods_within=sum(within), methods=len(within))
    measured = (
        f"the ER variants ended within {100 * C5_MARGIN:.0f} kNN points of (or above) their originals for "
        f"{sum(within)} of {len(within)} method(s), {_points(mean_gap)} on average ({'; '.join(parts)})"
    )
    return d.verdict(all(within), measured)


# ---------------------------------------------------------------------------------------------------------------------
# C6 — SwAV (and DeepCluster-v2) maximise both terms
# ---------------------------------------------------------------------------------------------------------------------

C6_CODE_MARGINAL_FRACTION = 0.95
C6_MIN_INFORMATION = 1.0  # nats
#: the cross-entropy is compared from the first epoch whose targets are the method's own: SwAV's codes exist from the
#: start; DeepCluster-v2's k-means labels only from the second epoch (the bank fills during the first)
C6_CE_REF_EPOCH = {"swav": 1, "deepcluster": 2}
C6_MIN_EPOCHS = 5
C6_CRITERION = (
    f"SwAV: the marginal entropy of the Sinkhorn codes (marginal_entropy_target) is at least "
    f"{C6_CODE_MARGINAL_FRACTION} log K in every training record from epoch 1 on; the monitor-batch cross-entropy "
    f"between codes and predictions is lower at the last epoch than at epoch {C6_CE_REF_EPOCH['swav']}; and the "
    f"predictions carry information, I(X;W) = H(p̄) − mean H(p) ≥ {C6_MIN_INFORMATION} nat at the last epoch (monitor "
    f"batch). DeepCluster-v2: its k-means clusters and its predictions carry information, H(p̄) − mean H(p) ≥ "
    f"{C6_MIN_INFORMATION} nat for its targets and for its predictions at the last epoch (k-means spreads even a "
    f"collapsed bank over its clusters, so the targets alone prove nothing), and the cross-entropy is lower at the "
    f"last epoch than at epoch "
    f"{C6_CE_REF_EPOCH['deepcluster']}; runs of at least {C6_MIN_EPOCHS} epochs."
)


def c6_clustering_maximises_mi(runs: Mapping[str, RunLike | None]) -> Verdict:
    """C6: SwAV maximises both terms — the entropy of its codes stays at log K while the cross-entropy falls, and its
    predictions carry information; DeepCluster-v2's clusters and predictions carry information (derived: the ER view
    of clustering methods). See :data:`C6_CRITERION`; roles ``swav`` and ``deepcluster``."""
    d = _Decision("C6", runs)
    if not d.structurally_complete:
        return d.verdict(None, None)
    swav, dc = d.run("swav"), d.run("deepcluster")
    k_swav = num_prototypes(swav)
    codes = [v for x, v in zip(*train_series(swav, "marginal_entropy_target")) if x >= 1]
    if not codes:
        d.problems.append("swav has no training record with marginal_entropy_target from epoch 1 on")
    values: dict[str, float | None] = {}
    for name, run, key, epoch in [
        ("swav_ce_ref", swav, "monitor_cross_entropy", C6_CE_REF_EPOCH["swav"]),
        ("swav_ce_final", swav, "monitor_cross_entropy", None),
        ("swav_pred_marginal", swav, "monitor_marginal_entropy_pred", None),
        ("swav_pred_conditional", swav, "monitor_conditional_entropy_pred", None),
        ("dc_ce_ref", dc, "monitor_cross_entropy", C6_CE_REF_EPOCH["deepcluster"]),
        ("dc_ce_final", dc, "monitor_cross_entropy", None),
        ("dc_target_marginal", dc, "monitor_marginal_entropy_target", None),
        ("dc_target_conditional", dc, "monitor_conditional_entropy_target", None),
        ("dc_pred_marginal", dc, "monitor_marginal_entropy_pred", None),
        ("dc_pred_conditional", dc, "monitor_conditional_entropy_pred", None),
    ]:
        value = final_value(run, key) if epoch is None else value_at_epoch(run, key, epoch)
        where = "the last epoch" if epoch is None else f"epoch {epoch}"
        values[name] = d.need(value, f"{key} at {where} of {run.path}")
    if not codes or None in values.values():
        return d.verdict(None, None)
    v = cast("dict[str, float]", values)  # every value checked above
    log_k = math.log(k_swav)
    info_pred = v["swav_pred_marginal"] - v["swav_pred_conditional"]
    info_dc = v["dc_target_marginal"] - v["dc_target_conditional"]
    info_dc_pred = v["dc_pred_marginal"] - v["dc_pred_conditional"]
    d.numbers.update(
        swav_K=k_swav,
        swav_code_marginal_min=min(codes),
        swav_code_marginal_min_over_log_K=min(codes) / log_k,
        swav_ce_ref=v["swav_ce_ref"],
        swav_ce_final=v["swav_ce_final"],
        swav_information_pred=info_pred,
        deepcluster_K=num_prototypes(dc),
        dc_ce_ref=v["dc_ce_ref"],
        dc_ce_final=v["dc_ce_final"],
        dc_information_clusters=info_dc,
        dc_information_pred=info_dc_pred,
    )
    swav_ok = (
        min(codes) >= C6_CODE_MARGINAL_FRACTION * log_k
        and v["swav_ce_final"] < v["swav_ce_ref"]
        and info_pred >= C6_MIN_INFORMATION
    )
    dc_ok = min(info_dc, info_dc_pred) >= C6_MIN_INFORMATION and v["dc_ce_final"] < v["dc_ce_ref"]
    measured = (
        f"SwAV's codes kept a marginal entropy of at least {min(codes):.3f} nats = "
        f"{min(codes) / log_k:.3f} log K (K = {k_swav}) from epoch 1 on, its cross-entropy went from "
        f"{v['swav_ce_ref']:.3f} to {v['swav_ce_final']:.3f} and its predictions carry I(X;W) = "
        f"{info_pred:.3f} nats; DeepCluster-v2's clusters carry {info_dc:.3f} nats and its predictions "
        f"{info_dc_pred:.3f} nats, and its cross-entropy went from {v['dc_ce_ref']:.3f} to "
        f"{v['dc_ce_final']:.3f}"
    )
    return d.verdict(swav_ok and dc_ok, measured)


# ---------------------------------------------------------------------------------------------------------------------
# C7 — DINO's centering and sharpening
# ---------------------------------------------------------------------------------------------------------------------

C7_UNIFORM_FRACTION = 0.9  # centering only: both teacher entropies at least this × log K
C7_DOMINANT_FRACTION = 0.1  # sharpening only: the teacher marginal at most this × log K
C7_FULL_MARGINAL_FRACTION = 0.8
C7_FULL_CONDITIONAL_FRACTION = 0.5
C7_MIN_EPOCHS = 10
C7_CRITERION = (
    f"On the monitor batch at the last epoch, with K = DINO's output dimension: centering only (sharpening=False) has "
    f"both teacher entropies, the marginal H(p̄_t) and the mean conditional H(p_t), at least {C7_UNIFORM_FRACTION} "
    f"log K (uniform outputs); sharpening only (centering=False) has H(p̄_t) at most {C7_DOMINANT_FRACTION} log K "
    f"(one output dominates); DINO with both has H(p̄_t) at least {C7_FULL_MARGINAL_FRACTION} log K and mean H(p_t) "
    f"at most {C7_FULL_CONDITIONAL_FRACTION} log K; runs of at least {C7_MIN_EPOCHS} epochs."
)


def dino_regime(marginal: float, conditional: float, k: int) -> str:
    """Which of C7's signatures a teacher's two entropies show (nats, K outputs): "uniform outputs" (both at least
    :data:`C7_UNIFORM_FRACTION` log K), "one output dominates" (the marginal at most :data:`C7_DOMINANT_FRACTION`
    log K), "informative" (DINO's healthy regime), or "between the signatures"."""
    log_k = math.log(k)
    if min(marginal, conditional) >= C7_UNIFORM_FRACTION * log_k:
        return "uniform outputs"
    if marginal <= C7_DOMINANT_FRACTION * log_k:
        return "one output dominates"
    if marginal >= C7_FULL_MARGINAL_FRACTION * log_k and conditional <= C7_FULL_CONDITIONAL_FRACTION * log_k:
        return "informative"
    return "between the signatures"


def c7_dino_centering_sharpening(runs: Mapping[str, RunLike | None]) -> Verdict:
    """C7: DINO's centering and sharpening control the two teacher entropies (derived, following the DINO paper's
    analysis of collapse, Caron et al. 2021). See :data:`C7_CRITERION`; roles ``dino``, ``dino@sharpening=False``
    (centering only) and ``dino@centering=False`` (sharpening only)."""
    d = _Decision("C7", runs)
    if not d.structurally_complete:
        return d.verdict(None, None)
    roles = {"both": "dino", "centering_only": "dino@sharpening=False", "sharpening_only": "dino@centering=False"}
    options = d.run("dino").config.get("method_options") or {}
    if options.get("centering") is False or options.get("sharpening") is False:
        d.problems.append("the run given as dino switches centering or sharpening off; it must keep both")
    k = num_prototypes(d.run("dino"))
    log_k = math.log(k)
    entropies: dict[str, tuple[float | None, float | None]] = {}
    for name, role in roles.items():
        run = d.run(role)
        entropies[name] = (
            d.need(
                final_value(run, "monitor_marginal_entropy_target"),
                f"monitor_marginal_entropy_target at the last epoch of {role}",
            ),
            d.need(
                final_value(run, "monitor_conditional_entropy_target"),
                f"monitor_conditional_entropy_target at the last epoch of {role}",
            ),
        )
    if any(None in pair for pair in entropies.values()):
        return d.verdict(None, None)
    h = cast("dict[str, tuple[float, float]]", entropies)  # every value checked above
    d.numbers["K"] = k
    for name, (marginal, conditional) in h.items():
        d.numbers[name] = dict(
            marginal=marginal,
            conditional=conditional,
            marginal_over_log_K=marginal / log_k,
            conditional_over_log_K=conditional / log_k,
        )
    uniform = dino_regime(*h["centering_only"], k) == "uniform outputs"
    dominant = h["sharpening_only"][0] <= C7_DOMINANT_FRACTION * log_k
    full = dino_regime(*h["both"], k) == "informative"
    d.numbers.update(centering_only_uniform=uniform, sharpening_only_dominant=dominant, both_informative=full)

    def frac(x: float) -> str:
        return f"{x / log_k:.2f} log K"

    measured = (
        f"with centering only the teacher's marginal and conditional entropies ended at "
        f"{frac(h['centering_only'][0])} and {frac(h['centering_only'][1])}, with sharpening only the marginal "
        f"ended at {frac(h['sharpening_only'][0])}, and with both at a marginal of {frac(h['both'][0])} and a "
        f"conditional of {frac(h['both'][1])} (K = {k}), so the signatures "
        f"{'all appeared' if uniform and dominant and full else 'did not all appear'}"
    )
    return d.verdict(uniform and dominant and full, measured)


# ---------------------------------------------------------------------------------------------------------------------
# C8 — InfoNCE and ER: both rise, both at most log k
# ---------------------------------------------------------------------------------------------------------------------

C8_KEYS = ("infonce", "er_bound")
#: float32 rounding of an estimate of a few nats (the bound itself holds exactly)
C8_TOLERANCE = 1e-4
C8_MIN_RISE = 0.1  # nats
C8_MIN_EPOCHS = 5
C8_CRITERION = (
    f"SimCLR: the InfoNCE and ER estimates (infonce, er_bound) are at most log k + {C8_TOLERANCE:g} in every record "
    f"(k = batch_size for training records, monitor_size for the monitor batch), and both monitor-batch estimates rise "
    f"by at least {C8_MIN_RISE} nat from the first epoch record (the untrained network) to the last; runs of at least "
    f"{C8_MIN_EPOCHS} epochs."
)


def c8_infonce_and_er_below_log_k(runs: RunLike | Mapping[str, RunLike | None]) -> Verdict:
    """C8: InfoNCE = reconstruction + cross-view entropy; both it and the ER estimate stay at most log k and rise over
    training (derived). See :data:`C8_CRITERION`; ``runs`` is the SimCLR run (or ``{"simclr": run}``)."""
    d = _Decision("C8", runs)
    if not d.structurally_complete:
        return d.verdict(None, None)
    run = d.run("simclr")
    batch, monitor = _batch_size(run), run.config.get("monitor_size")
    if batch is None or not isinstance(monitor, int):
        d.problems.append("config batch_size or monitor_size is absent")
        return d.verdict(None, None)
    ok, parts = True, []
    for key in C8_KEYS:
        _, train_values = train_series(run, key)
        epochs, monitor_values = monitor_series(run, key)
        if not train_values:
            d.need(None, f"{key} in the training records")
        if len(monitor_values) < 2:
            d.need(None, f"monitor_{key} in at least two epoch records")
        if not train_values or len(monitor_values) < 2:
            continue
        excess_train = max(train_values) - math.log(batch)
        excess_monitor = max(monitor_values) - math.log(monitor)
        rise = monitor_values[-1] - monitor_values[0]
        d.numbers[key] = dict(
            max_train=max(train_values),
            log_batch=math.log(batch),
            max_monitor=max(monitor_values),
            log_monitor=math.log(monitor),
            monitor_first=monitor_values[0],
            monitor_first_epoch=epochs[0],
            monitor_final=monitor_values[-1],
            monitor_rise=rise,
        )
        ok = ok and excess_train <= C8_TOLERANCE and excess_monitor <= C8_TOLERANCE and rise >= C8_MIN_RISE
        name = "InfoNCE" if key == "infonce" else "the ER estimate"
        parts.append(
            f"{name} peaked at {max(train_values):.3f} on training batches (log k = {math.log(batch):.3f}) "
            f"and {max(monitor_values):.3f} on the monitor batch (log k = {math.log(monitor):.3f}) and rose "
            f"from {monitor_values[0]:.3f} to {monitor_values[-1]:.3f} nats"
        )
    if len(parts) < len(C8_KEYS):
        return d.verdict(None, "; ".join(parts) or None)
    return d.verdict(ok, "; ".join(parts))


# ---------------------------------------------------------------------------------------------------------------------
# C9 — training-batch entropy depends on the batch size; monitor-batch entropy is comparable
# ---------------------------------------------------------------------------------------------------------------------

C9_ETA_KEY = "eta_online"
C9_MIN_TRAIN_GAP = 0.02
C9_MONITOR_RATIO = 0.5
C9_MIN_EPOCHS = 2
C9_CRITERION = (
    f"SimCLR at the preset's batch and at a small batch, same monitor batch: over the epochs both runs completed "
    f"(from 1 on), the mean absolute difference between the two runs' training-batch η ({C9_ETA_KEY}, averaged over "
    f"each epoch's training records) is at least {C9_MIN_TRAIN_GAP}, and the mean absolute difference between their "
    f"monitor-batch η is at most {C9_MONITOR_RATIO} × that; runs of at least {C9_MIN_EPOCHS} epochs."
)


def c9_batch_size_and_monitor_entropy(runs: Mapping[str, RunLike | None]) -> Verdict:
    """C9: entropy curves measured on training batches depend on the batch size, those on the fixed monitor batch
    are comparable (derived: the KDE entropy of k points is capped by log k and η is normalised by it). See
    :data:`C9_CRITERION`; roles ``simclr`` and ``simclr@bs-small``."""
    d = _Decision("C9", runs)
    if not d.structurally_complete:
        return d.verdict(None, None)
    base, small = d.run("simclr"), d.run("simclr@bs-small")
    b_base, b_small = _batch_size(base), _batch_size(small)
    if b_base is None or b_small is None or not b_small < b_base:
        d.problems.append(
            f"the batch sizes (simclr: {b_base}, simclr@bs-small: {b_small}) are not a small batch below the preset's"
        )
    if base.config.get("monitor_size") != small.config.get("monitor_size"):
        d.problems.append(
            f"the monitor batches differ (monitor_size {base.config.get('monitor_size')} and "
            f"{small.config.get('monitor_size')}): the monitor η is comparable only on one monitor size"
        )
    train_gaps, monitor_gaps = [], []
    for epoch in range(1, min(epochs_completed(base), epochs_completed(small)) + 1):
        t_base, t_small = [train_epoch_mean(run, C9_ETA_KEY, epoch) for run in (base, small)]
        m_base, m_small = [value_at_epoch(run, f"monitor_{C9_ETA_KEY}", epoch) for run in (base, small)]
        if t_base is not None and t_small is not None and m_base is not None and m_small is not None:
            train_gaps.append(abs(t_base - t_small))
            monitor_gaps.append(abs(m_base - m_small))
    if not train_gaps:
        d.need(None, f"{C9_ETA_KEY} (training records) and monitor_{C9_ETA_KEY} at a common epoch of both runs")
        return d.verdict(None, None)
    gap_train, gap_monitor = sum(train_gaps) / len(train_gaps), sum(monitor_gaps) / len(monitor_gaps)
    d.numbers.update(
        batch_base=b_base,
        batch_small=b_small,
        monitor_size=base.config.get("monitor_size"),
        epochs_compared=len(train_gaps),
        train_eta_gap=gap_train,
        monitor_eta_gap=gap_monitor,
        final_train_eta_base=train_epoch_mean(base, C9_ETA_KEY, epochs_completed(base)),
        final_train_eta_small=train_epoch_mean(small, C9_ETA_KEY, epochs_completed(small)),
        final_monitor_eta_base=final_value(base, f"monitor_{C9_ETA_KEY}"),
        final_monitor_eta_small=final_value(small, f"monitor_{C9_ETA_KEY}"),
    )
    d.numbers = {k: v for k, v in d.numbers.items() if v is not None}
    passed = gap_train >= C9_MIN_TRAIN_GAP and gap_monitor <= C9_MONITOR_RATIO * gap_train
    measured = (
        f"the training-batch η of the runs at batch {b_base} and {b_small} differed by {gap_train:.3f} on "
        f"average over {len(train_gaps)} epoch(s), their monitor-batch η by {gap_monitor:.3f}"
    )
    return d.verdict(passed, measured)


# ---------------------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------------------


def _pairs(methods: Iterable[str], **overrides: Any) -> tuple[RunSpec, ...]:
    return tuple(RunSpec(m, er, **overrides) for m in methods for er in (False, True))


CLAIMS: dict[str, ClaimSpec] = {
    spec.id: spec
    for spec in [
        ClaimSpec(
            "C2",
            "BYOL keeps the entropy stable while the reconstruction rises",
            C2_CRITERION,
            C2_MIN_EPOCHS,
            (RunSpec("byol"),),
            c2_byol_entropy_stable,
        ),
        ClaimSpec(
            "C3",
            "A small EMA coefficient hurts the originals; the ER variants stay stable",
            C3_CRITERION,
            C3_MIN_EPOCHS,
            tuple(
                s
                for m in C3_METHODS
                for s in (
                    RunSpec(m),
                    RunSpec(m, True, required=False),
                    RunSpec(m, False, dict(C3_TAU0)),
                    RunSpec(m, True, dict(C3_TAU0)),
                )
            ),
            c3_small_ema,
            per_method=True,
        ),
        ClaimSpec(
            "C4",
            "Small batches hurt the originals more than the ER variants",
            C4_CRITERION,
            C4_MIN_EPOCHS,
            tuple(s for m in C4_METHODS for s in _pairs([m]) + _pairs([m], batch="small")),
            c4_small_batches,
            per_method=True,
        ),
        ClaimSpec(
            "C5",
            "The ER variants are competitive with the originals",
            C5_CRITERION,
            C5_MIN_EPOCHS,
            _pairs(C5_METHODS),
            c5_er_competitive,
            per_method=True,
        ),
        ClaimSpec(
            "C6",
            "SwAV maximises both terms; DeepCluster-v2's clusters carry information",
            C6_CRITERION,
            C6_MIN_EPOCHS,
            (RunSpec("swav"), RunSpec("deepcluster")),
            c6_clustering_maximises_mi,
        ),
        ClaimSpec(
            "C7",
            "DINO's centering and sharpening control the two entropies",
            C7_CRITERION,
            C7_MIN_EPOCHS,
            (
                RunSpec("dino"),
                RunSpec("dino", False, {"sharpening": False}),
                RunSpec("dino", False, {"centering": False}),
            ),
            c7_dino_centering_sharpening,
        ),
        ClaimSpec(
            "C8",
            "InfoNCE and the ER estimate rise and stay at most log k",
            C8_CRITERION,
            C8_MIN_EPOCHS,
            (RunSpec("simclr"),),
            c8_infonce_and_er_below_log_k,
        ),
        ClaimSpec(
            "C9",
            "Training-batch entropy depends on the batch size; monitor-batch entropy is comparable",
            C9_CRITERION,
            C9_MIN_EPOCHS,
            (RunSpec("simclr"), RunSpec("simclr", batch="small")),
            c9_batch_size_and_monitor_entropy,
        ),
    ]
}


def _check_claim_ids(claim_ids: Iterable[str] | None) -> list[str]:
    ids = list(CLAIMS) if claim_ids is None else list(claim_ids)
    unknown = [c for c in ids if c not in CLAIMS]
    if unknown:
        raise ValueError(f"unknown claim id(s) {unknown}; the claims are {list(CLAIMS)}")
    return ids


def decide(claim_id: str, runs: RunLike | Mapping[str, RunLike | None]) -> Verdict:
    """The verdict of claim ``claim_id`` ("C2" … "C9") on ``runs`` (a Run, or a mapping role → Run)."""
    return CLAIMS[_check_claim_ids([claim_id])[0]].decide(runs)


def required_runs(claim_ids: Iterable[str] | None = None) -> list[RunSpec]:
    """Every run the given claims (default: all) read, once each, in registry order."""
    unique: dict[str, RunSpec] = {}
    for claim_id in _check_claim_ids(claim_ids):
        for spec in CLAIMS[claim_id].runs:
            if spec.name in unique and spec.required and not unique[spec.name].required:
                unique[spec.name] = spec  # needed by one claim: required overall
            unique.setdefault(spec.name, spec)
    return list(unique.values())


def load_claim_runs(runs_dir: str | Path, claim_id: str) -> dict[str, RunLike | None]:
    """role → the run folder ``runs_dir/<role>`` read back (None where there is none)."""
    from erlib.runs import load_run  # only here: reading folders is the one thing that needs erlib.runs

    runs_dir = Path(runs_dir)
    out: dict[str, RunLike | None] = {}
    for role in CLAIMS[_check_claim_ids([claim_id])[0]].roles:
        out[role] = load_run(runs_dir / role) if (runs_dir / role / "config.json").is_file() else None
    return out


def decide_all(runs_dir: str | Path, claim_ids: Iterable[str] | None = None) -> list[Verdict]:
    """The verdicts of the given claims (default: all) on the run folders under ``runs_dir``, named by role."""
    return [decide(claim_id, load_claim_runs(runs_dir, claim_id)) for claim_id in _check_claim_ids(claim_ids)]


# ---------------------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------------------


def _flatten(numbers: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in numbers.items():
        if isinstance(value, Mapping):
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _format_number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def format_verdicts(verdicts: Iterable[Verdict]) -> str:
    """One line per verdict — ``C2 PASS: <sentence>`` — for a notebook or a terminal."""
    return "\n".join(str(v) for v in verdicts)


def write_report(verdicts: Iterable[Verdict], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` (a table: claim, verdict, criterion, key numbers; then each measured sentence) and
    ``report.json`` (every verdict, :func:`read_report` reads it back) into ``out_dir``; return both paths."""
    verdicts = list(verdicts)
    for v in verdicts:
        if not isinstance(v, Verdict):
            raise ValueError(f"write_report takes Verdict objects, got {type(v).__name__}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Claim verdicts",
        "",
        "Computed by `erlib.claims` from the run folders named below; the criteria are fixed in the code.",
        "",
        "| claim | verdict | criterion | key numbers |",
        "| --- | --- | --- | --- |",
    ]
    for v in verdicts:
        numbers = ", ".join(f"{k} = {_format_number(x)}" for k, x in _flatten(v.numbers)) or "—"
        lines.append(
            f"| {_cell(v.claim)}: {_cell(v.title)} | {_cell(v.status)} | {_cell(v.criterion)} | {_cell(numbers)} |"
        )
    lines += ["", "## What the runs measured", ""]
    for v in verdicts:
        lines.append(f"- **{v.claim} {v.status}**: {v.sentence}")
        if v.runs:
            lines.append(f"  Runs: {', '.join(f'`{role}` ({path})' for role, path in v.runs.items())}.")
    md_path, json_path = out_dir / "report.md", out_dir / "report.json"
    md_path.write_text("\n".join(lines) + "\n")
    json_path.write_text(json.dumps({"verdicts": [v.to_dict() for v in verdicts]}, indent=2, allow_nan=False) + "\n")
    return md_path, json_path


def read_report(path: str | Path) -> list[Verdict]:
    """The verdicts of a ``report.json`` written by :func:`write_report`."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("verdicts"), list):
        raise ValueError(f"{path} is not a claims report (expected an object with a 'verdicts' list)")
    return [Verdict.from_dict(v) for v in data["verdicts"]]
