"""Figures described once, drawn twice: interactive plotly in JupyterLab, static matplotlib files for headless runs.

A figure is a :class:`Panel` (or a row of panels) of :class:`Series` (lines, marker clouds or bars); :func:`show`
displays the plotly version when running inside IPython and always writes ``<name>.png`` (matplotlib) and
``<name>.html`` (plotly, offline) under the output folder, so a papermill run leaves readable figures behind.

Conventions (docs/theory.md#figures): one colour per method, solid = original, dashed = ER variant; dotted grey
reference lines for ceilings (η = 1, log k, log K) and floors (collapse). The layout is the same in both renderings:

* reference lines are drawn above the data and their labels sit in the right margin of their panel, spread apart so
  that no label covers another and no curve covers a label;
* each panel's legend sits below its axes, in as many columns as fit the panel's width (long entries wrap), so a
  legend never covers the data nor runs past its panel;
* the y-range is computed once from the data and the reference lines (or given: :attr:`Panel.ylim`), so panels can
  share it (``show(..., sharey=True)``);
* log axes are labelled with plain numbers: powers of ten over three decades or more, 1-2-5 steps over one to three
  decades, 1…9 steps below one decade (or the values of :attr:`Panel.xticks`).
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Series",
    "Panel",
    "show",
    "to_plotly",
    "to_matplotlib",
    "log_ticks",
    "PALETTE",
    "color_for",
    "METHOD_ORDER",
    "run_label",
    "run_series",
    "runs_panel",
]

#: A colour-blind-friendly palette (Okabe & Ito, 2008).
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
#: Colour of reference lines and their labels.
REFERENCE_COLOR = "#555555"

LineStyle = Literal["solid", "dash", "dot"]
_LINE_STYLES = ("solid", "dash", "dot")
_MPL_DASH = {"solid": "-", "dash": "--", "dot": ":"}

# plotly layout (pixels): plotting area of one panel, reference-label font, legend font
_PLOT_W, _PLOT_H = 360, 280
_LABEL_CHARS = 16  # reference labels wrap after this many characters
_LABEL_PX_PER_CHAR, _LEGEND_PX_PER_CHAR, _LEGEND_ROW_PX = 6.2, 6.6, 19
# matplotlib layout (inches at 8 pt labels): width of one panel's axes
_MPL_AXES_W, _MPL_AXES_H = 4.2, 3.0


def color_for(index: int) -> str:
    """The index-th colour of :data:`PALETTE` (cycling)."""
    return PALETTE[index % len(PALETTE)]


@dataclass
class Series:
    """One curve, cloud of markers or set of bars.

    * a line (default) through the points ``(x, y)``, ``dash`` = False / "solid", True / "dash" or "dot", optionally
      with a marker at every point (``points``) and a shaded band ``(lower, upper)``;
    * ``markers=True``: markers only (a cloud);
    * ``bars=True``: one bar per x (x may be category names); the bar series of one panel stand side by side per
      category; ``bar_colors`` gives each bar its own colour, ``hatch`` hatches them (e.g. ER variants), ``text`` puts
      a label on top of each bar.
    """

    x: Sequence
    y: Sequence[float]
    name: str
    color: str | None = None
    dash: bool | LineStyle = False
    markers: bool = False
    band: tuple[Sequence[float], Sequence[float]] | None = None
    points: bool = False
    bars: bool = False
    hatch: bool = False
    bar_colors: Sequence[str] | None = None
    text: Sequence[str] | None = None

    def __post_init__(self) -> None:
        n_x, n_y = len(self.x), len(self.y)
        if n_x != n_y:
            raise ValueError(f"Series {self.name!r}: x has {n_x} values and y has {n_y}; give one y per x")
        if self.line_style not in _LINE_STYLES:
            raise ValueError(f"Series {self.name!r}: dash={self.dash!r}; use True/False or one of {_LINE_STYLES}")
        if self.bars and (self.markers or self.band is not None or self.points):
            raise ValueError(
                f"Series {self.name!r}: bars=True cannot be combined with markers, points or band; "
                "draw those as a second Series"
            )
        if self.band is not None and not (len(self.band) == 2 and len(self.band[0]) == len(self.band[1]) == n_x):
            raise ValueError(f"Series {self.name!r}: band must be (lower, upper) with {n_x} values each")
        for key in ("bar_colors", "text"):
            values = getattr(self, key)
            if values is not None and len(values) != n_x:
                raise ValueError(
                    f"Series {self.name!r}: {key} has {len(values)} entries for {n_x} points; give one per point"
                )

    @property
    def line_style(self) -> str:
        """'solid', 'dash' or 'dot'."""
        if self.dash is True:
            return "dash"
        if self.dash is False or self.dash is None:
            return "solid"
        return self.dash


@dataclass
class Panel:
    """Axes with their series and horizontal reference lines ``(y, label)``.

    ``ylim`` fixes the y-range (data units); ``xticks`` labels the x-axis at exactly these values (e.g. the swept batch
    sizes of a log-x axis)."""

    series: list[Series]
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    hlines: list[tuple[float, str]] = field(default_factory=list)
    logx: bool = False
    logy: bool = False
    equal_aspect: bool = False
    ylim: tuple[float, float] | None = None
    xticks: Sequence[float] | None = None

    def __post_init__(self) -> None:
        if self.ylim is not None:
            lo, hi = self.ylim
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi) or (self.logy and lo <= 0):
                raise ValueError(
                    f"Panel {self.title!r}: ylim={self.ylim!r}; give (low, high) with low < high"
                    + (" and low > 0 on a log axis" if self.logy else "")
                )
        if any(s.bars for s in self.series) and self.logx:
            raise ValueError(f"Panel {self.title!r}: bars on a log x-axis; set logx=False")

    @property
    def categorical(self) -> bool:
        """True when the x-values are category names (bar charts)."""
        return any(isinstance(v, str) for s in self.series for v in s.x)


# ----------------------------------------------------------------------------------------------------------------------
# Layout shared by both renderings
# ----------------------------------------------------------------------------------------------------------------------


def _as_list(x) -> list:
    values = x.tolist() if hasattr(x, "tolist") else list(x)
    return [v if isinstance(v, str) else float(v) for v in values]


def _colors(panel: Panel) -> list[str]:
    return [s.color or color_for(i) for i, s in enumerate(panel.series)]


def _categories(panel: Panel) -> list[str]:
    """The category names of a categorical panel, in order of first appearance."""
    seen: dict[str, None] = {}
    for s in panel.series:
        seen.update({str(v): None for v in s.x})
    return list(seen)


def _finite(values, log: bool) -> list[float]:
    return [v for v in values if math.isfinite(v) and (v > 0 or not log)]


def _data_extent(panel: Panel) -> tuple[float, float] | None:
    """Smallest and largest y of the series (bands and the bars' zero base included) and of the reference lines."""
    ys: list[float] = []
    for s in panel.series:
        ys += _as_list(s.y)
        if s.band is not None:
            ys += _as_list(s.band[0]) + _as_list(s.band[1])
        if s.bars:
            ys.append(0.0)
    ys += [float(y) for y, _ in panel.hlines]
    ys = _finite(ys, panel.logy)
    return (min(ys), max(ys)) if ys else None


def _padded(lo: float, hi: float, log: bool, top: float = 0.05) -> tuple[float, float]:
    """[lo, hi] widened by 5 % of its span on each side (``top`` above; in log10 units on a log axis)."""
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
    lo, hi = lo - 0.05 * span, hi + top * span
    return (10**lo, 10**hi) if log else (lo, hi)


def _y_ranges(panels: Sequence[Panel], sharey: bool) -> list[tuple[float, float] | None]:
    """Each panel's y-range in data units: its ``ylim``, else its data extent widened by 5 % each side; with
    ``sharey`` one range for all: the widened union of the extents, and of the ``ylim`` of the panels that have one."""
    if sharey and len({p.logy for p in panels}) > 1:
        raise ValueError("sharey=True needs every panel on the same y scale; some panels have logy=True and others not")
    extents = [_data_extent(p) for p in panels]
    tops = [0.12 if any(s.bars and s.text for s in p.series) else 0.05 for p in panels]  # room for bar labels
    if not sharey:
        return [
            (p.ylim[0], p.ylim[1]) if p.ylim is not None else _padded(*e, p.logy, top) if e else None
            for p, e, top in zip(panels, extents, tops)
        ]
    free = [e for p, e in zip(panels, extents) if p.ylim is None and e is not None]
    ranges = [tuple(p.ylim) for p in panels if p.ylim is not None]
    if free:
        ranges.append(_padded(min(e[0] for e in free), max(e[1] for e in free), panels[0].logy, max(tops)))
    if not ranges:
        return [None] * len(panels)
    return [(min(r[0] for r in ranges), max(r[1] for r in ranges))] * len(panels)


def _frac(y: float, lo: float, hi: float, log: bool) -> float:
    """Position of y in the range [lo, hi] as a fraction of its height."""
    if log:
        y, lo, hi = math.log10(y), math.log10(lo), math.log10(hi)
    return (y - lo) / (hi - lo)


def _visible_hlines(panel: Panel, yrange: tuple[float, float] | None) -> list[tuple[float, str]]:
    """The reference lines inside the panel's y-range, in the order given."""
    out = []
    for y, label in panel.hlines:
        y = float(y)
        if not math.isfinite(y) or (panel.logy and y <= 0):
            continue
        if yrange is None or yrange[0] <= y <= yrange[1]:
            out.append((y, str(label)))
    return out


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width=max(width, 8), break_long_words=False) or [""]


def _spread(fracs: Sequence[float], heights: Sequence[float]) -> list[float]:
    """Centres of labels of the given heights (fractions of the axes height) moved apart as little as possible so that
    they do not overlap, kept inside [0, 1] where they fit."""
    order = sorted(range(len(fracs)), key=lambda i: fracs[i])
    pos = {i: fracs[i] for i in order}
    for a, b in zip(order, order[1:]):  # push up
        pos[b] = max(pos[b], pos[a] + (heights[a] + heights[b]) / 2)
    if order and pos[order[-1]] > 1:  # the top one ran out: push back down
        pos[order[-1]] = 1.0
        for a, b in zip(order[::-1], order[::-1][1:]):
            pos[b] = min(pos[b], pos[a] - (heights[a] + heights[b]) / 2)
    return [pos[i] for i in range(len(fracs))]


def log_ticks(lo: float, hi: float, max_ticks: int = 9) -> list[float]:
    r"""Tick values for a log axis over ``[lo, hi]`` (lo > 0).

    Powers of ten :math:`10^e` when at least three of them fall in the range; otherwise :math:`\{1,2,5\}\cdot10^e`;
    otherwise :math:`\{1,\dots,9\}\cdot10^e` (less than a decade). At most ``max_ticks`` values: powers of ten are
    thinned to every n-th exponent (multiples of n), other ticks to every second one. An empty list when fewer than two
    ticks fall in the range."""
    if not (lo > 0 and hi > lo):
        raise ValueError(f"log_ticks needs 0 < lo < hi, got lo={lo!r}, hi={hi!r}")
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks: list[float] = []
    for subs in ((1,), (1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [float(f"{m}e{e}") for e in range(e0, e1 + 1) for m in subs]
        ticks = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
        if len(ticks) >= 3:
            break
    if len(ticks) > max_ticks and all(math.log10(t).is_integer() for t in ticks):
        step = math.ceil(len(ticks) / max_ticks)  # every step-th power of ten, at round exponents
        ticks = [t for t in ticks if round(math.log10(t)) % step == 0]
    while len(ticks) > max_ticks:
        ticks = ticks[::2]
    return ticks if len(ticks) >= 2 else []


def _tick_label(v: float) -> str:
    return f"{v:g}"


def _x_extent(panel: Panel) -> tuple[float, float] | None:
    xs = [v for s in panel.series for v in _as_list(s.x) if not isinstance(v, str)]
    xs = _finite(xs, panel.logx)
    return (min(xs), max(xs)) if xs else None


def _axis_ticks(panel: Panel, axis: str, yrange: tuple[float, float] | None) -> list[float] | None:
    """Explicit tick values for a log axis (None: leave the axis to the plotting library)."""
    if axis == "x":
        if panel.xticks is not None:
            return [float(v) for v in panel.xticks]
        if not panel.logx:
            return None
        extent = _x_extent(panel)
    else:
        if not panel.logy:
            return None
        extent = yrange
    if extent is None or not extent[1] > extent[0]:
        return None
    return log_ticks(*extent) or None


def _check_panels(panels: Panel | Sequence[Panel]) -> list[Panel]:
    panels = [panels] if isinstance(panels, Panel) else list(panels)
    if not panels:
        raise ValueError("a figure needs at least one Panel; got an empty list")
    bad = [type(p).__name__ for p in panels if not isinstance(p, Panel)]
    if bad:
        raise ValueError(f"a figure is a Panel or a list of Panels; got {bad}: wrap series in Panel([...])")
    return panels


def _legend_entries(panel: Panel) -> list[tuple[Series, str]]:
    return [(s, c) for s, c in zip(panel.series, _colors(panel)) if s.name]


# ----------------------------------------------------------------------------------------------------------------------
# plotly
# ----------------------------------------------------------------------------------------------------------------------


def _grid(n: int, columns: int | None) -> tuple[int, int]:
    """(rows, columns) of a figure of n panels: ``columns`` per row (default: up to two)."""
    if columns is not None and (isinstance(columns, bool) or not isinstance(columns, int) or columns < 1):
        raise ValueError(f"columns={columns!r}: give a whole number of panels per row >= 1 (default: up to 2)")
    cols = min(n, columns or 2)
    return math.ceil(n / cols), cols


def to_plotly(panels: Panel | Sequence[Panel], title: str = "", sharey: bool = False, columns: int | None = None):
    """The panels as one plotly figure, ``columns`` panels per row (default up to two, so that a figure fits a
    notebook's width); ``sharey`` gives every panel the same y-range."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = _check_panels(panels)
    ranges = _y_ranges(panels, sharey)
    n = len(panels)
    n_rows, n_cols = _grid(n, columns)
    hlines = [_visible_hlines(p, r) for p, r in zip(panels, ranges)]
    labels = [[_wrap(lbl, _LABEL_CHARS) for _, lbl in lines] for lines in hlines]
    label_px = [
        max((len(row) for lbl in lbls for row in lbl), default=0) * _LABEL_PX_PER_CHAR + 14 if lbls else 0
        for lbls in labels
    ]
    last_col = [i % n_cols == n_cols - 1 or i == n - 1 for i in range(n)]
    gap_w = max((px for px, last in zip(label_px, last_col) if not last), default=0) + 80
    legend_chars = int((_PLOT_W - 40) / _LEGEND_PX_PER_CHAR)
    legend_rows = [sum(len(_wrap(s.name, legend_chars)) for s, _ in _legend_entries(p)) for p in panels]
    below = [62 + max(legend_rows[r * n_cols : (r + 1) * n_cols]) * _LEGEND_ROW_PX + 10 for r in range(n_rows)]
    gap_h = max(below[:-1], default=0) + 45  # axis, legend, then the next row's subplot titles
    margin = dict(
        l=70, r=max(px for px, last in zip(label_px, last_col) if last) + 20, t=90 if title else 60, b=below[-1]
    )
    paper_w = n_cols * _PLOT_W + (n_cols - 1) * gap_w
    paper_h = n_rows * _PLOT_H + (n_rows - 1) * gap_h
    specs: list[list[dict | None]] = [
        [{} if r * n_cols + c < n else None for c in range(n_cols)] for r in range(n_rows)
    ]
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        specs=specs,
        subplot_titles=[p.title for p in panels],
        horizontal_spacing=gap_w / paper_w if n_cols > 1 else 0.2,
        vertical_spacing=gap_h / paper_h if n_rows > 1 else 0.3,
    )
    for index, (panel, yrange) in enumerate(zip(panels, ranges)):
        row, col = index // n_cols + 1, index % n_cols + 1
        suffix = "" if index == 0 else str(index + 1)
        legend = f"legend{suffix}"
        for s, color in zip(panel.series, _colors(panel)):
            x, y = _as_list(s.x), _as_list(s.y)
            name = "<br>".join(_wrap(s.name, legend_chars))
            if s.bars:
                fig.add_trace(
                    go.Bar(
                        x=[str(v) for v in x],
                        y=y,
                        name=name,
                        legend=legend,
                        showlegend=bool(s.name),
                        marker=dict(
                            color=list(s.bar_colors) if s.bar_colors else color,
                            line=dict(color="#222222", width=0.8),
                            pattern=dict(shape="/" if s.hatch else ""),
                        ),
                        text=list(s.text) if s.text is not None else None,
                        textposition="outside",
                        cliponaxis=False,
                    ),
                    row=row,
                    col=col,
                )
                continue
            if s.band is not None:
                lo, hi = _as_list(s.band[0]), _as_list(s.band[1])
                fig.add_trace(
                    go.Scatter(
                        x=x + x[::-1],
                        y=hi + lo[::-1],
                        fill="toself",
                        fillcolor=color,
                        opacity=0.2,
                        line=dict(width=0),
                        hoverinfo="skip",
                        showlegend=False,
                        legend=legend,
                    ),
                    row=row,
                    col=col,
                )
            mode = "markers" if s.markers else "lines+markers" if s.points else "lines"
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    name=name,
                    mode=mode,
                    legend=legend,
                    showlegend=bool(s.name),
                    text=list(s.text) if s.text is not None else None,
                    line=dict(color=color, dash=s.line_style, width=2),
                    marker=dict(color=color, size=5 if s.markers else 6),
                ),
                row=row,
                col=col,
            )
        _plotly_reference_lines(fig, suffix, panel, yrange, hlines[index], labels[index])
        xticks = _axis_ticks(panel, "x", yrange)
        yticks = _axis_ticks(panel, "y", yrange)
        fig.update_xaxes(
            title_text=panel.xlabel,
            type="log" if panel.logx else None,
            row=row,
            col=col,
            **({"tickvals": xticks, "ticktext": [_tick_label(v) for v in xticks]} if xticks else {}),
        )
        yaxis: dict = {"title_text": panel.ylabel, "type": "log" if panel.logy else None}
        if yticks:
            yaxis.update(tickvals=yticks, ticktext=[_tick_label(v) for v in yticks])
        if yrange is not None and not panel.equal_aspect:
            yaxis["range"] = [math.log10(v) for v in yrange] if panel.logy else list(yrange)
        fig.update_yaxes(row=row, col=col, **yaxis)
        if panel.equal_aspect:
            fig.update_yaxes(scaleanchor=f"x{suffix}", scaleratio=1, row=row, col=col)
        x_domain, y_domain = fig.layout[f"xaxis{suffix}"].domain, fig.layout[f"yaxis{suffix}"].domain
        fig.update_layout(
            {
                legend: dict(
                    x=(x_domain[0] + x_domain[1]) / 2,
                    xanchor="center",
                    xref="paper",
                    y=y_domain[0] - 62 / paper_h,
                    yanchor="top",
                    yref="paper",
                    orientation="v",
                    bgcolor="rgba(0,0,0,0)",
                    font=dict(size=11),
                )
            }
        )
    fig.update_layout(
        title=title,
        template="plotly_white",
        height=margin["t"] + paper_h + margin["b"],
        width=margin["l"] + paper_w + margin["r"],
        margin=margin,
        barmode="group",
        bargap=0.25,
    )
    return fig


def _plotly_reference_lines(fig, suffix: str, panel: Panel, yrange: tuple[float, float] | None, lines, labels) -> None:
    """Dotted lines above the data; labels in the right margin, moved apart where they would overlap."""
    for y, _ in lines:
        fig.add_shape(
            type="line",
            xref=f"x{suffix} domain",
            x0=0,
            x1=1,
            yref=f"y{suffix}",
            y0=y,
            y1=y,
            layer="above",
            line=dict(color=REFERENCE_COLOR, dash="dot", width=1.3),
        )
    if not lines:
        return
    row_px = 13
    if yrange is not None and not panel.equal_aspect:
        fracs = [_frac(y, *yrange, panel.logy) for y, _ in lines]
        heights = [len(lbl) * row_px / _PLOT_H for lbl in labels]
        shifts = [(new - old) * _PLOT_H for new, old in zip(_spread(fracs, heights), fracs)]
    else:
        shifts = [0.0] * len(lines)
    for (y, _), lbl, shift in zip(lines, labels, shifts):
        fig.add_annotation(
            xref=f"x{suffix} domain",
            x=1,
            xanchor="left",
            xshift=6,
            yref=f"y{suffix}",
            y=math.log10(y) if panel.logy else y,
            yshift=shift,
            yanchor="middle",
            showarrow=False,
            text="<br>".join(lbl),
            align="left",
            font=dict(size=10, color=REFERENCE_COLOR),
        )


# ----------------------------------------------------------------------------------------------------------------------
# matplotlib
# ----------------------------------------------------------------------------------------------------------------------


def to_matplotlib(panels: Panel | Sequence[Panel], title: str = "", sharey: bool = False, columns: int | None = None):
    """The panels as one matplotlib figure (for PNG/PDF export), in the grid of :func:`to_plotly`; ``sharey`` gives
    every panel the same y-range."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    panels = _check_panels(panels)
    ranges = _y_ranges(panels, sharey)
    hlines = [_visible_hlines(p, r) for p, r in zip(panels, ranges)]
    labels = ["\n".join(_wrap(lbl, _LABEL_CHARS)) for lines in hlines for _, lbl in lines]
    label_in = 0.08 + 0.062 * max((len(row) for lbl in labels for row in lbl.split("\n")), default=0)
    n_rows, n_cols = _grid(len(panels), columns)
    fig, grid = plt.subplots(
        n_rows,
        n_cols,
        figsize=(n_cols * (_MPL_AXES_W + 0.9 + (label_in if labels else 0)), 4.0 * n_rows),
        squeeze=False,
    )
    cells = [ax for row in grid for ax in row]
    axes = cells[: len(panels)]
    for unused in cells[len(panels) :]:
        fig.delaxes(unused)
    for ax, panel, yrange in zip(axes, panels, ranges):
        _mpl_draw_series(ax, panel)
        for y, _ in hlines[axes.index(ax)]:
            ax.axhline(y, color=REFERENCE_COLOR, ls=":", lw=1.3, zorder=4)
        ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        if panel.logx:
            ax.set_xscale("log")
        if panel.logy:
            ax.set_yscale("log")
        if yrange is not None:
            ax.set_ylim(*yrange)
        for axis, which in ((ax.xaxis, "x"), (ax.yaxis, "y")):
            ticks = _axis_ticks(panel, which, yrange)
            if ticks:
                axis.set_major_locator(FixedLocator(ticks))
                axis.set_major_formatter(FuncFormatter(lambda v, _pos: _tick_label(v)))
                axis.set_minor_formatter(NullFormatter())
        if panel.equal_aspect:
            ax.set_aspect("equal", adjustable="datalim" if yrange is None else "box")
        ax.grid(alpha=0.3)
        ax.set_axisbelow(True)
    if title:
        fig.suptitle(title)
    _mpl_layout(fig, axes, panels, hlines, n_cols)
    return fig


def _mpl_draw_series(ax, panel: Panel) -> None:
    cats = _categories(panel) if panel.categorical else []
    bar_series = [s for s in panel.series if s.bars]
    width = 0.8 / max(len(bar_series), 1)
    for s, color in zip(panel.series, _colors(panel)):
        x, y = _as_list(s.x), _as_list(s.y)
        if cats:
            x = [cats.index(str(v)) for v in x]
        if s.bars:
            j = bar_series.index(s)
            pos = [v + (j - (len(bar_series) - 1) / 2) * width for v in x]
            ax.bar(
                pos,
                y,
                width,
                color=list(s.bar_colors) if s.bar_colors else color,
                label=s.name or None,
                hatch="//" if s.hatch else None,
                edgecolor="#222222",
                lw=0.6,
                zorder=2,
            )
            for px, py, t in zip(pos, y, s.text or []):
                if math.isfinite(py):
                    ax.annotate(
                        t, (px, py), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7
                    )
            continue
        if s.band is not None:
            ax.fill_between(x, _as_list(s.band[0]), _as_list(s.band[1]), color=color, alpha=0.2, lw=0)
        if s.markers:
            ax.scatter(x, y, s=8, color=color, label=s.name or None, zorder=3)
        else:
            ax.plot(
                x,
                y,
                color=color,
                ls=_MPL_DASH[s.line_style],
                label=s.name or None,
                lw=1.8,
                marker="o" if s.points else None,
                ms=4,
                zorder=3,
            )
    if cats:
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels(
            cats,
            rotation=20 if max(len(c) for c in cats) > 6 else 0,
            ha="right" if max(len(c) for c in cats) > 6 else "center",
        )
        ax.set_xlim(-0.6, len(cats) - 0.4)


def _mpl_layout(fig, axes, panels: Sequence[Panel], hlines, n_cols: int) -> None:
    """Reference labels in the right margins, legends below the axes (as many columns as fit), then a tight layout
    with the figure grown by the legends' height."""
    from matplotlib.transforms import ScaledTranslation

    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    dpi = fig.dpi
    for ax, panel, lines in zip(axes, panels, hlines):
        _mpl_reference_labels(ax, panel, lines, renderer)
    legends: list[Any] = []  # matplotlib Legend (untyped) or None
    for ax, panel in zip(axes, panels):
        handles, names = _mpl_legend_handles(ax, panel)
        if not handles:
            legends.append(None)
            continue
        below = (ax.bbox.y0 - ax.xaxis.get_tightbbox(renderer).y0) / dpi + 0.06
        anchor = ax.transAxes + ScaledTranslation(0, -below, fig.dpi_scale_trans)
        axes_px = ax.bbox.width
        legend: Any = None  # a matplotlib Legend once the loop ran (always: handles is not empty)
        for wrap in (None, 48, 36, 28, 20):
            shown = names if wrap is None else ["\n".join(_wrap(t, wrap)) for t in names]
            for ncol in range(min(len(handles), 3), 0, -1):
                if legend is not None:
                    legend.remove()
                legend = ax.legend(
                    handles,
                    shown,
                    loc="upper center",
                    bbox_to_anchor=(0.5, 0),
                    ncol=ncol,
                    bbox_transform=anchor,
                    fontsize=8,
                    frameon=False,
                    handlelength=2.6,
                    columnspacing=1.2,
                    borderaxespad=0,
                )
                if legend.get_window_extent(renderer).width <= axes_px:
                    break
            if legend.get_window_extent(renderer).width <= axes_px:
                break
        legends.append(legend)
    heights = [lg.get_window_extent(renderer).height / dpi if lg is not None else 0.0 for lg in legends]
    extra = sum(max(heights[r : r + n_cols]) for r in range(0, len(heights), n_cols))  # the tallest legend of each row
    fig.set_figheight(fig.get_figheight() + extra)
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    for ax, panel, lines in zip(axes, panels, hlines):  # the axes moved: place the labels again
        for text in [t for t in ax.texts if getattr(t, "_erlib_reference", False)]:
            text.remove()
        _mpl_reference_labels(ax, panel, lines, renderer)


def _mpl_legend_handles(ax, panel: Panel) -> tuple[list, list[str]]:
    """The axes' legend handles; a bar series with one colour per bar gets a swatch of its own ``color``."""
    from matplotlib.patches import Patch

    handles, names = ax.get_legend_handles_labels()
    bars = {s.name: (s, c) for s, c in zip(panel.series, _colors(panel)) if s.bars}
    for i, name in enumerate(names):
        if name in bars:
            s, color = bars[name]
            handles[i] = Patch(facecolor=color, edgecolor="#222222", lw=0.6, hatch="//" if s.hatch else None)
    return handles, names


def _mpl_reference_labels(ax, panel: Panel, lines, renderer) -> None:
    if not lines:
        return
    lo, hi = ax.get_ylim()
    fracs = [_frac(y, lo, hi, panel.logy) for y, _ in lines]
    texts = ["\n".join(_wrap(lbl, _LABEL_CHARS)) for _, lbl in lines]
    row = 8 * 1.25 * ax.figure.dpi / 72 / max(ax.bbox.height, 1.0)  # one 8 pt line as a fraction of the axes
    heights = [(t.count("\n") + 1) * row for t in texts]
    for text, frac in zip(texts, _spread(fracs, heights)):
        label = ax.annotate(
            text,
            xy=(1, frac),
            xycoords="axes fraction",
            xytext=(5, 0),
            textcoords="offset points",
            ha="left",
            va="center",
            fontsize=8,
            color=REFERENCE_COLOR,
            annotation_clip=False,
        )
        label._erlib_reference = True


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def show(
    panels: Panel | Sequence[Panel],
    name: str,
    output_dir: str | Path | None = None,
    title: str = "",
    display: bool = True,
    sharey: bool = False,
    columns: int | None = None,
) -> dict[str, Path]:
    """Display the figure (plotly, inside IPython) and save ``name.png`` and ``name.html`` under ``output_dir``.

    ``sharey=True`` gives every panel the same y-range (panels that show the same quantity); ``columns`` sets the
    panels per row (default up to two). Returns the paths written (empty if ``output_dir`` is None).
    """
    panels = _check_panels(panels)
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise ValueError(
            f"show(name={name!r}): the figure name becomes a file name; use letters, digits, '_', '-' "
            "or '.', e.g. 'eta_vs_kappa'"
        )
    figure = to_plotly(panels, title, sharey, columns)
    if display and _in_ipython():
        figure.show()
    written: dict[str, Path] = {}
    if output_dir is not None:
        import matplotlib.pyplot as plt

        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        mpl_fig = to_matplotlib(panels, title, sharey, columns)
        written["png"] = out / f"{name}.png"
        mpl_fig.savefig(written["png"], dpi=130)
        plt.close(mpl_fig)
        written["html"] = out / f"{name}.html"
        figure.write_html(written["html"], include_plotlyjs="directory", full_html=True)
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
    return Panel(
        series, title=title, xlabel="epoch" if kind == "epoch" else "step", ylabel=ylabel, hlines=list(hlines or [])
    )
