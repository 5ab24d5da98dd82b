"""The Data page's health figures: photos per class against the thresholds, and what the check found.

Built from the plain dicts of engine.runs.health's report with the app's one template (dashboard.charts);
nothing here calls Streamlit or the engine, so each figure can be checked in a test.
"""

from __future__ import annotations

import plotly.graph_objects as go

from dashboard.charts import PALETTE, TEMPLATE

OK, WARN = PALETTE[0], PALETTE[3]


def class_balance(balance: dict) -> go.Figure:
    """Photos per class, small classes in red, with the small-class line and the imbalance line."""
    counts = balance.get("counts") or {}
    labels = list(counts)
    values = [counts[k] for k in labels]
    small = set(balance.get("small_classes") or [])
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=values,
            marker_color=[WARN if k in small else OK for k in labels],
            text=values,
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{x}: %{y} photos<extra></extra>",
            showlegend=False,
        )
    )
    threshold = balance.get("small_threshold")
    if threshold:
        fig.add_hline(
            y=threshold,
            line_dash="dash",
            line_color=WARN,
            annotation_text=f"small below {threshold}",
            annotation_position="top left",
            annotation_bgcolor="rgba(255,255,255,0.85)",
        )
    least = min(values) if values else 0
    limit = balance.get("imbalance_threshold")
    if limit and least and max(values) > least * 1.5:  # only drawn when it is near the bars
        fig.add_hline(
            y=least * limit,
            line_dash="dot",
            line_color="#64748B",
            annotation_text=f"{limit:g}x the smallest class",
            annotation_position="top right",
            annotation_bgcolor="rgba(255,255,255,0.85)",
        )
    fig.update_layout(
        template=TEMPLATE,
        title="Photos per class",
        height=320,
        xaxis_title="Class",
        yaxis_title="Photos (count)",
        yaxis_rangemode="tozero",
    )
    return fig


def findings(report: dict) -> go.Figure:
    """One horizontal bar per finding (photos involved), those that inflate accuracy in red."""
    exact, near = report["exact_duplicates"], report["near_duplicates"]
    rows = [
        ("Exact copies", exact["extra_copies"], exact["across_splits"] + exact["across_classes"] > 0),
        ("Near-duplicate pairs", near["pairs"], near["across_splits"] + near["across_classes"] > 0),
        ("Test/validation copies of training photos", exact["across_splits"] + near["across_splits"], True),
        ("Likely mislabels", report["mislabels"]["count"], report["mislabels"]["count"] > 0),
        ("Small classes", len(report["classes"]["small_classes"]), bool(report["classes"]["small_classes"])),
    ]
    rows.reverse()  # plotly draws the first row at the bottom
    fig = go.Figure(
        go.Bar(
            y=[r[0] for r in rows],
            x=[r[1] for r in rows],
            orientation="h",
            marker_color=[WARN if r[2] and r[1] else OK for r in rows],
            text=[r[1] for r in rows],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{y}: %{x}<extra></extra>",
            showlegend=False,
        )
    )
    fig.update_layout(
        template=TEMPLATE,
        title="What the check found",
        height=300,
        xaxis_title="Count",
        xaxis_rangemode="tozero",
        margin={"l": 10},
    )
    return fig
