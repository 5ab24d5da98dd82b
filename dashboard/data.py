"""Data: choose an image source, then see its classes, split counts, thumbnails, warnings and skips."""

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import cache, charts, charts_health
from dashboard.components import current_author, guard, job_header, job_progress, page_link, plot
from engine import config
from engine.data import datasets, quota, uploads
from engine.errors import InvalidArgument
from engine.jobs import queue as jobs

SOURCES = {
    "demo": ":material/category: Demo set",
    "zip": ":material/folder_zip: Upload a zip",
    "per_class": ":material/add_photo_alternate: Upload per class",
    "folder": ":material/folder_open: Stored folder",
    "flowers": ":material/local_florist: Flowers",
    "beans": ":material/eco: Beans",
}
THUMBS_PER_CLASS = 8
DUPLICATE_ROWS = 200  # files listed in the duplicates table; the warning counts them all
HEALTH_SHOWN = 12  # photos (or pairs) shown per health finding; the counts cover them all


def use_dataset(path: Path | str, note: str = "") -> None:
    """Make `path` this session's dataset (the Train page starts from it)."""
    st.session_state["dataset_path"] = str(path)
    if note:
        st.toast(note, icon=":material/check:")


def check_may_replace(name: str, author: str | None) -> None:
    """In class mode only the classmate who uploaded a dataset may replace it."""
    owner = quota.owner_of(name)
    me = (author or "").strip() or quota.UNNAMED
    if owner is not None and owner != me:
        raise InvalidArgument(f"The dataset {name!r} was uploaded by {owner}; only they can replace it")


def health_params(path: str, validation: int, testing: int) -> dict:
    return {"image_dir": str(path), "validation_percentage": validation, "testing_percentage": testing}


def health_jobs(params: dict) -> tuple:
    """(the running health job of these params or None, the newest finished one or None)."""
    mine = [j for j in jobs.list_jobs(store=cache.store()) if j.kind == "health" and j.params == params]
    running = next((j for j in mine if j.active), None)
    done = max((j for j in mine if j.status == "finished"), key=lambda j: j.finished or 0, default=None)
    return running, done


@st.fragment(run_every=1.0)
def health_monitor(job_id: str) -> None:
    job = jobs.get_job(job_id, store=cache.store())
    job_header(job, "Checking the dataset's health", key="health_cancel")
    job_progress(job)
    if not job.active:
        st.rerun()


def photo_row(photos: list[dict], captions: list[str]) -> None:
    """Thumbnails of `photos` ({"path", ...}), one caption each; an unreadable file is named, not shown."""
    shown, names = [], []
    for photo, caption in zip(photos, captions, strict=True):
        with guard(f"Showing {Path(photo['path']).name}"):
            shown.append(cache.thumbnail(photo["path"], 112))
            names.append(caption)
    if shown:
        st.image(shown, caption=names, width=112)


def plural(n: int, word: str, words: str | None = None) -> str:
    return f"{n} {word if n == 1 else words or word + 's'}"


def short(photo: dict) -> str:
    return f"{photo['label']}/{Path(photo['path']).name} · {photo['split']}"


def health_section(report: dict) -> None:
    """The health report: headline numbers, the two figures, then each finding with its photos and advice."""
    exact, near, balance, mislabels = (
        report[k] for k in ("exact_duplicates", "near_duplicates", "classes", "mislabels")
    )
    m = st.columns(4)
    m[0].metric("Exact copies", exact["extra_copies"], help="files with the same bytes as another")
    m[1].metric("Near-duplicate pairs", near["pairs"], help="resized or re-encoded copies")
    small_help = f"fewer than {balance['small_threshold']} photos"
    m[2].metric("Small classes", len(balance["small_classes"]), help=small_help)
    m[3].metric("Likely mislabels", mislabels["count"])
    left, right = st.columns(2)
    with left:
        plot(charts_health.findings(report), key="health_findings")
    with right:
        plot(charts_health.class_balance(balance), key="health_balance")
    th = report["thresholds"]

    copies = f"{plural(exact['extra_copies'], 'extra copy', 'extra copies')}"
    st.markdown(f"**Exact duplicates** · {copies} in {plural(exact['groups'], 'group')}")
    st.caption(exact["advice"])
    for group in exact["items"][:HEALTH_SHOWN]:
        photo_row(group["files"], [short(f) for f in group["files"]])

    st.markdown(
        f"**Near-duplicates** · {plural(near['pairs'], 'pair')} ({near['across_splits']} across splits, "
        f"{near['across_classes']} across classes)"
    )
    st.caption(
        f"{near['advice']} Found by cosine similarity of {report['backbone']} bottlenecks (each photo's "
        f"{th['candidate_neighbours']} nearest, cosine at least {th['candidate_cosine']:g}), confirmed by "
        f"{th['signature_size']} x {th['signature_size']} grey levels correlating at least "
        f"{th['pixel_correlation']:g}: a resized or re-encoded copy keeps its layout, two similar photos "
        "do not."
    )
    for pair in near["items"][:HEALTH_SHOWN]:
        score = f"pixels {pair['pixel_correlation']:.3f} · cosine {pair['cosine']:.3f}"
        photo_row([pair["a"], pair["b"]], [short(pair["a"]), f"{short(pair['b'])} ({score})"])

    st.markdown(
        f"**Class balance** · smallest {balance['smallest']!r}, largest {balance['largest']!r}, "
        f"ratio {balance['ratio']:g}x"
    )
    st.caption(
        f"{balance['advice']} Thresholds: a class is small below {balance['small_threshold']} photos; "
        f"classes are imbalanced above {balance['imbalance_threshold']:g}x."
    )

    st.markdown(f"**Likely mislabels** · {plural(mislabels['count'], 'photo')}")
    st.caption(mislabels["advice"])
    items = mislabels["items"][:HEALTH_SHOWN]
    photo_row(items, [f"{short(m)} → looks like {m['looks_like']} ({m['votes']}/{m['k']})" for m in items])
    per, clean = report["per_100"], report.get("clean_flowers_per_100") or {}
    st.caption(
        f"Per 100 photos: {per['near_duplicate_pairs']:g} near-duplicate pairs, {per['mislabel_flags']:g} "
        f"mislabel flags. On the 200 clean shared flower photos: {clean.get('near_duplicate_pairs', 0):g} "
        f"and {clean.get('mislabel_flags', 0):g} (ambiguous photos), so a few flags are normal."
    )


def download_progress(bar):
    def callback(event: dict) -> None:
        fraction = event["done"] / event["total"] if event.get("total") else 0.0
        bar.progress(min(1.0, fraction), text=event.get("message") or event["phase"])

    return callback


st.title(":material/photo_library: Data")
st.caption("A dataset is a folder with one subfolder of images per class; every source below ends up as one.")

served = True  # fail closed: a misspelt LAB_SERVE_MODE shows its error and offers no server folders
with guard("Reading LAB_SERVE_MODE"):
    served = config.serve_mode() == "class"

source = st.segmented_control(
    "Source", list(SOURCES), format_func=SOURCES.get, default="demo", required=True, key="data_source"
)

with st.container(border=True):
    if source == "demo":
        st.markdown("Generated coloured shapes on noise: instant, offline, good for a first run.")
        c1, c2, c3 = st.columns(3)
        num_classes = c1.number_input("Classes", 2, 8, 3)
        per_class = c2.number_input("Images per class", 5, 2000, 40, step=5)
        size = c3.number_input("Image size (px)", 32, 512, 96, step=16)
        if st.button("Generate the demo set", type="primary", icon=":material/auto_awesome:"):
            with guard("Generating the demo set"):
                path = datasets.make_demo_dataset(num_classes=num_classes, per_class=per_class, size=size)
                use_dataset(path, f"Demo set ready: {Path(path).name}")

    elif source == "zip":
        st.markdown("A `.zip` whose top level (or single top folder) holds one folder of images per class.")
        upload = st.file_uploader("Zip of class folders", type=["zip"], key="zip_upload")
        default_name = Path(upload.name).stem if upload else "my-dataset"
        name = st.text_input("Dataset name", placeholder=default_name, key="zip_name").strip() or default_name
        replace = st.checkbox("Replace the dataset of that name if it exists", value=False, key="zip_replace")
        if st.button("Unpack and use", type="primary", disabled=upload is None, icon=":material/unarchive:"):
            with guard("Unpacking the zip"), st.spinner("Checking and unpacking the archive…"):
                if replace and served:
                    check_may_replace(name, current_author())
                allowance = quota.upload_quota(name, current_author())
                path = datasets.extract_zip(upload, name, replace=replace, quota=allowance)
                use_dataset(path, f"{'Replaced' if replace else 'Unpacked'} {name}")

    elif source == "per_class":
        st.markdown("Name each class and drop its photos; every file is checked before it is saved.")
        name = st.text_input("Dataset name", value="my-photos", key="pc_name")
        count = st.number_input("Number of classes", 2, 12, 2, key="pc_count")
        files_by_class = {}
        columns = st.columns(min(int(count), 3))
        for i in range(int(count)):
            with columns[i % len(columns)]:
                label = st.text_input(f"Class {i + 1}", value=f"class_{i + 1}", key=f"pc_label_{i}")
                files = st.file_uploader(
                    f"Images of class {i + 1}", accept_multiple_files=True, key=f"pc_files_{i}"
                )
                if files:
                    files_by_class[label] = [(f.name, f.getvalue()) for f in files]
        if st.button(
            "Save images and use", type="primary", disabled=not files_by_class, icon=":material/save:"
        ):
            with guard("Saving the uploaded images"):
                result = uploads.save_class_images(
                    name, files_by_class, quota=quota.upload_quota(name, current_author())
                )
                for file_name, reason in result.refused:
                    st.warning(f"Refused {file_name}: {reason}", icon=":material/block:")
                saved = ", ".join(f"{label}: {n}" for label, n in result.saved.items())
                st.success(f"Saved {saved} image(s) to {result.folder.name}")
                use_dataset(result.folder)

    elif source == "folder":
        with guard("Listing stored datasets"):
            stored = uploads.stored_datasets()
            if stored:
                choice = st.selectbox("Datasets in the data directory", list(stored), key="stored_choice")
                if st.button("Use this dataset", type="primary", icon=":material/check:"):
                    use_dataset(stored[choice])
            else:
                st.info("No datasets stored yet: generate the demo set or upload one.")
        if served:
            st.caption("Folders elsewhere on the server are off while the lab is served to a class.")
        else:
            other = st.text_input("…or any folder of class subfolders on this computer", key="folder_path")
            if st.button("Use this folder", disabled=not other.strip()):
                with guard("Opening the folder"):
                    use_dataset(datasets.resolve_source(other.strip()))

    else:  # flowers / beans: downloaded once, then cached in the data directory
        what = {
            "flowers": "TensorFlow for Poets' flower_photos: 3,670 photos of 5 flowers (218 MB).",
            "beans": "Bean leaf photos (tensorflow-datasets): 1,295 images in 3 classes.",
        }[source]
        st.markdown(what + " Downloaded once, then reused.")
        if st.button(f"Download and use {source}", type="primary", icon=":material/download:"):
            bar = st.progress(0.0, text="Connecting…")
            with guard(f"Downloading {source}"):
                fetch = datasets.download_flowers if source == "flowers" else datasets.download_beans
                use_dataset(fetch(progress=download_progress(bar)), f"{source} ready")
            bar.empty()

dataset_path = st.session_state.get("dataset_path")
if not dataset_path:
    st.info("Choose a source above to see its classes and split.", icon=":material/arrow_upward:")
    st.stop()

st.subheader(f"Dataset: {Path(dataset_path).name}")
c1, c2 = st.columns(2)
validation = c1.slider(
    "Validation %", 0, 40, st.session_state.get("validation_percentage", 10), key="val_pct"
)
testing = c2.slider("Test %", 0, 40, st.session_state.get("testing_percentage", 10), key="test_pct")
st.session_state["validation_percentage"], st.session_state["testing_percentage"] = validation, testing

with guard("Scanning the dataset"):
    data = cache.scan_dataset(dataset_path, validation, testing)
    counts = data.counts()
    totals = {split: sum(row[split] for row in counts.values()) for split in datasets.SPLITS}
    m = st.columns(5)
    m[0].metric("Classes", len(data.classes))
    m[1].metric("Images", len(data.records))
    for col, split in zip(m[2:], datasets.SPLITS, strict=True):
        col.metric(split.capitalize(), totals[split])
    for warning in data.warnings:
        st.warning(warning, icon=":material/warning:")

    table = pd.DataFrame(counts).T.rename_axis("class").reset_index()
    table["total"] = table[list(datasets.SPLITS)].sum(axis=1)
    left, right = st.columns([2, 3])
    left.dataframe(table, hide_index=True, key="counts_table")
    with right:
        long = table.melt(
            id_vars="class", value_vars=list(datasets.SPLITS), var_name="split", value_name="images"
        )
        plot(charts.class_counts(long), key="counts_chart")

    st.subheader("Thumbnails")
    by_class: dict[str, list[str]] = {}
    for record in data.records:
        by_class.setdefault(record.label, []).append(record.path)
    for label in data.classes:
        paths = by_class.get(label, [])[:THUMBS_PER_CLASS]
        st.markdown(f"**{label}** · {len(by_class.get(label, []))} images")
        st.image([cache.thumbnail(p, 112) for p in paths], caption=[Path(p).name for p in paths], width=112)

    if data.duplicates:
        with st.expander(f"Duplicate images ({len(data.duplicates)} groups)", icon=":material/content_copy:"):
            rows = [
                {
                    "group": i + 1,
                    "file": Path(r.path).name,
                    "class": r.label,
                    "split": r.split,
                    "path": r.path,
                }
                for i, group in enumerate(data.duplicates)
                for r in group.records
            ]
            st.dataframe(pd.DataFrame(rows[:DUPLICATE_ROWS]), hide_index=True, key="duplicates_table")
            if len(rows) > DUPLICATE_ROWS:
                st.caption(f"First {DUPLICATE_ROWS} of {len(rows)} files.")

    with st.expander(f"Skipped files ({len(data.skipped)})", icon=":material/block:"):
        if data.skipped:
            st.dataframe(
                pd.DataFrame(
                    [{"file": Path(s.path).name, "reason": s.reason, "path": s.path} for s in data.skipped]
                ),
                hide_index=True,
            )
        else:
            st.caption("Every file was readable.")

st.subheader("Health")
st.caption(
    "Exact and near-duplicate photos (within and across splits and classes), class balance, and photos "
    "that look like another class. Runs as a background job: it extracts bottlenecks once (cached)."
)
with guard("Checking the dataset's health"):
    params = health_params(dataset_path, validation, testing)
    running, done = health_jobs(params)
    if running is None and st.button(
        "Check health" if done is None else "Check again",
        icon=":material/health_and_safety:",
        type="primary" if done is None else "secondary",
        key="health_start",
    ):
        st.session_state["health_job"] = jobs.start_job("health", params, store=cache.store())
        running = jobs.get_job(st.session_state["health_job"], store=cache.store())
    if running is not None:
        health_monitor(running.id)
    else:
        last = st.session_state.get("health_job")
        failed = jobs.get_job(last, store=cache.store()) if last else None
        if failed is not None and failed.params == params and failed.status not in ("finished",):
            st.error(failed.error or f"The health check {failed.status}.", icon=":material/error:")
        if done is not None:
            health_section(done.result)
        elif failed is None:
            st.info("No health check of this dataset and split yet.", icon=":material/info:")

page_link("dashboard/train.py", "Train on this dataset", ":material/model_training:")
