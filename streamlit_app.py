"""Classifier Lab: `streamlit run streamlit_app.py`. The router: pages, shared sidebar, nothing else."""

from pathlib import Path

import streamlit as st

from dashboard.components import sidebar

ROOT = Path(__file__).resolve().parent

# (file, title, icon); a page whose file is not in this checkout (yet) is left out
PAGES = [
    ("dashboard/overview.py", "Overview", ":material/home:"),
    ("dashboard/data.py", "Data", ":material/photo_library:"),
    ("dashboard/train.py", "Train", ":material/model_training:"),
    ("dashboard/runs.py", "Runs", ":material/table_chart:"),
    ("dashboard/classify.py", "Classify", ":material/image_search:"),
    ("dashboard/architectures.py", "Architectures", ":material/account_tree:"),
    ("dashboard/experiments.py", "Experiments", ":material/science:"),
    ("dashboard/convert.py", "Convert & compare", ":material/swap_horiz:"),
    ("dashboard/timing.py", "CPU vs GPU", ":material/speed:"),
]

st.set_page_config(
    page_title="Classifier Lab",
    page_icon=":material/neurology:",
    layout="wide",
    initial_sidebar_state="expanded",
)
page = st.navigation(
    [
        st.Page(file, title=title, icon=icon, default=(i == 0))
        for i, (file, title, icon) in enumerate(PAGES)
        if (ROOT / file).is_file()
    ]
)
sidebar()
page.run()
