"""Architectures: MobileNet against Inception, explained with numbers counted from the real models."""

import inspect
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import cache, charts, diagrams
from dashboard.components import guard, page_link, plot, source_options
from engine.models import backbones, blocks, explain, macs

DEFAULT = ["mobilenet_1.0_224", "inception_v3"]
# the head's classes and the batch the explanations assume: freeze_plan's own defaults, read, never copied
PLAN = {k: p.default for k, p in inspect.signature(explain.freeze_plan).parameters.items() if k != "name"}
M = st.column_config.NumberColumn(format="%.2f")


def millions(value: float) -> str:
    return f"{value / 1e6:,.2f} M"


def human(value: float) -> str:
    """1.23 G, 45.6 M, 7.8 K or 12."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:,.2f} {unit}"
    return f"{value:,.0f}"


def block_frame(arch, field: str) -> pd.DataFrame:
    """Tidy (block, kind, value in millions) rows of MACs or params per block."""
    rows = [
        {"block": b.name, "kind": kind, "value": value / 1e6}
        for b in arch.blocks
        for kind, value in getattr(b, field).items()
    ]
    return pd.DataFrame(rows)


def comparison(names: list[str]) -> None:
    rows = pd.DataFrame(explain.compare(names, num_classes=PLAN["num_classes"]))
    with guard("Reading the lab's runs"):
        measured = explain.lab_results(cache.store().list_runs(), names)
        rows["lab runs"] = [measured[n]["lab runs"] for n in names]
        rows["best test accuracy"] = [measured[n]["best test accuracy"] for n in names]
    money = ["params (M)", "MACs (M)", "MACs with ImageNet top (M)", "weights (MB, float32)"]
    config = {c: M for c in money}
    config["best test accuracy"] = st.column_config.NumberColumn(format="percent")
    st.dataframe(rows, hide_index=True, column_config=config, key="arch_compare")
    published = explain.published_check(names)
    if published:
        with st.expander("Counted against the papers (ImageNet classifier included, as the papers count)"):
            numbers = {c: M for c, v in published[0].items() if isinstance(v, float)}
            st.dataframe(pd.DataFrame(published), hide_index=True, column_config=numbers)
            st.caption(
                "MACs = multiply-accumulates of the convolution and dense layers per 224×224 (299×299) "
                "image; batch norm, activations, pooling and additions are reported apart as 'other'. "
                "The papers' parameter counts include the 1000-way classifier (MobileNet 1.0: 4.2 M, of "
                "which 1.0 M is the FC layer), so the comparison builds each model with its top too."
            )


def cost_per_block(names: list[str], archs: dict) -> None:
    frame = pd.DataFrame(
        [{"backbone": n, "macs_m": archs[n].macs / 1e6, "params_m": archs[n].params / 1e6} for n in names]
    )
    plot(charts.arch_cost_scatter(frame), key="arch_scatter")
    for name in names:
        arch = archs[name]
        left, right = st.columns(2)
        with left:
            fig = charts.arch_blocks_stacked(
                block_frame(arch, "macs_by_kind"), f"{name}: MACs per block", "MACs per image (millions)"
            )
            plot(fig, key=f"arch_macs_{name}")
        with right:
            fig = charts.arch_blocks_stacked(
                block_frame(arch, "params_by_kind"), f"{name}: parameters per block", "Parameters (millions)"
            )
            plot(fig, key=f"arch_params_{name}")
        by_kind = ", ".join(f"{k} {v / arch.macs:.0%}" for k, v in arch.macs_by_kind.items() if v)
        st.caption(f"{name}: {millions(arch.macs)} MACs per image — {by_kind}.")


def separable(name: str, arch) -> None:
    names = blocks.separable_blocks(arch)
    default = blocks.separable_block(arch).block
    block = st.selectbox(f"{name}: block", names, index=names.index(default), key=f"arch_sep_{name}")
    b = blocks.separable_block(arch, block)
    left, right = st.columns([3, 2])
    with left:
        plot(diagrams.separable_block_diagram(asdict(b)), key=f"arch_sep_fig_{name}")
    with right:
        frame = pd.DataFrame(
            [{"what": "standard conv, same shape", "macs": b.standard_macs}]
            + [{"what": what, "macs": value} for what, _, value in b.arithmetic[1:]]
            + [{"what": "this block in all", "macs": b.macs}]
        )
        if b.style == "inverted_residual":  # what the depthwise conv saves at the expanded width
            wide = f"block with a standard {b.kernel}×{b.kernel} conv"
            frame.loc[len(frame)] = {"what": wide, "macs": b.wide_standard_macs}
        plot(charts.cost_comparison(frame, "Cost of this very layer"), key=f"arch_sep_cost_{name}")
        st.dataframe(
            pd.DataFrame(b.arithmetic, columns=["layer", "MACs = ", "MACs"]),
            hide_index=True,
            column_config={"MACs": st.column_config.NumberColumn(format="localized")},
            key=f"arch_sep_table_{name}",
        )
    hw, c_in, c_out, k = (
        "×".join(map(str, b.output_shape[:2])),
        b.input_shape[-1],
        b.output_shape[-1],
        b.kernel,
    )
    if b.style == "depthwise_separable":
        st.markdown(
            f"A standard {k}×{k} convolution from {c_in} to {c_out} channels at {hw} costs "
            f"**{millions(b.standard_macs)}** MACs. MobileNet splits it into a {k}×{k} depthwise convolution "
            f"(one filter per channel, {millions(b.depthwise_macs)}) and a 1×1 pointwise convolution "
            f"that mixes channels ({millions(b.pointwise_macs)}): **{millions(b.macs)}**, "
            f"**{b.reduction:.1f}× fewer** — the paper's ratio 1/N + 1/k² = 1/{c_out} + 1/{k * k} = "
            f"{b.paper_ratio:.3f}. Parameters: {b.standard_params:,} → {b.params:,} (incl. batch norm)."
        )
    else:
        residual = (
            "adds its input back (residual)" if b.residual else "has no residual (stride or width changes)"
        )
        st.markdown(
            f"An inverted residual: 1×1 **expand** {c_in} → {int(b.expansion * c_in)} channels "
            f"(×{b.expansion:g}), {k}×{k} **depthwise** with stride {b.stride}, 1×1 linear **project** to "
            f"{c_out}; it {residual}. It costs **{millions(b.macs)}** MACs, "
            f"{1 / b.reduction:.2f}× a plain {k}×{k} conv {c_in}→{c_out} ({millions(b.standard_macs)}): "
            f"the work happens at the expanded width, and there the depthwise convolution is what "
            f"saves: with a standard {k}×{k} conv at that width the block would cost "
            f"{millions(b.wide_standard_macs)}, **{b.wide_reduction:.1f}× more**."
        )


def inception(name: str, arch) -> None:
    modules = blocks.inception_modules(arch)
    module = st.selectbox(f"{name}: module", modules, key=f"arch_module_{name}")
    m = blocks.inception_module(arch, module)
    plot(diagrams.inception_module_diagram(asdict(m)), key=f"arch_module_fig_{name}")
    rows = [
        {
            "branch": br.label,
            "layers": ", ".join(f"{s.name} ({s.label}, {s.output_shape[-1]} ch)" for s in br.steps),
            "output channels": br.out_channels,
            "MACs (M)": br.macs / 1e6,
            "share": br.macs / m.macs if m.macs else 0.0,
        }
        for br in m.branches
    ]
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        column_config={"MACs (M)": M, "share": st.column_config.NumberColumn(format="percent")},
        key=f"arch_module_table_{name}",
    )
    shape = "×".join(map(str, m.output_shape[:2]))
    st.markdown(
        f"GoogLeNet's idea: look at {m.input_layer} ({'×'.join(map(str, m.input_shape))}) through "
        f"{len(m.branches)} parallel branches of different receptive fields and **concatenate** their "
        f"{' + '.join(str(br.out_channels) for br in m.branches)} = {m.output_shape[-1]} channels. 1×1 "
        f"convolutions shrink the channels before the expensive k×k ones, and V3 factorises large kernels "
        f"(5×5 → two 3×3, 7×7 → 1×7 + 7×1). The module costs **{millions(m.macs)}** MACs; a single standard "
        f"3×3 conv {m.input_shape[-1]}→{m.output_shape[-1]} at {shape} would cost "
        f"{millions(m.standard_macs)} ({m.reduction:.1f}×). MobileNet saves inside each convolution "
        "(depthwise + pointwise); Inception saves by reducing channels and widening instead of deepening."
    )


def signature_blocks(names: list[str], archs: dict) -> None:
    for name in names:
        arch = archs[name]
        st.markdown(f"#### {name}")
        if blocks.inception_modules(arch):
            inception(name, arch)
        elif blocks.separable_blocks(arch):
            separable(name, arch)
        else:
            st.caption("No signature block recognised for this family.")


def bottleneck(names: list[str]) -> None:
    rows = []
    for name in names:
        b = explain.bottleneck(name)
        rows.append(
            {
                "backbone": name,
                "bottleneck layer": b.layer,
                "feature map": "×".join(map(str, b.map_shape)),
                "cached vector (floats)": b.feature_dim,
                "input values": b.input_values,
                "compression (input / vector)": f"{b.compression:,.0f}×",
                "compression (input / map)": f"{b.map_compression:,.1f}×",
                "cache per image": f"{b.cached_bytes_per_image / 1024:,.1f} KiB",
            }
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="arch_bottleneck")
    st.markdown(
        "The **bottleneck** is the last feature map before the classifier; global average pooling turns "
        "it into one vector per image. retrain.py (and this lab) run the frozen backbone once per image, "
        "cache that vector, and then train only the new softmax layer on the cached vectors — thousands "
        "of steps in seconds. **Layer freezing** is the other half: a frozen layer keeps its ImageNet "
        "weights. With every backbone layer frozen the bottleneck never changes, which is what makes "
        "caching possible; unfreeze layers (next tab) and every step must run the images again."
    )
    st.markdown("##### Cached features of a dataset, projected to 2-D (PCA)")
    options = source_options(named=False)
    if not options:
        st.info("No dataset yet — add one on the Data page, then train a run to cache its features.")
        page_link("dashboard/data.py", "Open Data", ":material/photo_library:")
        return
    c1, c2, c3 = st.columns([2, 2, 1])
    folder = c1.selectbox("Dataset", list(options), format_func=options.get, key="arch_pca_dataset")
    name = c2.selectbox("Backbone", names, key="arch_pca_backbone")
    weights = c3.radio("Weights", backbones.WEIGHTS_CHOICES, horizontal=True, key="arch_pca_weights")
    projection = None
    with guard("Reading cached features"):
        projection = cache.feature_projection(folder, name, weights)
    if projection is None:
        st.info(f"No cached features for this dataset with {name} ({weights}) yet — train a run first.")
        page_link("dashboard/train.py", "Open Train", ":material/model_training:")
        return
    frame = pd.DataFrame(
        {
            "x": projection.points[:, 0],
            "y": projection.points[:, 1],
            "label": projection.labels,
            "file": [Path(p).name for p in projection.paths],
        }
    )
    plot(charts.feature_pca(frame, projection.explained), key="arch_pca")
    st.caption(f"{projection.cached:,} of {projection.total:,} images have a cached vector.")


def use_on_train(name: str, layers: int) -> None:
    st.session_state["train_architecture"] = name
    st.session_state["train_fine_tune_layers"] = layers


def freezing(names: list[str], archs: dict) -> None:
    c1, c2, c3 = st.columns(3)
    name = c1.selectbox("Backbone", names, key="arch_freeze_backbone")
    classes = c2.number_input(
        "Classes of the new head", 2, 1000, PLAN["num_classes"], key="arch_freeze_classes"
    )
    batch = c3.number_input("Batch size", 1, 10_000, PLAN["batch_size"], key="arch_freeze_batch")
    arch = archs[name]
    unfrozen = st.slider(
        "Unfrozen top blocks (0 = train the head only)", 0, len(arch.blocks), 0, key=f"arch_unfrozen_{name}"
    )
    plan = explain.freeze_plan(name, unfrozen, int(classes), int(batch))
    c = st.columns(4)
    c[0].metric("Trainable parameters", f"{plan.trainable_params:,}")
    c[1].metric("Frozen parameters", f"{plan.frozen_params:,}")
    c[2].metric("MACs per image", human(plan.step_macs_per_image), help="per image, per training step")
    c[3].metric("MACs per step", human(plan.step_macs), help=f"one training step of {plan.batch_size} images")
    if plan.uses_feature_cache:
        st.caption(
            "Head only: the backbone runs once per image to fill the bottleneck cache; each step then costs "
            "the softmax layer alone (forward + backward ≈ 3 × features × classes)."
        )
    else:
        st.caption(
            f"Unfrozen: {', '.join(plan.blocks)} = the top {plan.fine_tune_layers} weight layers "
            "(batch norm stays frozen). Every step runs the whole backbone forward and the unfrozen part "
            "backward (≈ 2× its forward cost), and the bottleneck cache cannot be used."
        )
    curve = pd.DataFrame(explain.freeze_curve(name, int(classes), int(batch)))
    plot(charts.freeze_curve(curve, unfrozen), key="arch_freeze_curve")
    st.button(
        f"Use on Train: {name}, fine_tune_layers = {plan.fine_tune_layers}",
        on_click=use_on_train,
        args=(name, plan.fine_tune_layers),
        key="arch_use_on_train",
        icon=":material/tune:",
    )
    if not backbones.weights_cached(name):  # said before the hand-off, not after Train's click
        path = backbones.weights_path(name)
        st.caption(
            f":material/cloud_download: {name}'s ImageNet weights are not cached here (`{path.name}` "
            f"belongs in `{path.parent}`): a run downloads them first, which needs the network, or "
            "trains from random weights."
        )
    if st.session_state.get("train_fine_tune_layers") is not None:
        st.caption(
            f"Train will start from {st.session_state.get('train_architecture')} with fine_tune_layers = "
            f"{st.session_state['train_fine_tune_layers']}."
        )
    page_link("dashboard/train.py", "Open Train with this setting", ":material/model_training:")


def label_image(names: list[str]) -> None:
    everything = st.toggle("All backbones", value=False, key="arch_label_all")
    shown = backbones.list_backbones() if everything else names
    table = pd.DataFrame([explain.label_image_args(n) for n in shown])
    if len(shown) <= 4:  # a few backbones read best side by side, one column each
        table = table.set_index("backbone").T.rename_axis("argument").reset_index()
    st.dataframe(table, hide_index=True, key="arch_label")
    st.markdown("\n".join(f"- {line}" for line in explain.HOW_TO_FIND_INPUTS))
    st.code(
        "python label_image.py --graph=output_graph.pb --labels=output_labels.txt --image=daisy.jpg \\\n"
        "  --input_layer=Mul --input_height=299 --input_width=299 --input_mean=128 --input_std=128 \\\n"
        "  --output_layer=final_result        # Inception v3\n"
        "  # MobileNet: --input_layer=input --input_height=224 --input_width=224 "
        "--input_mean=127.5 --input_std=127.5",
        language="bash",
    )


def layer_table(names: list[str]) -> None:
    c1, c2 = st.columns([1, 2])
    name = c1.selectbox("Backbone", names, key="arch_layers_backbone")
    query = (
        c2.text_input("Search layers (name, type, kind or block)", key="arch_layers_search").strip().lower()
    )
    rows = pd.DataFrame(explain.layer_table(name))
    if query:
        hay = rows[["layer", "type", "kind", "block"]].astype(str).agg(" ".join, axis=1).str.lower()
        rows = rows[hay.str.contains(query, regex=False)]
    st.caption(f"{len(rows):,} layers" + (f" match “{query}”" if query else ""))
    for block, part in rows.groupby("block", sort=False):
        cost = f"{part['params'].sum():,} params, {millions(part['macs'].sum())} MACs"
        title = f"{block} — {len(part)} layers, {cost}"
        with st.expander(title, expanded=bool(query)):
            st.dataframe(part.drop(columns="block"), hide_index=True, key=f"arch_layers_{name}_{block}")


st.title(":material/account_tree: Architectures")
st.caption(
    "MobileNet against Inception (GoogLeNet), answered with numbers counted from the real Keras models: "
    f"parameters and multiply-accumulates per layer ({', '.join(macs.WEIGHT_KINDS)}; the rest is 'other'), "
    "the signature blocks, the bottleneck and what freezing layers costs."
)
names = st.multiselect("Backbones", backbones.list_backbones(), default=DEFAULT, key="arch_backbones")
if not names:
    st.info("Pick at least one backbone.")
    st.stop()

archs = {}
with guard("Counting the architecture"):
    for chosen in names:
        archs[chosen] = cache.architecture(chosen)
if len(archs) < len(names):
    st.stop()

comparison(names)
tabs = st.tabs(
    ["Cost per block", "Signature blocks", "Bottleneck", "Layer freezing", "label_image", "Layer table"]
)
with tabs[0], guard("Drawing the cost charts"):
    cost_per_block(names, archs)
with tabs[1], guard("Drawing the signature blocks"):
    signature_blocks(names, archs)
with tabs[2], guard("Explaining the bottleneck"):
    bottleneck(names)
with tabs[3], guard("Planning the layer freezing"):
    freezing(names, archs)
with tabs[4], guard("Listing label_image arguments"):
    label_image(names)
with tabs[5], guard("Listing the layers"):
    layer_table(names)
