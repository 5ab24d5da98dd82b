"""The plain plotly figures of a report: curves, overlaid curves, confusion matrix, per-class accuracy.

Built with plotly.graph_objects (the engine cannot import the dashboard's charts.py) and kept simple:
a report is read, not explored. Class and run names go into the figure data as they are; plotly's JSON
writes `<` and `>` as escapes and its SVG text shows them as text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go


def _layout(fig, title: str, y_title: str, percent: bool = False):
    fig.update_layout(
        title=title,
        template="plotly_white",
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.2},
        xaxis_title="step",
        yaxis_title=y_title,
    )
    if percent:
        fig.update_yaxes(tickformat=".0%", range=[0, 1.02])
    return fig


def curves(history: list[dict[str, Any]], metric: str):
    fig = go.Figure()
    steps = [row["step"] for row in history]
    for split, dash in (("train", "solid"), ("validation", "dash")):
        values = [row.get(f"{split}_{metric}") for row in history]
        if any(v is not None for v in values):
            fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=split, line={"dash": dash}))
    if metric == "accuracy":
        return _layout(fig, "Accuracy", "accuracy", percent=True)
    return _layout(fig, "Cross-entropy (lower is better)", "cross-entropy")


def overlaid_curves(curves: list[dict[str, Any]], metric: str, target: float | None = None):
    key = f"validation_{metric}"
    if not any(row.get(key) is not None for row in curves):
        key = f"train_{metric}"
    fig = go.Figure()
    for run_id in dict.fromkeys(row["run_id"] for row in curves):
        rows = [r for r in curves if r["run_id"] == run_id]
        fig.add_trace(
            go.Scatter(
                x=[r["step"] for r in rows], y=[r.get(key) for r in rows], mode="lines", name=rows[0]["run"]
            )
        )
    if target is not None:
        fig.add_hline(y=target, line_dash="dot", annotation_text=f"target {target:.0%}")
    which = key.split("_")[0]
    if metric == "accuracy":
        return _layout(fig, f"{which.capitalize()} accuracy", "accuracy", percent=True)
    return _layout(fig, f"{which.capitalize()} cross-entropy", "cross-entropy")


def confusion_matrix(matrix: list[list[int]], names: Sequence[str]):
    fig = go.Figure(
        go.Heatmap(
            z=matrix, x=list(names), y=list(names), colorscale="Blues", texttemplate="%{z}", showscale=False
        )
    )
    _layout(fig, "Confusion matrix (rows: true class)", "true class")
    fig.update_xaxes(title="predicted class", type="category", tickangle=_tick_angle(names))
    fig.update_yaxes(autorange="reversed", type="category")
    return fig


def per_class_accuracy(per_class: dict[str, float]):
    names = list(per_class)
    fig = go.Figure(
        go.Bar(
            x=names,
            y=[per_class[n] for n in names],
            text=[_percent(per_class[n]) for n in names],
            textposition="auto",
        )
    )
    _layout(fig, "Accuracy per class (test)", "accuracy", percent=True)
    fig.update_xaxes(title="class", type="category", tickangle=_tick_angle(names))
    return fig


def _tick_angle(names: Sequence[str]) -> int | None:
    """Slanted category labels when they are long or many, so plotly does not hide some of them."""
    return -30 if len(names) > 6 or max((len(str(n)) for n in names), default=0) > 14 else None


def _percent(value: Any) -> str:
    return "—" if value is None else f"{float(value):.1%}"
