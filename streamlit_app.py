"""Classifier Lab: `streamlit run streamlit_app.py`. The router: pages, shared sidebar, nothing else."""

from pathlib import Path

import streamlit as st

from dashboard import compat
from dashboard.components import sidebar
from engine import config
from engine.jobs.pool import prewarm

ROOT = Path(__file__).resolve().parent

# (file, title, icon) in sidebar order; the first is the home page
PAGES = [
    ("dashboard/overview.py", "Overview", ":material/home:"),
    ("dashboard/data.py", "Data", ":material/photo_library:"),
    ("dashboard/train.py", "Train", ":material/model_training:"),
    ("dashboard/runs.py", "Runs", ":material/table_chart:"),
    ("dashboard/classify.py", "Classify", ":material/image_search:"),
    ("dashboard/architectures.py", "Architectures", ":material/account_tree:"),
    ("dashboard/experiments.py", "Experiments", ":material/science:"),
    ("dashboard/board.py", "Class board", ":material/leaderboard:"),
    ("dashboard/convert.py", "Convert & compare", ":material/swap_horiz:"),
    ("dashboard/timing.py", "CPU vs GPU", ":material/speed:"),
]


def available_pages(root: Path = ROOT) -> list[tuple[str, str, str]]:
    """The PAGES whose file is in this checkout; a page not there (yet) is left out."""
    return [page for page in PAGES if (root / page[0]).is_file()]


def main() -> None:
    compat.apply()  # Streamlit workarounds, before anything runs (see dashboard/compat.py)
    # tracebacks are for the one local user; a served class sees generic messages (.streamlit/config.toml)
    st.set_option("client.showErrorDetails", "full" if config.serve_mode() == "local" else "none")
    st.set_page_config(
        page_title="Classifier Lab",
        page_icon=":material/neurology:",
        layout="wide",
        initial_sidebar_state="auto",  # collapsed on phones, open on wide screens
    )
    pages = {
        file: st.Page(file, title=title, icon=icon, default=(i == 0))
        for i, (file, title, icon) in enumerate(available_pages())
    }
    prewarm()  # a warm job worker (TensorFlow loaded) waits for the first Train press; no-op if one lives
    page = st.navigation(list(pages.values()))
    follow_link(page, pages)
    sidebar()
    page.run()


# a shared link from the home address (`/?run=ID`) opens the page that shows that item
LINK_TARGETS = {"run": "dashboard/runs.py", "experiment": "dashboard/experiments.py"}


def follow_link(page, pages: dict) -> None:
    """On the home page, `?run=ID` / `?experiment=ID` switch to Runs / Experiments, keeping the query."""
    if page.url_path:  # not the home page
        return
    for param, file in LINK_TARGETS.items():
        value = st.query_params.get(param)
        if value and file in pages:
            st.switch_page(pages[file], query_params={param: value})


if (
    __name__ == "__main__"
):  # `streamlit run` executes this file as __main__; importing it (tests) runs nothing
    main()
