"""Issue 10's fault scenarios: kill -9 in each phase, concurrency, a hostile environment, no network.

Every subprocess runs under a timeout and every in-process call is bounded, so nothing here can hang.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from engine.errors import LabError
from tests import corpus
from tests.corpus import bounded, image_bytes, zip_bytes
from tests.test_bad_input import assert_cli_error, cli

ROOT = Path(__file__).resolve().parents[1]
ARCH = "mobilenet_0.25_128"
pytestmark = pytest.mark.filterwarnings("ignore")


def engine_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *map(str, args)]


def run_engine(*args: str, timeout: float = 300, user: tuple[int, int] | None = None, env=None):
    cmd = engine_cmd(*args)
    if user is not None:
        # CAP_DAC_READ_SEARCH only lets the user read this Python (it may live under /root); it
        # gives no right to write, so LAB_HOME stays unwritable for it
        caps = ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
        cmd = ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups", *caps, *cmd]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.returncode == 2, f"rc={proc.returncode} stderr={proc.stderr[-1500:]!r}"
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-1500:]
    assert proc.stderr.rstrip("\n").endswith(lines[0]), f"more after the error line: {proc.stderr[-1500:]!r}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not named: {lines[0]!r}"
    return lines[0]


def runs_json(timeout: float = 120) -> dict[str, dict]:
    proc = run_engine("runs", "--json", timeout=timeout)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return {r["id"]: r for r in json.loads(proc.stdout.strip().splitlines()[-1])["runs"]}


# === kill -9 in each phase ========================================================================
@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory) -> Path:
    """600 tiny images: each phase of a retrain lasts long enough to be caught."""
    root = tmp_path_factory.mktemp("big") / "ds"
    for name, colour in corpus.CLASSES:
        corpus.make_class_dir(root / name, colour, n=300, prefix=name)
    return root


def _kill_in_phase(phase: str, image_dir: Path, timeout: float = 240) -> tuple[str, str]:
    """Start a retrain, SIGKILL it as soon as its progress bar enters `phase`; returns (stderr, seen)."""
    proc = subprocess.Popen(
        engine_cmd(
            "retrain",
            "--image_dir",
            image_dir,
            "--weights",
            "random",
            "--architecture",
            ARCH,
            "--how_many_training_steps",
            "4000",
            "--eval_step_interval",
            "10",
        ),
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen, buf = threading.Event(), bytearray()

    def reader() -> None:
        marker = f"{phase}:".encode()
        while chunk := os.read(proc.stderr.fileno(), 4096):
            buf.extend(chunk)
            if marker in buf and not seen.is_set():
                os.kill(proc.pid, signal.SIGKILL)
                seen.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"retrain did not reach {phase} within {timeout} s: {bytes(buf)[-1500:]!r}")
    thread.join(10)
    text = bytes(buf).decode(errors="replace")
    assert seen.is_set(), f"the run ended (rc={proc.returncode}) before its {phase} phase: {text[-1500:]}"
    assert proc.returncode == -signal.SIGKILL
    return text, phase


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["scan", "extract", "train", "save"])
def test_kill_9_in_each_phase(phase, big_dataset, lab_home, tmp_path):
    _kill_in_phase(phase, big_dataset)
    runs = runs_json()
    assert len(runs) == 1, runs
    (run_id, run) = next(iter(runs.items()))
    assert run["status"] == "interrupted", run
    from engine.runs.store import RunStore

    ended = set(RunStore().get_run(run_id).phases)
    assert phase not in ended, f"the kill came after {phase} ended (phases recorded: {sorted(ended)})"
    model = lab_home / "runs" / run_id / "model.keras"
    photo = tmp_path / "p.jpg"
    photo.write_bytes(image_bytes(seed=1))
    proc = run_engine("classify", "--run", run_id, photo, timeout=180)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if proc.returncode != 0:  # no model, or one that must not be trusted: one clear line
        one_error_line(proc, run_id)
    else:  # only a complete model may ever be loaded
        assert model.is_file() and model.stat().st_size > 0
    # the store still works for the next run, and the killed run can be deleted or re-run
    proc = run_engine(
        "retrain",
        "--image_dir",
        big_dataset,
        "--weights",
        "random",
        "--architecture",
        ARCH,
        "--how_many_training_steps",
        "5",
        "--json",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    statuses = sorted(r["status"] for r in runs_json().values())
    assert statuses == ["finished", "interrupted"], statuses


# === concurrency ==================================================================================
@pytest.mark.slow
def test_concurrent_retrains_on_one_lab_home(lab_home):
    args = ["--weights", "random", "--architecture", ARCH, "--how_many_training_steps", "20", "--json"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [
        subprocess.Popen(
            engine_cmd("retrain", "--image_dir", "demo", *args, "--seed", str(i)),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("concurrent retrains did not finish within 400 s")
        outputs.append((proc.returncode, out, err))
    for rc, _out, err in outputs:
        assert rc == 0 and "Traceback" not in err, err[-2000:]
    ids = {json.loads(out.strip().splitlines()[-1])["run_id"] for _, out, _ in outputs}
    runs = runs_json()
    assert ids == set(runs) and len(ids) == 3
    for run_id in ids:
        assert runs[run_id]["status"] == "finished"
        folder = lab_home / "runs" / run_id
        assert (folder / "model.keras").stat().st_size > 0 and (folder / "labels.txt").read_text().strip()


def test_concurrent_class_uploads_under_one_name_lose_nothing(lab_home):
    from engine.data.uploads import save_class_images

    n = 8
    batches = [
        {
            label: [
                ("photo.jpg", image_bytes(seed=1000 * k + i)),
                (f"own_{i}.jpg", image_bytes(seed=2000 * k + i)),
            ]
        }
        for i in range(n)
        for k, label in enumerate(("red", "blue"))
    ]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(batches))

    def upload(files):
        barrier.wait()
        try:
            save_class_images("shared", files)
        except BaseException as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "an upload hung"
    assert not errors, [f"{type(e).__name__}: {e}" for e in errors]
    from engine.data.archives import uploads_dir

    for k, label in enumerate(("red", "blue")):
        stored = {p.read_bytes() for p in (uploads_dir() / "shared" / label).iterdir()}
        sent = {data for b in batches for items in b.get(label, []) for data in [items[1]]}
        assert stored == sent, f"{label}: {len(sent - stored)} of {len(sent)} uploads lost"
        del k


def test_concurrent_zip_extracts_under_one_name(lab_home):
    from engine.data.archives import extract_zip, uploads_dir

    zips = [
        zip_bytes(
            [(f"a{i}/x{j}.jpg", image_bytes(seed=10 * i + j)) for j in range(2)]
            + [(f"b{i}/y{j}.jpg", image_bytes(seed=10 * i + j + 5)) for j in range(2)]
        )
        for i in range(4)
    ]
    results: list[object] = [None] * len(zips)
    barrier = threading.Barrier(len(zips))

    def extract(i: int) -> None:
        barrier.wait()
        try:
            results[i] = extract_zip(zips[i], "same")
        except BaseException as exc:  # noqa: BLE001
            results[i] = exc

    threads = [threading.Thread(target=extract, args=(i,)) for i in range(len(zips))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "an extract hung"
    crashes = [r for r in results if isinstance(r, BaseException) and not isinstance(r, LabError)]
    assert not crashes, [f"{type(e).__name__}: {e}" for e in crashes]
    winners = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
    assert len(winners) == 1, (
        f"{len(winners)} extracts under one name reported success (all but one were lost)"
    )
    classes = sorted(p.name for p in (uploads_dir() / "same").iterdir())
    assert classes == [f"a{winners[0]}", f"b{winners[0]}"], classes


# === a hostile environment ========================================================================
def _setpriv_ok() -> str | None:
    if shutil.which("setpriv") is None:
        return "setpriv is not installed"
    if os.geteuid() != 0:
        return "needs root to drop to another user"
    return None


@pytest.fixture
def foreign_home():
    """A LAB_HOME owned by root (0755) that user 65534 can read but not write, outside /tmp/pytest-of-root."""
    reason = _setpriv_ok()
    if reason:
        pytest.skip(reason)
    base = Path(tempfile.mkdtemp(prefix="lab-ro-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


NOBODY = (65534, 65534)


@pytest.mark.parametrize("state", ["empty", "with-store"])
def test_unwritable_lab_home_as_non_root(state, foreign_home):
    home = foreign_home / "home"
    home.mkdir()
    home.chmod(0o755)
    env = {"LAB_HOME": str(home), "KERAS_HOME": str(foreign_home / "keras"), "HOME": str(foreign_home)}
    if state == "with-store":
        proc = run_engine("runs", env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        for p in home.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
    before = corpus.snapshot(home)
    proc = run_engine("runs", "--json", env=env, user=NOBODY, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if proc.returncode != 0:
        line = one_error_line(proc)
        assert str(home) in line or "LAB_HOME" in line, line
    assert corpus.snapshot(home) == before, "the store was changed by a user who cannot write it"


def test_unwritable_lab_home_retrain_as_non_root(foreign_home):
    home = foreign_home / "home"
    home.mkdir()
    data = corpus.make_dataset(foreign_home / "ds")
    for p in [data, *data.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    env = {"LAB_HOME": str(home), "KERAS_HOME": str(foreign_home / "keras"), "HOME": str(foreign_home)}
    proc = run_engine(
        "retrain",
        "--image_dir",
        data,
        "--weights",
        "random",
        "--architecture",
        ARCH,
        "--how_many_training_steps",
        "5",
        "--json",
        env=env,
        user=NOBODY,
        timeout=300,
    )
    line = one_error_line(proc)
    assert str(home) in line or "LAB_HOME" in line, line


@pytest.mark.parametrize("where", ["is-a-file", "under-a-file", "is-dev-null"])
@pytest.mark.parametrize("command", ["runs", "retrain", "classify"])
def test_lab_home_not_a_folder(where, command, tmp_path, monkeypatch, capsys):
    target = {
        "is-a-file": tmp_path / "file",
        "under-a-file": tmp_path / "file" / "sub",
        "is-dev-null": Path("/dev/null"),
    }[where]
    (tmp_path / "file").write_text("I am a file\n")
    monkeypatch.setenv("LAB_HOME", str(target))
    photo = tmp_path / "p.jpg"
    photo.write_bytes(image_bytes())
    data = corpus.make_dataset(tmp_path / "ds")
    args = {
        "runs": ["runs"],
        "retrain": [
            "retrain",
            "--image_dir",
            data,
            "--weights",
            "random",
            "--architecture",
            ARCH,
            "--how_many_training_steps",
            "5",
            "--json",
        ],
        "classify": ["classify", "--run", "x", photo],
    }[command]
    res = cli(capsys, *args, seconds=120)
    line = assert_cli_error(res)
    assert str(target) in line or "LAB_HOME" in line, line
    assert (tmp_path / "file").read_text() == "I am a file\n"


# === offline with a black-hole DNS ================================================================
@pytest.fixture
def black_hole_dns(monkeypatch):
    """Every name lookup hangs for 30 s, as when DNS packets are dropped."""

    def never(*args, **kwargs):
        time.sleep(30)
        raise socket.gaierror("black hole")

    monkeypatch.setattr(socket, "getaddrinfo", never)


def _weights():
    from engine.models import backbones

    return backbones.ensure_weights(ARCH)


def _flowers():
    from engine.data import sources

    return sources.download_flowers()


def _beans():
    from engine.data import sources

    return sources.download_beans()


def _imagenet_labels():
    from engine.export import predict

    return predict.imagenet_labels()


@pytest.mark.parametrize(
    "fetch",
    [_weights, _flowers, _beans, _imagenet_labels],
    ids=["weights", "flowers", "beans", "imagenet-labels"],
)
def test_offline_with_black_hole_dns_fails_fast(fetch, black_hole_dns, lab_home):
    start = time.monotonic()
    try:
        bounded(fetch, 12)
    except LabError as exc:
        assert "\n" not in str(exc) and str(exc).strip()
    except corpus.Hang:
        pytest.fail(f"still waiting on DNS after {time.monotonic() - start:.1f} s")
    else:
        pytest.fail("a download 'succeeded' with no network")
    elapsed = time.monotonic() - start
    assert elapsed < 5, f"offline failure took {elapsed:.1f} s (a hang bound, not a speed test)"


def test_offline_retrain_flowers_cli(black_hole_dns, capsys):
    start = time.monotonic()
    res = cli(capsys, "retrain", "--image_dir", "flowers", "--json", seconds=60)
    assert_cli_error(res, "flower")
    assert time.monotonic() - start < 20


# === jobs =========================================================================================
@pytest.mark.slow
@pytest.mark.parametrize("when", ["at-once", "after-1s"])
def test_cancel_a_retrain_job_during_start_up(when, lab_home, tmp_path):
    from dataclasses import asdict

    from engine.jobs import queue
    from engine.runs.retrain import RunConfig
    from engine.runs.store import RunStore
    from engine.training.head import TrainConfig

    data = corpus.make_dataset(tmp_path / "ds")
    params = asdict(
        RunConfig(source=str(data), architecture=ARCH, weights="random", train=TrainConfig(steps=5))
    )
    job_id = queue.start_job("retrain", params)
    if when == "after-1s":
        time.sleep(1)
    queue.cancel_job(job_id)
    deadline = time.monotonic() + 120
    while queue.get_job(job_id).active:
        assert time.monotonic() < deadline, "a cancelled job was still active after 120 s"
        time.sleep(0.2)
    job = queue.get_job(job_id)
    assert job.status == "cancelled", f"{job.status}: {job.error}"
    statuses = {run.status for run in RunStore().list_runs()}
    if "running" in statuses:  # the worker may still be writing the run's end: give it a moment
        time.sleep(10)
        late = {run.status for run in RunStore().list_runs()}
        pytest.fail(f"the job is cancelled but its run is still running (10 s later: {late})")
    assert statuses <= {"cancelled"}, f"runs of a cancelled job: {statuses}"


@pytest.mark.slow
def test_kill_9_of_a_job_worker(lab_home, big_dataset):
    from dataclasses import asdict

    from engine.jobs import queue
    from engine.runs.retrain import RunConfig
    from engine.training.head import TrainConfig

    params = asdict(
        RunConfig(source=str(big_dataset), architecture=ARCH, weights="random", train=TrainConfig(steps=4000))
    )
    job_id = queue.start_job("retrain", params)
    deadline = time.monotonic() + 180
    while (job := queue.get_job(job_id)).phase not in ("extract", "train"):
        assert job.active and time.monotonic() < deadline, f"{job.status} {job.phase}: {job.error}"
        time.sleep(0.1)
    os.killpg(job.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while queue.get_job(job_id).active:
        assert time.monotonic() < deadline, "a killed worker's job is still active"
        time.sleep(0.2)
    assert queue.get_job(job_id).status == "interrupted"
    runs = runs_json()
    assert [r["status"] for r in runs.values()] == ["interrupted"], runs
