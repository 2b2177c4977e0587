r"""Interactive explorers (ipywidgets) for the estimators of :mod:`erlib.bounds`.

* :func:`point_cloud` draws the synthetic batches the notebooks and the playground use: uniform on the sphere,
  ``m`` tight clusters, or fully collapsed.
* :class:`TrainingDashboard` is the live training view: pass its :meth:`~TrainingDashboard.update` as the
  ``callback`` of :func:`erlib.train.train` and it redraws η, reconstruction, the ER / InfoNCE estimates and kNN
  accuracy as the records arrive (colour = quantity; solid = training batch, dashed = monitor batch, dotted = test
  set).
* :func:`kde_playground` is the estimator playground of notebook 02: sliders for the vMF concentration κ, the batch
  size k and the dimension d, a choice of point cloud and of estimator (Joe / plug-in, self-term / leave-one-out). On
  every change it recomputes the KDE entropy :math:`\hat H` (:func:`erlib.bounds.kde_entropy`) and the normalised
  entropy :math:`\eta` (:func:`erlib.bounds.normalized_entropy`), prints them next to the reference values
  (:math:`\log k`, :math:`\log C_d(\kappa)`, the uniform entropy :math:`\log|\mathbb S^{d-1}|`) and draws
  :math:`\eta` and :math:`\hat H` against κ for the current cloud, with a marker at the current κ, plus the points
  themselves when :math:`d\le3`.

Figures are plain plotly ``go.Figure`` objects shown inside an ``ipywidgets.Output`` (no ``FigureWidget``, so no
anywidget dependency). The widgets construct without a display (headless, in tests); nothing is drawn there.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from erlib import bounds
from erlib.plots import LineStyle, Panel, Series, color_for, to_plotly

__all__ = ["CLOUDS", "PLOTLY_MIME", "point_cloud", "kde_playground", "plotly_output", "TrainingDashboard"]

Cloud = Literal["uniform", "clusters", "collapsed"]

#: Dropdown labels of the point clouds -> ``kind`` of :func:`point_cloud`.
CLOUDS: dict[str, Cloud] = {
    "uniform on the sphere": "uniform",
    "m tight clusters": "clusters",
    "collapsed (one point)": "collapsed",
}

_K_OPTIONS = [16, 32, 64, 128, 256, 512, 1024]
_D_OPTIONS = [2, 3, 4, 8, 16, 32, 64, 128, 256, 512]


def point_cloud(
    kind: Cloud, k: int, d: int, m: int = 10, noise: float = 0.05, seed: int = 0, dtype: torch.dtype = torch.float64
) -> Tensor:
    r"""A batch of k unit vectors in :math:`\mathbb R^d` (rows on :math:`\mathbb S^{d-1}`).

    * ``"uniform"``: :math:`z=x/\|x\|`, :math:`x\sim\mathcal N(0,I_d)` — uniform on the sphere;
    * ``"clusters"``: m centres uniform on the sphere, each point a random centre plus :math:`\mathcal N(0,\sigma^2I_d)`
      noise (σ = ``noise``, per coordinate), renormalised (the "tight clusters" of
      docs/theory.md#range-and-normalised-entropy-eta);
    * ``"collapsed"``: k copies of one random unit vector (a collapsed representation).
    """
    if kind not in CLOUDS.values():
        raise ValueError(f"kind must be one of {tuple(CLOUDS.values())}, got {kind!r}")
    if k < 2 or d < 2 or m < 1:
        raise ValueError(f"need k >= 2, d >= 2 and m >= 1, got k={k}, d={d}, m={m}")
    gen = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        x = torch.randn(k, d, generator=gen, dtype=dtype)
    elif kind == "clusters":
        centres = torch.nn.functional.normalize(torch.randn(m, d, generator=gen, dtype=dtype), dim=1)
        labels = torch.randint(m, (k,), generator=gen)
        x = centres[labels] + noise * torch.randn(k, d, generator=gen, dtype=dtype)
    else:
        x = torch.randn(1, d, generator=gen, dtype=dtype).expand(k, d).clone()
    return torch.nn.functional.normalize(x, dim=1)


def _sphere_log_area(d: int) -> float:
    r"""Entropy of the uniform law on the sphere.

    .. math:: \log|\mathbb S^{d-1}| = \log 2 + \tfrac d2\log\pi - \log\Gamma(\tfrac d2)
    """
    return math.log(2) + 0.5 * d * math.log(math.pi) - math.lgamma(d / 2)


def _with(options: list[int], value: int) -> list[int]:
    return sorted(set(options) | {int(value)})


def kde_playground(
    kappa: float = 10.0,
    k: int = 256,
    d: int = 3,
    cloud: Cloud = "clusters",
    m: int = 10,
    estimator: bounds.Estimator = "joe",
    leave_one_out: bool = False,
    seed: int = 0,
    n_grid: int = 21,
) -> Any:
    r"""An ipywidgets explorer of the vMF kernel-density entropy of a synthetic batch; returns an ``ipywidgets.VBox``.

    For the current batch :math:`z_1,\dots,z_k\in\mathbb S^{d-1}` it shows

    * :math:`\hat H` = ``kde_entropy(z, κ, estimator, leave_one_out)``: Joe :math:`\frac1k\sum_i-\log\hat p(z_i)` or the
      plug-in :math:`\sum_i w_i(-\log\hat p(z_i))`, :math:`\hat p(z)=\frac1k\sum_j C_d(\kappa)e^{\kappa z^\top z_j}`
      (:math:`j\ne i`, :math:`k-1` with leave-one-out);
    * :math:`\tilde H=\hat H+\log C_d(\kappa)`, which (self-term) lies in :math:`[-\kappa,\log k-\kappa]`;
    * :math:`\eta=(\tilde H+\kappa)/\log k\in[0,1]` = ``normalized_entropy`` (always with the self-term);
    * a figure: η against κ and :math:`\hat H` against κ (self-term solid, leave-one-out dashed, the uniform entropy
      :math:`\log|\mathbb S^{d-1}|` as a reference line), a marker at the current κ, and the points when d ≤ 3.

    The returned box also carries ``.values`` (the numbers, a dict) and ``.figure`` (the plotly figure), updated on
    every change, so it can be inspected without a display.
    """
    import ipywidgets as w

    if cloud not in CLOUDS.values():
        raise ValueError(f"cloud must be one of {tuple(CLOUDS.values())}, got {cloud!r}")
    style = {"description_width": "110px"}
    controls = {
        "kappa": w.FloatLogSlider(
            value=kappa,
            base=10,
            min=-0.3,
            max=1.7,
            step=0.05,  # κ from 0.5 to 50
            description="κ (= 1/τ)",
            style=style,
            continuous_update=False,
        ),
        "k": w.SelectionSlider(
            options=_with(_K_OPTIONS, k), value=k, description="batch size k", style=style, continuous_update=False
        ),
        "d": w.SelectionSlider(
            options=_with(_D_OPTIONS, d), value=d, description="dimension d", style=style, continuous_update=False
        ),
        "cloud": w.Dropdown(options=list(CLOUDS.items()), value=cloud, description="point cloud", style=style),
        "m": w.IntSlider(value=m, min=1, max=32, description="clusters m", style=style, continuous_update=False),
        "estimator": w.Dropdown(
            options=[("Joe (average)", "joe"), ("plug-in (expectation)", "plugin")],
            value=estimator,
            description="estimator",
            style=style,
        ),
        "leave_one_out": w.Checkbox(value=leave_one_out, description="leave-one-out", style=style),
    }
    numbers, out = w.HTML(), w.Output()
    box = w.VBox(
        [
            w.HBox([controls["kappa"], controls["k"], controls["d"]]),
            w.HBox([controls["cloud"], controls["m"], controls["estimator"], controls["leave_one_out"]]),
            numbers,
            out,
        ]
    )
    kappas = torch.logspace(-0.3, 1.7, n_grid, dtype=torch.float64).tolist()

    def update(_change: object = None) -> None:
        c = {name: ctrl.value for name, ctrl in controls.items()}
        z = point_cloud(c["cloud"], c["k"], c["d"], m=c["m"], seed=seed)
        kap, est, loo = float(c["kappa"]), c["estimator"], c["leave_one_out"]
        log_c = float(bounds.vmf_log_normalizer(c["d"], kap))
        h = float(bounds.kde_entropy(z, kap, est, leave_one_out=loo))
        eta = float(bounds.normalized_entropy(z, kap, est))
        box.values = {
            "kappa": kap,
            "k": c["k"],
            "d": c["d"],
            "entropy": h,
            "h_tilde": h + log_c,
            "eta": eta,
            "log_k": math.log(c["k"]),
            "log_c": log_c,
            "uniform_entropy": _sphere_log_area(c["d"]),
        }
        v = box.values
        numbers.value = (
            f"<b>Ĥ</b> ({est}{', leave-one-out' if loo else ', self-term'}) = {h:.4f} nats &nbsp;|&nbsp; "
            f"<b>η</b> = {eta:.3f} &nbsp;|&nbsp; H̃ = Ĥ + log C<sub>d</sub>(κ) = {v['h_tilde']:.3f} "
            f"(self-term range [−κ, log k − κ] = [{-kap:.2f}, {v['log_k'] - kap:.2f}])<br>"
            f"log k = {v['log_k']:.3f} &nbsp;|&nbsp; log C<sub>d</sub>(κ) = {log_c:.3f} &nbsp;|&nbsp; "
            f"uniform entropy log|S<sup>d−1</sup>| = {v['uniform_entropy']:.3f}"
        )
        etas = [float(bounds.normalized_entropy(z, q, est, check=False)) for q in kappas]
        h_self = [float(bounds.kde_entropy(z, q, est, check=False)) for q in kappas]
        h_loo = [float(bounds.kde_entropy(z, q, est, leave_one_out=True, check=False)) for q in kappas]
        panels = [
            Panel(
                [
                    Series(kappas, etas, f"η ({est})", color_for(0)),
                    Series([kap], [eta], "current κ", color_for(3), markers=True),
                ],
                title="normalised entropy η vs κ",
                xlabel="κ (log scale)",
                ylabel="η",
                logx=True,
                hlines=[(0.0, "η = 0: collapse"), (1.0, "η = 1: log k ceiling")],
            ),
            Panel(
                [
                    Series(kappas, h_self, "Ĥ self-term", color_for(0)),
                    Series(kappas, h_loo, "Ĥ leave-one-out", color_for(1), dash=True),
                    Series([kap], [h], "current", color_for(3), markers=True),
                ],
                title="KDE entropy Ĥ vs κ",
                xlabel="κ (log scale)",
                ylabel="Ĥ (nats)",
                logx=True,
                hlines=[(v["uniform_entropy"], "uniform on the sphere")],
            ),
        ]
        if c["d"] == 2:
            panels.append(
                Panel(
                    [Series(z[:, 0].tolist(), z[:, 1].tolist(), "points", color_for(2), markers=True)],
                    title="the batch",
                    xlabel="z₁",
                    ylabel="z₂",
                    equal_aspect=True,
                )
            )
        box.figure = to_plotly(panels, title=f"{c['cloud']} batch, k = {c['k']}, d = {c['d']}")
        if c["d"] == 3:
            import plotly.graph_objects as go

            box.figure_3d = go.Figure(
                go.Scatter3d(x=z[:, 0], y=z[:, 1], z=z[:, 2], mode="markers", marker=dict(size=3, color=color_for(2)))
            )
            box.figure_3d.update_layout(
                title="the batch on the sphere",
                height=420,
                width=460,
                scene=dict(aspectmode="cube"),
                margin=dict(t=40, l=0, r=0, b=0),
            )
        if _in_kernel():
            _show_in(out, box.figure, *([box.figure_3d] if c["d"] == 3 else []))

    for ctrl in controls.values():
        ctrl.observe(update, names="value")
    update()
    return box


PLOTLY_MIME = "application/vnd.plotly.v1+json"


def plotly_output(figure) -> dict:
    """A plotly figure as one ``display_data`` output (nbformat): the plotly MIME bundle JupyterLab renders, and a
    plain-text fallback."""
    import json

    spec = json.loads(figure.to_json())
    spec.setdefault("config", {})
    title = figure.layout.title.text or "plotly figure"
    return {
        "output_type": "display_data",
        "data": {PLOTLY_MIME: spec, "text/plain": f"<figure: {title}>"},
        "metadata": {},
    }


def _show_in(out, *figures) -> None:
    """Replace the contents of an Output widget by ``figures``.

    Writes the widget's ``outputs`` state directly: capturing with ``with out:`` can leave a headless (papermill)
    execution waiting for ever, and ``out.append_display_data(figure)`` must not be used for plotly figures — IPython's
    formatter calls their ``_ipython_display_``, which shows the figure in the *cell* (or, from a slider callback,
    nowhere) and leaves the widget an empty output."""
    out.outputs = tuple(plotly_output(fig) for fig in figures)


def _in_kernel() -> bool:
    """True inside an IPython session (where an Output widget can capture a display)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


class TrainingDashboard:
    """Live curves of a training run in a notebook: entropy (η), reconstruction, ER and InfoNCE estimates, kNN.

    ``dashboard = TrainingDashboard("BYOL-ER"); train(cfg, callback=dashboard.update)``. Every value is drawn against
    the optimiser step (the once-an-epoch records at the step they were taken). One legend convention holds in every
    panel (:data:`LINE_STYLES`): **the colour is the quantity, the line style is where it was measured** — solid on the
    training batch (every ``log_every`` steps), dashed on the fixed monitor batch (once an epoch, comparable across
    epochs and runs), dotted with markers on the held-out test set (kNN accuracy, once an epoch); each legend entry
    names it. Redraws at most every ``redraw_every`` records; :attr:`panels` holds the current figure for
    :func:`erlib.plots.show`.
    """

    #: where a value was measured -> (line style, legend suffix)
    LINE_STYLES: ClassVar[dict[str, tuple[LineStyle, str]]] = {
        "train": ("solid", "training batch"),
        "monitor": ("dash", "monitor batch"),
        "test": ("dot", "test set"),
    }
    #: (panel title, y label, reference lines, [(metric key, where measured, quantity, colour index)])
    PANELS: ClassVar[tuple[tuple[str, str, list[tuple[float, str]], list[tuple[str, str, str, int]]], ...]] = (
        (
            "entropy",
            "η (normalised entropy)",
            [(1.0, "η = 1: log k ceiling"), (0.0, "η = 0: collapse")],
            [("eta_online", "train", "η", 0), ("monitor_eta_online", "monitor", "η", 0)],
        ),
        (
            "reconstruction",
            "mean cosine",
            [],
            [("reconstruction", "train", "mean cos", 1), ("monitor_reconstruction", "monitor", "mean cos", 1)],
        ),
        (
            "MI estimates",
            "nats",
            [],
            [
                ("er_bound", "train", "ER", 2),
                ("monitor_er_bound", "monitor", "ER", 2),
                ("infonce", "train", "InfoNCE", 3),
                ("monitor_infonce", "monitor", "InfoNCE", 3),
            ],
        ),
        ("kNN accuracy", "top-1 accuracy", [], [("knn200", "test", "kNN k=200", 4), ("knn20", "test", "kNN k=20", 5)]),
    )

    def __init__(self, title: str = "training", redraw_every: int = 1):
        import ipywidgets as widgets

        if not isinstance(redraw_every, int) or redraw_every < 1:
            raise ValueError(
                f"redraw_every={redraw_every!r}: give a whole number of records >= 1 (1 redraws on every record)"
            )
        self.title, self.redraw_every = title, redraw_every
        self.records: list[dict] = []
        self.output = widgets.Output(layout={"border": "1px solid #ddd"})
        self.status = widgets.HTML(f"<b>{title}</b>: waiting for the first metrics…")
        self.widget = widgets.VBox([self.status, self.output])

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def update(self, record: dict) -> None:
        """Add one metrics record (as written to metrics.jsonl) and redraw."""
        self.records.append(record)
        last = record
        self.status.value = (
            f"<b>{self.title}</b>: epoch {last['epoch']}, step {last['step']}"
            + (f", loss {last['loss']:.3f}" if "loss" in last else "")
            + (f", kNN {last['knn200']:.3f}" if "knn200" in last else "")
            + " &nbsp;·&nbsp; solid: training batch, dashed: fixed monitor batch, dotted: test set"
        )
        if len(self.records) % self.redraw_every == 0 and _in_kernel():
            _show_in(self.output, to_plotly(self.panels, self.title))

    def _series(self, key: str, where: str, quantity: str, color: str) -> Series | None:
        kind = "train" if where == "train" else "epoch"
        pts = [(r["step"], r[key]) for r in self.records if r.get("kind") == kind and key in r]
        if not pts:
            return None
        style, suffix = self.LINE_STYLES[where]
        return Series(
            [p[0] for p in pts], [p[1] for p in pts], f"{quantity}: {suffix}", color, dash=style, points=where == "test"
        )

    def _untrained_knn(self) -> list[tuple[float, str]]:
        """The kNN panel's reference line: the untrained network's kNN200 accuracy, from the epoch-0 record (same bank
        and protocol as every later point), once that record has arrived."""
        first = next((r for r in self.records if r.get("kind") == "epoch" and r.get("epoch") == 0), None)
        return [(first["knn200"], "untrained network (kNN k=200)")] if first and "knn200" in first else []

    @property
    def panels(self) -> list[Panel]:
        """The four panels of the current records (series without records left out); the kNN panel also draws the
        untrained network's accuracy."""
        out = []
        for title, ylabel, hlines, entries in self.PANELS:
            series = [self._series(key, where, quantity, color_for(c)) for key, where, quantity, c in entries]
            lines = list(hlines) + (self._untrained_knn() if title == "kNN accuracy" else [])
            out.append(Panel([s for s in series if s is not None], title, "step", ylabel, hlines=lines))
        return out
