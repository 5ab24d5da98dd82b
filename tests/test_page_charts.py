"""The dashboard's figures: the one grouped-bar helper, the charts built on it, the hand-drawn diagrams."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard import charts, diagrams

TIDY = pd.DataFrame(
    {
        "phase": ["decode", "extract", "decode", "extract", "train"],
        "setup": ["cpu", "cpu", "gpu", "gpu", "gpu"],
        "ms": [1.0, 10.0, 0.5, 0.0, 2.0],
    }
)


def test_grouped_bars_one_series_per_group_in_order_of_appearance():
    fig = charts.grouped_bars(go.Figure(), TIDY, "phase", "ms", by="setup", text=lambda v: f"{v:g} ms")
    assert [t.name for t in fig.data] == ["cpu", "gpu"]
    assert list(fig.data[1].x) == ["decode", "extract", "train"] and list(fig.data[1].y) == [0.5, 0.0, 2.0]
    assert [t.marker.color for t in fig.data] == charts.PALETTE[:2]
    assert list(fig.data[0].text) == ["1 ms", "10 ms"] and fig.data[0].textposition == "outside"
    assert fig.layout.barmode == "group"


def test_grouped_bars_order_colours_stacking_and_horizontal():
    colors = {"tpu": "#000000", "gpu": "#111111", "cpu": "#222222"}
    fig = charts.grouped_bars(
        go.Figure(),
        TIDY,
        "phase",
        "ms",
        by="setup",
        order=colors,
        colors=colors,
        barmode="stack",
        horizontal=True,
        hover="%{y}: {series}",
    )
    assert [t.name for t in fig.data] == ["tpu", "gpu", "cpu"]  # an ordered series is drawn even when empty
    assert [t.marker.color for t in fig.data] == list(colors.values())
    gpu = fig.data[1]
    assert gpu.orientation == "h" and list(gpu.y) == ["decode", "extract", "train"]
    assert gpu.hovertemplate == "%{y}: gpu" and fig.layout.barmode == "stack"
    only_cpu = TIDY.assign(ms=np.where(TIDY["setup"] == "gpu", 0.0, TIDY["ms"]))
    kept = charts.grouped_bars(go.Figure(), only_cpu, "phase", "ms", by="setup", order=colors, drop_zero=True)
    assert [t.name for t in kept.data] == ["cpu"]


def test_charts_built_on_grouped_bars():
    formats = pd.DataFrame(
        {"format": ["keras", "onnx"], "latency_p50_ms": [3.0, 1.0], "latency_p95_ms": [4.0, 2.0]}
    )
    latency = charts.format_latency(formats)
    assert [(t.name, list(t.y)) for t in latency.data] == [("median (p50)", [3.0, 1.0]), ("p95", [4.0, 2.0])]
    counts = pd.DataFrame({"class": ["a", "b"], "split": ["train", "train"], "images": [3, 4]})
    fig = charts.class_counts(counts)
    assert [t.name for t in fig.data] == ["train", "validation", "test"]
    assert fig.layout.barmode == "stack"
    speedups = pd.DataFrame({"phase": ["decode", "train"], "backbone": ["m", "m"], "speedup": [2.0, np.nan]})
    fig = charts.phase_speedups(speedups)
    assert len(fig.data) == 1 and list(fig.data[0].text) == ["2.0×"]  # NaN speed-ups are left out
    empty = charts.phase_speedups(speedups.assign(speedup=np.nan))
    assert not empty.data and empty.layout.annotations[0].text.startswith("No GPU timings")


def _step(name, after, kind="conv", label=None):
    return {
        "label": label or name,
        "name": name,
        "after": after,
        "kind": kind,
        "output_shape": [7, 7, 8],
        "macs": 1e6,
    }


def test_separable_block_diagram_draws_every_step_and_the_skip():
    block = {
        "backbone": "mobilenet_v2_1.0_224",
        "block": "block_1",
        "style": "inverted_residual",
        "residual": True,
        "input_shape": [7, 7, 8],
        "steps": [
            _step("expand", "", "pointwise"),
            _step("dw", "expand", "depthwise"),
            _step("add", "dw", "other"),
        ],
    }
    fig = diagrams.separable_block_diagram(block)
    boxes = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(boxes) == 1 + len(block["steps"])  # the input and one box per step
    assert any(a.text == "skip" for a in fig.layout.annotations)
    assert "inverted residual" in fig.layout.title.text


def test_inception_module_diagram_lays_out_branches_side_by_side():
    module = {
        "backbone": "inception_v3",
        "module": "mixed9",
        "input_layer": "mixed8",
        "input_shape": [8, 8, 1280],
        "output_shape": [8, 8, 2048],
        "macs": 3e6,
        "branches": [
            {"out_channels": 320, "macs": 1e6, "steps": [_step("b1", "")]},
            {
                "out_channels": 768,
                "macs": 2e6,
                "steps": [_step("b2", ""), _step("b2a", "b2"), _step("b2b", "b2")],
            },
        ],
    }
    fig = diagrams.inception_module_diagram(module)
    boxes = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(boxes) == 2 + 4  # input, concat and one box per step
    split = sorted((s.x0 + s.x1) / 2 for s in boxes if abs((s.y0 + s.y1) / 2 + 2) < 1e-9)
    assert len(split) == 2 and split[0] < split[1]  # the 1×3 ‖ 3×1 split sits side by side one row down


def test_titles_and_legends_start_left_clear_of_the_toolbar():
    fig = charts.format_latency(
        pd.DataFrame({"format": ["keras"], "latency_p50_ms": [3.0], "latency_p95_ms": [4.0]})
    )
    layout = fig.layout
    template = layout.template.layout
    # the toolbar sits at the top right: titles and legends start at the left, the title pinned on top
    assert (template.title.x, template.title.xanchor, template.title.yref) == (0, "left", "container")
    assert (template.legend.x, template.legend.xanchor) == (0, "left")
    assert layout.legend.yanchor == "bottom" and layout.legend.y > 1  # its own row above the plot
    assert layout.margin.t >= 85  # room for the title and the legend's row, which no longer touch


def test_cpu_vs_gpu_times_have_values_on_bars_and_clean_log_ticks():
    frame = pd.DataFrame(
        {
            "phase": ["Decode", "Bottleneck extraction", "Decode", "Bottleneck extraction"],
            "setup": ["laptop · CPU", "laptop · CPU", "Sam · GPU", "Sam · GPU"],
            "per_item_ms": [3.1, 450.0, 3.0, 0.42],
        }
    )
    fig = charts.phase_times(frame, "inception_v3")
    assert list(fig.data[0].text) == ["3.1 ms", "450 ms"] and list(fig.data[1].text) == ["3 ms", "0.42 ms"]
    axis = fig.layout.yaxis
    assert axis.type == "log" and axis.minor.ticks == ""
    assert list(axis.ticktext) == [f"{t:g}" for t in axis.tickvals]  # 0.5, 1, 2, 5 ... no "2×10⁻¹"
    assert 3 <= len(axis.tickvals) <= 9 and min(axis.tickvals) < 1 and max(axis.tickvals) >= 100


def test_time_per_phase_legend_sits_below_the_bars():
    frame = pd.DataFrame(
        {
            "run": ["mobilenet_0.25_224 lr=0.01 #e3a8"] * 6,
            "phase": ["scan", "weights", "extract", "train", "evaluate", "save"],
            "seconds": [1, 2, 3, 4, 5, 6],
        }
    )
    fig = charts.phase_timings(frame)
    legend = fig.layout.legend
    assert (legend.yref, legend.y, legend.yanchor) == ("container", 0, "bottom")
    assert fig.layout.margin.b >= 70 + 22  # the legend's rows get their own room under the axis title
    assert list(fig.layout.yaxis.ticktext) == ["mobilenet_0.25_224<br>lr=0.01 #e3a8"]  # wrapped


def test_freezing_chart_ticks_are_whole_and_never_negative():
    frame = pd.DataFrame(
        {
            "unfrozen blocks": [0, 1, 2, 3],
            "trainable params": [5e3, 1e5, 3e5, 9e5],
            "step MACs per image": [5e3, 2e6, 6e6, 9e6],
        }
    )
    fig = charts.freeze_curve(frame, 1)
    assert list(fig.layout.xaxis.range) == [0, 3] and fig.layout.xaxis.tickformat == "d"
    assert fig.layout.yaxis.rangemode == "tozero" and fig.layout.yaxis2.rangemode == "tozero"
