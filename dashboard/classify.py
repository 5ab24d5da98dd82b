"""Classify: uploaded or camera photos through a run's classifier or an ImageNet one (label_image)."""

import pandas as pd
import streamlit as st

from dashboard import cache, charts
from dashboard.components import guard, plot, run_label
from engine.models import backbones
from engine.runs.results import RunResults

TOP_K = 5

st.title(":material/image_search: Classify")
st.caption(
    "label_image's job: the top-5 classes of each photo with their probabilities and the measured latency."
)

with guard("Reading runs"):
    runs = [r for r in cache.store().list_runs() if r.status == "finished"]

left, right = st.columns([1, 2], gap="large")
with left, st.container(border=True):
    kinds = {
        "run": ":material/model_training: Trained run",
        "imagenet": ":material/public: ImageNet-1k",
    }
    kind = st.segmented_control(
        "Classifier",
        list(kinds),
        format_func=kinds.get,
        default="run" if runs else "imagenet",
        required=True,
        key="classify_kind",
    )
    if kind == "run":
        labels = {r.id: run_label(r, f"{RunResults.of(r).test_accuracy or 0:.0%} test") for r in runs}
        run_id = st.selectbox("Run", list(labels), format_func=labels.get, key="classify_run")
        if run_id is None:
            st.info(
                "No finished run yet: train one first, or use an ImageNet classifier.", icon=":material/info:"
            )
    else:
        names = backbones.list_backbones()
        backbone = st.selectbox(
            "Backbone", names, index=names.index(backbones.DEFAULT_BACKBONE), key="classify_backbone"
        )
        st.caption(
            "Needs the backbone's full ImageNet weights (with the top) in the Keras cache or the network."
        )
    uploads = st.file_uploader(
        "Photos", accept_multiple_files=True, key="classify_files", help="JPEG, PNG, BMP, GIF, WebP or TIFF"
    )
    camera = st.camera_input("Take a photo", key="classify_camera") if st.toggle("Use the camera") else None

items = list(uploads or []) + ([camera] if camera is not None else [])
with right:
    if not items:
        st.info("Upload one or more photos (or take one) to classify them.", icon=":material/arrow_back:")
        st.stop()
    classifier = None
    with guard("Loading the classifier"):
        if kind == "run":
            if run_id is None:
                st.stop()
            classifier = cache.run_classifier(run_id)
        else:
            classifier = cache.pretrained(backbone)
    if classifier is None:
        st.stop()
    with guard("Classifying"):
        predictions = classifier.classify(items, top_k=TOP_K)
        latencies = [p.latency_ms for p in predictions if not p.error]
        if latencies:
            st.caption(
                f"{classifier.name} · {len(latencies)} image(s) · median latency "
                f"{sorted(latencies)[len(latencies) // 2]:.1f} ms "
                "(decode + resize + forward, one image per call)"
            )
        for item, pred in zip(items, predictions, strict=True):
            with st.container(border=True):
                if pred.error:
                    st.error(f"Refused — {pred.error}", icon=":material/block:")
                    continue
                image_col, chart_col = st.columns([1, 2], vertical_alignment="center")
                with image_col:
                    try:
                        st.image(item.getvalue(), caption=item.name, width="stretch")
                    except Exception:  # the browser cannot show every format the engine reads (TIFF)
                        st.caption(f":material/image: {item.name} (no preview for this format)")
                    st.metric(
                        "Top-1", pred.top1, f"{pred.scores[0]:.1%}", delta_color="off", delta_arrow="off"
                    )
                    st.metric("Latency", f"{pred.latency_ms:.1f} ms")
                with chart_col:
                    frame = pd.DataFrame({"label": pred.labels, "probability": pred.scores})
                    plot(charts.top_k(frame, f"Top-{TOP_K}: {item.name}"), key=f"topk_{item.file_id}")
