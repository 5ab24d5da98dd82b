"""Experiments: learning-rate race, layer freezing, steps study and dataset comparison, one click each."""

from dataclasses import asdict

import pandas as pd
import streamlit as st

from dashboard import cache, charts, charts_lr
from dashboard.components import (
    copy_link,
    current_author,
    guard,
    job_header,
    job_progress,
    plot,
    query_selection,
    source_options,
)
from engine.jobs import queue as jobs
from engine.models import backbones
from engine.params import human_seconds, parse_list
from engine.runs import experiments, report
from engine.runs.retrain import RunConfig
from engine.training import lrfind, summaries
from engine.training.config import MAX_LEARNING_RATE, SCHEDULES, TrainConfig

POLL_SECONDS = 1.5
TRAIN = TrainConfig()  # a run's defaults (retrain.py's), read from the dataclass, never copied
RUN = RunConfig(source="demo")  # only its defaults are read
# a study trains several heads: a quarter of a single run's steps gives one click a result in minutes
STUDY_STEPS = TRAIN.steps // 4
STUDIES = {
    "lr_race": "Learning-rate race",
    "freezing": "Layer freezing",
    "steps": "Steps study",
    "datasets": "Dataset comparison",
}
FLAG_ICONS = {
    None: ":material/check_circle:",
    "diverged": ":material/error:",
    "collapsed": ":material/trending_down:",
    "oscillating": ":material/ssid_chart:",
    "overconfident": ":material/warning:",
}
PERCENT_COLUMNS = (
    "final_validation_accuracy",
    "test_accuracy",
    "head_test_accuracy",
    "validation_accuracy",
    "train_accuracy",
)
HEADERS = {
    "name": "Run", "learning_rate": "Learning rate", "schedule": "Schedule", "status": "Status",
    "final_validation_accuracy": "Validation acc.", "test_accuracy": "Test acc.",
    "steps_to_target": "Steps to target", "seconds_to_target": "Time to target",
    "final_cross_entropy": "Final cross-entropy", "steps": "Steps", "train_seconds": "Train time",
    "seed": "Seed",
    "flag": "Flag", "explanation": "What happened", "fine_tune_layers": "Unfrozen layers",
    "head_test_accuracy": "Head-only test acc.", "trainable_parameters": "Trainable params",
    "seconds_per_step": "Time per step", "total_seconds": "Total time",
    "source": "Source", "classes": "Classes", "images": "Images", "per_class_accuracy": "Per-class acc.",
    "checkpoint": "Checkpoint", "step": "Step", "validation_accuracy": "Validation acc.",
    "train_accuracy": "Train acc.", "note": "Note",
}  # fmt: skip


def table(rows: list[dict], columns) -> pd.DataFrame:
    """Rows as a display table: percentages, "never" for a target not reached, readable headers."""
    shown = []
    for row in rows:
        cells = {}
        for key in columns:
            value = row.get(key)
            if key.endswith("_to_target") and value is None and "steps" in row:
                cells[HEADERS.get(key, key)] = summaries.NEVER
            elif key == "flag":
                cells[HEADERS[key]] = value or "—"
            elif "seconds" in key:  # times for people: "39 ms", "< 1 ms", never "0.0386"
                cells[HEADERS.get(key, key)] = human_seconds(value) if value is not None else ""
            else:
                cells[HEADERS.get(key, key)] = summaries.display(value, key in PERCENT_COLUMNS)
        shown.append(cells)
    return pd.DataFrame(shown)


def settings(study: str) -> dict | None:
    """The experiment form; returns job params when Start is pressed."""
    options = source_options()
    if study == "datasets":
        picked = st.multiselect("Datasets (two or more)", list(options), format_func=options.get)
    else:
        picked = [st.selectbox("Dataset", list(options), format_func=options.get)]
    names = backbones.list_backbones()
    architecture = st.selectbox("Backbone", names, index=names.index(RUN.architecture))
    weights = st.radio(
        "Weights",
        backbones.WEIGHTS_CHOICES,
        index=backbones.WEIGHTS_CHOICES.index(RUN.weights),
        horizontal=True,
    )
    c1, c2 = st.columns(2)
    steps = c1.number_input("Training steps", 1, 100_000, STUDY_STEPS, step=100)
    if study == "lr_race":
        seeds = c2.number_input(
            "Seeds per rate",
            1,
            experiments.MAX_SEEDS,
            experiments.DEFAULT_SEEDS,
            help="each rate trains once per seed (new initial weights and batch order, same data): "
            "a difference between rates counts only if it is larger than the spread of the seeds",
        )
    else:
        schedule = c2.selectbox("Learning-rate schedule", SCHEDULES, index=SCHEDULES.index(TRAIN.schedule))
    seed = c1.number_input("Seed", 0, 2**31 - 1, TRAIN.seed, help="the same seed gives the same curves")
    eval_interval = c2.number_input("Eval interval (steps)", 1, 10_000, TRAIN.eval_interval)
    if study == "lr_race":
        schedules = st.multiselect(
            "Schedules to race",
            SCHEDULES,
            default=[TRAIN.schedule],
            help="each rate trains with each schedule; the rate-against-step chart shows what they do",
        )
        schedule = schedules[0] if schedules else TRAIN.schedule
    params: dict = {"study": study}
    train = {
        "steps": int(steps),
        "schedule": schedule,
        "seed": int(seed),
        "eval_interval": int(eval_interval),
    }
    if study == "lr_race":
        rates = st.text_input("Learning rates", ", ".join(f"{r:g}" for r in experiments.DEFAULT_RATES))
        target = st.slider("Target validation accuracy", 0.05, 1.0, experiments.DEFAULT_TARGET, 0.05)
        params.update(rates_text=rates, target=float(target), seeds=int(seeds), schedules=schedules)
    else:
        rate = st.number_input("Learning rate", 0.0001, MAX_LEARNING_RATE, TRAIN.learning_rate, format="%.4f")
        train["learning_rate"] = float(rate)
    if study == "freezing":
        layers = st.text_input(
            "Unfrozen top layers (0 = head only)", ", ".join(map(str, experiments.DEFAULT_LAYERS))
        )
        train["fine_tune_steps"] = int(st.number_input("Fine-tune steps", 1, 10_000, TRAIN.fine_tune_steps))
        params["layers_text"] = layers
    start = st.button("Start experiment", type="primary", icon=":material/play_arrow:")
    find = study == "lr_race" and st.button(
        "Run the learning-rate finder",
        icon=":material/query_stats:",
        help="one short run whose rate grows from 1e-5 to 10: where the loss falls fastest is a good rate",
    )
    if not (start or find):
        return None
    if study == "lr_race":
        params["rates"] = parse_list(params.pop("rates_text"), float, "Learning rates")
        if find:  # the finder sweeps rates itself; the race's rates are only marked on its curve
            params = {"study": "lr_find", "rates": params["rates"], "steps": lrfind.DEFAULT_STEPS}
    if study == "freezing":
        params["layers"] = parse_list(params.pop("layers_text"), int, "Layer counts")
    if study == "datasets":
        params["sources"] = picked
    source = picked[0] if picked else "demo"
    config = RunConfig(
        source=source,
        architecture=architecture,
        weights=weights,
        train=TrainConfig(**train),
        author=current_author(),  # the sidebar's "Your name": each run of the study is theirs
    )
    params["config"] = asdict(config)
    return params


def render(experiment_id: str, key: str, live: bool = False) -> None:
    """Curves, result table, flags and charts of one experiment (live: as far as it got)."""
    store = cache.store()
    exp = store.get_experiment(experiment_id)
    rows = experiments.experiment_table(experiment_id, store)
    curves = pd.DataFrame(experiments.experiment_curves(experiment_id, store))
    if exp.kind == "lr_race":
        render_race(experiment_id, exp, rows, curves, key, live)
    elif exp.kind == "freezing":
        st.dataframe(table(rows, experiments.FREEZING_COLUMNS[:-1]), hide_index=True)
        frame = pd.DataFrame([{"run": r["name"], **r} for r in rows])
        if not frame.empty and not live:
            left, right = st.columns(2)
            with left:
                plot(charts.metric_bars(frame, "test_accuracy", "Test accuracy", "Accuracy"), key=f"{key}_a")
            with right:
                plot(
                    charts.metric_bars(frame, "seconds_per_step", "Time per step", "Seconds"), key=f"{key}_s"
                )
        st.caption("Unfreezing layers trains on images end to end, so it bypasses the bottleneck cache.")
    else:
        plot(charts.experiment_curves(curves, "accuracy"), key=f"{key}_acc")
        st.dataframe(table(rows, experiments.DATASET_COLUMNS[:-2]), hide_index=True)
        details = experiments.dataset_details(experiment_id, store)
        per_class = [
            {"run": d["name"], "class": c, "accuracy": a}
            for d in details
            for c, a in d["per_class_accuracy"].items()
            if a is not None
        ]
        if per_class:
            plot(charts.per_class_accuracy(pd.DataFrame(per_class)), key=f"{key}_pc")
        for column, d in zip(st.columns(max(1, len(details))), details, strict=False):
            with column:
                st.markdown(f"**{d['name']}**")
                if d["confusion_matrix"]:
                    plot(
                        charts.confusion_matrix(d["confusion_matrix"], d["class_names"]),
                        key=f"{key}_{d['run_id']}",
                    )
    if not live:
        csv_col, report_col, link_col = st.columns(3)
        csv_col.download_button(
            "Download CSV",
            experiments.experiment_csv(experiment_id, store),
            file_name=f"experiment-{experiment_id}.csv",
            mime="text/csv",
            icon=":material/download:",
            key=f"{key}_csv",
        )
        # built when clicked (a report inlines plotly.js: ~5 MB), not on every rerun
        report_col.download_button(
            "Download report (HTML)",
            lambda: report.experiment_report_html(experiment_id, store),
            file_name=report.report_file_name("experiment", experiment_id),
            mime="text/html",
            icon=":material/description:",
            key=f"{key}_report",
            help="One file that opens in any browser with no network: curves, table and verdicts",
        )
        with link_col:
            copy_link("experiment", experiment_id, key=f"{key}_link")


def race_status(summary: dict, running: bool) -> str:
    """One line that follows the race's state: "Race running: 3 of 12 runs done"."""
    done, planned = summary["done"], summary["planned"]
    if running:
        return f"Race running: {done} of {planned} runs done"
    if done < planned:  # cancelled or failed part-way
        return f"Race stopped: {done} of {planned} runs done"
    return f"Race finished: {done} runs, {summary['seeds']} seed(s) per setting"


def group_table(groups: list[dict]) -> pd.DataFrame:
    """One row per setting: its seeds' mean, range and spread, the target and what went wrong."""
    shown = []
    for g in groups:
        acc, test, xent = g["validation_accuracy"], g["test_accuracy"], g["cross_entropy"]
        reached = g["seconds_to_target"]
        shown.append(
            {
                "Setting": g["group"],
                "Seeds done": f"{g['finished']} of {g['runs']}",
                "Validation acc. (mean)": summaries.display(acc["mean"], percent=True),
                "Range over seeds": f"{acc['min']:.0%} – {acc['max']:.0%}" if acc["n"] else "",
                "± 1 sd (points)": f"{acc['sd'] * 100:.1f}" if acc["n"] > 1 else "",
                "Test acc. (mean)": summaries.display(test["mean"], percent=True),
                "Reached target": f"{g['reached']} of {g['finished']}",
                "Time to target (mean)": human_seconds(reached["mean"]) if g["reached"] else summaries.NEVER,
                "Final cross-entropy (mean)": summaries.display(xent["mean"]),
                "Flags": ", ".join(g["flags"]) or "—",
            }
        )
    return pd.DataFrame(shown)


def render_race(experiment_id: str, exp, rows, curves: pd.DataFrame, key: str, live: bool = False) -> None:
    """A race: curves as mean and band per setting, the schedules, the table per setting and the verdict."""
    summary = experiments.race_summary(experiment_id, cache.store())
    if not live:  # while it runs, the job's header says how far it got
        st.markdown(f"**{race_status(summary, running=False)}**")
    target = exp.config.get("target")
    left, right = st.columns(2)
    with left:
        plot(charts_lr.band_curves(curves, "accuracy", target=target), key=f"{key}_acc")
    with right:
        plot(charts_lr.schedule_curves(pd.DataFrame(summary["schedule_curves"])), key=f"{key}_sched")
    left, right = st.columns(2)
    with left:
        plot(charts_lr.band_curves(curves, "cross_entropy"), key=f"{key}_xent")
        st.caption("Line: the mean of a setting's seeds; band: its lowest to highest seed at each step.")
    with right:
        verdict = summary["separation"]
        st.markdown("**Do the settings differ?**")
        for line in verdict["lines"]:
            st.markdown(f"- {line}")
        st.caption(f"Rule: {verdict['rule']}")
        if verdict["warning"]:
            st.warning(verdict["warning"], icon=":material/straighten:")
    st.dataframe(group_table(summary["groups"]), hide_index=True)
    by_group: dict[str, list[dict]] = {}
    for row in rows:
        by_group.setdefault(row.get("group") or row["name"], []).append(row)
    for group, members in by_group.items():
        # one line per setting: a flagged seed's explanation if any (that is the lesson), else the first
        shown = next((r for r in members if r["flag"]), members[0])
        seeds = f" ({shown['name']})" if len(members) > 1 else ""
        st.markdown(f"{FLAG_ICONS.get(shown['flag'], '')} **{group}**{seeds}: {shown['explanation']}")
    with st.expander(f"Every run ({len(rows)})"):
        st.dataframe(table(rows, experiments.RACE_COLUMNS[:-2]), hide_index=True)


def finder_jobs() -> tuple:
    """(the finder job running now or this session's, the newest finished finder job); either may be None."""
    own = st.session_state.get("lrfind_job")
    finders = [
        j
        for j in jobs.list_jobs(store=cache.store())
        if j.kind == "experiment" and j.params.get("study") == "lr_find"
    ]
    active = [j for j in finders if j.active and j.id == own] or [j for j in finders if j.active]
    current = active[0] if active else next((j for j in finders if j.id == own), None)
    done = next((j for j in finders if j.status == "finished" and j.result), None)
    return current, done


@st.fragment(run_every=POLL_SECONDS)
def finder_monitor(job_id: str) -> None:
    """Progress and Cancel of a running finder; a full rerun once it has ended."""
    job = jobs.get_job(job_id, store=cache.store())
    job_header(job, f"**Learning-rate finder** · job `{job.id}` · {job.status}", key="cancel_lrfind")
    job_progress(job)
    if not job.active:
        st.rerun()


def finder_section() -> None:
    """The range test: the running job's progress, or the newest sweep's curve and suggested range."""
    current, done = finder_jobs()
    if current is None and done is None:
        return
    st.markdown("#### Learning-rate finder")
    if current is not None and current.active:
        finder_monitor(current.id)
    elif current is not None and current.status != "finished":
        st.error(current.error or f"The finder {current.status}.", icon=":material/error:")
    if done is None:
        return
    found = done.result
    plot(charts_lr.finder(found, found.get("race_rates") or ()), key="lrfind_chart")
    if found.get("suggested"):
        low, high = found["suggested"]
        st.markdown(
            f"**Suggested learning rates: {low:.2g} to {high:.2g}** — steepest descent at "
            f"{found['steepest']:.2g}, lowest smoothed loss at {found['minimum']:.2g} "
            f"({found['name']}, {found['train_images']} training photos, {len(found['rates'])} steps, "
            f"{human_seconds(found['seconds'])})."
        )
    else:
        st.markdown("**No suggestion**: the loss diverged too soon; start the sweep at a smaller rate.")
    ended = (
        "stopped when the loss passed 4x its minimum" if found["stopped_early"] else "ran to the last rate"
    )
    st.caption(f"{found['rule']} The sweep {ended}. Dotted lines: the race's rates.")


def watched_job(study: str):
    """This session's experiment job, or one running now (a refresh or a second tab finds it)."""
    own = st.session_state.get("experiment_job")
    active = [j for j in jobs.list_jobs(active_only=True, store=cache.store()) if j.kind == "experiment"]
    mine = [j for j in active if j.id == own] or [j for j in active if j.params.get("study") == study]
    mine = [j for j in mine if j.params.get("study") != "lr_find"]  # the finder is followed on its own
    if mine:
        return mine[0]
    return jobs.get_job(own, store=cache.store()) if own else None


@st.fragment(run_every=POLL_SECONDS)
def monitor(job_id: str) -> None:
    """Live progress and overlaid curves of a running experiment; a full rerun once it has ended."""
    job = jobs.get_job(job_id, store=cache.store())
    label = experiments.KINDS.get(job.params.get("study"), "Experiment")
    experiment_id = (job.extra or {}).get("experiment_id") or (job.result or {}).get("experiment_id")
    status = f"**{label}** · job `{job.id}` · {job.status}"
    if experiment_id and job.params.get("study") == "lr_race":
        summary = experiments.race_summary(experiment_id, cache.store())
        status = f"**{race_status(summary, job.active)}** · job `{job.id}`"
    job_header(job, status, key="cancel_experiment")
    job_progress(job)
    if experiment_id:
        render(experiment_id, "live", live=True)
    if not job.active:
        st.rerun()


def steps_study() -> None:
    """Accuracy at chosen steps, read from one finished run's history (no retraining)."""
    runs = [r for r in cache.store().list_runs() if r.status == "finished"]
    if not runs:
        st.info("No finished runs yet: train one on the Train page or start a race.", icon=":material/info:")
        return
    labels = {r.id: f"{r.name} · {r.id}" for r in runs}
    run_id = st.selectbox("Run", list(labels), format_func=labels.get)
    text = st.text_input("Steps", ", ".join(map(str, experiments.DEFAULT_CHECKPOINTS)))
    with guard("Reading the run's history"):
        rows = experiments.steps_study(run_id, parse_list(text, int, "Steps"), cache.store())
        frame = pd.DataFrame(rows).astype({"validation_accuracy": float, "test_accuracy": float})
        plot(charts.accuracy_at_steps(frame), key="steps_chart")
        columns = ("checkpoint", "step", "validation_accuracy", "test_accuracy", "note")
        st.dataframe(table(rows, columns), hide_index=True)
        st.download_button(
            "Download CSV", summaries.to_csv(rows), file_name=f"steps-{run_id}.csv", mime="text/csv"
        )


def open_linked_experiment() -> None:
    """Open the experiment a `?experiment=ID` link names, once per id: its study and its results."""
    wanted = st.query_params.get("experiment")
    if not wanted or st.session_state.get("experiment_link_opened") == wanted:
        return
    st.session_state["experiment_link_opened"] = wanted
    kinds = {e["id"]: e["kind"] for e in experiments.list_experiments(cache.store())}
    picked = query_selection("experiment", kinds)
    if picked is None:  # the id is not echoed: it is whatever the address said
        st.warning("The linked experiment is not in this lab.", icon=":material/link_off:")
        return
    st.session_state["experiment_study"] = kinds[picked]
    st.session_state["experiment_pick"] = picked


st.title(":material/science: Experiments")
st.caption(
    "Compare settings on identical data: every run of an experiment trains on the same cached "
    "bottlenecks and split, and each run is stored like any other (see Runs)."
)
with guard("Opening the linked experiment"):
    open_linked_experiment()
study = st.segmented_control(
    "Study", list(STUDIES), format_func=STUDIES.get, default="lr_race", key="experiment_study"
)
study = study or "lr_race"
if study == "steps":
    steps_study()
    st.stop()

form_col, watch_col = st.columns([1, 2], gap="large")
with form_col, st.container(border=True):
    st.markdown(f"**{STUDIES[study]}**")
    with guard("Starting the experiment"):
        params = settings(study)
        if params is not None:
            started = jobs.start_job("experiment", params, store=cache.store())
            st.session_state["lrfind_job" if params["study"] == "lr_find" else "experiment_job"] = started

with watch_col, guard("Following the experiment"):
    job = watched_job(study)
    if job is not None and job.active:
        monitor(job.id)
    elif job is not None and job.status != "finished":
        st.error(job.error or f"The experiment {job.status}.", icon=":material/error:")
    past = [e for e in experiments.list_experiments(cache.store()) if e["kind"] == study]
    running = (job.extra or {}).get("experiment_id") if job is not None and job.active else None
    past = [e for e in past if e["id"] != running]
    finished = (job.result or {}).get("experiment_id") if job is not None and not job.active else None
    if finished and st.session_state.get("experiment_shown_job") != job.id:
        # a job of this session just ended: show its experiment once, then let the user pick
        st.session_state["experiment_shown_job"] = job.id
        if finished in {e["id"] for e in past}:
            st.session_state["experiment_pick"] = finished
    if past:
        labels = {e["id"]: f"{e['name']} · {e['runs']} runs · {e['id']}" for e in past}
        if st.session_state.get("experiment_pick") not in labels:  # e.g. a link to one still running
            st.session_state.pop("experiment_pick", None)
        chosen = st.selectbox("Results of", list(labels), format_func=labels.get, key="experiment_pick")
        render(chosen, "done")
    elif job is None or not job.active:  # a job starting up has no experiment yet: the monitor speaks
        st.info("No experiments of this kind yet. Configure one and press **Start experiment**.")
    if study == "lr_race":
        finder_section()
