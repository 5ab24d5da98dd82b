"""Hand-drawn diagrams of the Architectures page: a depthwise-separable block (or inverted residual) and
an Inception module, each laid out as boxes and arrows from the real layers of the Keras model.

The data come from engine.models.blocks as plain dicts (`dataclasses.asdict`); the look (template,
palette, layer-kind colours) is dashboard/charts.py's, so diagrams and charts match.
"""

from __future__ import annotations

import plotly.graph_objects as go

from dashboard.charts import KIND_COLORS, PALETTE, TEMPLATE

_BOX_W, _BOX_H = 2.6, 0.62  # a box's width and height in axis units (one row of the drawing = 1.0)


def _shape_text(shape) -> str:
    return "×".join(str(int(v)) for v in shape)


def _box(fig: go.Figure, x: float, y: float, text: str, color: str, width: float = _BOX_W) -> None:
    fig.add_shape(
        type="rect",
        x0=x - width / 2,
        x1=x + width / 2,
        y0=y - _BOX_H / 2,
        y1=y + _BOX_H / 2,
        line={"color": color, "width": 2},
        fillcolor=color,
        opacity=0.16,
        layer="below",
    )
    fig.add_annotation(x=x, y=y, text=text, showarrow=False, font={"size": 11, "color": "#0F172A"})


def _arrow(fig: go.Figure, x0: float, y0: float, x1: float, y1: float) -> None:
    fig.add_annotation(
        x=x1,
        y=y1 + _BOX_H / 2,
        ax=x0,
        ay=y0 - _BOX_H / 2,
        xref="x",
        yref="y",
        axref="x",
        ayref="y",
        showarrow=True,
        arrowhead=2,
        arrowwidth=1.4,
        arrowcolor="#475569",
        text="",
    )


def _diagram(title: str, height: int) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(template=TEMPLATE, title=title, height=height, showlegend=False)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def _step_text(step: dict) -> str:
    macs = f" · {step['macs'] / 1e6:,.2f} M MACs" if step["macs"] else ""
    return f"<b>{step['label']}</b>  {step['name']}<br>{_shape_text(step['output_shape'])}{macs}"


def separable_block_diagram(block: dict) -> go.Figure:
    """A depthwise-separable block or inverted residual drawn top to bottom from its real layers.

    `block` is `dataclasses.asdict(engine.models.blocks.SeparableBlock)`.
    """
    main = [s for s in block["steps"] if "squeeze" not in s["label"]]
    side = [s for s in block["steps"] if "squeeze" in s["label"]]
    title = f"{block['backbone']} {block['block']}: " + (
        "inverted residual" if block["style"] == "inverted_residual" else "depthwise-separable block"
    )
    fig = _diagram(title, 150 + 95 * (len(main) + 1))
    y = 0.0
    _box(fig, 0, y, f"<b>input</b><br>{_shape_text(block['input_shape'])}", PALETTE[5])
    positions = {"": (0.0, y)}
    for step in main:
        y -= 1.0
        color = "#475569" if step["label"] == "add" else KIND_COLORS.get(step["kind"], "#94A3B8")
        _box(fig, 0, y, _step_text(step), color)
        px, py = positions.get(step["after"], (0.0, y + 1.0))
        _arrow(fig, px, py, 0, y)
        positions[step["name"]] = (0.0, y)
    if side:  # squeeze-and-excitation: a small side branch that rescales the channels
        sy = positions.get(side[0]["after"], (0.0, -1.0))[1] - 0.5
        text = "<br>".join(f"{s['label']} → {_shape_text(s['output_shape'])}" for s in side)
        _box(fig, 3.2, sy, f"<b>squeeze-excite</b><br>{text}", KIND_COLORS["other"], width=2.4)
    if block["residual"]:
        fig.add_shape(
            type="path",
            path=f"M {_BOX_W / 2},0 L {_BOX_W / 2 + 0.5},0 L {_BOX_W / 2 + 0.5},{y} L {_BOX_W / 2},{y}",
            line={"color": "#475569", "width": 1.4, "dash": "dot"},
        )
        fig.add_annotation(x=_BOX_W / 2 + 0.55, y=y / 2, text="skip", showarrow=False, xanchor="left")
    fig.update_xaxes(range=[-2.0, 4.6 if side else 2.4])
    fig.update_yaxes(range=[y - 0.6, 0.6])
    return fig


def inception_module_diagram(module: dict) -> go.Figure:
    """An Inception module: its parallel branches from the real layers, joined by a concat.

    `module` is `dataclasses.asdict(engine.models.blocks.InceptionModule)`.
    """
    branches = module["branches"]
    # each branch is a little tree (mixed9/10 split 1×3 ‖ 3×1): depth = distance from the input
    layouts, widths = [], []
    for branch in branches:
        depth: dict[str, int] = {}
        for step in branch["steps"]:
            depth[step["name"]] = depth.get(step["after"], -1) + 1
        levels: dict[int, list[dict]] = {}
        for step in branch["steps"]:
            levels.setdefault(depth[step["name"]], []).append(step)
        layouts.append(levels)
        widths.append(max(len(v) for v in levels.values()) if levels else 1)
    rows = max((max(levels) + 1 for levels in layouts if levels), default=1)
    col_w = 2.9
    total_w = col_w * sum(widths)
    fig = _diagram(f"{module['backbone']} {module['module']}: Inception module", 220 + 92 * (rows + 2))
    top = 0.0
    _box(
        fig,
        total_w / 2,
        top,
        f"<b>input</b> {module['input_layer']}<br>{_shape_text(module['input_shape'])}",
        PALETTE[5],
        width=min(total_w, 6),
    )
    bottom = -(rows + 1.0)
    x_left = 0.0
    for branch, levels, width in zip(branches, layouts, widths, strict=True):
        centre = x_left + col_w * width / 2
        places: dict[str, tuple[float, float]] = {"": (total_w / 2, top)}
        last = (centre, top)
        for level in sorted(levels):
            items = levels[level]
            for j, step in enumerate(items):
                x = centre + (j - (len(items) - 1) / 2) * col_w
                y = -(level + 1.0)
                color = KIND_COLORS.get(step["kind"], KIND_COLORS["other"])
                _box(fig, x, y, _step_text(step), color, width=col_w - 0.25)
                px, py = places.get(step["after"], (total_w / 2, top))
                _arrow(fig, px, py, x, y)
                places[step["name"]] = last = (x, y)
        leaves = [
            places[s["name"]]
            for s in branch["steps"]
            if s["name"] not in {t["after"] for t in branch["steps"]}
        ]
        for lx, ly in leaves or [last]:
            _arrow(fig, lx, ly, centre if len(leaves) < 2 else lx, bottom)
        fig.add_annotation(
            x=centre + 0.06,
            y=bottom + 0.6,
            xanchor="left",
            text=f"{branch['out_channels']} ch · {branch['macs'] / 1e6:,.1f} M",
            showarrow=False,
            font={"size": 10, "color": "#475569"},
        )
        x_left += col_w * width
    _box(
        fig,
        total_w / 2,
        bottom,
        f"<b>concat</b> {module['module']}<br>{_shape_text(module['output_shape'])} · "
        f"{module['macs'] / 1e6:,.1f} M MACs in all",
        "#475569",
        width=min(total_w, 6),
    )
    fig.update_xaxes(range=[-0.2, total_w + 0.2])
    fig.update_yaxes(range=[bottom - 0.6, top + 0.6])
    return fig
