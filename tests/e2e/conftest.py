"""Browser suite: a real `streamlit run streamlit_app.py` on 127.0.0.1 driven by Debian's chromium.

The server gets its own LAB_HOME and a KERAS_HOME seeded with the shared MobileNet 0.25_224
weights, so it runs offline. Screenshots go to tests/_artifacts/screenshots/ (gitignored).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from engine import config
from engine.runs.store import RunStore

ROOT = Path(__file__).resolve().parents[2]
SHARED_ASSETS = ROOT.parent / "shared" / "assets"  # the same offline assets as tests/conftest.py
FLOWERS = SHARED_ASSETS / "flower_photos_small_set"
MOBILENET_025_WEIGHTS = SHARED_ASSETS / "keras_weights" / "mobilenet_2_5_224_tf_no_top.h5"
SAMPLE_IMAGES = SHARED_ASSETS / "sample_images"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "tests" / "_artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STARTUP_SECONDS = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _need_assets() -> None:
    for path in (FLOWERS, MOBILENET_025_WEIGHTS, SAMPLE_IMAGES):
        if not path.exists():
            pytest.skip(f"e2e needs the shared offline asset {path} (../shared/assets is absent here)")
    if not CHROMIUM.exists():
        pytest.skip(f"e2e needs Debian's chromium at {CHROMIUM}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("e2e needs the playwright package (pip install playwright)")


def start_server(lab_home: Path, keras_home: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """Start `streamlit run` in its own process group and wait until it answers its health check."""
    port = _free_port()
    env = dict(os.environ, LAB_HOME=str(lab_home), KERAS_HOME=str(keras_home), TF_CPP_MIN_LOG_LEVEL="2")
    command = [
        sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
        "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
        "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    log = log_path.open("wb")
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + STARTUP_SECONDS
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return proc, url
        except OSError:
            time.sleep(0.5)
    stop_server(proc, lab_home)
    raise RuntimeError(f"streamlit did not answer within {STARTUP_SECONDS} s; see {log_path}")


def stop_server(proc: subprocess.Popen, lab_home: Path | None = None) -> None:
    """Stop the server, then the warm job workers it left in `lab_home`.

    Warm workers are detached on purpose (jobs outlive the page that started them) and wait up to
    LAB_WORKER_IDLE_SECONDS for work: a finished test server's ones would hold ~0.7 GB each for minutes.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if lab_home is not None and config.store_file(lab_home).exists():
        for worker in RunStore(config.store_file(lab_home)).list_workers():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(worker.pid, signal.SIGTERM)  # a warm worker leads its own process group


@pytest.fixture(scope="session")
def e2e_dirs(tmp_path_factory) -> dict[str, Path]:
    """LAB_HOME and a KERAS_HOME whose models/ holds the real MobileNet 0.25_224 weights."""
    _need_assets()
    base = tmp_path_factory.mktemp("e2e")
    keras_home = base / "keras_home"
    (keras_home / "models").mkdir(parents=True)
    shutil.copy(MOBILENET_025_WEIGHTS, keras_home / "models" / MOBILENET_025_WEIGHTS.name)
    return {"base": base, "lab_home": base / "lab_home", "keras_home": keras_home}


@pytest.fixture(scope="session")
def app_url(e2e_dirs) -> str:
    proc, url = start_server(e2e_dirs["lab_home"], e2e_dirs["keras_home"], e2e_dirs["base"] / "streamlit.log")
    yield url
    stop_server(proc, e2e_dirs["lab_home"])


@pytest.fixture(scope="session")
def browser(e2e_dirs):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def page(browser, app_url):
    """One browser tab for the whole suite, so the session (chosen dataset, runs) carries over."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.set_default_timeout(30_000)
    tab = context.new_page()
    tab.goto(app_url)
    yield tab
    context.close()


@pytest.fixture(scope="session")
def assets() -> dict[str, Path]:
    """The shared offline inputs the suite uploads."""
    _need_assets()
    return {"flowers": FLOWERS, "samples": SAMPLE_IMAGES}


@pytest.fixture(scope="session")
def screenshot():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):  # only this session's pictures, so none is stale
        old.unlink()

    def take(page, name: str, full: bool = True) -> Path:
        """The whole page: Streamlit scrolls inside its main area, so grow the viewport to fit it.

        `full=False` takes the viewport as it is at once (a moment of a live view).
        """
        path = SCREENSHOTS / f"{name}.png"
        if not full:
            page.screenshot(path=str(path))
            return path
        size = page.viewport_size
        height = page.evaluate(
            "() => { const m = document.querySelector('[data-testid=stMain]');"
            " return m ? m.scrollHeight : document.body.scrollHeight }"
        )
        # scroll through once: data grids draw their canvas only after they have been in view
        page.evaluate(
            "() => { const m = document.querySelector('[data-testid=stMain]'); if (m) m.scrollTop = 1e6 }"
        )
        page.wait_for_timeout(400)
        page.evaluate(
            "() => { const m = document.querySelector('[data-testid=stMain]'); if (m) m.scrollTop = 0 }"
        )
        page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(height, 10_000))})
        page.wait_for_timeout(1200)  # let plotly and the data grids redraw at the new size
        page.screenshot(path=str(path))
        page.set_viewport_size(size)
        return path

    return take
