"""The Classify page's "Batch" tab: a folder or zip of photos through one model, as a job.

Widgets -> one job (engine.export.batch, kind "classify_batch") -> its rows, CSV, accuracy and a confusion
matrix whose cells show their photos.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import cache, charts_batch
from dashboard.components import followed_job, guard, job_header, job_progress
from engine import config
from engine.errors import LabError
from engine.export import batch
from engine.jobs import queue as jobs

POLL_SECONDS = 1.0
JOB_KEY = "batch_job"
CELL_KEY = "batch_cell"  # (true class, predicted class) picked by a click or the selectbox
MAX_SHOWN = 24  # photos of one confusion cell drawn at once
COLUMNS = {
    "path": "Photo",
    "true_label": "Folder class",
    "predicted": "Predicted",
    "confidence": "Confidence",
    "correct": "Correct",
    "error": "Error",
}


def _served() -> bool:
    """Class mode (or a bad setting): students may not read the server's folders by path."""
    try:
        return config.serve_mode() == "class"
    except LabError:
        return True


def render(choices) -> None:
    """The Batch tab for the models picked on the page (engine.export.lineup.ModelChoice); one is used."""
    st.caption(
        "Classify a whole folder or zip of photos with one model. When the photos sit in folders named "
        "after the model's classes (`daisy/1.jpg`, `roses/2.jpg`), you also get the accuracy and a "
        "confusion matrix; click a cell to see its photos."
    )
    if not choices:
        st.info("Pick at least one model above to classify a batch.", icon=":material/info:")
        return
    start_form(choices)
    with guard("Following the batch"):
        job = followed_job("classify_batch", JOB_KEY)
        if job is None:
            return
        if job.active:
            monitor(job.id)
        elif job.status == "finished":
            results(batch.BatchResult.from_dict(job.result))
        else:
            st.error(job.error or f"The batch {job.status}.", icon=":material/error:")


def start_form(choices) -> None:
    by_key = {c.key: c for c in choices}
    with st.container(border=True):
        key = st.selectbox("Model", list(by_key), format_func=lambda k: by_key[k].name, key="batch_model")
        sources = ["Upload a zip"] if _served() else ["Upload a zip", "A folder on this computer"]
        source = st.radio("Photos", sources, horizontal=True, key="batch_source")
        if source == "Upload a zip":
            upload = st.file_uploader(
                "Zip of photos (optionally one folder per class)", type=["zip"], key="batch_zip"
            )
            path = None
        else:
            path = st.text_input("Folder", key="batch_folder", placeholder="/path/to/photos")
            upload = None
        ready = bool(upload is not None or (path and path.strip()))
        if st.button("Classify the batch", type="primary", icon=":material/play_arrow:", disabled=not ready):
            with guard("Starting the batch"):
                params = {"choice": by_key[key].as_dict(), "top_k": 3}
                if upload is not None:
                    params.update(path=batch.stage_upload(upload.getvalue(), upload.name), staged=True)
                else:
                    params.update(path=path.strip(), staged=False)
                st.session_state[JOB_KEY] = jobs.start_job("classify_batch", params, store=cache.store())
                st.session_state.pop(CELL_KEY, None)


@st.fragment(run_every=POLL_SECONDS)
def monitor(job_id: str) -> None:
    job = jobs.get_job(job_id, store=cache.store())
    model = (job.params.get("choice") or {}).get("title") or "the model"
    job_header(job, f"Classifying a batch with **{model}**", key="batch_cancel")
    job_progress(job)
    if not job.active:
        st.rerun()


def results(result: batch.BatchResult) -> None:
    errors = sum(1 for r in result.rows if r.get("error"))
    cols = st.columns(3)
    cols[0].metric("Photos", f"{len(result.rows):,}")
    cols[1].metric("Classified", f"{result.classified:,}", delta=f"-{errors} unreadable" if errors else None)
    if result.accuracy is not None:
        cols[2].metric(
            "Accuracy", f"{result.accuracy:.1%}", help=f"on {result.scored:,} photos in class folders"
        )
    else:
        cols[2].metric("Accuracy", "—", help="no folder is named after one of the model's classes")
    if result.unknown_folders:
        listed = ", ".join(f"`{name}` ({n})" for name, n in list(result.unknown_folders.items())[:10])
        st.warning(
            f"Folders that are not classes of {result.model}: {listed}. Their photos were classified but "
            "not scored.",
            icon=":material/folder_off:",
        )
    table = pd.DataFrame(result.rows)
    prefix = result.source.rstrip("/") + "/"
    table["path"] = [
        p[len(prefix) :] if p.startswith(prefix) else p for p in table["path"]
    ]  # as in the folder
    table[["true_label", "error"]] = table[["true_label", "error"]].fillna("")
    shown = table[[c for c in COLUMNS if c in table]].rename(columns=COLUMNS)
    st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        height=320,
        column_config={
            "Confidence": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1)
        },
    )
    st.download_button(
        "Download CSV",
        data=result.to_csv(),
        file_name="batch.csv",
        mime="text/csv",
        icon=":material/download:",
        key="batch_csv",
        on_click="ignore",
    )
    if result.labelled:
        confusion_panel(result)


def confusion_panel(result: batch.BatchResult) -> None:
    fig = charts_batch.confusion(
        result.confusion, result.classes, f"Confusion matrix ({result.scored} photos)"
    )
    event = st.plotly_chart(
        fig,
        theme=None,
        key="batch_confusion",
        on_select="rerun",
        selection_mode="points",
        config={"displaylogo": False},
    )
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    picked = next((tuple(p["customdata"]) for p in points if p.get("customdata")), None)
    if picked and picked != st.session_state.get("batch_last_click"):  # a new click, not the kept selection
        st.session_state["batch_last_click"] = st.session_state[CELL_KEY] = picked
    cells = [(t, p) for t in result.classes for p in result.classes if result.photos_in_cell(t, p)]
    if not cells:
        return
    current = st.session_state.get(CELL_KEY)
    index = cells.index(current) if current in cells else None
    cell = st.selectbox(
        "Photos of a cell",
        cells,
        index=index,
        format_func=lambda c: f"true {c[0]} → predicted {c[1]} ({len(result.photos_in_cell(*c))})",
        placeholder="Click a cell above, or pick one here",
        key=f"batch_cell_pick_{index}",
    )
    if cell is None:
        return
    st.session_state[CELL_KEY] = cell
    photos_of_cell(result, *cell)


def photos_of_cell(result: batch.BatchResult, true_label: str, predicted: str) -> None:
    rows = [r for r in result.rows if r.get("correct") is not None]
    rows = [r for r in rows if r["true_label"] == true_label and r["predicted"] == predicted]
    verdict = "correct" if true_label == predicted else "mistaken"
    photos = "1 photo" if len(rows) == 1 else f"{len(rows)} photos"
    st.markdown(f"**{photos} of {true_label} predicted {predicted}** ({verdict})")
    grid = st.columns(4)
    for n, row in enumerate(rows[:MAX_SHOWN]):
        with grid[n % 4], guard("Showing a photo"):
            st.image(cache.thumbnail(row.get("thumbnail") or row["path"], 160), width="stretch")
            st.caption(f"{row['path'].rsplit('/', 1)[-1]} · {row['confidence']:.0%}")
    if len(rows) > MAX_SHOWN:
        st.caption(f"… and {len(rows) - MAX_SHOWN} more (all in the CSV)")
