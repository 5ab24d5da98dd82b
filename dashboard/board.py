"""Class board: the best runs on each dataset and split, and a classmate's run beside yours."""

import pandas as pd
import streamlit as st

from dashboard import cache, charts
from dashboard.components import guard, plot
from engine.runs import board

st.title(":material/leaderboard: Class board")
st.caption(
    "Finished runs ranked by test accuracy, only against runs on the same photos and the same split "
    "(the dataset fingerprint recorded with each run), so the comparison is fair."
)

SHOW = {None: "every run", "author": "best per person", "backbone": "best per backbone"}
store = cache.store()
keep = st.radio(
    "Show",
    board.BEST_PER,
    format_func=SHOW.get,
    horizontal=True,
    key="board_best_per",
)
groups = []
with guard("Reading the runs"):
    groups = board.class_board(store, best_per=keep)
if not groups:
    st.info(
        "No finished run yet: train one on the Train page, or import a classmate's.", icon=":material/info:"
    )
    st.stop()

by_key = {g.key: g for g in groups}  # keys, not groups, so the choice survives a change of "Show"
group = by_key[
    st.selectbox(
        "Dataset and split",
        list(by_key),
        format_func=lambda k: (
            f"{by_key[k].label} · {len(by_key[k].entries)} run{'s' * (len(by_key[k].entries) != 1)}"
        ),
        key="board_group",
    )
]
if not group.exact:
    st.caption(
        ":material/warning: Runs recorded before fingerprints: matched by class names, counts and split "
        "percentages only, not by the photos themselves."
    )
table = pd.DataFrame([e.as_row(i) for i, e in enumerate(group.entries, start=1)])
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    column_config={
        "test accuracy": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1),
        "validation accuracy": st.column_config.NumberColumn(format="percent"),
        "learning rate": st.column_config.NumberColumn(format="%g"),
    },
)

# -- side by side ---------------------------------------------------------------------------------
st.subheader("Side by side")
entries = {e.run_id: e for e in group.entries}
if len(entries) < 2:
    st.info("Only one run on this data so far: another run on the same data can be compared with it.")
    st.stop()


def shown(what: str, value) -> str:
    """A fact as people read it: accuracies in percent, other numbers to 4 significant digits."""
    if value is None:
        return "—"
    if "accuracy" in what:
        return f"{value:.1%}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def label(run_id: str) -> str:
    e = entries[run_id]
    return f"{e.author} · {e.name} · {e.test_accuracy:.1%}"


ids = list(entries)
mine_col, theirs_col = st.columns(2)
mine = mine_col.selectbox("Your run", ids, format_func=label, key="board_mine")
theirs = theirs_col.selectbox(
    "A classmate's run", [i for i in ids if i != mine], format_func=label, key="board_theirs"
)
run_a, run_b = store.get_run(mine), store.get_run(theirs)
names = {r: f"{entries[r].author}: {entries[r].name}" for r in (mine, theirs)}
if names[mine] == names[theirs]:
    names = {mine: f"{names[mine]} #{mine[-4:]}", theirs: f"{names[theirs]} #{theirs[-4:]}"}

# the facts table is narrow: head its columns by author alone when that tells the two runs apart
authors = {r: entries[r].author for r in (mine, theirs)}
short = authors if authors[mine] != authors[theirs] else names
short_names = {"a": short[mine], "b": short[theirs]}

curves, facts = st.columns([3, 2])
with curves:
    split = st.radio("Split", ["validation", "train"], horizontal=True, key="board_split")
    frames = [pd.DataFrame(store.get_history(r, phase="train")).assign(run=names[r]) for r in (mine, theirs)]
    histories = (
        pd.concat([f for f in frames if not f.empty], ignore_index=True)
        if any(not f.empty for f in frames)
        else pd.DataFrame()
    )
    plot(charts.compare_curves(histories, "accuracy", split, smoothing=0.0), key="board_curves")
with facts:
    rows = pd.DataFrame(
        [
            {"what": r["what"], "a": shown(r["what"], r["a"]), "b": shown(r["what"], r["b"])}
            for r in board.side_by_side(run_a, run_b)
        ]
    ).rename(columns=short_names)
    st.dataframe(rows, hide_index=True, width="stretch")

photo = st.file_uploader(
    "A photo to classify with both runs", key="board_photo", help="JPEG, PNG, BMP, GIF, WebP or TIFF"
)
if photo is not None:
    with guard("Classifying"):
        rows = []
        for run_id in (mine, theirs):
            prediction = cache.run_classifier(run_id).classify([photo.getvalue()], top_k=5)[0]
            if prediction.error:
                st.error(f"Refused — {prediction.error}", icon=":material/block:")
                st.stop()
            rows += [
                {"class": c, "probability": p, "run": names[run_id]}
                for c, p in zip(prediction.labels, prediction.scores, strict=True)
            ]
        left, right = st.columns([1, 3], vertical_alignment="center")
        left.image(photo.getvalue(), caption=photo.name, width="stretch")
        with right:
            plot(charts.prediction_pair(pd.DataFrame(rows)), key="board_prediction")
