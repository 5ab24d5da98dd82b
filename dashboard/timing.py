"""CPU vs GPU: the timing lab, phase by phase, with this machine's timings beside imported ones."""

import inspect
import json

import pandas as pd
import streamlit as st

from dashboard import cache, charts
from dashboard.components import followed_job, guard, job_header, job_progress, plot
from engine.data import uploads
from engine.jobs import queue as jobs
from engine.models import backbones
from engine.timing import lab

POLL_SECONDS = 1.0
# the form's defaults are the timing lab's own (images, batch size, training steps, label)
LAB = {name: p.default for name, p in inspect.signature(lab.run_lab).parameters.items()}


def setup_label(report: dict, device: str) -> str:
    where = report["label"] + (" (imported)" if report.get("origin") == "imported" else "")
    return f"{where} · {device.upper()}"


def timings_frame(reports: list[dict]) -> pd.DataFrame:
    rows = [
        {
            "backbone": r["backbone"],
            "phase": lab.PHASE_LABELS.get(r["phase"], r["phase"]),
            "setup": setup_label(report, r["device"]),
            "per_item_ms": r["per_item_ms"],
        }
        for report in reports
        for r in report["timings"]
    ]
    return pd.DataFrame(rows)


def speedup_frame(reports: list[dict]) -> pd.DataFrame:
    rows = []
    for report in reports:
        for r in lab.speedups(report):
            label = r["backbone"] if len(reports) == 1 else f"{report['label']} · {r['backbone']}"
            rows.append({**r, "phase": lab.PHASE_LABELS[r["phase"]], "backbone": label})
    return pd.DataFrame(rows)


def machine_table(reports: list[dict]) -> None:
    rows = [
        {
            "label": r["label"],
            "origin": r.get("origin", "measured"),
            "CPU": r["machine"].get("cpu_model"),
            "cores": r["machine"].get("cpu_cores"),
            "GPUs": ", ".join(r["machine"].get("gpus") or []) or "none",
            "TensorFlow": r["machine"].get("tensorflow_version"),
            "CUDA (TF build)": r["machine"].get("cuda_version") or "—",
        }
        for r in reports
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


@st.fragment(run_every=POLL_SECONDS)
def monitor(job_id: str) -> None:
    job = jobs.get_job(job_id, store=cache.store())
    job_header(job, f"Timing lab · job `{job.id}` · {job.status}", key="timing_cancel")
    job_progress(job)
    if not job.active:
        st.rerun()


st.title(":material/speed: CPU vs GPU")
st.caption(
    "Time the same work on the CPU and, when TensorFlow sees one, the GPU: decoding, bottleneck extraction, "
    "head training, single-image and batch inference. Every timing records the machine it ran on."
)
facts = cache.basic_facts()
if not facts.get("nvidia_smi"):
    st.info(
        "No NVIDIA GPU on this machine: the lab measures the CPU only. Ask a classmate with a GPU to run it "
        "and export their timings, then import them in the sidebar to compare side by side.",
        icon=":material/memory:",
    )

form, view = st.columns([1, 2], gap="large")
with form, st.container(border=True):
    st.markdown("**Run the timing lab**")
    names = backbones.list_backbones()
    chosen = st.multiselect("Backbones", names, default=list(lab.DEFAULT_BACKBONES), key="timing_backbones")
    sources = {"demo": "Demo set (generated)"} | {str(p): k for k, p in uploads.stored_datasets().items()}
    source = st.selectbox("Images to decode", list(sources), format_func=sources.get, key="timing_source")
    images = st.slider("Images", 8, 128, LAB["images"], step=8, key="timing_images")
    batch = st.select_slider("Batch size", [1, 4, 8, 16, 32, 64], value=LAB["batch_size"], key="timing_batch")
    steps = st.select_slider(
        "Head training steps", [50, 100, 200, 500, 1000], value=LAB["train_steps"], key="timing_steps"
    )
    label = st.text_input("Name this machine", value=LAB["label"], key="timing_label")
    if st.button("Start timing", type="primary", icon=":material/timer:", disabled=not chosen):
        params = {
            "backbone_names": chosen,
            "source": source,
            "images": images,
            "batch_size": batch,
            "train_steps": steps,
            "label": label or LAB["label"],
        }
        with guard("Starting the timing lab"):
            st.session_state["timing_job"] = jobs.start_job("timing", params, store=cache.store())
    st.caption(
        "Backbones use random weights: timing does not depend on weight values, and nothing downloads."
    )

with st.sidebar, st.expander("Import a classmate's timings", icon=":material/upload_file:"):
    upload = st.file_uploader("Timings JSON", type=["json"], key="timing_upload")
    their = st.text_input("Label", value="", placeholder="e.g. Sam's RTX 3060", key="timing_import_label")
    if upload is not None and st.button("Import", key="timing_import"):
        with guard("Importing timings"):
            report = lab.import_timings(upload.getvalue(), label=their or None)
            st.success(f"Imported “{report['label']}” ({len(report['timings'])} timings)")

with view:
    job = None
    with guard("Following the job"):
        job = followed_job("timing", "timing_job")
        if job is not None and job.active:
            monitor(job.id)
        elif job is not None and job.status != "finished":
            st.error(job.error or f"The timing lab {job.status}.", icon=":material/error:")
    reports = lab.list_timings()
    timing_now = job is not None and job.active
    if timing_now:
        where = "the first timings appear here" if not reports else "its report joins the list below"
        st.info(f"Timing now: {where} when the lab finishes.", icon=":material/timer:")
    if not reports:
        if not timing_now:
            st.info("No timings yet: start the lab, or import a classmate's file.", icon=":material/info:")
        st.stop()
    titles = {r["id"]: f"{r['label']} · {r['id']}" for r in reports}
    default = [reports[0]["id"]] + [r["id"] for r in reports[1:] if r.get("origin") == "imported"][:2]
    picked = st.multiselect("Timings to show", list(titles), default=default, format_func=titles.get)
    shown = [r for r in reports if r["id"] in picked]
    if not shown:
        st.stop()
    machine_table(shown)
    speed = speedup_frame(shown)
    plot(charts.phase_speedups(speed), key="timing_speedups")
    frame = timings_frame(shown)
    for name in dict.fromkeys(frame["backbone"]):
        plot(charts.phase_times(frame[frame["backbone"] == name], name), key=f"timing_{name}")
    st.markdown("**Why the GPU helps, or does not**")
    for report in shown:
        st.markdown(f"*{report['label']}*")
        st.markdown("\n".join(f"- {note}" for note in lab.explain(report)))
    st.download_button(
        "Export the first shown timings (for a classmate)",
        data=json.dumps(shown[0], indent=2),
        file_name=f"timings-{shown[0]['id']}.json",
        mime="application/json",
        icon=":material/download:",
    )
