"""Classify: photos through every model you pick, side by side; why each decided; a folder in batch."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from dashboard import batch_view, cache, charts_classify
from dashboard.components import guard
from engine.errors import LabError
from engine.export import convert, lineup, uploaded
from engine.machine import network_available
from engine.models import backbones
from engine.runs.results import RunResults

TOP_K = 5
CARDS_PER_ROW = 3  # a card stays wide enough for its top-5 bars; phones stack them anyway
SELECTED, EXTRA, LAST = "classify_models", "classify_extra_models", "classify_lineup"
MORE = "classify_more"  # the "More models" expander: closed again once a model is added
CORAL_HINT = (
    "Offline, use an ImageNet classifier as a **.tflite file with its labels** instead (below, "
    "*A .tflite classifier*): e.g. Coral's `mobilenet_v2_1.0_224_quant.tflite` with `imagenet_labels.txt` "
    "(github.com/google-coral/test_data)."
)


# -- models ----------------------------------------------------------------------------------------
def best_run_key(choices: list[lineup.ModelChoice]) -> str | None:
    """The Keras choice of the finished run with the highest test accuracy (not the newest)."""
    runs = {c.ref: c for c in choices if c.kind == "run" and c.fmt == "keras"}
    scored = [
        (RunResults.of(r).test_accuracy or -1.0, r.id) for r in cache.store().list_runs() if r.id in runs
    ]
    return runs[max(scored)[1]].key if scored else None


def add_extra(choice: lineup.ModelChoice) -> None:
    """Offer a model this session added (upload, ImageNet) and select it."""
    st.session_state.setdefault(EXTRA, {})[choice.key] = choice
    selected = list(st.session_state.get(SELECTED, []))
    st.session_state[SELECTED] = [*selected, choice.key] if choice.key not in selected else selected
    st.session_state[MORE] = False  # out of the way of the results (on a phone it fills the screen)


def on_upload_model() -> None:
    model, labels = st.session_state.get("classify_tflite"), st.session_state.get("classify_labels")
    st.session_state.pop("classify_add_error", None)
    if model is None or labels is None:
        st.session_state["classify_add_error"] = "Choose both the .tflite file and its labels file."
        return
    try:
        add_extra(uploaded.save_model_upload(model.name, model.getvalue(), labels.getvalue()))
        cache.refresh_model_choices()
    except LabError as exc:
        st.session_state["classify_add_error"] = str(exc)


def on_add_imagenet() -> None:
    name = st.session_state.get("classify_imagenet")
    st.session_state.pop("classify_add_error", None)
    top = backbones.weights_path(name, top=True)
    if not top.is_file() and not network_available():
        st.session_state["classify_add_error"] = (
            f"The ImageNet top weights of {name} are not cached (expected {top.name} in {top.parent}) "
            f"and the network is unreachable, so they cannot be downloaded. {CORAL_HINT}"
        )
        return
    add_extra(lineup.imagenet_choice(name))


def more_models(choices: list[lineup.ModelChoice]) -> None:
    """Add a .tflite classifier with its labels, or an ImageNet Keras model."""
    with st.expander(
        "More models: a .tflite file, ImageNet", icon=":material/add_circle:", key=MORE, on_change="rerun"
    ):
        st.markdown("**A .tflite classifier** (a classmate's export, an ImageNet one such as Coral's)")
        st.file_uploader("Model (.tflite)", type=["tflite"], key="classify_tflite")
        st.file_uploader(
            "Its labels (one class per line, in output order)", type=["txt"], key="classify_labels"
        )
        st.button(
            "Add this model", icon=":material/upload:", on_click=on_upload_model, key="classify_add_tflite"
        )
        st.markdown("**An ImageNet Keras model** (1,000 classes; needs its top weights)")
        cached = {c.ref for c in choices if c.kind == "imagenet"}
        if not cached:
            st.caption(f"No ImageNet Keras model has its top weights cached here. {CORAL_HINT}")
        names = backbones.list_backbones()
        st.selectbox(
            "Backbone",
            names,
            index=names.index(backbones.DEFAULT_BACKBONE),
            format_func=lambda n: f"{n} (cached)" if n in cached else n,
            key="classify_imagenet",
        )
        st.button(
            "Add ImageNet model",
            icon=":material/public:",
            on_click=on_add_imagenet,
            key="classify_add_imagenet",
        )
    if error := st.session_state.get("classify_add_error"):
        st.error(error, icon=":material/error:")


def pick_models() -> list[lineup.ModelChoice]:
    present: list[lineup.ModelChoice] = []
    later: list[lineup.ModelChoice] = []
    with guard("Listing models"):
        present, later = cache.model_choices()
    by_key = {c.key: c for c in [*present, *later]}
    for key, choice in st.session_state.get(EXTRA, {}).items():
        by_key.setdefault(key, choice)
    ready = {c.key for c in present}
    if SELECTED not in st.session_state:
        with guard("Reading runs"):
            best = best_run_key(present)
            st.session_state[SELECTED] = [best] if best else []
    st.session_state[SELECTED] = [k for k in st.session_state[SELECTED] if k in by_key]  # a deleted run
    keys = st.multiselect(
        "Models",
        list(by_key),
        format_func=lambda k: by_key[k].name + ("" if k in ready else " · converted on first use"),
        key=SELECTED,
        placeholder="Choose one or more models",
        help="Your finished runs (imported ones too) in every format: one not exported yet is converted "
        "the first time you pick it. ImageNet Keras models with cached top weights, and .tflite "
        "classifiers added below.",
    )
    if not by_key:
        st.info("No model yet: train a run first, or add a .tflite classifier below.", icon=":material/info:")
    more_models(present)
    return [by_key[k] for k in keys]


def photo_inputs() -> list:
    uploads = st.file_uploader(
        "Photos", accept_multiple_files=True, key="classify_files", help="JPEG, PNG, BMP, GIF, WebP or TIFF"
    )
    camera = (
        st.camera_input("Take a photo", key="classify_camera")
        if st.toggle("Use the camera", key="classify_use_camera")
        else None
    )
    return list(uploads or []) + ([camera] if camera is not None else [])


# -- classifying -----------------------------------------------------------------------------------
def load(chosen: list[lineup.ModelChoice]) -> list:
    """Loaded classifiers of the chosen models, in order; a model that fails is shown and left out.

    A run's format that is not exported yet is converted first, with its progress shown.
    """
    ready = {c.key for c in cache.model_choices()[0]}
    loaded = []
    for choice in chosen:
        with guard(f"Loading {choice.name}"):
            if choice.kind == "run" and choice.key not in ready:
                convert_first(choice)
            with st.spinner(f"Loading {choice.name}…"):
                loaded.append((choice, cache.choice_classifier(choice)))
    return loaded


def convert_first(choice: lineup.ModelChoice) -> None:
    with st.status(f"Converting {choice.name} (first use)…", expanded=True) as status:
        bar = st.progress(0.0)

        def progress(event: dict) -> None:
            total = event.get("total") or 0
            bar.progress(min(event["done"] / total, 1.0) if total else 0.0, text=event.get("message", ""))

        convert.ensure_export(choice.ref, choice.fmt, store=cache.store(), progress=progress)
        cache.refresh_model_choices()
        status.update(label=f"Converted {choice.name}", state="complete", expanded=False)


def run_lineup(loaded: list, items: list) -> tuple[lineup.Lineup, float]:
    """The side-by-side result and its wall time (ms), kept for this session until models or photos change."""
    signature = (tuple(c.key for c, _ in loaded), tuple(getattr(i, "file_id", id(i)) for i in items), TOP_K)
    last = st.session_state.get(LAST)
    if last and last[0] == signature:
        return last[1], last[2]
    with st.spinner(f"Classifying {len(items)} photo(s) with {len(loaded)} model(s)…"):
        start = time.perf_counter()
        result = lineup.side_by_side([c for _, c in loaded], items, top_k=TOP_K, store=cache.store())
        wall_ms = (time.perf_counter() - start) * 1000
    st.session_state[LAST] = (signature, result, wall_ms)
    return result, wall_ms


def photo_row(n: int, item, result: lineup.Lineup, loaded: list) -> None:
    """One photo: its preview and agreement, then a card per model."""
    preds = result.predictions[n]
    with st.container(border=True):
        if all(p.error for p in preds):
            st.error(f"Refused — {preds[0].error}", icon=":material/block:")
            return
        head_image, head_text = st.columns([1, 3], vertical_alignment="center")
        try:
            head_image.image(item.getvalue(), caption=item.name, width=180)
        except Exception:  # the browser cannot show every format the engine reads (TIFF)
            head_image.caption(f":material/image: {item.name} (no preview for this format)")
        majority = _majority(preds)
        with head_text:
            st.markdown(f"#### {item.name}")
            if len(preds) > 1:
                agree = result.agreement(n)
                agreeing = round(agree * sum(1 for p in preds if not p.error))
                icon = ":material/check_circle:" if agree >= 0.999 else ":material/warning:"
                text = f"{icon} **{agreeing} of {len(preds)} models agree** on *{majority}*"
                st.markdown(text if agree >= 0.999 else f":orange[{text}] — the others are marked")
        for start in range(0, len(loaded), CARDS_PER_ROW):
            row = list(range(start, min(start + CARDS_PER_ROW, len(loaded))))
            for col, m in zip(st.columns(min(len(loaded), CARDS_PER_ROW)), row, strict=False):
                with col:
                    model_card(n, m, item, preds[m], loaded[m], majority, len(loaded) > 1)


def _majority(preds) -> str | None:
    tops = [lineup.same_label(p.top1) for p in preds if not p.error and p.top1]
    return max(tops, key=tops.count) if tops else None


def model_card(n: int, m: int, item, pred, model, majority: str | None, several: bool) -> None:
    choice, classifier = model
    agrees = lineup.same_label(pred.top1) == majority
    with st.container(border=True):
        st.markdown(f"**{choice.name}**")
        if pred.error:
            st.error(pred.error, icon=":material/block:")
            return
        if several and not agrees:
            st.badge("disagrees", icon=":material/warning:", color="orange")
        with st.container(horizontal=True):
            st.metric("Top-1", pred.top1, f"{pred.scores[0]:.1%}", delta_color="off", delta_arrow="off")
            st.metric("Latency", f"{pred.latency_ms:.1f} ms")
        familiar = pred.extra.get("familiar")
        if familiar and familiar.get("unfamiliar"):
            st.warning(f"**Unlike the training photos.** {familiar['note']}", icon=":material/help:")
        elif familiar and familiar.get("note"):
            st.caption(familiar["note"])
        fig = charts_classify.model_top_k(pred.labels, pred.scores, agrees=agrees or not several)
        chart(fig, f"topk_{n}_{m}")
        why(n, m, item, pred, choice, classifier)


def why(n: int, m: int, item, pred, choice, classifier) -> None:
    """The heatmap of the top class or a chosen one, behind a toggle (occlusion can take a second)."""
    if not st.toggle("Why it decided", key=f"why_{n}_{m}"):
        return
    names = list(classifier.class_names)
    class_name = st.selectbox(
        "Evidence for the class",
        names,
        index=names.index(pred.top1) if pred.top1 in names else 0,
        key=f"why_class_{n}_{m}",
    )
    with guard("Explaining"), st.spinner("Computing the heatmap…"):
        heatmap, picture = cache.explanation(choice, item.getvalue(), class_name)
        st.image(picture, caption=f"{heatmap.method}: {heatmap.class_name} ({heatmap.probability:.1%})")
        st.caption(heatmap.sentence)


def chart(fig, key: str) -> None:
    """A small figure without plotly's toolbar: on a phone a tap shows it over the bars it describes."""
    st.plotly_chart(fig, theme=None, key=key, config={"displayModeBar": False, "displaylogo": False})


def summary(result: lineup.Lineup, wall_ms: float) -> None:
    """A compact table of every photo and model, latency per model and agreement per photo."""
    rows = []
    for entry in result.entries():
        familiar = entry.get("familiar") or {}
        rows.append(
            {
                "photo": entry["source"],
                "model": entry["model"],
                "top-1": entry["labels"][0] if entry["labels"] else None,
                "confidence": entry["scores"][0] if entry["scores"] else None,
                "latency (ms)": entry["latency_ms"] if not entry.get("error") else None,
                "unlike training": familiar.get("unfamiliar") if familiar else None,
                "error": entry.get("error"),
            }
        )
    frame = pd.DataFrame(rows)
    st.subheader("All photos and models")
    photos, models = len(result.photos), len(result.models)
    classifying = sum(e["latency_ms"] for e in result.entries() if not e.get("error"))
    st.caption(
        f"Side by side: {photos} photo(s) × {models} model(s) in {wall_ms:,.0f} ms: {classifying:,.0f} ms "
        "classifying (decode + resize + forward, the latencies above)"
        + (
            f", {max(wall_ms - classifying, 0):,.0f} ms for the rest, mostly the training-likeness check "
            "(the first time for a run it also loads its backbone and calibrates)."
            if any("familiar" in e for e in result.entries())
            else "."
        )
    )
    disagree = set(result.disagreements()) if models > 1 else set()
    shown = frame.drop(columns=["error"] if frame["error"].isna().all() else [])
    st.dataframe(
        shown.style.apply(
            lambda r: ["background-color: #FFEDD5" if r.name // models in disagree else ""] * len(r), axis=1
        ),
        hide_index=True,
        column_config={
            "confidence": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1),
            "latency (ms)": st.column_config.NumberColumn(format="%.1f"),
        },
    )
    if disagree:
        st.caption(
            f":orange[Orange rows: photos on which the models disagree ({len(disagree)} of {photos}).]"
        )
    good = frame.dropna(subset=["latency (ms)"])[["model", "latency (ms)"]]
    charts = st.columns(2 if photos > 1 and models > 1 else 1)
    with charts[0]:
        chart(
            charts_classify.latency_per_model(good.rename(columns={"latency (ms)": "latency_ms"})), "latency"
        )
    if len(charts) > 1:
        agreement = pd.DataFrame(
            {"photo": result.photos, "agreement": [result.agreement(i) for i in range(photos)]}
        )
        with charts[1]:
            chart(charts_classify.agreement(agreement), "agreement")


def photos_tab(chosen: list[lineup.ModelChoice], items: list) -> None:
    if not chosen:
        st.info("Choose one or more models above.", icon=":material/arrow_upward:")
        return
    if not items:
        st.info("Upload one or more photos (or take one) to classify them.", icon=":material/arrow_upward:")
        return
    loaded = load(chosen)
    if not loaded:
        return
    result, wall_ms = None, 0.0
    with guard("Classifying"):
        result, wall_ms = run_lineup(loaded, items)
    if result is None:
        return
    for n, item in enumerate(items):
        photo_row(n, item, result, loaded)
    summary(result, wall_ms)


def batch_tab(chosen: list[lineup.ModelChoice]) -> None:
    batch_view.render(chosen)


# -- the page --------------------------------------------------------------------------------------
st.title(":material/image_search: Classify")
st.caption(
    "What is this photo? Every model you pick answers side by side: top-5, agreement, latency, "
    "a note when the photo is unlike a run's training photos, and a heatmap of why it decided."
)
models_box, photos_box = st.columns([3, 2], gap="medium")  # stacked on a phone
with models_box, st.container(border=True):
    chosen = pick_models()
with photos_box, st.container(border=True):
    items = photo_inputs()

photos, batch = st.tabs([":material/photo_library: Photos", ":material/folder_zip: Batch"])
with photos:
    photos_tab(chosen, items)
with batch:
    batch_tab(chosen)
