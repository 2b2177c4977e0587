"""Figure layout, checked on the drawn objects: reference lines above the data with their labels in the margin and
apart, legends inside their panel's width, shared y-ranges, bar charts in both renderings, plain log ticks, and the
dashboard's one line-style convention."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from erlib.plots import Panel, Series, _padded, log_ticks, show, to_matplotlib, to_plotly  # noqa: E402
from erlib.widgets import PLOTLY_MIME, TrainingDashboard, _show_in  # noqa: E402

LONG = "mean LSE(z₂ᵀz₂) − LSE(z₁ᵀz₂), SimCLR-ER"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def eta_panel(**kw) -> Panel:
    # a DINO-like curve lying on the η = 0 line, and two close reference lines
    x = list(range(6))
    return Panel(
        [Series(x, [0.0] * 6, "DINO (centering only)"), Series(x, [0.2, 0.4, 0.6, 0.8, 0.9, 0.95], "BYOL")],
        "η",
        "epoch",
        "η",
        hlines=[(1.0, "η = 1: log k ceiling"), (0.97, "a close line"), (0.0, "η = 0: collapse")],
        **kw,
    )


# ----------------------------------------------------------------------------------------------------------------------
# log ticks
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lo, hi, expected",
    [
        (2, 65536, [10, 100, 1000, 10000]),  # >= 3 powers of ten: powers of ten only
        (0.3, 50, [0.5, 1, 2, 5, 10, 20, 50]),  # one to three decades: 1-2-5
        (16, 1024, [20, 50, 100, 200, 500, 1000]),
        (32, 128, [40, 50, 60, 70, 80, 90, 100]),  # less than a decade: 1...9
    ],
)
def test_log_ticks(lo, hi, expected):
    assert log_ticks(lo, hi) == pytest.approx(expected)


def test_log_ticks_thins_and_rejects_bad_ranges():
    # 19 powers of ten -> every third exponent, at multiples of 3
    assert log_ticks(1e-12, 1e6) == pytest.approx([1e-12, 1e-9, 1e-6, 1e-3, 1, 1e3, 1e6])
    assert log_ticks(1.0, 1.5) == []  # fewer than two ticks: leave the axis alone
    with pytest.raises(ValueError, match="0 < lo < hi"):
        log_ticks(0.0, 10.0)


def test_log_axis_below_one_decade_is_labelled_in_plain_numbers():
    panel = Panel([Series([32, 64, 128], [0.3, 0.35, 0.4], "SimCLR")], "kNN", "batch size", "kNN", logx=True)
    fig = to_matplotlib(panel)
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels == ["40", "50", "60", "70", "80", "90", "100"]
    assert not [t.get_text() for t in ax.xaxis.get_minorticklabels() if t.get_text()]  # no 3×10¹-style labels
    xaxis = to_plotly(panel).layout.xaxis
    assert list(xaxis.ticktext) == labels and list(xaxis.tickvals) == pytest.approx([40, 50, 60, 70, 80, 90, 100])


def test_xticks_label_the_given_values():
    panel = Panel([Series([32, 64, 128], [1, 2, 3], "a")], "", "", "", logx=True, xticks=[32, 64, 128])
    fig = to_matplotlib(panel)
    fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()] == ["32", "64", "128"]
    assert list(to_plotly(panel).layout.xaxis.ticktext) == ["32", "64", "128"]


# ----------------------------------------------------------------------------------------------------------------------
# reference lines and legends
# ----------------------------------------------------------------------------------------------------------------------


def test_matplotlib_reference_lines_above_the_data_and_labels_in_the_margin_apart():
    fig = to_matplotlib(eta_panel())
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    data_lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    references = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert len(references) == 3 and min(r.get_zorder() for r in references) > max(d.get_zorder() for d in data_lines)
    labels = [
        t
        for t in ax.texts
        if t.get_text().replace("\n", " ") in ("η = 1: log k ceiling", "a close line", "η = 0: collapse")
    ]
    assert len(labels) == 3
    boxes = [t.get_window_extent(renderer) for t in labels]
    axes_box = ax.get_window_extent(renderer)
    assert all(b.x0 >= axes_box.x1 for b in boxes), "labels must sit right of the axes, where no curve runs"
    assert all(b.x1 <= fig.bbox.x1 + 1 for b in boxes), "labels must stay inside the figure"
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]), "labels overlap each other"


def test_plotly_reference_lines_above_the_data_and_labels_in_the_margin_apart():
    fig = to_plotly(eta_panel())
    assert len(fig.layout.shapes) == 3 and all(s.layer == "above" for s in fig.layout.shapes)
    notes = list(fig.layout.annotations)
    labels = [a for a in notes if a.xref == "x domain"]
    assert len(labels) == 3 and all(a.x == 1 and a.xanchor == "left" for a in labels)
    # label centres in pixels from the bottom of the plotting area: lines at 0.97 and 1.0 are 8 px apart, the
    # labels (one or two rows of 13 px) must be moved apart by at least their half-heights
    lo, hi = fig.layout.yaxis.range
    height = 280
    centre = {a.text: (a.y - lo) / (hi - lo) * height + a.yshift for a in labels}
    rows = {a.text: a.text.count("<br>") + 1 for a in labels}
    ceiling, close = next(t for t in centre if t.startswith("η = 1")), "a close line"
    assert abs(centre[ceiling] - centre[close]) >= 13 * (rows[ceiling] + rows[close]) / 2 - 1e-6


def test_matplotlib_legend_stays_inside_its_panel_width_and_below_the_axes():
    x = [0.5, 1, 2, 5, 10, 20]
    panels = [
        Panel(
            [Series(x, [v * k for v in x], f"{LONG} {k}") for k in range(1, 5)], "long names", "κ", "nats", logx=True
        ),
        Panel([Series(x, x, "short")], "neighbour", "κ", "nats"),
    ]
    fig = to_matplotlib(panels)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        legend, box = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
        assert box.x0 - 1 <= legend.x0 and legend.x1 <= box.x1 + 1, "the legend runs past its axes"
        assert legend.y1 <= ax.xaxis.get_tightbbox(renderer).y0 + 1, "the legend covers the axes or their labels"
        assert legend.y0 >= fig.bbox.y0 - 1


def test_plotly_legend_per_panel_below_its_axes():
    panels = [eta_panel(), Panel([Series([1, 2], [3, 4], LONG)], "b", "x", "y")]
    fig = to_plotly(panels)
    for suffix in ("", "2"):
        legend = fig.layout[f"legend{suffix}"]
        x_domain, y_domain = fig.layout[f"xaxis{suffix}"].domain, fig.layout[f"yaxis{suffix}"].domain
        assert x_domain[0] < legend.x < x_domain[1] and legend.xanchor == "center"
        assert legend.y < y_domain[0] and legend.yanchor == "top"
    assert {t.legend for t in fig.data} == {"legend", "legend2"}


# ----------------------------------------------------------------------------------------------------------------------
# shared y-range, grid, bars
# ----------------------------------------------------------------------------------------------------------------------


def test_sharey_gives_every_panel_the_union_of_the_ranges():
    a = Panel([Series([0, 1], [0.1, 0.3], "a")], "a", "epoch", "kNN", hlines=[(0.1, "chance")])
    b = Panel([Series([0, 1], [0.2, 0.6], "b")], "b", "epoch", "kNN")
    union = _padded(0.1, 0.6, False)
    assert union == pytest.approx((0.1 - 0.025, 0.6 + 0.025))  # 5 % of the span each side
    mpl = to_matplotlib([a, b], sharey=True)
    assert [ax.get_ylim() for ax in mpl.axes] == [pytest.approx(union)] * 2
    fig = to_plotly([a, b], sharey=True)
    assert list(fig.layout.yaxis.range) == pytest.approx(union) == list(fig.layout.yaxis2.range)
    separate = to_plotly([a, b])
    assert list(separate.layout.yaxis.range) != pytest.approx(list(separate.layout.yaxis2.range))
    with pytest.raises(ValueError, match="same y scale"):
        to_plotly([a, Panel([Series([0, 1], [1, 10], "c")], logy=True)], sharey=True)


def test_ylim_fixes_the_range_in_both_renderings():
    panel = Panel([Series([0, 1], [0.2, 0.3], "a")], ylim=(0.0, 1.0))
    assert to_matplotlib(panel).axes[0].get_ylim() == pytest.approx((0.0, 1.0))
    assert list(to_plotly(panel).layout.yaxis.range) == pytest.approx([0.0, 1.0])


def test_three_panels_wrap_onto_two_rows_unless_columns_says_otherwise():
    panels = [Panel([Series([0, 1], [0, 1], str(i))], str(i)) for i in range(3)]
    fig = to_plotly(panels)
    assert fig.layout.yaxis.domain[0] > fig.layout.yaxis3.domain[1]  # panel 3 below panel 1
    assert fig.layout.xaxis3.domain == fig.layout.xaxis.domain
    row = to_plotly(panels, columns=3)
    assert row.layout.yaxis.domain == row.layout.yaxis3.domain
    assert len(to_matplotlib(panels).axes) == 3
    with pytest.raises(ValueError, match="columns=0"):
        to_plotly(panels, columns=0)


def bar_panel() -> Panel:
    methods = ["SimCLR", "SwAV", "BYOL"]
    colors = ["#0072B2", "#009E73", "#D55E00"]
    return Panel(
        [
            Series(
                methods,
                [0.30, 0.25, 0.33],
                "original",
                "#BBBBBB",
                bars=True,
                bar_colors=colors,
                text=["30", "25", "33"],
            ),
            Series(
                methods,
                [0.31, 0.27, 0.34],
                "ER variant",
                "#BBBBBB",
                bars=True,
                bar_colors=colors,
                hatch=True,
                text=["31", "27", "34"],
            ),
        ],
        "kNN",
        "",
        "top-1 accuracy",
        hlines=[(0.1, "chance")],
    )


def test_bar_chart_in_matplotlib_groups_the_series_per_category():
    ax = to_matplotlib(bar_panel()).axes[0]
    bars = [p for p in ax.patches if p.get_height() > 0]
    assert len(bars) == 6
    by_series = bars[:3], bars[3:]
    for j, (series, heights) in enumerate(zip(by_series, ([0.30, 0.25, 0.33], [0.31, 0.27, 0.34]))):
        assert [b.get_height() for b in series] == pytest.approx(heights)
        centres = [b.get_x() + b.get_width() / 2 for b in series]
        assert centres == pytest.approx([i + (j - 0.5) * 0.4 for i in range(3)])  # side by side, width 0.8 / 2
    assert [b.get_hatch() for b in bars] == [None] * 3 + ["//"] * 3
    assert [t.get_text() for t in ax.get_xticklabels()] == ["SimCLR", "SwAV", "BYOL"]
    assert {t.get_text() for t in ax.texts} >= {"30", "25", "33", "31", "27", "34", "chance"}


def test_bar_chart_in_plotly_and_as_files(tmp_path):
    fig = to_plotly(bar_panel())
    assert [t.type for t in fig.data] == ["bar", "bar"] and fig.layout.barmode == "group"
    assert list(fig.data[0].x) == ["SimCLR", "SwAV", "BYOL"] and list(fig.data[1].y) == [0.31, 0.27, 0.34]
    assert fig.data[0].marker.pattern.shape == "" and fig.data[1].marker.pattern.shape == "/"
    written = show(bar_panel(), "accuracy_bars", tmp_path, display=False)
    assert written["png"].stat().st_size > 10_000 and "Plotly.newPlot" in written["html"].read_text()


# ----------------------------------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------------------------------


def test_series_and_panel_reject_bad_input():
    with pytest.raises(ValueError, match="x has 3 values and y has 2"):
        Series([1, 2, 3], [1, 2], "a")
    with pytest.raises(ValueError, match="bars=True cannot be combined"):
        Series([1], [1], "a", bars=True, markers=True)
    with pytest.raises(ValueError, match="dash='dotted'"):
        Series([1], [1], "a", dash="dotted")
    with pytest.raises(ValueError, match="bar_colors has 1 entries for 2 points"):
        Series([1, 2], [1, 2], "a", bars=True, bar_colors=["red"])
    with pytest.raises(ValueError, match=r"ylim=\(1, 0\)"):
        Panel([], ylim=(1, 0))
    with pytest.raises(ValueError, match="bars on a log x-axis"):
        Panel([Series([1, 2], [1, 2], "a", bars=True)], logx=True)
    with pytest.raises(ValueError, match="needs at least one Panel"):
        to_plotly([])
    with pytest.raises(ValueError, match=r"show\(name='a/b'\)"):
        show(Panel([]), "a/b", display=False)


# ----------------------------------------------------------------------------------------------------------------------
# the training dashboard and the widgets' figure output
# ----------------------------------------------------------------------------------------------------------------------


def records():
    out = [
        {
            "kind": "epoch",
            "epoch": 0,
            "step": 0,
            "monitor_eta_online": 0.7,
            "monitor_reconstruction": 0.1,
            "monitor_er_bound": 0.5,
            "monitor_infonce": 0.8,
            "knn200": 0.15,
            "knn20": 0.14,
        }
    ]
    for step in (5, 10):
        out.append(
            {
                "kind": "train",
                "epoch": step / 10,
                "step": step,
                "loss": 1.0,
                "eta_online": 0.8,
                "reconstruction": 0.3,
                "er_bound": 1.0,
                "infonce": 1.5,
            }
        )
    out.append(
        {
            "kind": "epoch",
            "epoch": 1,
            "step": 10,
            "monitor_eta_online": 0.75,
            "monitor_reconstruction": 0.4,
            "monitor_er_bound": 1.1,
            "monitor_infonce": 1.4,
            "knn200": 0.2,
            "knn20": 0.19,
        }
    )
    return out


def test_dashboard_line_style_means_where_a_value_was_measured_in_every_panel():
    dashboard = TrainingDashboard("test")
    for record in records():
        dashboard.update(record)
    series = [s for p in dashboard.panels for s in p.series]
    assert len(series) == 10
    style = {"training batch": "solid", "monitor batch": "dash", "test set": "dot"}
    for s in series:
        where = s.name.rsplit(": ", 1)[1]
        assert s.line_style == style[where], s.name
    # one colour per quantity, whatever the batch
    colours = {}
    for s in series:
        colours.setdefault(s.name.rsplit(": ", 1)[0], set()).add(s.color)
    assert all(len(c) == 1 for c in colours.values()) and len({c.pop() for c in colours.values()}) == 6
    monitor = next(s for s in series if s.name == "η: monitor batch")
    assert list(monitor.x) == [0, 10] and list(monitor.y) == [0.7, 0.75]
    dashes = {t.name: t.line.dash for t in to_plotly(dashboard.panels).data}
    assert dashes["kNN k=200: test set"] == "dot" and dashes["ER: monitor batch"] == "dash"


def test_dashboard_knn_panel_draws_the_untrained_network_once_its_record_arrives():
    dashboard = TrainingDashboard("test")
    history = records()
    dashboard.update(history[1])  # a training record first: no epoch-0 record yet, no line
    knn = next(p for p in dashboard.panels if p.title == "kNN accuracy")
    assert knn.hlines == []
    dashboard = TrainingDashboard("test")
    for record in history:
        dashboard.update(record)
    knn = next(p for p in dashboard.panels if p.title == "kNN accuracy")
    assert knn.hlines == [(0.15, "untrained network (kNN k=200)")]  # the epoch-0 record's knn200, not a later one
    assert next(p for p in dashboard.panels if p.title == "entropy").hlines == [
        (1.0, "η = 1: log k ceiling"),
        (0.0, "η = 0: collapse"),
    ]


def test_figures_go_into_the_output_widget_not_the_cell():
    import ipywidgets

    out = ipywidgets.Output()
    figure = to_plotly(Panel([Series([1, 2, 3], [4, 5, 6], "a")], "t"))
    _show_in(out, figure, figure)
    assert len(out.outputs) == 2
    spec = out.outputs[0]["data"][PLOTLY_MIME]
    assert spec["data"][0]["x"] == [1, 2, 3] and spec["data"][0]["y"] == [4, 5, 6]
    _show_in(out, figure)  # replaces, does not append
    assert len(out.outputs) == 1
