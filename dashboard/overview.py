"""Overview: what the lab does, a path through it, the stack it runs on, and the concepts behind it."""

import pandas as pd
import streamlit as st

from dashboard import cache
from dashboard.components import guard, page_link

st.title(":material/neurology: Classifier Lab")
st.markdown(
    "Teach an image classifier new classes in minutes: a network pretrained on ImageNet turns every "
    "photo into a *bottleneck* feature vector, and only a small softmax head is trained on your "
    "classes — TensorFlow for Poets' `retrain.py` and `label_image`, as a lab you can watch."
)

st.subheader("A path through the lab")
steps = [
    ("dashboard/data.py", "1 · Data", ":material/photo_library:", "Pick or upload images in class folders."),
    ("dashboard/train.py", "2 · Train", ":material/model_training:", "Retrain a head on a backbone, live."),
    ("dashboard/runs.py", "3 · Compare", ":material/table_chart:", "Overlay curves, timings, confusions."),
    (
        "dashboard/classify.py",
        "4 · Classify",
        ":material/image_search:",
        "Top-5 for your photos, with latency.",
    ),
]
for column, (file, label, icon, text) in zip(st.columns(len(steps)), steps, strict=True):
    with column.container(border=True):
        page_link(file, label, icon)
        st.caption(text)

with guard("Reading the run store"):
    runs = cache.store().list_runs()
    finished = [r for r in runs if r.status == "finished"]
    best = max((r.results.get("test_accuracy") or 0 for r in finished), default=None)
    c1, c2, c3 = st.columns(3)
    c1.metric("Runs in this lab", len(runs))
    c2.metric("Finished runs", len(finished))
    c3.metric("Best test accuracy", f"{best:.1%}" if best is not None else "—")

st.subheader("The stack, read live")
facts = cache.basic_facts()
c1, c2, c3, c4 = st.columns(4)
c1.metric("TensorFlow", facts["tensorflow_version"] or "not installed")
c2.metric("Keras", facts["keras_version"] or "not installed")
c3.metric(
    "CPU cores",
    f"{facts['usable_cores']} of {facts['cpu_cores']}",
    help="usable by this process / on the machine",
)
c4.metric("Memory", f"{facts['memory_gb']} GB" if facts["memory_gb"] else "—")
st.markdown(
    f"**CPU:** {facts['cpu_model']} · **Python** {facts['python']} · "
    f"**Streamlit** {facts['streamlit_version']}"
)

with guard("Probing TensorFlow"):
    tf_facts = cache.tensorflow_facts()
    from engine.timing.machine import tensorrt_status

    gpus = tf_facts["gpus"]
    cuda = f"yes (CUDA {tf_facts['cuda_version']})" if tf_facts["is_cuda_build"] else "no"
    st.markdown(
        "**GPUs visible to TensorFlow:** "
        + (", ".join(gpus) if gpus else "none — training and inference run on the CPU")
        + f" · TensorFlow built with CUDA: {cuda}"
    )
    trt = tensorrt_status(facts, tf_facts)
    if trt["available"]:
        st.success(f"TensorRT can be used here: {trt['route']}.", icon=":material/bolt:")
    else:
        st.warning(
            "**TensorRT cannot be used here.**\n\n"
            + "\n".join(f"- {reason}" for reason in trt["reasons"])
            + f"\n\nRoute the lab would use: {trt['route']}.",
            icon=":material/block:",
        )

st.subheader("Concepts")
cards = cache.concepts()
for start in range(0, len(cards), 3):
    for column, card in zip(st.columns(3), cards[start : start + 3], strict=False):
        with column.container(border=True, height="stretch"):
            st.markdown(f"**{card['title']}**")
            st.markdown(card["body"])
            if card["source"]:
                st.caption(f"Source: {card['source']}")

st.subheader("Backbones in the registry")
table = pd.DataFrame(cache.backbone_table())
st.dataframe(
    table,
    hide_index=True,
    height=35 * (len(table) + 1) + 3,  # every backbone at once, no inner scrolling
    column_config={
        "weights cached": st.column_config.CheckboxColumn("ImageNet weights cached"),
        "year": st.column_config.NumberColumn(format="%d"),
    },
)
st.caption(
    f"Data directory: `{facts['lab_home']}` (set `LAB_HOME`) · Keras weights cache: "
    f"`{facts['keras_home']}/models` (set `KERAS_HOME`)"
)
