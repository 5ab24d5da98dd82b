"""Plotly figures of a batch classification: the confusion matrix whose cells can be clicked.

Like dashboard/charts.py (whose template it uses), nothing here calls Streamlit or the engine.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from dashboard.charts import TEMPLATE


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> go.Figure:
    """Counts of photos, true class (the folder) down, predicted class across.

    Plotly heatmaps cannot be selected, so an almost invisible square marker sits on every cell: a click on
    a cell selects that marker, whose customdata is [true class, predicted class].
    """
    z = np.asarray(matrix, dtype=int)
    names = [str(c) for c in classes]
    side = max(340, 56 * len(names) + 160)
    fig = go.Figure(
        layout={
            "template": TEMPLATE,
            "title": {"text": title},
            "height": min(side, 760),
            "xaxis": {"title": {"text": "Predicted class"}, "type": "category"},
            "yaxis": {"title": {"text": "True class (folder)"}, "type": "category", "autorange": "reversed"},
            "clickmode": "event+select",
            "dragmode": False,
        }
    )
    if z.size == 0:
        fig.add_annotation(
            text="No labelled photos", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5
        )
        return fig
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=names,
            y=names,
            colorscale="Blues",
            text=z,
            texttemplate="%{text}",
            hoverinfo="skip",
            colorbar={"title": {"text": "photos"}, "thickness": 12},
        )
    )
    cells = [(t, p) for t in range(len(names)) for p in range(len(names))]
    fig.add_trace(
        go.Scatter(
            x=[names[p] for _, p in cells],
            y=[names[t] for t, _ in cells],
            customdata=[[names[t], names[p]] for t, p in cells],
            mode="markers",
            # transparent but still hit by the mouse; the clicked cell turns grey
            marker={"symbol": "square", "size": 44, "color": "rgba(0,0,0,0)"},
            selected={"marker": {"color": "rgba(15,23,42,0.3)"}},
            unselected={"marker": {"color": "rgba(0,0,0,0)"}},
            hovertemplate="true %{y}<br>predicted %{x}<br>photos: %{text} · click to see them<extra></extra>",
            text=[int(z[t, p]) for t, p in cells],
            showlegend=False,
            name="cells",
        )
    )
    return fig
