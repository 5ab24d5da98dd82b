"""Every plotly chart of the dashboard, built from plain DataFrames with one template.

Pages hand in tidy DataFrames and get a `go.Figure` back; nothing here calls Streamlit or the
engine, so each chart can be built and checked in a test. Axis titles carry units. Bars of several
series share one helper, `grouped_bars`; hand-drawn diagrams live in dashboard/diagrams.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

# one palette and one template for the whole app (matches .streamlit/config.toml)
PALETTE = ["#2563EB", "#F97316", "#16A34A", "#DC2626", "#9333EA", "#0891B2", "#CA8A04", "#DB2777"]
SPLIT_COLORS = {"train": "#2563EB", "validation": "#F97316", "test": "#16A34A"}

pio.templates["lab"] = go.layout.Template(
    layout=go.Layout(
        font={"family": "Source Sans Pro, sans-serif", "size": 13, "color": "#0F172A"},
        colorway=PALETTE,
        paper_bgcolor="#FFFFFF",
        plot_bgcolor="#FFFFFF",
        margin={"l": 60, "r": 20, "t": 75, "b": 50},
        xaxis={
            "gridcolor": "#E2E8F0",
            "zerolinecolor": "#CBD5E1",
            "linecolor": "#94A3B8",
            "automargin": True,
        },
        yaxis={
            "gridcolor": "#E2E8F0",
            "zerolinecolor": "#CBD5E1",
            "linecolor": "#94A3B8",
            "automargin": True,
        },
        # titles and legends start on the left: the toolbar (top right, on hover) covers neither; the title
        # is pinned to the top edge and a legend sits on its own row between it and the plot
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
        hoverlabel={"font": {"size": 12}},
        title={
            "font": {"size": 15},
            "x": 0,
            "xanchor": "left",
            "xref": "paper",
            "y": 1,
            "yref": "container",
            "yanchor": "top",
            "pad": {"t": 10},
        },
    )
)
TEMPLATE = "lab"

METRIC_LABELS = {
    "accuracy": "Accuracy (fraction correct)",
    "cross_entropy": "Cross-entropy (nats)",
}


def figure(title: str, x_title: str, y_title: str, height: int = 380) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(
        template=TEMPLATE,
        title=title,
        height=height,
        xaxis_title=x_title,
        yaxis_title=y_title,
    )
    return fig


def grouped_bars(
    fig: go.Figure,
    frame: pd.DataFrame,
    x: str,
    y: str,
    by: str,
    *,
    barmode: str = "group",
    order: Sequence | None = None,
    colors: dict | Sequence[str] = PALETTE,
    horizontal: bool = False,
    text: Callable[[float], str] | None = None,
    hover: str | None = None,
    drop_zero: bool = False,
) -> go.Figure:
    """Add one bar series per value of `by` to `fig`, grouped or stacked, and return it.

    Args:
        frame: tidy rows with columns `x` (category), `y` (value) and `by` (series name).
        x, y: the category and value columns; with `horizontal`, bars run along x and `y` still
            names the value column (categories go on the vertical axis).
        by: the column whose values become the series (legend entries).
        barmode: "group" (side by side) or "stack".
        order: series in this order (all drawn, even without rows); default: order of appearance.
        colors: by series name (a dict) or a palette cycled in series order.
        text: formats each value as a label drawn outside its bar.
        hover: a hovertemplate; "{series}" in it is replaced by the series name.
        drop_zero: leave out series whose values are all zero or missing.
    """
    names = list(order) if order is not None else list(dict.fromkeys(frame[by]))
    for i, name in enumerate(names):
        rows = frame[frame[by] == name]
        if drop_zero and (rows.empty or not rows[y].any()):
            continue
        color = colors.get(name) if isinstance(colors, dict) else colors[i % len(colors)]
        values, categories = rows[y], rows[x]
        bar: dict = {"name": str(name), "marker_color": color}
        bar.update(
            {"x": values, "y": categories, "orientation": "h"}
            if horizontal
            else {"x": categories, "y": values}
        )
        if text is not None:
            bar.update(text=[text(v) for v in values], textposition="outside")
        if hover is not None:
            bar["hovertemplate"] = hover.replace("{series}", str(name))
        fig.add_trace(go.Bar(**bar))
    fig.update_layout(barmode=barmode)
    return fig


def _series(frame: pd.DataFrame, x: str, columns: dict[str, str]) -> pd.DataFrame:
    """Wide to tidy: one row per (`x`, column) with the column's display name in `series`."""
    present = [c for c in columns if c in frame]
    tidy = frame.melt(id_vars=[x], value_vars=present, var_name="series", value_name="value")
    return tidy.assign(series=tidy["series"].map(columns))


def log_ticks(values: Sequence[float]) -> dict:
    """Axis settings for a clean log axis over `values`: ticks at 1, 2 and 5 of each decade in range,
    labelled plainly ('0.5', '20', '1000'), no minor labels; padded by a factor 2 either side."""
    positive = [float(v) for v in values if v is not None and np.isfinite(v) and v > 0]
    if not positive:
        return {"type": "log"}
    low, high = min(positive) / 2, max(positive) * 2
    first, last = int(np.floor(np.log10(low))), int(np.ceil(np.log10(high)))
    for marks in ((1, 2, 5), (1, 3), (1,)):  # as many marks per decade as fit in 9 ticks
        ticks = [m * 10.0**e for e in range(first, last + 1) for m in marks if low <= m * 10.0**e <= high]
        if len(ticks) <= 9:
            break
    return {
        "type": "log",
        "range": [np.log10(low), np.log10(high)],
        "tickvals": ticks,
        "ticktext": [f"{t:g}" for t in ticks],
        "minor": {"showgrid": False, "ticks": ""},
    }


def legend_below(fig: go.Figure, rows: int = 1) -> go.Figure:
    """Put the legend under the plot (below the axis title), for legends too long for the title's row."""
    height = fig.layout.height or 380
    fig.update_layout(
        legend={
            "orientation": "h",
            "x": 0,
            "xanchor": "left",
            "y": 0,
            "yref": "container",
            "yanchor": "bottom",
        },
        margin={"b": 70 + 22 * rows},
        height=height + 22 * rows,
    )
    return fig


def smooth(values: Sequence[float], weight: float) -> np.ndarray:
    """TensorBoard's scalar smoothing: a debiased exponential moving average.

    Args:
        values: the raw series (NaNs are carried through without disturbing the average).
        weight: 0 (no smoothing) to <1 (heavy smoothing), the slider's value.
    """
    values = np.asarray(values, dtype=float)
    if weight <= 0 or len(values) == 0:
        return values.copy()
    out = np.empty_like(values)
    last, count = 0.0, 0
    for i, value in enumerate(values):
        if not np.isfinite(value):
            out[i] = value
            continue
        last = last * weight + (1 - weight) * value
        count += 1
        # the first points would be biased towards 0 without this correction
        out[i] = last / (1 - weight**count)
    return out


def _add_series(fig, x, y, name, color, smoothing, dash=None, legendgroup=None) -> None:
    line = {"color": color, "width": 2}
    if dash:
        line["dash"] = dash
    if smoothing > 0:
        # raw values stay visible but faint, as in TensorBoard
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                line={**line, "width": 1},
                opacity=0.25,
                name=f"{name} (raw)",
                legendgroup=legendgroup or name,
                showlegend=False,
                hoverinfo="skip",
            )
        )
        y = smooth(y, smoothing)
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line=line, name=name, legendgroup=legendgroup or name))


def training_curves(history: pd.DataFrame, metric: str = "accuracy", smoothing: float = 0.0) -> go.Figure:
    """Train and validation curves of one run.

    Args:
        history: one row per evaluation, columns `step`, `train_<metric>`, `validation_<metric>`.
        metric: "accuracy" or "cross_entropy".
        smoothing: TensorBoard-style smoothing weight in [0, 1).
    """
    title = {"accuracy": "Accuracy", "cross_entropy": "Cross-entropy"}.get(metric, metric)
    fig = figure(title, "Training step", METRIC_LABELS.get(metric, metric), height=340)
    if history.empty:
        return _empty(fig, "Waiting for the first evaluation…")
    for split in ("train", "validation"):
        column = f"{split}_{metric}"
        if column in history:
            _add_series(fig, history["step"], history[column], split, SPLIT_COLORS[split], smoothing)
    if metric == "accuracy":
        fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return fig


def compare_curves(
    histories: pd.DataFrame, metric: str = "accuracy", split: str = "validation", smoothing: float = 0.6
) -> go.Figure:
    """Overlay one metric of several runs.

    Args:
        histories: columns `run` (label), `step`, `<split>_<metric>`.
    """
    title = f"{split.capitalize()} {METRIC_LABELS.get(metric, metric).split(' (')[0].lower()} by run"
    fig = figure(title, "Training step", METRIC_LABELS.get(metric, metric))
    column = f"{split}_{metric}"
    if histories.empty or column not in histories:
        return _empty(fig, "No history recorded for these runs")
    for i, (run, rows) in enumerate(histories.groupby("run", sort=False)):
        _add_series(fig, rows["step"], rows[column], str(run), PALETTE[i % len(PALETTE)], smoothing)
    if metric == "accuracy":
        fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return _legend_below_title(fig)  # run names are long, and the Class board draws this in a column


def per_class_accuracy(frame: pd.DataFrame) -> go.Figure:
    """Bars of test accuracy per class; `frame` has columns `class`, `accuracy` (+ optional `run`)."""
    fig = figure("Test accuracy per class", "Class", "Accuracy (fraction correct)", height=340)
    if frame.empty:
        return _empty(fig, "No test images")
    if "run" in frame:
        grouped_bars(fig, frame, "class", "accuracy", by="run")
    else:
        fig.add_trace(
            go.Bar(
                x=frame["class"],
                y=frame["accuracy"],
                name="test accuracy",
                marker_color=PALETTE[0],
                text=["no test images" if pd.isna(v) else f"{v:.0%}" for v in frame["accuracy"]],
                textposition="outside",
                showlegend=True,
            )
        )
    fig.update_yaxes(range=[0, 1.1], tickformat=".0%")
    return fig


def confusion_matrix(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> go.Figure:
    """Heatmap of test counts, true class down, predicted class across."""
    z = np.asarray(matrix, dtype=int)
    size = max(320, 60 * len(class_names) + 140)
    fig = figure("Confusion matrix (test split)", "Predicted class", "True class", height=min(size, 720))
    if z.size == 0:
        return _empty(fig, "No test images")
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=list(class_names),
            y=list(class_names),
            colorscale="Blues",
            text=z,
            texttemplate="%{text}",
            hovertemplate="true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>",
            colorbar={"title": {"text": "images"}, "thickness": 12},
        )
    )
    fig.update_yaxes(autorange="reversed")
    return fig


def phase_timings(frame: pd.DataFrame) -> go.Figure:
    """Stacked horizontal bars of seconds per phase; columns `run`, `phase`, `seconds`.

    Phases stack in the order they first appear in `frame`.
    """
    fig = figure("Time per phase", "Wall time (s)", "", height=max(240, 70 * frame["run"].nunique() + 140))
    if frame.empty:
        return _empty(fig, "No phase timings recorded")
    hover = "%{y}<br>{series}: %{x:.2f} s<extra></extra>"
    grouped_bars(fig, frame, "run", "seconds", by="phase", barmode="stack", horizontal=True, hover=hover)
    fig.update_layout(legend_traceorder="normal")
    runs = list(dict.fromkeys(frame["run"]))  # long run names wrap instead of squeezing the bars
    fig.update_yaxes(tickvals=runs, ticktext=[wrap_label(str(r), 16) for r in runs])
    phases = frame["phase"].nunique()
    return legend_below(fig, rows=1 + phases // 5)  # many phases: their own rows under the bars


def wrap_label(text: str, width: int) -> str:
    """`text` broken into lines of about `width` characters at spaces (plotly's '<br>')."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)


def metric_bars(frame: pd.DataFrame, column: str, title: str, axis_title: str) -> go.Figure:
    """One bar per run for a final metric; columns `run` and `column`."""
    fig = figure(title, "Run", axis_title, height=320)
    if frame.empty or frame[column].isna().all():
        return _empty(fig, "No values yet")
    percent = "accuracy" in column
    fig.add_trace(
        go.Bar(
            x=frame["run"],
            y=frame[column],
            marker_color=[PALETTE[i % len(PALETTE)] for i in range(len(frame))],
            text=[("" if pd.isna(v) else f"{v:.1%}" if percent else f"{v:.3g}") for v in frame[column]],
            textposition="outside",
            name=axis_title,
            showlegend=False,
        )
    )
    if percent:
        fig.update_yaxes(range=[0, 1.1], tickformat=".0%")
    return fig


def top_k(frame: pd.DataFrame, title: str = "Top-5") -> go.Figure:
    """Horizontal bars of the top-k classes; columns `label`, `probability` (best first)."""
    fig = figure(title, "Probability", "Class", height=70 + 38 * max(len(frame), 1) + 60)
    if frame.empty:
        return _empty(fig, "No prediction")
    fig.add_trace(
        go.Bar(
            x=frame["probability"],
            y=frame["label"],
            orientation="h",
            marker_color=[PALETTE[0]] + [PALETTE[5]] * (len(frame) - 1),
            text=[f"{p:.1%}" for p in frame["probability"]],
            textposition="auto",
            name="probability",
            showlegend=False,
        )
    )
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(autorange="reversed", title_standoff=12)  # automargin makes room for long labels
    return fig


def class_counts(frame: pd.DataFrame) -> go.Figure:
    """Stacked bars of images per class and split; columns `class`, `split`, `images`."""
    fig = figure("Images per class and split", "Class", "Images (count)", height=340)
    if frame.empty:
        return _empty(fig, "No images")
    grouped_bars(
        fig, frame, "class", "images", by="split", barmode="stack", order=SPLIT_COLORS, colors=SPLIT_COLORS
    )
    fig.update_layout(legend_traceorder="normal")
    return fig


def _empty(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(
        text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font={"color": "#64748B"}
    )
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    return fig


# --- architecture figures ----------------------------------------------------------------------
# (Architectures page; data from engine.models.architecture and explain as plain values; the block and
# module drawings are in dashboard/diagrams.py)
KIND_COLORS = {
    "conv": "#DC2626",
    "depthwise": "#16A34A",
    "pointwise": "#2563EB",
    "dense": "#9333EA",
    "other": "#94A3B8",
}


def arch_blocks_stacked(frame: pd.DataFrame, title: str, y_title: str) -> go.Figure:
    """Stacked bars per block by layer kind; columns `block`, `kind`, `value` (block order kept)."""
    fig = figure(title, "Block", y_title, height=360)
    if frame.empty:
        return _empty(fig, "Nothing to show")
    order = list(dict.fromkeys(frame["block"]))
    grouped_bars(
        fig,
        frame,
        "block",
        "value",
        by="kind",
        barmode="stack",
        order=KIND_COLORS,
        colors=KIND_COLORS,
        drop_zero=True,
    )
    fig.update_layout(
        legend={"orientation": "v", "x": 1.01, "y": 1, "xanchor": "left", "yanchor": "top"},
        margin={"l": 60, "r": 110, "t": 50, "b": 50},
    )
    fig.update_xaxes(categoryorder="array", categoryarray=order, tickangle=-45)
    return fig


def arch_cost_scatter(frame: pd.DataFrame) -> go.Figure:
    """Backbones by cost and size; columns `backbone`, `macs_m`, `params_m` (log axes)."""
    fig = figure(
        "Cost against size", "Multiply-accumulates per image (millions, log)", "Parameters (millions, log)"
    )
    if frame.empty:
        return _empty(fig, "Pick a backbone")
    for i, row in enumerate(frame.itertuples()):
        fig.add_trace(
            go.Scatter(
                x=[row.macs_m],
                y=[row.params_m],
                mode="markers+text",
                text=[row.backbone],
                textposition="top center",
                marker={"size": 14, "color": PALETTE[i % len(PALETTE)]},
                name=row.backbone,
                hovertemplate="%{text}<br>%{x:,.1f} M MACs<br>%{y:,.2f} M params<extra></extra>",
            )
        )
    for axis, column in ((fig.update_xaxes, "macs_m"), (fig.update_yaxes, "params_m")):
        low, high = float(frame[column].min()) / 1.8, float(frame[column].max()) * 1.8
        ticks = [v * 10**e for e in range(-2, 6) for v in (1, 2, 5) if low <= v * 10**e <= high]
        axis(
            type="log",
            range=[np.log10(low), np.log10(high)],
            tickvals=ticks,
            ticktext=[f"{t:g}" for t in ticks],
        )
    fig.update_layout(showlegend=False)
    return fig


def cost_comparison(frame: pd.DataFrame, title: str) -> go.Figure:
    """Horizontal bars of MACs; columns `what`, `macs` (first row on top)."""
    fig = figure(title, "MACs (millions)", "", height=110 + 44 * max(len(frame), 1))
    if frame.empty:
        return _empty(fig, "Nothing to compare")
    colors = [PALETTE[3] if "standard" in str(w) else PALETTE[0] for w in frame["what"]]  # red = hypothetical
    fig.add_trace(
        go.Bar(
            x=frame["macs"] / 1e6,
            y=frame["what"],
            orientation="h",
            marker_color=colors,
            text=[f"{v / 1e6:,.2f} M" for v in frame["macs"]],
            textposition="auto",
        )
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(margin={"l": 20, "r": 20, "t": 50, "b": 50}, showlegend=False)
    return fig


def freeze_curve(frame: pd.DataFrame, current: int) -> go.Figure:
    """Trainable params and step cost per number of unfrozen blocks; columns `unfrozen blocks`,
    `trainable params`, `step MACs per image`."""
    fig = figure("Layer freezing", "Unfrozen top blocks (0 = head only)", "Trainable parameters (millions)")
    if frame.empty:
        return _empty(fig, "Nothing to show")
    x = frame["unfrozen blocks"]
    fig.add_trace(
        go.Scatter(
            x=x, y=frame["trainable params"] / 1e6, name="trainable params", line={"color": PALETTE[0]}
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=frame["step MACs per image"] / 1e6,
            name="training MACs per image",
            yaxis="y2",
            line={"color": PALETTE[1], "dash": "dash"},
        )
    )
    fig.add_vline(x=current, line={"color": "#64748B", "dash": "dot"})
    fig.update_layout(
        yaxis2={
            "title": "MACs per image per step (millions)",
            "overlaying": "y",
            "side": "right",
            "showgrid": False,
            "rangemode": "tozero",
            "tickmode": "auto",  # its own round ticks (synced to the left axis they read 267, 534, ...)
            "nticks": 6,
        },
        margin={"l": 60, "r": 70, "t": 75, "b": 50},
    )
    # counts of blocks: whole, non-negative ticks (never "-3" or "2.5")
    fig.update_xaxes(range=[0, max(1, int(x.max()))], tickformat="d", dtick=max(1, int(x.max()) // 10 or 1))
    fig.update_yaxes(rangemode="tozero")
    return fig


def feature_pca(frame: pd.DataFrame, explained: Sequence[float]) -> go.Figure:
    """2-D PCA of bottleneck vectors coloured by class; columns `x`, `y`, `label`, `file`."""
    fig = figure(
        "Cached bottleneck features, first two principal components",
        f"PC 1 ({explained[0]:.0%} of variance)",
        f"PC 2 ({explained[1]:.0%} of variance)",
        height=460,
    )
    for i, (label, rows) in enumerate(frame.groupby("label", sort=True)):
        fig.add_trace(
            go.Scatter(
                x=rows["x"],
                y=rows["y"],
                mode="markers",
                name=str(label),
                text=rows["file"],
                marker={"size": 7, "color": PALETTE[i % len(PALETTE)], "opacity": 0.8},
                hovertemplate="%{text}<extra>" + str(label) + "</extra>",
            )
        )
    fig.update_layout(
        legend={"orientation": "v", "x": 1.01, "y": 1, "xanchor": "left", "yanchor": "top"},
        margin={"l": 60, "r": 130, "t": 50, "b": 50},
    )
    return fig


# --- experiment figures ---
def experiment_curves(
    histories: pd.DataFrame, metric: str = "accuracy", split: str = "validation", target: float | None = None
) -> go.Figure:
    """Overlaid curves of an experiment's runs (one per rate), with the target accuracy as a line.

    Args:
        histories: columns `run` (label), `step`, `<split>_<metric>`.
    """
    fig = compare_curves(histories, metric, split, smoothing=0.0)
    # rates part ways in the first few hundred steps: a log axis shows that and the long tail
    fig.update_xaxes(type="log", title_text="Training step (log scale)")
    fig.update_layout(legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top"})
    if target is not None and metric == "accuracy" and not histories.empty:
        fig.add_hline(
            y=target, line={"dash": "dot", "color": "#64748B"}, annotation_text=f"target {target:.0%}"
        )
    return fig


def accuracy_at_steps(frame: pd.DataFrame) -> go.Figure:
    """Accuracy against training steps (log axis); columns `step`, `validation_accuracy`,
    `test_accuracy` (NaN where there is none)."""
    fig = figure(
        "Accuracy against training steps", "Training steps (log scale)", "Accuracy (fraction correct)"
    )
    if frame.empty or frame["validation_accuracy"].isna().all():
        return _empty(fig, "No evaluations at these steps")
    for column, name, color in (
        ("validation_accuracy", "validation", SPLIT_COLORS["validation"]),
        ("test_accuracy", "test (final weights)", SPLIT_COLORS["test"]),
    ):
        rows = frame.dropna(subset=[column])
        if not rows.empty:
            fig.add_trace(
                go.Scatter(
                    x=rows["step"],
                    y=rows[column],
                    mode="lines+markers" if column == "validation_accuracy" else "markers",
                    name=name,
                    marker={"size": 10, "color": color},
                    line={"color": color, "width": 2},
                )
            )
    fig.update_xaxes(type="log")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    return fig


# --- conversion & timing figures ---
def format_bars(frame: pd.DataFrame, column: str, title: str, axis_title: str, fmt: str = ".2f") -> go.Figure:
    """One bar per exported format (`format` column) of a numeric `column` of the comparison matrix."""
    fig = figure(title, "Format", axis_title, height=340)
    rows = frame.dropna(subset=[column]) if column in frame else frame.iloc[0:0]
    if rows.empty:
        return _empty(fig, "Nothing measured yet")
    fig.add_trace(
        go.Bar(
            x=rows["format"],
            y=rows[column],
            marker_color=[PALETTE[i % len(PALETTE)] for i in range(len(rows))],
            text=[format(v, fmt) for v in rows[column]],
            textposition="outside",
            showlegend=False,
        )
    )
    return fig


def _legend_below_title(fig: go.Figure) -> go.Figure:
    """In a narrow column a right-hand legend runs into the title: give it its own row under it."""
    fig.update_layout(
        legend={"orientation": "h", "x": 0, "xanchor": "left", "y": 1.03, "yanchor": "bottom"},
        margin={"t": 85},
        height=360,
    )
    return fig


def format_latency(frame: pd.DataFrame) -> go.Figure:
    """Warm single-image latency per format (ms); columns format, latency_p50_ms, latency_p95_ms."""
    fig = figure("Warm single-image latency", "Format", "Latency (ms, model only)", height=340)
    if frame.empty or "latency_p50_ms" not in frame:
        return _empty(fig, "Nothing measured yet")
    series = _series(frame, "format", {"latency_p50_ms": "median (p50)", "latency_p95_ms": "p95"})
    grouped_bars(fig, series, "format", "value", by="series")
    return _legend_below_title(fig)


def format_fidelity(frame: pd.DataFrame) -> go.Figure:
    """Test accuracy and top-1 agreement with Keras per format; columns format, accuracy, agreement."""
    fig = figure("Accuracy, agreement", "Format", "Fraction of test images", 340)
    if frame.empty or "accuracy" not in frame:
        return _empty(fig, "Nothing measured yet")
    series = _series(frame, "format", {"accuracy": "test accuracy", "agreement": "same top-1 as Keras"})
    grouped_bars(fig, series, "format", "value", by="series", colors=PALETTE[2:])
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%")
    return _legend_below_title(fig)


def phase_times(frame: pd.DataFrame, backbone: str) -> go.Figure:
    """Per-item time of each phase for one backbone, one bar group per `setup` (machine · device).

    Columns: phase (label), setup, per_item_ms.
    """
    fig = figure(f"{backbone}: time per item", "Phase", "Milliseconds per item (log scale)", height=380)
    if frame.empty:
        return _empty(fig, "No timings for this backbone")
    grouped_bars(fig, frame, "phase", "per_item_ms", by="setup", text=_ms_text)
    fig.update_traces(cliponaxis=False, textfont_size=11)
    fig.update_yaxes(**log_ticks(frame["per_item_ms"]))
    return fig


def _ms_text(ms: float) -> str:
    """A per-item time on its bar: '0.42 ms', '12 ms', '1.3 s'."""
    if ms is None or not np.isfinite(ms):
        return ""
    if ms >= 1000:
        return f"{ms / 1000:.2g} s"
    return f"{ms:.2g} ms" if ms < 10 else f"{ms:.0f} ms"


def phase_speedups(frame: pd.DataFrame) -> go.Figure:
    """GPU speed-up over the CPU per phase and backbone; columns phase (label), backbone, speedup."""
    fig = figure("GPU speed-up over the CPU", "Phase", "Speed-up (CPU time ÷ GPU time, ×)", height=380)
    rows = frame.dropna(subset=["speedup"]) if "speedup" in frame else frame.iloc[0:0]
    if rows.empty:
        return _empty(fig, "No GPU timings: import a classmate's to compare")
    grouped_bars(fig, rows, "phase", "speedup", by="backbone", text=lambda v: f"{v:.1f}×")
    fig.add_hline(y=1, line_dash="dash", line_color="#64748B", annotation_text="no gain")
    return fig


def prediction_pair(frame: pd.DataFrame) -> go.Figure:
    """One photo's class probabilities under two runs, side by side (Class board).

    Args:
        frame: columns `class`, `probability` (0..1) and `run` (the series, two values).
    """
    fig = figure("The same photo, two runs", "Class", "Probability", height=320)
    if frame.empty:
        return _empty(fig, "No prediction")
    grouped_bars(fig, frame, "class", "probability", "run", text=lambda v: f"{v:.0%}")
    fig.update_yaxes(range=[0, 1.1], tickformat=".0%")
    return _legend_below_title(fig)
