"""Train: configure a retrain run, start it as a background job, follow it live, see its results."""

from dataclasses import asdict

import pandas as pd
import streamlit as st

from dashboard import cache, charts
from dashboard.components import (
    STATUS_ICONS,
    current_author,
    default_run_name,
    fmt_seconds,
    guard,
    job_header,
    job_progress,
    page_link,
    plot,
    source_options,
)
from engine.jobs import queue as jobs
from engine.models import backbones
from engine.runs.retrain import RunConfig
from engine.training.config import MAX_LEARNING_RATE, OPTIMIZERS, TrainConfig

POLL_SECONDS = 1.0
# the form's defaults are a run's own (retrain.py's), read from the config dataclasses, never copied
TRAIN = TrainConfig()
RUN = RunConfig(source="demo")  # only its defaults are read
WEIGHTS_LABELS = {"imagenet": "ImageNet (pretrained)", "random": "Random (no pretraining)"}


def start(config: RunConfig) -> None:
    job_id = jobs.start_job("retrain", asdict(config), store=cache.store())
    st.session_state["train_job"] = job_id


def watched_job_id() -> str | None:
    """The job this session follows: its own while it runs, else a running one (so a refresh or a
    second tab finds it again), else its own finished one."""
    active = [j for j in jobs.list_jobs(active_only=True, store=cache.store()) if j.kind == "retrain"]
    own = st.session_state.get("train_job")
    if own in {j.id for j in active} or not active:
        return own
    if len(active) > 1:
        labels = {j.id: f"{j.params.get('name') or j.params.get('architecture')} · {j.id}" for j in active}
        chosen = st.selectbox("Running jobs", list(labels), format_func=labels.get, key="train_pick_job")
    else:
        chosen = active[0].id
    st.session_state["train_job"] = chosen
    return chosen


def history_frame(run_id: str | None, phase: str = "train") -> pd.DataFrame:
    """The run's history rows of one phase ("train": the head; "fine_tune": end to end)."""
    if not run_id:
        return pd.DataFrame()
    frame = pd.DataFrame(cache.store().get_history(run_id))
    if not frame.empty and "phase" in frame:
        frame = frame[frame["phase"] == phase]
    return frame


def curves(run_id: str | None, key: str, waiting: bool = True) -> None:
    """Accuracy and cross-entropy of the head and, once it has rows, of the fine-tuning.

    With `waiting` False (a run that has ended) nothing is drawn where there is no history.
    """
    for phase, title in (("train", None), ("fine_tune", "Fine-tuning (steps count from its start)")):
        history = history_frame(run_id, phase)
        if history.empty and (phase == "fine_tune" or not waiting):
            continue
        if title:
            st.markdown(f"**{title}**")
        left, right = st.columns(2)
        with left:
            plot(charts.training_curves(history, "accuracy"), key=f"{key}_{phase}_acc")
        with right:
            plot(charts.training_curves(history, "cross_entropy"), key=f"{key}_{phase}_xent")


def failure(job) -> None:
    """Why a run stopped, and what to try instead (no empty charts, no compare prompt)."""
    error = job.error or f"The job {job.status}."
    st.error(error, icon=":material/error:")
    steps = ["Fix what the message names, then press **Start training** again."]
    if "weights" in error.lower():
        steps.append("Or choose **Random** weights: they need no download (accuracy will be lower).")
    elif any(word in error.lower() for word in ("network", "offline", "download")):  # a dataset download
        steps.append("Offline, use a dataset already on this machine (Data page) or the generated demo set.")
    if job.status == "interrupted":
        steps = ["The worker stopped without finishing (the lab was restarted?): start the run again."]
    st.markdown("\n".join(f"- {step}" for step in steps))
    log = jobs.job_log(job.id, store=cache.store())
    if log.strip():
        with st.expander("The worker's log"):
            st.code(log[-4000:], language=None)


@st.fragment(run_every=POLL_SECONDS)
def monitor(job_id: str) -> None:
    """Polled view of a running job; hands over to a full rerun once the job has ended."""
    job = jobs.get_job(job_id, store=cache.store())
    name = job.params.get("name") or job.params.get("architecture", "")
    if job_header(job, f"**{name}** · job `{job.id}` · {job.status}", key="cancel_job"):
        st.toast("Cancelling… the worker stops at its next check", icon=":material/stop_circle:")
    if job.cancel_requested and job.active:
        st.caption("Cancel requested: waiting for the worker to stop.")
    job_progress(job)
    curves(job.run_id, "live")
    if not job.active:
        st.rerun()  # the finished view needs no polling


def results(job_id: str) -> None:
    """The outcome of a finished job: test accuracy, per-class accuracy and the confusion matrix."""
    job = jobs.get_job(job_id, store=cache.store())
    name = job.params.get("name") or job.params.get("architecture", "")
    st.markdown(f"{STATUS_ICONS.get(job.status, '')} **{name}** · job `{job.id}` · {job.status}")
    if job.status in ("failed", "interrupted"):
        failure(job)
        return
    if job.status == "cancelled":
        st.warning(job.error or "The run was cancelled.", icon=":material/cancel:")
    if not job.run_id:
        return
    run = cache.store().get_run(job.run_id)
    res = run.results
    if run.status == "finished":
        acc = res.get("test_accuracy")
        final = res.get("final", {})
        cache_stats = res.get("cache", {})
        m = st.columns(4)
        m[0].metric(
            "Test accuracy",
            f"{acc:.1%}" if acc is not None else "—",
            help=f"{res.get('test_count', 0)} images",
        )
        val = final.get("validation_accuracy")
        m[1].metric("Validation accuracy", f"{val:.1%}" if val is not None else "—")
        m[2].metric(
            "Cache hits",
            f"{cache_stats.get('hits', 0)} of {cache_stats.get('hits', 0) + cache_stats.get('misses', 0)}",
            help="Bottleneck cache: feature vectors reused from earlier runs / images in the dataset",
        )
        m[3].metric("Time", fmt_seconds(run.duration), help="Wall time of the whole run")
    curves(run.id, "done", waiting=False)
    if res.get("per_class_accuracy"):
        left, right = st.columns(2)
        frame = pd.DataFrame(
            {"class": list(res["per_class_accuracy"]), "accuracy": list(res["per_class_accuracy"].values())}
        )
        with left:
            plot(charts.per_class_accuracy(frame), key="done_per_class")
        with right:
            plot(
                charts.confusion_matrix(res["confusion_matrix"], res.get("class_names", [])),
                key="done_confusion",
            )
    if res.get("fine_tune"):
        st.info(res["fine_tune"]["note"], icon=":material/info:")
    if run.status == "finished":
        page_link("dashboard/runs.py", "Compare it with other runs", ":material/table_chart:")


st.title(":material/model_training: Train")
st.caption(
    "Retrain a softmax head on a backbone's bottleneck features (retrain.py's knobs and defaults). "
    "Training runs in a background worker: leave the page, refresh, or open a second tab — it keeps going."
)

form_col, watch_col = st.columns([1, 2], gap="large")
with form_col, st.container(border=True):
    st.markdown("**Configure a run**")
    options = source_options()
    source = st.selectbox("Dataset", list(options), format_func=options.get)
    names = backbones.list_backbones()
    # the Architectures page hands over a backbone and a freezing depth through session_state
    preset = st.session_state.get("train_architecture") or RUN.architecture
    architecture = st.selectbox("Backbone", names, index=names.index(preset) if preset in names else 0)
    weights = st.radio(
        "Weights",
        backbones.WEIGHTS_CHOICES,
        index=backbones.WEIGHTS_CHOICES.index(RUN.weights),
        format_func=lambda w: WEIGHTS_LABELS.get(w, w),
        horizontal=True,
    )
    c1, c2 = st.columns(2)
    learning_rate = c1.number_input(
        "Learning rate", 0.0001, MAX_LEARNING_RATE, TRAIN.learning_rate, step=0.005, format="%.4f"
    )
    steps = c2.number_input("Training steps", 1, 100_000, TRAIN.steps, step=100)
    batch_size = c1.number_input("Batch size", 1, 10_000, TRAIN.batch_size, step=10)
    eval_interval = c2.number_input("Eval interval (steps)", 1, 10_000, TRAIN.eval_interval)
    validation = c1.number_input(
        "Validation %", 0, 90, st.session_state.get("validation_percentage", RUN.validation_percentage)
    )
    testing = c2.number_input(
        "Test %", 0, 90, st.session_state.get("testing_percentage", RUN.testing_percentage)
    )
    with st.expander("Advanced: optimizer, fine-tuning, distortions"):
        optimizer = st.radio(
            "Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(TRAIN.optimizer), horizontal=True
        )
        seed = st.number_input("Seed", 0, 2**31 - 1, TRAIN.seed)
        fine_tune_layers = st.number_input(
            "Fine-tune: unfreeze top layers",
            0,
            500,
            int(st.session_state.get("train_fine_tune_layers") or TRAIN.fine_tune_layers),
            help="0 trains the head only (fast, uses the cache)",
        )
        fine_tune_steps = st.number_input("Fine-tune steps", 1, 100_000, TRAIN.fine_tune_steps)
        flip = st.checkbox("Distort: flip left-right", TRAIN.flip_left_right)
        random_crop = st.slider("Distort: random crop %", 0, 50, TRAIN.random_crop)
        random_scale = st.slider("Distort: random scale %", 0, 50, TRAIN.random_scale)
        random_brightness = st.slider("Distort: random brightness %", 0, 50, TRAIN.random_brightness)
    # a fixed placeholder: a changing one would make Streamlit treat it as a new, empty widget
    name = st.text_input(
        "Run name (optional)", placeholder="default: backbone · dataset · time", key="train_name"
    )
    default_name = default_run_name(architecture, source)
    if not name.strip():
        st.caption(f"Empty: the run is named **{default_name}**.")
    if weights == "imagenet" and not backbones.weights_cached(architecture):
        path = backbones.weights_path(architecture)
        st.warning(
            f"ImageNet weights for **{architecture}** are not cached: `{path.name}` belongs in "
            f"`{path.parent}`. "
            "The run downloads it first, which needs the network; offline, copy the file there or choose "
            "**Random** weights.",
            icon=":material/cloud_download:",
        )
    submitted = st.button("Start training", type="primary", icon=":material/play_arrow:")

with watch_col:
    if submitted:
        with guard("Starting the run"):
            start(
                RunConfig(
                    source=source,
                    architecture=architecture,
                    weights=weights,
                    validation_percentage=int(validation),
                    testing_percentage=int(testing),
                    train=TrainConfig(
                        learning_rate=float(learning_rate),
                        steps=int(steps),
                        batch_size=int(batch_size),
                        eval_interval=int(eval_interval),
                        optimizer=optimizer,
                        seed=int(seed),
                        fine_tune_layers=int(fine_tune_layers),
                        fine_tune_steps=int(fine_tune_steps),
                        flip_left_right=flip,
                        random_crop=random_crop,
                        random_scale=random_scale,
                        random_brightness=random_brightness,
                    ),
                    name=name.strip() or default_name,
                    author=current_author(),  # the sidebar's "Your name"
                )
            )
    with guard("Following the job"):
        job_id = watched_job_id()
        if job_id is None:
            st.info(
                "No run in progress. Configure one on the left and press **Start training**.",
                icon=":material/info:",
            )
            latest = [j for j in jobs.list_jobs(store=cache.store(), limit=20) if j.kind == "retrain"]
            if latest:
                st.markdown("##### The latest run")
                results(latest[0].id)
        elif jobs.get_job(job_id, store=cache.store()).active:
            monitor(job_id)
        else:
            results(job_id)
