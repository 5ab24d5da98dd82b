"""Data: choose an image source, then see its classes, split counts, thumbnails, warnings and skips."""

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import cache, charts
from dashboard.components import current_author, guard, page_link, plot
from engine import config
from engine.data import datasets, quota, uploads
from engine.errors import InvalidArgument

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

page_link("dashboard/train.py", "Train on this dataset", ":material/model_training:")
