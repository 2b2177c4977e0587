"""Figures described once, drawn twice: interactive plotly in JupyterLab, static matplotlib files for headless runs.

A figure is a :class:`Panel` (or a row of panels) of :class:`Series`; :func:`show` displays the plotly version when
running inside IPython and always writes ``<name>.png`` (matplotlib) and ``<name>.html`` (plotly, offline) under the
output folder, so a papermill run leaves readable figures behind.

Conventions (ER-SPEC.md §5.2): one colour per method, solid = original, dashed = ER variant; reference lines for
ceilings (η = 1, log k, log K) and floors (collapse).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Series", "Panel", "show", "PALETTE", "color_for"]

#: A colour-blind-friendly palette (Okabe & Ito, 2008).
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def color_for(index: int) -> str:
    """The index-th colour of :data:`PALETTE` (cycling)."""
    return PALETTE[index % len(PALETTE)]


@dataclass
class Series:
    """One curve (or cloud of markers), optionally with a shaded band ``(lower, upper)``."""

    x: Sequence[float]
    y: Sequence[float]
    name: str
    color: str | None = None
    dash: bool = False
    markers: bool = False
    band: tuple[Sequence[float], Sequence[float]] | None = None


@dataclass
class Panel:
    """Axes with their series and horizontal reference lines ``(y, label)``."""

    series: list[Series]
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    hlines: list[tuple[float, str]] = field(default_factory=list)
    logx: bool = False
    logy: bool = False
    equal_aspect: bool = False


def _as_list(x) -> list:
    return [float(v) for v in (x.tolist() if hasattr(x, "tolist") else x)]


def _colors(panel: Panel) -> list[str]:
    return [s.color or color_for(i) for i, s in enumerate(panel.series)]


def to_plotly(panels: Sequence[Panel], title: str = ""):
    """The panels as one plotly figure (subplots in a row)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p.title for p in panels])
    for col, panel in enumerate(panels, start=1):
        for s, color in zip(panel.series, _colors(panel)):
            x, y = _as_list(s.x), _as_list(s.y)
            if s.band is not None:
                lo, hi = _as_list(s.band[0]), _as_list(s.band[1])
                fig.add_trace(go.Scatter(x=x + x[::-1], y=hi + lo[::-1], fill="toself", fillcolor=color,
                                         opacity=0.2, line=dict(width=0), hoverinfo="skip", showlegend=False),
                              row=1, col=col)
            mode = "markers" if s.markers else "lines"
            fig.add_trace(go.Scatter(x=x, y=y, name=s.name, mode=mode, legendgroup=s.name, showlegend=col == 1
                                     or s.name not in {t.name for p in panels[:col - 1] for t in p.series},
                                     line=dict(color=color, dash="dash" if s.dash else "solid"),
                                     marker=dict(color=color, size=5)), row=1, col=col)
        for y, label in panel.hlines:
            fig.add_hline(y=y, line=dict(color="grey", dash="dot", width=1), annotation_text=label,
                          annotation_position="top left", row=1, col=col)
        fig.update_xaxes(title_text=panel.xlabel, type="log" if panel.logx else None, row=1, col=col)
        fig.update_yaxes(title_text=panel.ylabel, type="log" if panel.logy else None, row=1, col=col)
        if panel.equal_aspect:
            fig.update_yaxes(scaleanchor=f"x{col if col > 1 else ''}", scaleratio=1, row=1, col=col)
    fig.update_layout(title=title, template="plotly_white", height=420, width=max(520, 460 * len(panels)),
                      margin=dict(t=70, l=60, r=20, b=50))
    return fig


def to_matplotlib(panels: Sequence[Panel], title: str = ""):
    """The panels as one matplotlib figure (for PNG/PDF export)."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for s, color in zip(panel.series, _colors(panel)):
            x, y = _as_list(s.x), _as_list(s.y)
            if s.band is not None:
                ax.fill_between(x, _as_list(s.band[0]), _as_list(s.band[1]), color=color, alpha=0.2, lw=0)
            if s.markers:
                ax.scatter(x, y, s=8, color=color, label=s.name)
            else:
                ax.plot(x, y, color=color, ls="--" if s.dash else "-", label=s.name, lw=1.8)
        for y, label in panel.hlines:
            ax.axhline(y, color="grey", ls=":", lw=1)
            ax.annotate(label, (0.01, y), xycoords=("axes fraction", "data"), fontsize=8, color="grey",
                        va="bottom")
        ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        if panel.logx:
            ax.set_xscale("log")
        if panel.logy:
            ax.set_yscale("log")
        if panel.equal_aspect:
            ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        if panel.series:
            ax.legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def show(panels: Panel | Sequence[Panel], name: str, output_dir: str | Path | None = None, title: str = "",
         display: bool = True) -> dict[str, Path]:
    """Display the figure (plotly, inside IPython) and save ``name.png`` and ``name.html`` under ``output_dir``.

    Returns the paths written (empty if ``output_dir`` is None).
    """
    panels = [panels] if isinstance(panels, Panel) else list(panels)
    if not panels:
        raise ValueError("show() needs at least one Panel")
    if display and _in_ipython():
        to_plotly(panels, title).show()
    written: dict[str, Path] = {}
    if output_dir is not None:
        import matplotlib.pyplot as plt

        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        mpl_fig = to_matplotlib(panels, title)
        written["png"] = out / f"{name}.png"
        mpl_fig.savefig(written["png"], dpi=130)
        plt.close(mpl_fig)
        written["html"] = out / f"{name}.html"
        to_plotly(panels, title).write_html(written["html"], include_plotlyjs="directory", full_html=True)
    return written


# ----------------------------------------------------------------------------------------------------------------------
# Figures from run folders (erlib.runs): one colour per method, solid = original, dashed = ER variant
# ----------------------------------------------------------------------------------------------------------------------

METHOD_ORDER = ("simclr", "deepcluster", "swav", "byol", "dino")


def run_label(config: dict) -> str:
    """'BYOL-ER', 'SwAV', ... plus any label stored in the config's name after a '@' (e.g. 'byol@tau0.9')."""
    names = {"simclr": "SimCLR", "deepcluster": "DeepCluster-v2", "swav": "SwAV", "byol": "BYOL", "dino": "DINO"}
    label = names.get(config["method"], config["method"]) + ("-ER" if config.get("er") else "")
    tag = config.get("name", "").partition("@")[2]
    return f"{label} ({tag})" if tag else label


def run_series(run, key: str, kind: str = "epoch", color: str | None = None, name: str | None = None) -> Series:
    """One run's metric ``key`` as a :class:`Series` in the run's method colour (dashed for ER variants)."""
    xs, ys = run.series(key, kind)
    method = run.config["method"]
    default = color_for(METHOD_ORDER.index(method)) if method in METHOD_ORDER else None
    return Series(xs, ys, name or run_label(run.config), color=color or default, dash=bool(run.config.get("er")))


def runs_panel(runs, key: str, title: str, ylabel: str, kind: str = "epoch", hlines=None) -> Panel:
    """A panel of metric ``key`` for several runs (those that logged it)."""
    series = [run_series(r, key, kind) for r in runs if r.series(key, kind)[0]]
    return Panel(series, title=title, xlabel="epoch" if kind == "epoch" else "step", ylabel=ylabel,
                 hlines=list(hlines or []))
