"""The Classify page's plotly figures: one model's top-k, latency per model, agreement per photo.

Built from plain lists and DataFrames with the app's template (dashboard.charts), small enough to
sit in a card a third of a wide screen across or a 390 px phone's width; no Streamlit, no engine.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from dashboard.charts import PALETTE, TEMPLATE

AGREE, DISAGREE, OTHER = PALETTE[0], PALETTE[1], "#94A3B8"
_MARGIN = {"l": 8, "r": 8, "t": 36, "b": 8}  # cards are narrow: labels get the room, not the frame


def _figure(title: str, height: int) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(
        template=TEMPLATE,
        # at the figure's left edge, not the plot area's: long y labels push that off a phone's screen
        title={"text": title, "x": 0, "xref": "container", "xanchor": "left"},
        height=height,
        margin=_MARGIN,
        showlegend=False,
    )
    return fig


def model_top_k(
    labels: Sequence[str], scores: Sequence[float], title: str = "", agrees: bool = True
) -> go.Figure:
    """Horizontal bars of one model's top-k (best first); the top bar is orange when it disagrees.

    Args:
        labels, scores: the model's top-k classes and probabilities, best first.
        title: shown above the bars (empty for none: the card already names the model).
        agrees: whether this model's top-1 is the most common top-1 among the models.
    """
    fig = _figure(title, height=(36 if title else 12) + 30 * max(len(labels), 1) + 12)
    if not title:
        fig.update_layout(margin={**_MARGIN, "t": 8})
    if not labels:
        fig.add_annotation(text="No prediction", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return fig
    fig.add_trace(
        go.Bar(
            x=list(scores),
            y=_unique([_short(label) for label in labels], labels),
            orientation="h",
            marker_color=[AGREE if agrees else DISAGREE] + [OTHER] * (len(labels) - 1),
            text=[f"{s:.1%}" for s in scores],
            textposition="auto",
            hovertext=list(labels),
            hovertemplate="%{hovertext}: %{x:.1%}<extra></extra>",
        )
    )
    fig.update_xaxes(range=[0, 1], tickformat=".0%", showticklabels=False, showgrid=False)
    fig.update_yaxes(autorange="reversed")
    return fig


def latency_per_model(frame: pd.DataFrame) -> go.Figure:
    """Median latency per model; columns `model`, `latency_ms` (one row per photo and model)."""
    fig = _figure("Latency per model (median)", 100)
    medians = frame.groupby("model", sort=False)["latency_ms"].median() if not frame.empty else pd.Series()
    fig.update_layout(height=60 + 34 * max(len(medians), 1), margin={**_MARGIN, "b": 40})
    if medians.empty:
        fig.add_annotation(
            text="No latency measured", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper"
        )
        return fig
    fig.add_trace(
        go.Bar(
            x=medians.to_numpy(),
            y=_names(medians.index),
            orientation="h",
            marker_color=PALETTE[5],
            text=[f"{v:.1f} ms" for v in medians.to_numpy()],
            textposition="auto",
            hovertext=list(medians.index),
            hovertemplate="%{hovertext}: %{x:.1f} ms<extra></extra>",
        )
    )
    fig.update_xaxes(title="ms per photo", rangemode="tozero")
    fig.update_yaxes(autorange="reversed")
    return fig


def agreement(frame: pd.DataFrame) -> go.Figure:
    """Share of models agreeing on each photo; columns `photo`, `agreement` (0..1). Orange: not all agree."""
    fig = _figure("Models agreeing per photo", 60 + 30 * max(len(frame), 1))
    fig.update_layout(margin={**_MARGIN, "b": 40})
    if frame.empty:
        return fig
    fig.add_trace(
        go.Bar(
            x=frame["agreement"],
            y=_names(frame["photo"]),
            orientation="h",
            marker_color=[AGREE if a >= 0.999 else DISAGREE for a in frame["agreement"]],
            text=[f"{a:.0%}" for a in frame["agreement"]],
            textposition="auto",
            hovertext=list(frame["photo"]),
            hovertemplate="%{hovertext}: %{x:.0%} agree<extra></extra>",
        )
    )
    fig.update_xaxes(range=[0, 1], tickformat=".0%", title="share with the common top-1")
    fig.update_yaxes(autorange="reversed")
    return fig


def _short(text: str, limit: int = 22) -> str:
    """ImageNet names run long ("tench, Tinca tinca"); a phone-wide card keeps the bars readable."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _unique(short: list[str], full) -> list[str]:
    """The short labels, or the full ones where cutting made two equal (their bars would merge)."""
    return short if len(set(short)) == len(short) else [str(f) for f in full]


def _names(names, limit: int = 26) -> list[str]:
    """Model or photo names cut in the middle, so "(keras)" and "(tflite-int8)" of one run stay apart;
    still-equal names are numbered (equal y labels would merge their bars)."""
    out = []
    for name in map(str, names):
        if len(name) > limit:
            tail = min(len(name.rsplit("(", 1)[-1]) + 1 if "(" in name else 8, limit // 2)
            name = name[: limit - tail - 1] + "…" + name[-tail:]
        out.append(name)
    if len(set(out)) < len(out):
        out = [f"{i}. {name}" for i, name in enumerate(out, 1)]
    return out
