"""Every workaround for Streamlit's internals, in one place; the router calls `apply()` explicitly.

Each workaround says why it exists and which Streamlit version it was written against, so an upgrade
knows what to re-check. A workaround whose private target is gone does nothing and logs a warning
rather than breaking the app.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("classifier_lab.dashboard")

STREAMLIT_VERSION = "1.67.0"  # the version these workarounds were written and tested against


def apply() -> None:
    """Apply every workaround (idempotent: the router calls it on each script run)."""
    keep_keras_session_between_runs()


def keep_keras_session_between_runs() -> None:
    """Stop Streamlit from calling `keras.backend.clear_session()` after every script run.

    Why: Streamlit 1.67's `scriptrunner.script_runner._clean_problem_modules` runs after each script run
    and, whenever `keras` is imported, clears the Keras session (plus a full garbage collection) to free
    models built inside scripts. Ours live in `st.cache_resource`, so the clearing only hurts: it empties
    TensorFlow's kernel cache (a warm 15 ms classification then takes 140 ms) and costs a full GC on
    every run, including each poll of a live job, which starved the server with a job training and two
    tabs open. Matplotlib's cleanup, the other half of that function, is kept.
    """
    from streamlit.runtime.scriptrunner import script_runner

    original = getattr(script_runner, "_clean_problem_modules", None)
    if original is None:
        log.warning(
            "streamlit.runtime.scriptrunner.script_runner._clean_problem_modules is gone (written for "
            "Streamlit %s): Keras sessions may be cleared after every script run",
            STREAMLIT_VERSION,
        )
        return
    if getattr(original, "keeps_keras", False):
        return

    def clean_problem_modules() -> None:
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is not None:
            plt.close("all")

    clean_problem_modules.keeps_keras = True
    script_runner._clean_problem_modules = clean_problem_modules
