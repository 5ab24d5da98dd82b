"""Runs: every run in a sortable, filterable table; compare several; inspect, download or delete one."""

from datetime import datetime
from functools import partial
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import cache, charts
from dashboard.components import STATUS_ICONS, guard, link_url, plot
from engine.progress import PHASES
from engine.runs import health, report, share
from engine.runs.results import RunResults


def run_label(run) -> str:
    return " · ".join([run.name, run.id, *([run.author] if run.author else [])])


def origin_text(run) -> str | None:
    """'imported from Ada (run 2026…)' for an imported run, None for one trained here."""
    if not run.imported:
        return None
    return f"imported from {run.origin.get('from') or 'someone'} (run {run.origin.get('original_run_id')})"


def short_label(run) -> str:
    """Unique but short: legends and bar labels."""
    return f"{run.name} #{run.id[-4:]}"


def run_row(run, experiments: dict[str, str]) -> dict:
    cfg, res = run.config, RunResults.of(run)
    train = cfg.get("train", {})
    return {
        "name": run.name,
        "author": run.author,
        "origin": origin_text(run),
        "experiment": experiments.get(run.experiment_id) if run.experiment_id else None,
        "status": run.status,
        "test accuracy": res.test_accuracy,
        "validation accuracy": res.validation_accuracy,
        "validation cross-entropy": res.validation_cross_entropy,
        "architecture": cfg.get("architecture"),
        "weights": cfg.get("weights"),
        "dataset": Path(str(cfg.get("source", ""))).name,
        "learning rate": train.get("learning_rate"),
        "steps": train.get("steps"),
        "batch": train.get("batch_size"),
        "fine-tune layers": train.get("fine_tune_layers"),
        "seconds": round(run.duration, 1) if run.duration is not None else None,
        "created": datetime.fromtimestamp(run.created),
        "id": run.id,
    }


def bundle_bytes(run_id: str) -> bytes:
    """The run's share bundle: built when its button is clicked, not on every rerun."""
    return share.export_bundle(run_id, store=cache.store()).read_bytes()


def report_bytes(run_id: str) -> bytes:
    return report.run_report_html(run_id, store=cache.store()).encode("utf-8")


def history(run) -> pd.DataFrame:
    frame = pd.DataFrame(cache.store().get_history(run.id, phase="train"))  # the head's curves
    if frame.empty:
        return frame
    frame["run"] = short_label(run)
    return frame


st.title(":material/table_chart: Runs")

with st.expander("Import a run bundle", icon=":material/upload_file:"):
    st.caption(
        "A classmate's `classifier-lab-run-<id>.zip` (the **Share bundle** button below). It is checked "
        "before anything is stored: a damaged or unsafe bundle is refused with the reason."
    )
    upload = st.file_uploader("Run bundle (.zip)", type=["zip"], key="runs_import_file")
    if st.button("Import", icon=":material/upload:", disabled=upload is None, key="runs_import"):
        with guard("Importing the bundle"):
            imported_id = share.import_bundle(upload, store=cache.store(), name=upload.name)
            st.session_state["runs_imported"] = st.session_state["runs_select"] = imported_id
    if st.session_state.get("runs_imported"):
        imported_id = st.session_state["runs_imported"]
        st.success(
            f"Imported as run `{imported_id}`: selected under **One run** below "
            f"([link to it]({link_url('run', imported_id)})).",
            icon=":material/check_circle:",
        )

with guard("Reading runs"):
    runs = cache.store().list_runs()
    experiment_names = {e.id: f"{e.name} ({e.kind})" for e in cache.store().list_experiments()}
if not runs:
    st.info("No runs yet: train one on the Train page.", icon=":material/info:")
    st.stop()

table = pd.DataFrame([run_row(r, experiment_names) for r in runs])
f1, f2, f3, f4 = st.columns([2, 1, 1, 1])
search = f1.text_input("Filter by name or id", key="runs_search", placeholder="e.g. mobilenet or lr=0.01")
statuses = f2.multiselect("Status", sorted(table["status"].unique()), key="runs_status")
archs = f3.multiselect("Architecture", sorted(table["architecture"].dropna().unique()), key="runs_arch")
groups = f4.multiselect("Experiment", sorted(table["experiment"].dropna().unique()), key="runs_experiment")
shown = table
if search:
    needle = search.lower()
    shown = shown[
        shown["name"].str.lower().str.contains(needle, regex=False)
        | shown["id"].str.contains(needle, regex=False)
        | shown["author"].fillna("").str.lower().str.contains(needle, regex=False)
    ]
if statuses:
    shown = shown[shown["status"].isin(statuses)]
if groups:
    shown = shown[shown["experiment"].isin(groups)]
if archs:
    shown = shown[shown["architecture"].isin(archs)]
st.dataframe(
    shown,
    hide_index=True,
    key="runs_table",
    column_config={
        "test accuracy": st.column_config.ProgressColumn(
            "test accuracy", format="percent", min_value=0, max_value=1
        ),
        "validation accuracy": st.column_config.NumberColumn(format="percent"),
        "validation cross-entropy": st.column_config.NumberColumn(format="%.3f"),
        "learning rate": st.column_config.NumberColumn(format="%g"),
        "seconds": st.column_config.NumberColumn("wall time (s)", format="%.1f"),
        "created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"),
    },
)
st.caption(f"{len(shown)} of {len(table)} runs · click a column header to sort")

by_label = {run_label(r): r for r in runs}
finished = [run_label(r) for r in runs if r.status == "finished"]

# -- compare --------------------------------------------------------------------------------------
st.subheader("Compare runs")
chosen = st.multiselect("Runs to overlay", list(by_label), default=finished[:2], key="runs_compare")
if chosen:
    c1, c2, c3 = st.columns(3)
    metric = c1.radio(
        "Metric", ["accuracy", "cross_entropy"], format_func=lambda m: m.replace("_", "-"), horizontal=True
    )
    split = c2.radio("Split", ["validation", "train"], horizontal=True, key="runs_split")
    smoothing = c3.slider("Smoothing", 0.0, 0.99, 0.6, step=0.01, key="runs_smoothing")
    selected = [by_label[label] for label in chosen]
    frames = [history(r) for r in selected]
    histories = (
        pd.concat([f for f in frames if not f.empty], ignore_index=True)
        if any(not f.empty for f in frames)
        else pd.DataFrame()
    )
    plot(charts.compare_curves(histories, metric, split, smoothing), key="compare_curves")
    summary = pd.DataFrame([{**run_row(r, experiment_names), "run": short_label(r)} for r in selected])
    left, right = st.columns(2)
    with left:
        plot(
            charts.metric_bars(summary, "test accuracy", "Test accuracy", "Accuracy (fraction correct)"),
            key="cmp_acc",
        )
    with right:
        phases = pd.DataFrame(
            [
                {"run": short_label(r), "phase": phase, "seconds": r.phases[phase]}
                for phase in PHASES  # pipeline order, so the stacks read left to right in time
                for r in selected
                if phase in r.phases
            ]
        )
        if phases.empty:
            phases = pd.DataFrame(columns=["run", "phase", "seconds"])
        plot(charts.phase_timings(phases), key="cmp_phases")
    st.dataframe(
        summary[["run", "status", "architecture", "weights", "learning rate", "steps", "test accuracy",
                 "validation accuracy", "validation cross-entropy", "seconds"]],
        hide_index=True,
        key="compare_table",
        column_config={
            "test accuracy": st.column_config.NumberColumn(format="percent"),
            "validation accuracy": st.column_config.NumberColumn(format="percent"),
        },
    )  # fmt: skip

# -- one run ---------------------------------------------------------------------------------------
st.subheader("One run")
if wanted := st.session_state.pop("runs_select", None):  # a run just imported
    st.session_state["runs_detail"] = next((k for k, r in by_label.items() if r.id == wanted), None)
label = st.selectbox("Run", list(by_label), key="runs_detail")
run = by_label[label]
res = RunResults.of(run)
st.markdown(
    f"{STATUS_ICONS.get(run.status, '')} **{run.name}** · `{run.id}` · {run.status}"
    + (f" · by {run.author}" if run.author else "")
    + (f" · :material/move_to_inbox: {origin_text(run)}" if run.imported else "")
)
if run.error:
    st.error(run.error, icon=":material/error:")
if res.accuracy_warnings:  # duplicates across splits or classes: the test accuracy overstates the model
    shown = "n/a" if res.test_accuracy is None else f"{res.test_accuracy:.1%}"
    st.warning(f"Test accuracy {shown}: " + " ".join(res.accuracy_warnings), icon=":material/content_copy:")
if run.status == "finished":  # test photos with near-duplicates in training (cached bottlenecks only)
    with guard("Checking the run's test photos against its training photos"):
        if note := health.leakage_note(health.run_leakage(run.id, store=cache.store()), res.test_accuracy):
            st.caption(f":material/content_copy: {note}")

actions = st.container(horizontal=True)
model = cache.model_file(run.id)
actions.download_button(
    "Download model.keras",
    data=model.read_bytes if model else b"",
    file_name=f"{run.name.replace(' ', '_').replace('=', '')}-{run.id}.keras",
    mime="application/octet-stream",
    icon=":material/download:",
    disabled=model is None,
    key="download_model",
)
shareable = model is not None and run.status == "finished"
actions.download_button(
    "Share bundle",
    data=partial(bundle_bytes, run.id),
    file_name=share.bundle_file_name(run.id),
    mime="application/zip",
    icon=":material/share:",
    disabled=not shareable,
    help="One .zip with the model, class names, metrics, model card and report, for another lab's "
    "Import box (or `python -m engine import FILE`)",
    key="download_bundle",
)
actions.download_button(
    "Download report (HTML)",
    data=partial(report_bytes, run.id),
    file_name=report.report_file_name("run", run.id),
    mime="text/html",
    icon=":material/description:",
    help="One self-contained page (charts, confusion, gallery, model card) that opens in any browser",
    key="download_report",
)
with actions.popover("Delete…", icon=":material/delete:", disabled=run.status == "running"):
    st.markdown(f"Delete **{run.name}** and its folder (model, metrics)? This cannot be undone.")
    if st.button("Yes, delete this run", type="primary", key="confirm_delete"):
        with guard("Deleting the run"):
            cache.store().delete_run(run.id)
            cache.forget_run(run.id)
            st.session_state.pop("runs_detail", None)
            st.toast(f"Deleted {run.name}", icon=":material/delete:")
            st.rerun()

tabs = st.tabs(
    ["Confusion matrix", "Per-class accuracy", "Misclassified test images", "Curves", "Config & environment"]
)
with tabs[0]:
    if res.confusion_matrix:
        plot(charts.confusion_matrix(res.confusion_matrix, res.class_names), key="detail_confusion")
    else:
        st.caption("No confusion matrix (the run did not finish or had no test images).")
with tabs[1]:
    per_class = res.per_class_accuracy
    frame = pd.DataFrame({"class": list(per_class), "accuracy": list(per_class.values())})
    plot(charts.per_class_accuracy(frame), key="detail_per_class")
with tabs[2]:
    wrong = res.misclassified
    if not wrong:
        st.caption("No misclassified test images." if res.test_count else "No test results.")
    cols = st.columns(6)
    for i, item in enumerate(wrong[:48]):
        with cols[i % 6]:
            try:  # an imported run's thumbnails travelled in its bundle; a local run's photos are on disk
                st.image(share.thumbnail_bytes(item) or cache.thumbnail(item["path"], 160), width="stretch")
            except Exception:  # the dataset may have moved since the run; say so instead of failing
                st.caption(f":material/broken_image: {Path(item['path']).name} is no longer readable")
            st.caption(f"true **{item['true']}** → {item['predicted']} ({item['probability']:.0%})")
with tabs[3]:
    hist = history(run)
    if hist.empty and run.status != "running":  # an ended run without history: say so, no empty charts
        st.caption(f"No training history: the run {run.status} before its first evaluation.")
    else:
        smooth_one = st.slider("Smoothing", 0.0, 0.99, 0.0, step=0.01, key="detail_smoothing")
        left, right = st.columns(2)
        with left:
            plot(charts.training_curves(hist, "accuracy", smooth_one), key="detail_acc")
        with right:
            plot(charts.training_curves(hist, "cross_entropy", smooth_one), key="detail_xent")
with tabs[4]:
    left, right = st.columns(2)
    left.markdown("**Config**")
    left.json(run.config)
    right.markdown("**Environment**")
    right.json(run.environment)
    if res.cache:
        right.markdown("**Bottleneck cache**")
        right.json(res.cache)
