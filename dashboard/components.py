"""Small renderers shared by several pages: error guard, charts, job progress, the sidebar.

Pages stay descriptions of the UI; anything drawn the same way in two places lives here once.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote, urlencode, urlsplit

import streamlit as st
from streamlit.errors import StreamlitAPIException

from dashboard import cache
from engine import config
from engine.data import sources, uploads
from engine.errors import InvalidArgument, LabError
from engine.jobs import queue as jobs
from engine.models import backbones
from engine.params import PERSON_NAME_MAX, human_seconds, person_name

log = logging.getLogger("classifier_lab.dashboard")

NAMED_SOURCES = {
    "demo": "Demo set (generated)",
    "flowers": "flower_photos (download)",
    "beans": "beans (download)",
}


def source_options(named: bool = True) -> dict[str, str]:
    """Dataset choices, the best default first: this session's dataset (from Data), the real datasets
    stored here (flowers first, then other downloads and zips, then the user's uploads), the named
    sources to fetch or generate, and stray generated demo sets last (see sources.by_preference)."""
    options: dict[str, str] = {}
    current = st.session_state.get("dataset_path")
    if current:
        options[current] = f"{Path(current).name} (chosen on Data)"
    stored = uploads.stored_datasets()
    ranked = sources.by_preference(stored)
    demos = [label for label in ranked if sources.is_demo_dataset(stored[label])]
    for label in [label for label in ranked if label not in demos]:
        options.setdefault(str(stored[label]), label)
    for key, label in NAMED_SOURCES.items() if named else ():
        options.setdefault(key, label)
    for label in demos:
        options.setdefault(str(stored[label]), label)
    return options


def backbone_title(name: str) -> str:
    """A backbone as people write it: 'MobileNet 0.25', 'MobileNet 0.50 160', 'EfficientNet B0'."""
    backbone = backbones.get_backbone(name)
    if backbone.family == "mobilenet_v1":  # the width multiplier as retrain.py spells it, size when not 224
        alpha = name.split("_")[1]
        return f"MobileNet {alpha}" + (f" {backbone.input_size}" if backbone.input_size != 224 else "")
    title = re.sub(r"(V\d)(?=[A-Z])", r"\1 ", backbone.keras_class)  # MobileNetV3Small -> MobileNetV3 Small
    return re.sub(r"(?<=[a-z])(B\d)$", r" \1", title)  # EfficientNetB0 -> EfficientNet B0


def default_run_name(architecture: str, source: str, when: float | None = None) -> str:
    """A run's default name by backbone, dataset and time: 'MobileNet 0.25 · flowers · 12-03 14:05'."""
    stamp = time.strftime("%m-%d %H:%M", time.localtime(time.time() if when is None else when))
    return f"{backbone_title(architecture)} · {sources.display_name(source)} · {stamp}"


def followed_job(kind: str, session_key: str):
    """The job of `kind` this session started, else one still running (a refresh finds it again)."""
    job_id = st.session_state.get(session_key)
    if job_id is None:
        active = [j for j in jobs.list_jobs(active_only=True, store=cache.store()) if j.kind == kind]
        job_id = active[0].id if active else None
    return jobs.get_job(job_id, store=cache.store()) if job_id else None


PHASE_NAMES = {
    "download": "Downloading data",
    "weights": "Loading ImageNet weights",
    "scan": "Scanning images",
    "extract": "Extracting bottlenecks",
    "train": "Training the head",
    "fine_tune": "Fine-tuning",
    "evaluate": "Evaluating on the test split",
    "save": "Saving the classifier",
    "bench": "Measuring",
    "convert": "Converting",
    "": "Starting the worker",
}
STATUS_ICONS = {
    "queued": ":material/hourglass_top:",
    "running": ":material/progress_activity:",
    "finished": ":material/check_circle:",
    "failed": ":material/error:",
    "cancelled": ":material/cancel:",
    "interrupted": ":material/report:",
}


@contextmanager
def guard(what: str = ""):
    """Show engine errors as `st.error` with their message; never a traceback.

    Unexpected exceptions are logged with their traceback and a short reference id on the server;
    the page shows `Type: message` to a local user and, in class mode, only the reference (an
    exception's text may hold server paths or data). Streamlit's own control flow (rerun, stop)
    derives from BaseException and passes through.
    """
    try:
        yield
    except LabError as exc:
        st.error(str(exc), icon=":material/error:")
    except Exception as exc:
        ref = secrets.token_hex(4)
        log.exception("unexpected error %s (reference %s)", what, ref)
        prefix = f"{what} failed" if what else "Something went wrong"
        if _served():
            st.error(
                f"{prefix}: an unexpected error (reference {ref}); the details are in the server's log",
                icon=":material/error:",
            )
        else:
            st.error(f"{prefix}: {type(exc).__name__}: {exc}", icon=":material/error:")


def _served() -> bool:
    """Class mode; a misspelt LAB_SERVE_MODE counts as served (no error details), failing closed."""
    try:
        return config.serve_mode() == "class"
    except LabError:
        return True


def plot(fig, key: str | None = None) -> None:
    """Show a figure from dashboard.charts with its own template (not Streamlit's theme)."""
    # the toolbar only on hover, over the top margin's right end (titles and legends start on the left)
    st.plotly_chart(fig, theme=None, key=key, config={"displaylogo": False, "displayModeBar": "hover"})


def fmt_seconds(seconds: float | None) -> str:
    """A duration for people (engine.params.human_seconds, the one formatter of the lab)."""
    return human_seconds(seconds)


def job_header(job, title: str, key: str) -> bool:
    """A job's status line with a Cancel button; True when this run asked the job to cancel."""
    head, button = st.columns([5, 1], vertical_alignment="center")
    place = jobs.queue_position(job.id, store=cache.store()) if job.status == "queued" else None
    waiting = f" · waiting for a free slot, {place} in line" if place else ""
    head.markdown(f"{STATUS_ICONS.get(job.status, '')} {title}{waiting}")
    if job.active and button.button("Cancel", icon=":material/stop_circle:", key=key):
        with guard("Cancelling"):
            jobs.cancel_job(job.id, store=cache.store())
            return True
    return False


def job_progress(job) -> None:
    """A progress bar with the phase, counts and ETA of a job (engine.jobs.queue.Job)."""
    phase = PHASE_NAMES.get(job.phase, job.phase.replace("_", " ").capitalize())
    parts = [phase]
    extra = job.extra or {}
    if job.total and extra.get("units") == "work":  # weighted work units (timing lab): a share means more
        parts.append(f"{job.fraction:.0%}")
    elif job.total:
        parts.append(f"{int(job.done):,} / {int(job.total):,}")
    if job.phase == "extract" and "hits" in extra:
        parts.append(f"cache hits {extra.get('hits', 0):,}, misses {extra.get('misses', 0):,}")
    if job.eta_seconds is not None and job.active:
        parts.append(f"ETA {fmt_seconds(job.eta_seconds)}")
    st.progress(job.fraction, text=" · ".join(parts))
    if job.message:
        st.caption(job.message)


def sidebar() -> None:
    """The shared sidebar: the data directory and the jobs running now (polled)."""
    with st.sidebar:
        name_field()
        st.caption(f":material/folder: Data directory  \n`{cache.basic_facts()['lab_home']}`")
        _active_jobs()


@st.fragment(run_every=2)
def _active_jobs() -> None:
    try:
        active = jobs.list_jobs(active_only=True, store=cache.store())
    except LabError as exc:
        st.error(str(exc))
        return
    if not active:
        st.caption(":material/check: No jobs running")
        return
    st.markdown(f"**Active jobs ({len(active)})**")
    places = jobs.queue_positions(store=cache.store())
    for job in active:
        name = job.params.get("name") or job.params.get("architecture") or job.kind
        phase = PHASE_NAMES.get(job.phase, job.phase)
        phase = f"waiting, {places[job.id]} in line" if job.id in places else phase
        st.progress(job.fraction, text=f"{name}: {phase}")
    for kind in dict.fromkeys(job.kind for job in active):  # one link per kind, to the page that follows it
        if kind in JOB_PAGES:
            file, title = JOB_PAGES[kind]
            page_link(file, f"Follow on {title}", ":material/monitoring:")


# job kind -> the page that starts and follows it (file, title as in the router's PAGES)
JOB_PAGES = {
    "retrain": ("dashboard/train.py", "Train"),
    "experiment": ("dashboard/experiments.py", "Experiments"),
    "convert": ("dashboard/convert.py", "Convert & compare"),
    "timing": ("dashboard/timing.py", "CPU vs GPU"),
    "classify_batch": ("dashboard/classify.py", "Classify"),
    "health": ("dashboard/data.py", "Data"),
}


def page_link(file: str, label: str, icon: str | None = None) -> None:
    """`st.page_link` that degrades to plain text when the page runs alone (AppTest, no router)."""
    try:
        st.page_link(file, label=label, icon=icon)
    except StreamlitAPIException:
        st.markdown(f"{icon or ''} {label}")


def ago(timestamp: float | None) -> str:
    """'5 s ago', '3 min ago', '2 h ago' or '—'."""
    if not timestamp:
        return "—"
    return fmt_seconds(time.time() - timestamp) + " ago"


def run_label(run, *details: str) -> str:
    """How a run is named in pickers: 'name · details · id · author' (author only when known)."""
    author = getattr(run, "author", None)
    return " · ".join([run.name, *details, run.id, *([author] if author else [])])


# query parameter -> the url path of the page that opens at that item (st.Page's default: the file stem)
LINK_PAGES = {"run": "runs", "experiment": "experiments"}


def link_url(param: str, value) -> str:
    """The address that opens the page for `param` at `value`, e.g. http://host:8501/runs?run=ID.

    The scheme and host come from the browser's own address (st.context.url), so the link works for whoever
    the lab is served to; without one (AppTest) it is a root-relative path.
    """
    page = LINK_PAGES.get(param, "")
    query = urlencode({param: str(value)})
    base_path = (st.get_option("server.baseUrlPath") or "").strip("/")
    path = "/".join(part for part in (base_path, page) if part)
    url = getattr(st.context, "url", None) or ""
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
    return f"{origin}/{path}?{query}"


def copy_link(param: str, value, key: str | None = None) -> str:
    """A "Copy link" button: opens the item's address with a copy icon (st.code). Returns the URL."""
    url = link_url(param, value)
    with st.popover("Copy link", icon=":material/link:", key=key):
        st.caption("Anyone who can reach this lab opens the same view with:")
        st.code(url, language=None, wrap_lines=True)
    return url


def query_selection(param: str, options: Iterable):
    """The option named by `?param=` in the address, or None (absent, or not among the options).

    Options are compared as text, so `?run=12` picks the option 12 as well as "12"; the option itself
    is returned (same type), ready for a selectbox's index.
    """
    wanted = st.query_params.get(param)
    if wanted is None:
        return None
    for option in options:
        if str(option) == wanted:
            return option
    return None


# -- display name ---------------------------------------------------------------------------------------
NAME_COOKIE = "classifier_lab_name"  # the browser remembers "Your name" in this cookie for a year
NAME_COOKIE_SECONDS = 365 * 24 * 3600


def current_author() -> str | None:
    """The display name this browser gave in the sidebar ("Your name"), validated; None when none."""
    return st.session_state.get("author")


def name_field() -> None:
    """The sidebar's "Your name": no account, just a name stored with the runs this browser starts.

    The browser keeps it in a cookie (set by a line of JavaScript, read back through st.context.cookies
    when a new session starts), so a reload or a new tab of the same browser finds it again.
    """
    remembered = _remembered_name()
    if "author_name" not in st.session_state:  # the first run of this session
        st.session_state["author_name"] = remembered or ""
    text = st.text_input(
        "Your name",
        key="author_name",
        max_chars=PERSON_NAME_MAX,
        placeholder="shown with the runs you start",
        help="No account: this browser remembers the name and stores it with each run you start.",
    )
    try:
        name = person_name(text)
    except InvalidArgument as exc:
        st.error(str(exc), icon=":material/badge:")
        name = None
    st.session_state["author"] = name
    if name != remembered and not (name is None and text.strip()):
        _remember(name)


def _browser_cookie(key: str) -> str | None:
    cookies = getattr(st.context, "cookies", None) or {}
    return cookies.get(key)


def _remembered_name() -> str | None:
    raw = _browser_cookie(NAME_COOKIE)
    try:
        return person_name(unquote(raw)) if raw else None
    except InvalidArgument:  # a hand-edited cookie: ignored, never shown
        return None


def _remember(name: str | None) -> None:
    """Write (or, for None, clear) the name cookie in this browser."""
    value = quote(name or "", safe="")  # percent-encoded: nothing in it can end the script's string
    age = NAME_COOKIE_SECONDS if name else 0
    cookie = f"{NAME_COOKIE}={value}; path=/; max-age={age}; SameSite=Lax"
    st.html(f"<script>document.cookie = {json.dumps(cookie)};</script>", unsafe_allow_javascript=True)
