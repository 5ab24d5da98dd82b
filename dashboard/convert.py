"""Convert & compare: export a run to TFLite/ONNX/SavedModel/TensorRT, download, and measure every format."""

import pandas as pd
import streamlit as st

from dashboard import cache, charts
from dashboard.components import (
    followed_job,
    guard,
    job_header,
    job_progress,
    plot,
    query_selection,
    run_label,
)
from engine.export import compare, convert, package
from engine.export.runtimes import FORMATS
from engine.jobs import queue as jobs
from engine.params import human_seconds

POLL_SECONDS = 1.0
FORMAT_HELP = {
    "keras": "the run's own model.keras",
    "savedmodel": "TensorFlow SavedModel (TF Serving, TF.js converter)",
    "tflite-fp32": "TFLite, float32: same numbers as Keras",
    "tflite-fp16": "TFLite, float16 weights: half the size",
    "tflite-dynamic": "TFLite, int8 weights, float activations",
    "tflite-int8": "TFLite, full integer (calibrated on the run's training images): Coral / MCUs",
    "onnx": "ONNX (tf2onnx), runs in ONNX Runtime",
    "tensorrt-fp32": "TensorRT through ONNX Runtime, FP32 (NVIDIA GPU)",
    "tensorrt-fp16": "TensorRT through ONNX Runtime, FP16 (NVIDIA GPU)",
}
COLUMNS = {
    "format": "Format",
    "size_mb": "Size (MB)",
    "load_seconds": "Load (s)",
    "latency_p50_ms": "p50 (ms)",
    "latency_p95_ms": "p95 (ms)",
    "throughput_ips": "Batch (img/s)",
    "accuracy": "Test accuracy",
    "agreement": "Agrees with Keras",
    "max_prob_diff": "Max |Δp|",
    "backend": "Runtime",
}


def trt_panel() -> None:
    status = cache.tensorrt_status()
    if status["available"]:
        st.success(
            "TensorRT can run here (ONNX Runtime's TensorRT provider).", icon=":material/check_circle:"
        )
        return
    st.warning("**TensorRT is not available here.** Missing:", icon=":material/memory:")
    st.markdown("\n".join(f"- {why}" for why in status["missing"]))
    st.caption(f"Route: {status['route']}. TensorRT formats are skipped, with this reason, when converting.")


@st.fragment(run_every=POLL_SECONDS)
def monitor(job_id: str) -> None:
    job = jobs.get_job(job_id, store=cache.store())
    formats = ", ".join(job.params.get("formats") or [])
    job_header(job, f"Converting **{job.params.get('run_id')}** to {formats}", key="convert_cancel")
    job_progress(job)
    if not job.active:
        st.rerun()


def exports_panel(run_id: str) -> None:
    with guard("Reading the exports"):
        manifests = convert.list_exports(run_id, store=cache.store())
        st.markdown("**Exports of this run**")
        st.caption(
            "Each download is a zip named after the run and format: the model, `labels.txt` (the class "
            "names, in output order) and a README with the lines that load it. ONNX models also carry "
            "their labels in their metadata."
        )
        for m in manifests:
            fmt = m["format"]
            cols = st.columns([2, 1, 1, 2], vertical_alignment="center")
            cols[0].markdown(f"`{fmt}` · {FORMAT_HELP.get(fmt, '')}")
            cols[1].markdown(f"{m['size_bytes'] / 1e6:.2f} MB")
            cols[2].markdown(human_seconds(m.get("seconds")), help="time to convert")
            if fmt not in package.PACKAGE_FORMATS:
                continue  # TensorRT engines are built for one GPU: download the ONNX file instead
            file_name = package.package_name(run_id, fmt)
            cols[3].download_button(
                f"Download {fmt}",
                # built when clicked (checked against the recorded hashes then), not on every rerun
                data=lambda fmt=fmt: package.download_package(run_id, fmt, store=cache.store())[1],
                file_name=file_name,
                mime="application/zip",
                help=file_name,
                key=f"dl_{fmt}",
                icon=":material/download:",
                on_click="ignore",
            )


def comparison_panel(run_id: str, measuring: bool = False) -> None:
    """The comparison of `run_id`'s formats; `measuring`: a job is measuring them right now."""
    if measuring:
        st.info(
            "Measuring the formats now: the comparison appears here when the job finishes.",
            icon=":material/progress_activity:",
        )
    report = compare.load_comparison(run_id, store=cache.store())
    if report is None:
        if not measuring:
            st.info(
                "No comparison yet: start a conversion with “Measure on the test split”.",
                icon=":material/info:",
            )
        return
    rows = pd.DataFrame([r for r in report["rows"] if r["status"] == "ok"])
    missing = [r for r in report["rows"] if r["status"] != "ok"]
    st.markdown(f"**Comparison on the run's {report['test_count']} test images**")
    st.caption(
        f"Measured on {report['machine'].get('cpu_model')} ({report['machine'].get('usable_cores')} cores). "
        "Latency is the model alone on decoded pixels; agreement is top-1 against the Keras model."
    )
    if not rows.empty:
        rows["size_mb"] = rows["size_bytes"] / 1e6
        table = rows[[c for c in COLUMNS if c in rows]].rename(columns=COLUMNS)
        st.dataframe(
            table,
            hide_index=True,
            width="stretch",
            column_config={
                "Size (MB)": st.column_config.NumberColumn(format="%.2f"),
                "Load (s)": st.column_config.NumberColumn(format="%.3f"),
                "p50 (ms)": st.column_config.NumberColumn(format="%.2f"),
                "p95 (ms)": st.column_config.NumberColumn(format="%.2f"),
                "Batch (img/s)": st.column_config.NumberColumn(format="%.0f"),
                "Test accuracy": st.column_config.NumberColumn(format="percent"),
                "Agrees with Keras": st.column_config.NumberColumn(format="percent"),
                "Max |Δp|": st.column_config.NumberColumn(format="%.2g"),
            },
        )
        left, right = st.columns(2)
        with left:
            plot(charts.format_bars(rows, "size_mb", "File size", "Size (MB)"), key="cmp_size")
            plot(charts.format_fidelity(rows), key="cmp_fidelity")
        with right:
            plot(charts.format_latency(rows), key="cmp_latency")
            plot(
                charts.format_bars(rows, "throughput_ips", "Batch throughput", "Images per second", ".0f"),
                key="cmp_throughput",
            )
    for r in missing:
        st.warning(f"`{r['format']}` not measured: {r['reason']}", icon=":material/block:")
    flips_gallery(report["flips"])


def flips_gallery(flips: list[dict]) -> None:
    st.markdown(f"**Prediction flips** ({len(flips)}): test images whose top-1 label changes between formats")
    if not flips:
        st.caption("Every format gives every test image the same label.")
        return
    cols = st.columns(4)
    for i, flip in enumerate(flips[:24]):
        with cols[i % 4], guard("Showing a flip"):
            st.image(cache.thumbnail(flip["path"], 160), caption=f"true: {flip['true']}")
            st.caption("  \n".join(f"`{fmt}` → {label}" for fmt, label in flip["predicted"].items()))


st.title(":material/swap_horiz: Convert & compare")
st.caption(
    "Export a trained run for phones, microcontrollers, servers and GPUs, then measure every format on the "
    "run's own test split: size, speed, and whether it still gives the same answers as the Keras model."
)

with guard("Reading runs"):
    runs = [r for r in cache.store().list_runs() if r.status == "finished"]
if not runs:
    st.info("No finished run yet: train one on the Train page first.", icon=":material/info:")
    st.stop()

form, view = st.columns([1, 2], gap="large")
with form, st.container(border=True):
    labels = {r.id: run_label(r) for r in runs}
    linked = query_selection("run", labels)  # /convert?run=ID opens at that run
    run_id = st.selectbox(
        "Run",
        list(labels),
        index=list(labels).index(linked) if linked else 0,
        format_func=labels.get,
        key="convert_run",
    )
    formats = st.multiselect(
        "Formats",
        [f for f in FORMATS if f != "keras"],
        default=list(convert.DEFAULT_FORMATS),
        format_func=lambda f: f,
        help="\n".join(f"- `{f}`: {h}" for f, h in FORMAT_HELP.items()),
        key="convert_formats",
    )
    measure = st.toggle("Measure on the test split", value=True, key="convert_measure")
    force = st.toggle("Convert again even if exported", value=False, key="convert_force")
    if st.button("Convert", type="primary", icon=":material/play_arrow:", disabled=not formats):
        with guard("Starting the conversion"):
            params = {"run_id": run_id, "formats": formats, "compare": measure, "force": force}
            st.session_state["convert_job"] = jobs.start_job("convert", params, store=cache.store())
    with st.expander("TensorRT on this machine", icon=":material/memory:"):
        trt_panel()

with view:
    job = None
    with guard("Following the job"):
        job = followed_job("convert", "convert_job")
        if job is not None and job.active:
            monitor(job.id)
        elif job is not None and job.status != "finished":
            st.error(job.error or f"The conversion {job.status}.", icon=":material/error:")
    exports_panel(run_id)
    st.divider()
    measuring = bool(
        job is not None and job.active and job.params.get("run_id") == run_id and job.params.get("compare")
    )
    with guard("Reading the comparison"):
        comparison_panel(run_id, measuring=measuring)
