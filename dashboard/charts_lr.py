"""Learning-rate figures: a race's seeds as mean and band, schedules' rate against step, the range test.

Like dashboard/charts.py (whose palette and template these share), each function takes plain data and
returns a `go.Figure`, with no Streamlit and no engine calls, so it can be built and checked in a test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboard.charts import METRIC_LABELS, PALETTE, figure, legend_below


def _figure(title: str, x_title: str, y_title: str, height: int = 400) -> go.Figure:
    """A lab figure whose legend gets its own rows at the foot, under the axis title: beside the title it
    collides with it and the toolbar, and in a narrow column a title has no room to share."""
    fig = legend_below(figure(title, x_title, y_title, height - 44), rows=2)
    fig.update_layout(margin={"t": 50})
    return fig


def _legend_rows(fig: go.Figure, rows: int) -> go.Figure:
    """Room for `rows` legend rows at the foot, so a long legend does not squash the plot."""
    extra = 26 * max(0, rows - 2)
    fig.update_layout(height=(fig.layout.height or 400) + extra, margin={"b": 120 + extra})
    return fig


def _empty(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _log_axis(values: Sequence[float]) -> dict:
    """A log axis with plain labels ('0.001', '20', '1000') at 1, 2 and 5 of each decade where few decades
    are shown, at each decade otherwise, and no cluttered minor labels ('2 3 4 5 6 7 8 9')."""
    positive = [float(v) for v in values if v is not None and np.isfinite(v) and v > 0]
    if not positive:
        return {"type": "log"}
    low, high = min(positive), max(positive)
    first, last = int(np.floor(np.log10(low))), int(np.ceil(np.log10(high)))
    marks = (1, 2, 5) if last - first <= 3 else (1,)
    ticks = [
        m * 10.0**e for e in range(first, last + 1) for m in marks if low / 1.5 <= m * 10.0**e <= high * 1.5
    ]
    return {"type": "log", "tickvals": ticks, "ticktext": [f"{t:g}" for t in ticks], "minor": {"ticks": ""}}


def band_curves(
    curves: pd.DataFrame, metric: str = "accuracy", split: str = "validation", target: float | None = None
) -> go.Figure:
    """Per setting (`group`), the mean over its seeds as a line and their lowest..highest as a band.

    Args:
        curves: long format, columns `group`, `seed`, `step`, `<split>_<metric>` (one row per run and
            evaluation, as engine.runs.experiments.experiment_curves gives them).
    """
    column = f"{split}_{metric}"
    # short: the race draws two of these side by side; the page's caption says what line and band are
    title = f"{split.capitalize()} {metric.replace('_', '-')} over seeds"
    fig = _figure(title, "Training step (log scale)", METRIC_LABELS.get(metric, metric))
    if curves.empty or column not in curves or curves[column].isna().all():
        return _empty(fig, "Waiting for the first evaluation...")
    frame = curves.dropna(subset=[column]).replace([np.inf, -np.inf], np.nan).dropna(subset=[column])
    for i, (group, rows) in enumerate(frame.groupby("group", sort=False)):
        color = PALETTE[i % len(PALETTE)]
        stats = rows.groupby("step")[column].agg(["mean", "min", "max", "count"]).reset_index()
        seeds = rows["seed"].nunique() if "seed" in rows else 1
        if seeds > 1:
            fig.add_trace(
                go.Scatter(
                    x=list(stats["step"]) + list(stats["step"])[::-1],
                    y=list(stats["max"]) + list(stats["min"])[::-1],
                    fill="toself",
                    fillcolor=_rgba(color, 0.18),
                    line={"width": 0},
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=group,
                    name=f"{group} range",
                )
            )
        fig.add_trace(
            go.Scatter(
                x=stats["step"],
                y=stats["mean"],
                mode="lines",
                line={"color": color, "width": 2},
                name=f"{group} ({seeds} seed{'s' if seeds != 1 else ''})",
                legendgroup=group,
                customdata=np.stack([stats["min"], stats["max"]], axis=-1),
                hovertemplate="step %{x}: mean %{y:.3f} (range %{customdata[0]:.3f}–%{customdata[1]:.3f})"
                "<extra>%{fullData.name}</extra>",
            )
        )
    fig.update_xaxes(**_log_axis(frame["step"]))
    _legend_rows(fig, frame["group"].nunique())  # in a half-width column each entry takes its own row
    if metric == "accuracy":
        fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
        if target is not None:
            fig.add_hline(
                y=target, line={"dash": "dot", "color": "#64748B"}, annotation_text=f"target {target:.0%}"
            )
    return fig


def schedule_curves(frame: pd.DataFrame) -> go.Figure:
    """Learning rate against training step per setting; columns `group`, `step`, `learning_rate`."""
    fig = _figure("Learning rate against step", "Training step", "Learning rate (log scale)")
    if frame.empty:
        return _empty(fig, "No schedule yet")
    for i, (group, rows) in enumerate(frame.groupby("group", sort=False)):
        fig.add_trace(
            go.Scatter(
                x=rows["step"],
                y=rows["learning_rate"],
                mode="lines",
                name=str(group),
                line={"color": PALETTE[i % len(PALETTE)], "width": 2},
            )
        )
    fig.update_yaxes(**_log_axis(frame["learning_rate"]))
    return fig


def finder(found: dict, race_rates: Sequence[float] = ()) -> go.Figure:
    """The range test: smoothed (and faint raw) loss against a log rate axis, the suggested range shaded,
    the steepest descent and the minimum marked, and the race's rates as dotted lines.

    Args:
        found: engine.runs.experiments.lr_find's result (rates, losses, smoothed, steepest, minimum,
            suggested).
    """
    fig = _figure("Learning-rate finder: loss as the rate grows", "Learning rate (log scale)", "Loss (nats)")
    rates, smoothed = list(found.get("rates") or ()), list(found.get("smoothed") or ())
    if not rates:
        return _empty(fig, "No sweep yet")
    finite = [v for v in smoothed if v is not None and np.isfinite(v)]
    fig.add_trace(
        go.Scatter(
            x=rates,
            y=found.get("losses"),
            mode="lines",
            line={"color": PALETTE[0], "width": 1},
            opacity=0.3,
            name="loss of each step's batch",
        )
    )
    fig.add_trace(
        go.Scatter(x=rates, y=smoothed, mode="lines", line={"color": PALETTE[0], "width": 3}, name="smoothed")
    )
    if found.get("suggested"):
        low, high = found["suggested"]
        fig.add_vrect(x0=low, x1=high, fillcolor=_rgba(PALETTE[2], 0.15), line_width=0)
        fig.add_trace(  # a legend entry for the shaded range
            go.Scatter(
                x=[None], y=[None], mode="markers", name=f"suggested {low:.2g} .. {high:.2g}",
                marker={"symbol": "square", "size": 12, "color": _rgba(PALETTE[2], 0.4)},
            )
        )  # fmt: skip
    for key, label, symbol in (
        ("steepest", "steepest descent", "triangle-down"),
        ("minimum", "minimum", "x"),
    ):
        rate = found.get(key)
        if rate and rate in rates:
            fig.add_trace(
                go.Scatter(
                    x=[rate], y=[smoothed[rates.index(rate)]], mode="markers", name=f"{label} {rate:.2g}",
                    marker={"symbol": symbol, "size": 12, "color": PALETTE[3]},
                )
            )  # fmt: skip
    for rate in race_rates:
        fig.add_vline(x=rate, line={"dash": "dot", "color": "#64748B"})
        fig.add_annotation(
            x=np.log10(rate), y=1, yref="paper", text=f"{rate:g}", showarrow=False, yanchor="bottom"
        )
    if finite:
        # the divergence at the end would squash the useful part: show up to 1.5x the starting loss
        top = max(finite[0] * 1.5, min(finite) * 2)
        fig.update_yaxes(range=[0, top])
    fig.update_xaxes(**_log_axis(rates + list(race_rates)))
    return fig
