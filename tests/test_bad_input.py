"""Issue 10's proof: a generated corpus of bad input driven through every entry point, in-process.

Entry points: `retrain`, `classify`, `convert`, `runs`, `timing --import_file` (through
`engine.cli.main.main`), and the functions behind the Data page (`engine.data.archives.extract_zip`,
`engine.data.uploads.save_class_images`, `engine.data.datasets.scan_image_dir`), timings import
(`engine.timing.lab.import_timings`) and the run store. Each case asserts its outcome: either a
one-line error naming the file or value and the reason (CLI: exit 2, no traceback; functions: a
`LabError`), or correct use. Nothing hangs (every call is bounded) and nothing existing is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import zipfile
from pathlib import Path

import pytest

from tests import corpus
from tests.corpus import (
    assert_cli_error,
    assert_cli_ok,
    assert_lab_error,
    call_or_lab_error,
    cli,
    image_bytes,
    info,
    zip_bytes,
)

pytestmark = pytest.mark.filterwarnings("ignore")

ARCH = "mobilenet_0.25_128"
TRAIN = ["--weights", "random", "--architecture", ARCH, "--how_many_training_steps", "5", "--json"]
CONTROL = {chr(c) for c in range(32)} | {"\x7f"}


def run_results(run_id: str) -> dict:
    from engine.runs.store import RunStore

    return RunStore().get_run(run_id).results or {}


def skipped_paths(results: dict) -> dict[str, str]:
    """path -> reason of every skipped file recorded with a run (scan or extraction)."""
    found: dict[str, str] = {}

    def walk(obj, key=""):
        if isinstance(obj, dict):
            if "path" in obj and "reason" in obj:
                found[str(obj["path"])] = str(obj["reason"])
            for k, v in obj.items():
                walk(v, k)
        elif isinstance(obj, list) and "skip" in key:
            for item in obj:
                walk(item, key)

    walk(results)
    return found


# --- shared fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_dataset(tmp_path_factory) -> Path:
    return corpus.make_dataset(tmp_path_factory.mktemp("good") / "ds")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, good_dataset) -> tuple[Path, str]:
    """A LAB_HOME holding one finished run (random weights, 5 steps): (home, run_id)."""
    from engine.cli.main import main

    base = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_HOME", str(base / "home"))
        mp.setenv("KERAS_HOME", str(base / "keras"))
        import io
        import sys

        out = io.StringIO()
        mp.setattr(sys, "stdout", out)
        assert main(["retrain", "--image_dir", str(good_dataset), *TRAIN]) == 0
    run_id = json.loads(out.getvalue().strip().splitlines()[-1])["run_id"]
    return base / "home", run_id


@pytest.fixture
def run_home(trained, lab_home) -> tuple[Path, str]:
    """A private copy of the trained LAB_HOME at this test's LAB_HOME: (run folder, run_id)."""
    home, run_id = trained
    shutil.copytree(home, lab_home, dirs_exist_ok=True)
    return lab_home / "runs" / run_id, run_id


# === 1. images inside --image_dir: scan (Data page) and retrain ===================================
IMAGE_IDS = list(corpus.IMAGE_KINDS)


def _dataset_with(tmp_path: Path, kind: str) -> tuple[Path, Path, str]:
    writer, suffix, expect = corpus.IMAGE_KINDS[kind]
    root = corpus.make_dataset(tmp_path / "ds")
    bad = root / "red" / f"x-{kind}{suffix}"
    writer(bad)
    return root, bad, expect


@pytest.mark.parametrize("kind", IMAGE_IDS)
def test_scan_image_kind(kind, tmp_path):
    from engine.data.datasets import scan_image_dir

    root, bad, expect = _dataset_with(tmp_path, kind)
    before = corpus.snapshot(root)
    data, err = call_or_lab_error(lambda: scan_image_dir(root), 20, unblock=[bad])
    assert err is None, f"one bad file failed the whole scan: {err}"
    used = {r.path for r in data.records}
    skipped = {s.path: s.reason for s in data.skipped}
    if expect == "ok":
        assert str(bad) in used, f"a valid image was not used: {skipped.get(str(bad))!r}"
    elif expect == "bad":
        assert str(bad) in used | set(skipped), "the bad file is neither used nor listed as skipped"
    for path, reason in skipped.items():
        assert reason.strip() and "\n" not in reason, f"{path}: bad reason {reason!r}"
    assert len(data.classes) == 2 and sum(1 for r in data.records if r.label == "blue") == corpus.PER_CLASS
    assert corpus.snapshot(root) == before, "scanning changed the dataset"


@pytest.mark.parametrize("kind", IMAGE_IDS)
def test_retrain_image_kind(kind, tmp_path, capsys):
    root, bad, expect = _dataset_with(tmp_path, kind)
    before = corpus.snapshot(root)
    res = cli(capsys, "retrain", "--image_dir", root, *TRAIN, unblock=(bad,))
    assert_cli_ok(res)
    results = run_results(res.last_json()["run_id"])
    skipped = skipped_paths(results)
    num_images = results.get("dataset", {}).get("num_images")
    if expect == "ok":
        assert str(bad) not in skipped, f"a valid image was skipped: {skipped.get(str(bad))!r}"
        assert num_images == 2 * corpus.PER_CLASS + 1
    elif expect == "bad":
        assert str(bad) in skipped, f"the bad file is not reported as skipped (skipped: {list(skipped)})"
        assert num_images == 2 * corpus.PER_CLASS
    assert corpus.snapshot(root) == before, "retrain changed the dataset"


# === 2. folders and names given to retrain ========================================================
def _one_class(root: Path) -> Path:
    corpus.make_class_dir(root / "red", (200, 0, 0))
    return root


def _class_named(name) -> callable:
    def build(root: Path) -> Path:
        corpus.make_dataset(root)
        target = os.path.join(os.fsencode(root), name) if isinstance(name, bytes) else root / name
        os.mkdir(target)
        for i in range(corpus.PER_CLASS):
            img = (
                os.path.join(target, b"g_%d.jpg" % i)
                if isinstance(target, bytes)
                else Path(target) / f"g_{i}.jpg"
            )
            with open(img, "wb") as fh:
                fh.write(image_bytes(seed=900 + i))
        return root

    return build


def _file_named(name) -> callable:
    def build(root: Path) -> Path:
        corpus.make_dataset(root)
        path = (
            os.path.join(os.fsencode(root / "red"), name) if isinstance(name, bytes) else root / "red" / name
        )
        with open(path, "wb") as fh:
            fh.write(image_bytes(seed=77))
        return root

    return build


def _build(steps):
    def build(root: Path) -> Path:
        root.mkdir(parents=True, exist_ok=True)
        for step in steps:
            step(root)
        return root

    return build


def _dup_across_classes(root: Path) -> Path:
    corpus.make_dataset(root)
    shutil.copy(root / "red" / "red_000.jpg", root / "blue" / "copied_from_red.jpg")
    return root


def _dup_across_splits(root: Path) -> Path:
    from engine.data.datasets import assign_split

    corpus.make_dataset(root, n=20)
    names = [f"twin_{i}.jpg" for i in range(200)]
    train = next(n for n in names if assign_split(n) == "train")
    test = next(n for n in names if assign_split(n) == "test")
    data = image_bytes(seed=4242)
    (root / "red" / train).write_bytes(data)
    (root / "red" / test).write_bytes(data)
    return root


def _loose_only(root: Path) -> Path:
    root.mkdir(parents=True)
    for i in range(4):
        (root / f"{i}.jpg").write_bytes(image_bytes(seed=i))
    return root


def _deep(root: Path) -> Path:
    corpus.make_dataset(root)
    deep = root / "red"
    for _ in range(120):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "deep.jpg").write_bytes(image_bytes(seed=5))
    return root


FOLDER_CASES = {
    # id: (builder(root) -> image_dir, "ok" | "error" | "any", needle for an error)
    "empty-image-dir": (lambda r: (r.mkdir(), r)[1], "error", "ds"),
    "only-loose-images": (_loose_only, "error", "ds"),
    "one-class": (_one_class, "error", "red"),
    "one-class-plus-empty-class": (_build([_one_class, lambda r: (r / "blue").mkdir()]), "error", "blue"),
    "two-empty-classes": (_build([lambda r: (r / "a").mkdir(), lambda r: (r / "b").mkdir()]), "error", "ds"),
    "class-of-only-text-files": (
        _build(
            [_one_class, lambda r: (r / "blue").mkdir(), lambda r: (r / "blue" / "a.jpg").write_text("x")]
        ),
        "error",
        "blue",
    ),
    "image-dir-is-a-file": (lambda r: (r.write_text("x"), r)[1], "error", "ds"),
    "image-dir-missing": (lambda r: r, "error", "ds"),
    "image-dir-symlink-loop": (lambda r: (r.symlink_to(r.name), r)[1], "error", "ds"),
    "image-dir-is-fifo": (lambda r: (os.mkfifo(r), r)[1], "error", "ds"),
    "class-folder-symlink-loop": (
        _build([corpus.make_dataset, lambda r: (r / "loop").symlink_to("loop")]),
        "any",
        "",
    ),
    "class-folder-links-to-parent": (
        _build([corpus.make_dataset, lambda r: (r / "red" / "up").symlink_to("..")]),
        "ok",
        "",
    ),
    "class-folder-dangling-link": (
        _build([corpus.make_dataset, lambda r: (r / "gone").symlink_to("/no/such")]),
        "ok",
        "",
    ),
    "class-name-newline": (_class_named("gr\neen"), "any", "green"),
    "class-name-carriage-return": (_class_named("gr\reen"), "any", "green"),
    "class-name-tab": (_class_named("gr\teen"), "any", "green"),
    "class-name-escape-sequence": (_class_named("\x1b[31mgreen\x1b[0m"), "any", "green"),
    "class-name-del-char": (_class_named("gr\x7feen"), "any", "green"),
    "class-name-bell": (_class_named("green\x07"), "any", "green"),
    "class-name-non-utf8": (_class_named(b"gr\xffeen"), "any", "gr"),
    "class-name-latin1": (_class_named(b"caf\xe9"), "any", "caf"),
    "file-name-non-utf8": (_file_named(b"bad\xff\xfename.jpg"), "ok", ""),
    "file-name-newline": (_file_named("two\nlines.jpg"), "ok", ""),
    "file-name-escape-sequence": (_file_named("\x1b[2Jclear.jpg"), "ok", ""),
    "class-name-unicode": (_class_named("café 日本"), "ok", ""),
    "class-name-emoji": (_class_named("🌷tulips"), "ok", ""),
    "class-name-leading-dash": (_class_named("-rf"), "ok", ""),
    "class-name-255-bytes": (_class_named("g" * 255), "ok", ""),
    "nested-subfolders": (_deep, "ok", ""),
    "junk-files-beside-images": (
        _build(
            [
                corpus.make_dataset,
                lambda r: (r / ".DS_Store").write_bytes(b"\0" * 10),
                lambda r: (r / "red" / "Thumbs.db").write_bytes(b"\0" * 10),
                lambda r: (r / "__MACOSX").mkdir(),
                lambda r: (r / "__MACOSX" / "._a.jpg").write_bytes(b"\0\5\x16\7"),
                lambda r: (r / "blue" / "._b.jpg").write_bytes(b"\0\5\x16\7"),
            ]
        ),
        "ok",
        "",
    ),
}


@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_retrain_folder_case(case, tmp_path, capsys):
    builder, expect, needle = FOLDER_CASES[case]
    root = tmp_path / "ds"
    image_dir = builder(root)
    before = corpus.snapshot(root) if root.is_dir() and not root.is_symlink() else None
    res = cli(capsys, "retrain", "--image_dir", image_dir, *TRAIN, unblock=(root,))
    if expect == "error":
        assert_cli_error(res, needle)
    elif expect == "ok" or res.rc == 0:
        assert_cli_ok(res)
        run_id = res.last_json()["run_id"]
        results = run_results(run_id)
        from engine.runs.store import RunStore

        labels = (RunStore().run_dir(run_id) / "labels.txt").read_text(encoding="utf-8").splitlines()
        assert labels == results["class_names"], "labels.txt does not match the classes trained"
        for name in labels:
            assert not CONTROL & set(name), f"a control character reached a label: {name!r}"
    else:
        assert_cli_error(res, needle)
    if before is not None:
        assert corpus.snapshot(root) == before, "retrain changed the dataset"


@pytest.mark.parametrize("case", ["dup-across-classes", "dup-across-splits"])
def test_duplicates_are_named_in_a_warning(case, tmp_path):
    from engine.data.datasets import scan_image_dir

    builder = {"dup-across-classes": _dup_across_classes, "dup-across-splits": _dup_across_splits}[case]
    root = builder(tmp_path / "ds")
    data = scan_image_dir(root)
    text = " ".join(data.warnings).lower()
    assert "duplicate" in text or "identical" in text, f"no warning about duplicates: {data.warnings}"
    assert "copied_from_red" in text or "twin_" in text or "red_000" in text, data.warnings


# === 3. bad numbers and names on the retrain command line ========================================
NUMBER_CASES = {
    # id: (extra args, needle)
    "lr-nan": (["--learning_rate", "nan"], "learning_rate"),
    "lr-inf": (["--learning_rate", "inf"], "learning_rate"),
    "lr-minus-inf": (["--learning_rate=-inf"], "learning_rate"),
    "lr-1e308": (["--learning_rate", "1e308"], "learning_rate"),
    "lr-negative": (["--learning_rate=-1"], "learning_rate"),
    "lr-zero": (["--learning_rate", "0"], "learning_rate"),
    "lr-text": (["--learning_rate", "abc"], "learning_rate"),
    "lr-empty": (["--learning_rate", ""], "learning_rate"),
    "steps-zero": (["--how_many_training_steps", "0"], "steps"),
    "steps-negative": (["--how_many_training_steps=-5"], "steps"),
    "steps-float": (["--how_many_training_steps", "2.5"], "steps"),
    "steps-text": (["--how_many_training_steps", "many"], "steps"),
    "batch-zero": (["--train_batch_size", "0"], "batch_size"),
    "batch-negative": (["--train_batch_size=-1"], "batch_size"),
    "eval-interval-zero": (["--eval_step_interval", "0"], "eval"),
    "testing-100": (["--testing_percentage", "100"], "testing_percentage"),
    "testing-101": (["--testing_percentage", "101"], "testing_percentage"),
    "testing-negative": (["--testing_percentage=-1"], "testing_percentage"),
    "validation-200": (["--validation_percentage", "200"], "validation_percentage"),
    "percentages-sum-100": (["--validation_percentage", "50", "--testing_percentage", "50"], "percentage"),
    "percentages-sum-110": (["--validation_percentage", "60", "--testing_percentage", "50"], "percentage"),
    "percentage-float": (["--testing_percentage", "1.5"], "testing_percentage"),
    "seed-negative": (["--seed=-1"], "seed"),
    "seed-2-31": (["--seed", str(2**31)], "seed"),
    "fine-tune-layers-negative": (["--fine_tune_layers=-1"], "fine_tune_layers"),
    "unknown-architecture": (["--architecture", "resnet_9"], "resnet_9"),
    "empty-architecture": (["--architecture", ""], "''"),
    "architecture-path": (["--architecture", "../../etc/passwd"], "../../etc/passwd"),
    "unknown-weights": (["--weights", "bogus"], "bogus"),
    "unknown-optimizer": (["--optimizer", "rmsprop"], "rmsprop"),
}


@pytest.mark.parametrize("case", list(NUMBER_CASES))
def test_retrain_bad_number(case, good_dataset, capsys):
    extra, needle = NUMBER_CASES[case]
    args = ["retrain", "--image_dir", str(good_dataset), *TRAIN]
    # the case's flag comes last so it overrides TRAIN's value
    res = cli(capsys, *args, *extra)
    assert_cli_error(res, needle)


@pytest.mark.parametrize("value", ["", " ", "flowers/../../etc", "/dev/null"])
def test_retrain_bad_image_dir_value(value, capsys):
    res = cli(capsys, "retrain", "--image_dir", value, *TRAIN)
    assert_cli_error(res)


# === 4. classify ==================================================================================
def _classify_target(kind: str, tmp: Path) -> tuple[list[str], str, tuple[Path, ...]]:
    """(paths, needle, fifos) for one bad classify input."""
    tmp.mkdir(parents=True, exist_ok=True)
    if kind == "no-such-file":
        return [str(tmp / "missing.jpg")], "missing.jpg", ()
    if kind == "folder-without-images":
        (tmp / "empty").mkdir()
        (tmp / "empty" / "notes.txt").write_text("x")
        return [str(tmp / "empty")], "empty", ()
    if kind == "folder-with-only-a-fifo":
        (tmp / "f").mkdir()
        os.mkfifo(tmp / "f" / "pipe.jpg")
        return [str(tmp / "f")], "pipe.jpg", (tmp / "f" / "pipe.jpg",)
    writer, suffix, _ = corpus.IMAGE_KINDS[kind]
    path = tmp / f"photo-{kind}{suffix}"
    writer(path)
    return [str(path)], path.name, (path,)


CLASSIFY_BAD = [
    "no-such-file",
    "folder-without-images",
    "folder-with-only-a-fifo",
    "fifo-named-jpg",
    "zero-byte-jpg",
    "text-named-jpg",
    "truncated-jpeg-half",
    "truncated-png",
    "truncated-gif",
    "png-corrupt-pixels",
    "bomb-png-100k-square",
    "bomb-jpeg-65k-square",
    "symlink-to-itself",
    "dangling-symlink",
    "unix-socket-named-jpg",
]


@pytest.mark.parametrize("kind", CLASSIFY_BAD)
def test_classify_bad_photo(kind, run_home, tmp_path, capsys):
    _, run_id = run_home
    paths, needle, fifos = _classify_target(kind, tmp_path / "in")
    res = cli(capsys, "classify", "--run", run_id, *paths, seconds=60, unblock=fifos)
    # every photo failed: exit 1 (per-image errors) or 2 (nothing to classify), one line naming it
    assert_cli_error(res, needle, codes=(1, 2))


def test_classify_mixed_batch_keeps_the_good_photo(run_home, tmp_path, capsys):
    _, run_id = run_home
    good = tmp_path / "good.jpg"
    good.write_bytes(image_bytes(seed=3))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    res = cli(capsys, "classify", "--run", run_id, str(good), str(bad), "--json")
    assert_cli_ok(res)
    results = {Path(r["source"]).name: r for r in res.last_json()["results"]}
    assert results["good.jpg"]["labels"] and results["bad.jpg"].get("error")
    assert len(res.error_lines()) == 1 and "bad.jpg" in res.error_lines()[0]


def _tamper(kind: str, folder: Path) -> str:
    """Damage a run folder; returns the needle the error must name."""
    model = folder / "model.keras"
    if kind == "model-truncated":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    elif kind == "model-zero-bytes":
        model.write_bytes(b"")
    elif kind == "model-random-bytes":
        model.write_bytes(os.urandom(4096))
    elif kind == "model-is-a-folder":
        model.unlink()
        model.mkdir()
    elif kind == "model-missing":
        model.unlink()
    elif kind == "labels-missing":
        (folder / "labels.txt").unlink()
        return "labels.txt"
    elif kind == "labels-one-extra":
        (folder / "labels.txt").write_text("red\nblue\ngreen\n")
        return "label"
    elif kind == "labels-one-short":
        (folder / "labels.txt").write_text("red\n")
        return "label"
    elif kind == "labels-not-utf8":
        (folder / "labels.txt").write_bytes(b"r\xffd\nblue\n")
        return "labels.txt"
    elif kind == "run-folder-deleted":
        shutil.rmtree(folder)
        return folder.name
    elif kind == "config-json-garbage":
        (folder / "config.json").write_text("{not json")
        return "config.json"
    return "model.keras"


RUN_TAMPERING = [
    "model-truncated",
    "model-zero-bytes",
    "model-random-bytes",
    "model-is-a-folder",
    "model-missing",
    "labels-missing",
    "labels-one-extra",
    "labels-one-short",
    "labels-not-utf8",
    "run-folder-deleted",
]


@pytest.mark.parametrize("kind", RUN_TAMPERING)
def test_classify_damaged_run(kind, run_home, tmp_path, capsys):
    folder, run_id = run_home
    needle = _tamper(kind, folder)
    photo = tmp_path / "p.jpg"
    photo.write_bytes(image_bytes(seed=8))
    res = cli(capsys, "classify", "--run", run_id, str(photo))
    assert_cli_error(res, needle)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--run", "nope"], "nope"),
        (["--run", ""], "run"),
        (["--run", "../../etc"], "../../etc"),
        (["--run", "RUN", "--format", "bogus"], "bogus"),
        (["--run", "RUN", "--top_k", "0"], "top_k"),
        (["--run", "RUN", "--top_k=-3"], "top_k"),
    ],
    ids=["missing-run", "empty-run-id", "run-id-traversal", "unknown-format", "top-k-zero", "top-k-negative"],
)
def test_classify_bad_arguments(args, needle, run_home, tmp_path, capsys):
    _, run_id = run_home
    photo = tmp_path / "p.jpg"
    photo.write_bytes(image_bytes(seed=8))
    res = cli(capsys, "classify", *[run_id if a == "RUN" else a for a in args], str(photo))
    assert_cli_error(res, needle)


# === 5. convert ===================================================================================
@pytest.mark.parametrize(
    ("args", "needle", "tamper"),
    [
        (["--run", "nope"], "nope", None),
        (["--run", "RUN", "--to", "bogus"], "bogus", None),
        (["--run", "RUN", "--to", ""], "format", None),
        (["--run", "RUN", "--to", "tflite-fp32,bogus"], "bogus", None),
        (["--run", "RUN", "--to", ",,,"], "format", None),
        (["--run", "RUN", "--to", "tflite-fp32"], "model.keras", "model-truncated"),
        (["--run", "RUN", "--to", "tflite-fp32"], "model.keras", "model-missing"),
    ],
    ids=[
        "missing-run",
        "unknown-format",
        "empty-format-list",
        "one-unknown-format",
        "only-commas",
        "truncated-model",
        "missing-model",
    ],
)
def test_convert_bad_input(args, needle, tamper, run_home, capsys):
    folder, run_id = run_home
    if tamper:
        _tamper(tamper, folder)
    res = cli(capsys, "convert", *[run_id if a == "RUN" else a for a in args])
    assert_cli_error(res, needle)


# === 6. zip uploads (Data page) ===================================================================
def _zip_from(entries, **kw):
    return lambda: zip_bytes(entries, **kw)


def _with_good(*extra):
    return lambda: zip_bytes([*corpus.good_entries(), *extra])


def _many_megabyte_entries() -> bytes:
    zeros = b"\0" * (1024**2)
    return zip_bytes([*corpus.good_entries(), *((f"red/z{i}.jpg", zeros) for i in range(150))])


def _too_many_entries() -> bytes:
    return zip_bytes([*corpus.good_entries(), *((f"red/e{i}.txt", b"") for i in range(100_001))], method=0)


def _nested_zip() -> bytes:
    return zip_bytes([("inner.zip", zip_bytes(corpus.good_entries()))])


def _tar_bytes() -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = image_bytes()
        ti = tarfile.TarInfo("red/a.jpg")
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


ZIP_CASES = {
    # id: (make bytes, "refuse" | "ok" | "any")
    "traversal-parent": (_with_good(("../evil.jpg", image_bytes())), "refuse"),
    "traversal-two-up": (_with_good(("../../evil.jpg", image_bytes())), "refuse"),
    "traversal-inside-class": (_with_good(("red/../../evil.jpg", image_bytes())), "refuse"),
    "traversal-dot-prefix": (_with_good(("./../evil.jpg", image_bytes())), "refuse"),
    "traversal-backslash": (_with_good(("..\\evil.jpg", image_bytes())), "refuse"),
    "traversal-backslash-in-class": (_with_good(("red\\..\\..\\evil.jpg", image_bytes())), "refuse"),
    "absolute-path": (_with_good(("/tmp/evil.jpg", image_bytes())), "refuse"),
    "absolute-path-etc": (_with_good(("/etc/evil.jpg", image_bytes())), "refuse"),
    "windows-drive": (_with_good(("C:/evil.jpg", image_bytes())), "refuse"),
    "windows-drive-backslash": (_with_good(("C:\\evil.jpg", image_bytes())), "refuse"),
    "unc-path": (_with_good(("\\\\server\\share\\evil.jpg", image_bytes())), "refuse"),
    "symlink-entry-to-etc": (
        _with_good((info("red/link.jpg", stat.S_IFLNK | 0o777), b"/etc/passwd")),
        "refuse",
    ),
    "symlink-entry-to-parent": (_with_good((info("red/up", stat.S_IFLNK | 0o777), b"../..")), "refuse"),
    "fifo-entry": (_with_good((info("red/pipe.jpg", stat.S_IFIFO | 0o644), b"")), "refuse"),
    "char-device-entry": (_with_good((info("red/dev.jpg", stat.S_IFCHR | 0o644), b"")), "refuse"),
    "block-device-entry": (_with_good((info("red/blk.jpg", stat.S_IFBLK | 0o644), b"")), "refuse"),
    "socket-entry": (_with_good((info("red/sock.jpg", stat.S_IFSOCK | 0o644), b"")), "refuse"),
    "encrypted-entry": (
        lambda: corpus.zip_encrypted_flag(
            [*corpus.good_entries(), ("red/secret.jpg", image_bytes())], "red/secret.jpg"
        ),
        "refuse",
    ),
    "bomb-one-entry-64MiB": (_with_good(("red/bomb.jpg", b"\0" * 64 * 1024**2)), "refuse"),
    "bomb-150-entries-of-1MiB": (_many_megabyte_entries, "refuse"),
    "too-many-entries": (_too_many_entries, "refuse"),
    "duplicate-name": (_with_good(("red/red_0.jpg", image_bytes(seed=55))), "refuse"),
    "duplicate-after-normalising": (_with_good(("./red//red_0.jpg", image_bytes(seed=56))), "refuse"),
    "file-where-folder-expected": (_zip_from([("red", b"x"), *corpus.good_entries()]), "refuse"),
    "entry-name-300-chars": (_with_good(("red/" + "n" * 300 + ".jpg", image_bytes())), "refuse"),
    "class-name-newline": (_with_good(("gr\neen/a.jpg", image_bytes())), "any"),
    "class-name-escape-sequence": (_with_good(("\x1b[31mgreen/a.jpg", image_bytes())), "any"),
    "class-name-carriage-return": (_with_good(("gr\reen/a.jpg", image_bytes())), "any"),
    "entry-name-nul": (_with_good(("red/a\x00.jpg", image_bytes())), "any"),
    "deeply-nested-entry": (_with_good(("red/" + "d/" * 150 + "a.jpg", image_bytes())), "any"),
    "nested-zip-only": (_nested_zip, "refuse"),
    "empty-zip": (_zip_from([]), "refuse"),
    "only-folders": (_zip_from([("red/", b""), ("blue/", b"")]), "refuse"),
    "loose-images-no-class-folders": (
        _zip_from([("a.jpg", image_bytes()), ("b.jpg", image_bytes(seed=1))]),
        "refuse",
    ),
    "only-macosx-junk": (
        _zip_from([("__MACOSX/red/._a.jpg", b"\0\5\x16\7"), (".DS_Store", b"\0")]),
        "refuse",
    ),
    "class-folders-of-text": (_zip_from([("red/a.txt", b"x"), ("blue/b.txt", b"y")]), "refuse"),
    "not-a-zip-random": (lambda: os.urandom(2048), "refuse"),
    "not-a-zip-png": (lambda: image_bytes("PNG"), "refuse"),
    "not-a-zip-tar-gz": (_tar_bytes, "refuse"),
    "not-a-zip-text": (lambda: b"PK but not really\n" * 10, "refuse"),
    "empty-bytes": (lambda: b"", "refuse"),
    "truncated-zip-half": (lambda: corpus.truncated(zip_bytes(corpus.good_entries())), "refuse"),
    "truncated-zip-end-record": (lambda: zip_bytes(corpus.good_entries())[:-22], "refuse"),
    "corrupt-entry-data": (corpus.zip_corrupt_entry, "refuse"),
    "unknown-compression-method": (lambda: corpus.zip_with_method(99), "refuse"),
    # must work
    "good": (_with_good(), "ok"),
    "wrapped-in-one-folder": (lambda: zip_bytes(corpus.good_entries("photos/")), "ok"),
    "with-macosx-junk": (_with_good(("__MACOSX/red/._red_0.jpg", b"\0\5\x16\7"), (".DS_Store", b"\0")), "ok"),
    "trailing-garbage-after-zip": (lambda: zip_bytes(corpus.good_entries()) + b"\0" * 100, "any"),
    "stored-not-deflated": (lambda: zip_bytes(corpus.good_entries(), method=zipfile.ZIP_STORED), "ok"),
}


@pytest.fixture
def uploads_state(lab_home):
    """An existing uploaded dataset 'keep' and a snapshot of it: nothing may touch it."""
    from engine.data.archives import extract_zip, uploads_dir

    keep = extract_zip(zip_bytes(corpus.good_entries()), "keep")
    return uploads_dir(), keep, corpus.snapshot(keep)


def _no_escape(tmp_path: Path, *allowed: Path) -> None:
    """No file named evil* exists outside the dataset folders the call may write."""
    escaped = [
        p
        for p in [*tmp_path.rglob("evil*"), *Path("/tmp").glob("evil.jpg")]
        if not any(p.is_relative_to(folder) for folder in allowed)
    ]
    assert not escaped, f"an entry was written outside its dataset: {escaped}"


@pytest.mark.parametrize("case", list(ZIP_CASES))
def test_zip_upload(case, uploads_state, lab_home, tmp_path):
    from engine.data.archives import extract_zip

    uploads, keep, before = uploads_state
    make, expect = ZIP_CASES[case]
    data = make()
    try:
        folder, err = call_or_lab_error(lambda: extract_zip(data, "target"), 120)
        if expect == "refuse":
            assert err is not None, f"accepted: {sorted(p.name for p in folder.rglob('*'))[:10]}"
            assert not (uploads / "target").exists(), "a refused archive left a dataset behind"
        elif expect == "ok":
            assert err is None, f"a good archive was refused: {err}"
        if err is None:
            classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
            assert {"red", "blue"} <= set(classes), classes
            for path in folder.rglob("*"):
                assert not CONTROL & set(path.name), f"a control character reached a name: {path.name!r}"
                assert path.is_dir() or path.is_file() and not path.is_symlink(), f"special file {path}"
        leftovers = [p.name for p in uploads.iterdir() if p.name.startswith(".")]
        assert not leftovers, f"temporary folders left behind: {leftovers}"
        assert corpus.snapshot(keep) == before, "an existing dataset changed"
        _no_escape(tmp_path, uploads / "target")
    finally:
        shutil.rmtree(uploads / "target", ignore_errors=True)


@pytest.mark.parametrize(
    "name",
    ["", "..", "../evil", "/abs", "a/b", "a\nb", "a\x00b", ".hidden", " ", "x" * 200, None, 42, "a\\b"],
    ids=lambda n: repr(n)[:20],
)
def test_zip_bad_dataset_name(name, uploads_state, tmp_path, lab_home):
    from engine.data.archives import extract_zip

    _, keep, before = uploads_state
    assert_lab_error(lambda: extract_zip(zip_bytes(corpus.good_entries()), name))
    assert corpus.snapshot(keep) == before
    _no_escape(tmp_path)


def test_zip_under_an_existing_name_does_not_replace_it(uploads_state):
    from engine.data.archives import extract_zip

    _, keep, before = uploads_state
    other = zip_bytes(
        [(f"{c}/new_{i}.jpg", image_bytes(seed=500 + i)) for c in ("cat", "dog") for i in range(2)]
    )
    folder, err = call_or_lab_error(lambda: extract_zip(other, "keep"))
    assert corpus.snapshot(keep) == before, "an existing dataset was silently replaced"
    if err is not None:
        assert "keep" in str(err)


@pytest.mark.parametrize(
    ("source", "needle"),
    [(None, "source"), (42, "int"), ("/no/such/upload.zip", "/no/such/upload.zip")],
    ids=["none", "int", "missing-path"],
)
def test_zip_bad_source(source, needle, lab_home):
    from engine.data.archives import extract_zip

    assert_lab_error(lambda: extract_zip(source, "target"), needle)


def test_zip_source_is_a_fifo(tmp_path, lab_home):
    from engine.data.archives import extract_zip

    fifo = tmp_path / "up.zip"
    os.mkfifo(fifo)
    assert_lab_error(lambda: extract_zip(str(fifo), "target"), "up.zip", seconds=10, unblock=[fifo])


# === 7. per-class uploads (Data page) =============================================================
GOOD = image_bytes(seed=11)

UPLOAD_CASES = {
    # id: (dataset name, {class: [(file name, bytes)]}, "refuse" | "partial" | "ok")
    "class-name-empty": ("up", {"": [("a.jpg", GOOD)]}, "refuse"),
    "class-name-dotdot": ("up", {"..": [("a.jpg", GOOD)]}, "refuse"),
    "class-name-slash": ("up", {"a/b": [("a.jpg", GOOD)]}, "refuse"),
    "class-name-traversal": ("up", {"../../evil": [("a.jpg", GOOD)]}, "refuse"),
    "class-name-newline": ("up", {"gr\neen": [("a.jpg", GOOD)]}, "refuse"),
    "class-name-escape": ("up", {"\x1b[31mred": [("a.jpg", GOOD)]}, "refuse"),
    "class-name-nul": ("up", {"re\x00d": [("a.jpg", GOOD)]}, "refuse"),
    "class-name-200-chars": ("up", {"c" * 200: [("a.jpg", GOOD)]}, "refuse"),
    "dataset-name-traversal": ("../evil", {"red": [("a.jpg", GOOD)]}, "refuse"),
    "dataset-name-newline": ("a\nb", {"red": [("a.jpg", GOOD)]}, "refuse"),
    "dataset-name-empty": ("", {"red": [("a.jpg", GOOD)]}, "refuse"),
    "no-files-at-all": ("up", {"red": []}, "refuse"),
    "no-classes": ("up", {}, "refuse"),
    "only-empty-file": ("up", {"red": [("a.jpg", b"")]}, "refuse"),
    "only-text-file": ("up", {"red": [("a.jpg", b"hello")]}, "refuse"),
    "only-truncated-png": ("up", {"red": [("a.png", corpus.truncated(image_bytes("PNG")))]}, "refuse"),
    "only-bomb-png": ("up", {"red": [("a.png", corpus.png_with_header(100_000, 100_000))]}, "refuse"),
    "only-corrupt-pixels-png": ("up", {"red": [("a.png", corpus.png_corrupt_pixels())]}, "refuse"),
    "good-and-corrupt": ("up", {"red": [("good.jpg", GOOD), ("bad.jpg", b"nope")]}, "partial"),
    "file-name-traversal": ("up", {"red": [("../../evil.jpg", GOOD)]}, "ok"),
    "file-name-absolute": ("up", {"red": [("/etc/evil.jpg", GOOD)]}, "ok"),
    "file-name-newline": ("up", {"red": [("a\nb.jpg", GOOD)]}, "ok"),
    "file-name-nul": ("up", {"red": [("a\x00b.jpg", GOOD)]}, "ok"),
    "file-name-300-chars": ("up", {"red": [("n" * 300 + ".jpg", GOOD)]}, "ok"),
    "file-name-script-ext": ("up", {"red": [("run.sh", GOOD)]}, "ok"),
    "file-name-empty": ("up", {"red": [("", GOOD)]}, "ok"),
    "file-name-only-dots": ("up", {"red": [("...", GOOD)]}, "ok"),
    "same-file-name-twice": ("up", {"red": [("a.jpg", GOOD), ("a.jpg", image_bytes(seed=12))]}, "ok"),
    "cmyk-jpeg": ("up", {"red": [("c.jpg", image_bytes(mode="CMYK"))]}, "ok"),
    "16bit-png": ("up", {"red": [("d.png", image_bytes("PNG", mode="I;16"))]}, "ok"),
}


@pytest.mark.parametrize("case", list(UPLOAD_CASES))
def test_class_upload(case, uploads_state, lab_home, tmp_path):
    from engine.data.uploads import save_class_images

    uploads, keep, before = uploads_state
    name, files, expect = UPLOAD_CASES[case]
    given = sum(len(v) for v in files.values())
    result, err = call_or_lab_error(lambda: save_class_images(name, files))
    if expect == "refuse":
        assert err is not None, f"accepted: {result}"
    else:
        assert err is None, f"refused: {err}"
        saved = sum(result.saved.values())
        assert saved + len(result.refused) == given, result
        if expect == "partial":
            assert saved == 1 and len(result.refused) == 1 and "bad.jpg" in result.refused[0][1], result
        else:
            assert saved == given, result
        written = [p for p in result.folder.rglob("*") if p.is_file()]
        assert len(written) == saved
        for path in written:
            assert path.resolve().is_relative_to(uploads.resolve())
            assert not CONTROL & set(path.name) and len(path.name.encode()) <= 255, path.name
    assert corpus.snapshot(keep) == before
    _no_escape(tmp_path, uploads / "up")


def test_class_upload_adds_without_overwriting(uploads_state):
    from engine.data.uploads import save_class_images

    first = save_class_images("up", {"red": [("a.jpg", GOOD)]})
    file = first.folder / "red" / "a.jpg"
    content = file.read_bytes()
    save_class_images("up", {"red": [("a.jpg", image_bytes(seed=99))]})
    assert file.read_bytes() == content
    assert len(list((first.folder / "red").iterdir())) == 2


# === 8. timings import ============================================================================
TIMINGS_CASES = {
    # id: bytes of the file (every one must be refused with a TimingsError-like LabError)
    "deep-list-200k": corpus.deep_json(200_000),
    "deep-dict-200k": corpus.deep_dict_json(200_000),
    "deep-list-in-field": json.dumps(corpus.timings_report(machine=None))
    .replace("null", "[" * 50_000 + "]" * 50_000)
    .encode(),
    "top-level-list": b"[1, 2, 3]",
    "top-level-string": b'"timings"',
    "top-level-number": b"42",
    "top-level-null": b"null",
    "empty-file": b"",
    "whitespace-only": b"   \n\t  ",
    "invalid-utf8": b'{"schema": "\xff\xfe"}',
    "truncated-json": corpus.to_bytes(corpus.timings_report())[:-20],
    "huge-file-3MB": b'{"label": "' + b"x" * 3_000_000 + b'"}',
    "huge-integer-5000-digits": corpus.to_bytes(corpus.timings_report()).replace(
        b'"items": 10', b'"items": ' + b"9" * 5000
    ),
    "nan-seconds": corpus.to_bytes(corpus.timings_report(timings=[corpus.timings_row(seconds=float("nan"))])),
    "infinity-per-item": corpus.to_bytes(
        corpus.timings_report(timings=[corpus.timings_row(per_item_ms=float("inf"))])
    ),
    "negative-seconds": corpus.to_bytes(corpus.timings_report(timings=[corpus.timings_row(seconds=-1)])),
    "string-seconds": corpus.to_bytes(corpus.timings_report(timings=[corpus.timings_row(seconds="1.0")])),
    "items-zero": corpus.to_bytes(corpus.timings_report(timings=[corpus.timings_row(items=0)])),
    "items-float": corpus.to_bytes(corpus.timings_report(timings=[corpus.timings_row(items=1.5)])),
    "items-bool": corpus.to_bytes(corpus.timings_report(timings=[corpus.timings_row(items=True)])),
    "unknown-phase": corpus.to_bytes(corpus.timings_report(timings=[corpus.timings_row(phase="warp")])),
    "unknown-device": corpus.to_bytes(corpus.timings_report(timings=[corpus.timings_row(device="tpu")])),
    "empty-backbone": corpus.to_bytes(corpus.timings_report(timings=[corpus.timings_row(backbone="")])),
    "backbone-list": corpus.to_bytes(corpus.timings_report(timings=[corpus.timings_row(backbone=["a"])])),
    "row-not-object": corpus.to_bytes(corpus.timings_report(timings=[42])),
    "timings-empty": corpus.to_bytes(corpus.timings_report(timings=[])),
    "timings-object": corpus.to_bytes(corpus.timings_report(timings={"a": 1})),
    "wrong-schema": corpus.to_bytes(corpus.timings_report(schema="someone-else")),
    "version-as-string": corpus.to_bytes(corpus.timings_report(version="1")),
    "future-version": corpus.to_bytes(corpus.timings_report(version=2)),
    "label-empty": corpus.to_bytes(corpus.timings_report(label="  ")),
    "label-number": corpus.to_bytes(corpus.timings_report(label=5)),
    "machine-list": corpus.to_bytes(corpus.timings_report(machine=[1])),
    "machine-missing": corpus.to_bytes({k: v for k, v in corpus.timings_report().items() if k != "machine"}),
    "gpus-numbers": corpus.to_bytes(
        corpus.timings_report(machine={"cpu_model": "x", "tensorflow_version": "2", "gpus": [1]})
    ),
    "cpu-model-null": corpus.to_bytes(
        corpus.timings_report(machine={"cpu_model": None, "tensorflow_version": "2", "gpus": []})
    ),
}


@pytest.mark.parametrize("case", list(TIMINGS_CASES))
def test_timings_import_refused(case, lab_home):
    from engine.timing import lab

    data = TIMINGS_CASES[case]
    before = sorted(p.name for p in lab.timings_dir().iterdir())
    assert_lab_error(lambda: lab.import_timings(data), "Timings", seconds=30)
    assert sorted(p.name for p in lab.timings_dir().iterdir()) == before, "a refused file was saved"


@pytest.mark.parametrize(
    "encoding", ["utf-16", "utf-8-sig", "utf-32"], ids=["utf16-with-bom", "utf8-bom", "utf32"]
)
def test_timings_import_other_encodings(encoding, lab_home):
    """A valid report in another Unicode encoding is read correctly or refused with one line."""
    from engine.timing import lab

    data = json.dumps(corpus.timings_report()).encode(encoding)
    report, err = call_or_lab_error(lambda: lab.import_timings(data))
    if err is None:
        assert report["timings"] == corpus.timings_report()["timings"]


@pytest.mark.parametrize(
    "label",
    ["a classmate's GPU", "with\nnewline", "../../etc/passwd", "x" * 500],
    ids=["plain", "newline", "traversal", "long"],
)
def test_timings_import_good_file_with_odd_label(label, lab_home):
    from engine.timing import lab

    report, err = call_or_lab_error(
        lambda: lab.import_timings(corpus.to_bytes(corpus.timings_report(label=label)))
    )
    if err is None:
        saved = list(lab.timings_dir().iterdir())
        assert len(saved) == 1 and saved[0].parent == lab.timings_dir()
        assert lab.load_timings(report["id"])["timings"] == corpus.timings_report()["timings"]


def test_timings_import_text_that_is_not_json_object(lab_home):
    """A str whose first character is not '{' (a list, say) is JSON, not a path to read."""
    from engine.timing import lab

    assert_lab_error(lambda: lab.import_timings("[1, 2]"), "Timings")


@pytest.mark.parametrize("kind", ["missing", "folder", "fifo", "deep", "list", "good"])
def test_timing_cli_import_file(kind, tmp_path, capsys):
    path = tmp_path / "t.json"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "deep":
        path.write_bytes(corpus.deep_json(200_000))
    elif kind == "list":
        path.write_bytes(b"[]")
    elif kind == "good":
        path.write_bytes(corpus.to_bytes(corpus.timings_report()))
    res = cli(capsys, "timing", "--import_file", path, seconds=20, unblock=(path,))
    if kind == "good":
        assert_cli_ok(res)
    else:
        assert_cli_error(res, "t.json" if kind in ("missing", "folder", "fifo") else "Timings")


# === 9. the run store =============================================================================
def _real_db(lab_home: Path) -> bytes:
    from engine.runs.store import RunStore

    store = RunStore()
    store.create_run({"architecture": ARCH}, name="one")
    store.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.connection().close()
    return (lab_home / "lab.sqlite").read_bytes()


def _store_case(kind: str, lab_home: Path) -> str:
    """Damage LAB_HOME/lab.sqlite; returns 'error' or 'any'."""
    db = lab_home / "lab.sqlite"
    lab_home.mkdir(parents=True, exist_ok=True)
    if kind == "garbage":
        db.write_bytes(os.urandom(8192))
        return "error"
    if kind == "text-file":
        db.write_text("this is not a database\n" * 100)
        return "error"
    if kind == "truncated-header":
        db.write_bytes(_real_db(lab_home)[:50])
        return "error"
    if kind == "zeroed-middle":
        data = bytearray(_real_db(lab_home))
        data[100:4096] = b"\xff" * (4096 - 100)
        db.write_bytes(bytes(data))
        return "error"
    if kind == "is-a-folder":
        db.mkdir()
        return "error"
    if kind == "zero-bytes":
        db.write_bytes(b"")
        return "ok"
    if kind == "future-schema":
        _real_db(lab_home)
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA user_version = 99")
        return "any"
    if kind == "other-apps-db":
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE runs (x INTEGER)")
            conn.execute("INSERT INTO runs VALUES (1)")
        return "any"
    if kind == "corrupt-json-in-row":
        _real_db(lab_home)
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE runs SET config = '{broken', results = 'nope', environment = '['")
        return "any"
    if kind == "garbage-wal":
        _real_db(lab_home)
        (lab_home / "lab.sqlite-wal").write_bytes(os.urandom(4096))
        return "any"
    raise AssertionError(kind)


STORE_CASES = [
    "garbage",
    "text-file",
    "truncated-header",
    "zeroed-middle",
    "is-a-folder",
    "zero-bytes",
    "future-schema",
    "other-apps-db",
    "corrupt-json-in-row",
    "garbage-wal",
]


@pytest.mark.parametrize("kind", STORE_CASES)
def test_runs_with_a_damaged_store(kind, lab_home, capsys):
    expect = _store_case(kind, lab_home)
    db = lab_home / "lab.sqlite"
    before = db.read_bytes() if db.is_file() else None
    res = cli(capsys, "runs", "--json", seconds=60)
    if expect == "error" or (expect == "any" and res.rc != 0):
        assert_cli_error(res, "lab.sqlite")
    else:
        assert_cli_ok(res)
    if before is not None and expect == "error":
        assert db.read_bytes() == before, "a damaged store was overwritten (the user's runs are lost)"


@pytest.mark.parametrize("run_id", ["nope", "", "../../etc/passwd", "x" * 10_000, "' OR 1=1 --"])
def test_store_get_run_unknown(run_id, lab_home):
    from engine.runs.store import RunStore

    store = RunStore()
    store.create_run({"architecture": ARCH}, name="one")
    assert_lab_error(lambda: store.get_run(run_id))


# === 10. damaged ImageNet weights and planted exports =============================================
WEIGHTS_ARCH = "mobilenet_0.25_224"
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "assets" / "keras_weights"


@pytest.mark.parametrize(
    "kind", ["zero-bytes", "html-error-page", "hdf5-signature-then-garbage", "truncated-real"]
)
def test_retrain_with_damaged_weights_file(kind, good_dataset, capsys):
    from engine.models import backbones

    path = backbones.weights_path(WEIGHTS_ARCH)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "zero-bytes":
        path.write_bytes(b"")
    elif kind == "html-error-page":
        path.write_bytes(b"<html><body>403 Forbidden</body></html>\n")
    elif kind == "hdf5-signature-then-garbage":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(4000))
    else:
        real = SHARED_WEIGHTS / path.name
        if not real.is_file():
            pytest.skip(f"needs the shared offline asset {real}")
        path.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    res = cli(
        capsys,
        "retrain",
        "--image_dir",
        good_dataset,
        "--architecture",
        WEIGHTS_ARCH,
        "--weights",
        "imagenet",
        "--how_many_training_steps",
        "5",
        "--json",
    )
    assert_cli_error(res, path.name)


@pytest.mark.slow
def test_planted_export_from_another_run_is_not_used(run_home, tmp_path, capsys):
    """A tflite file copied into a run's exports/ by someone else is rebuilt or refused, never run."""
    folder_a, run_a = run_home
    assert_cli_ok(cli(capsys, "convert", "--run", run_a, "--to", "tflite-fp32", seconds=300))
    other = tmp_path / "other"
    for name, colour in (("green", (0, 200, 0)), ("yellow", (220, 220, 0)), ("purple", (150, 0, 150))):
        corpus.make_class_dir(other / name, colour, prefix=name)
    res = cli(capsys, "retrain", "--image_dir", other, *TRAIN)
    assert_cli_ok(res)
    run_b = res.last_json()["run_id"]
    folder_b = folder_a.parent / run_b
    shutil.copytree(folder_a / "exports", folder_b / "exports", dirs_exist_ok=True)
    photo = tmp_path / "p.jpg"
    photo.write_bytes(image_bytes(seed=21))
    keras_res = cli(capsys, "classify", "--run", run_b, photo, "--json", "--top_k", "3")
    assert_cli_ok(keras_res)
    expected = keras_res.last_json()["results"][0]
    res = cli(
        capsys,
        "classify",
        "--run",
        run_b,
        photo,
        "--json",
        "--top_k",
        "3",
        "--format",
        "tflite-fp32",
        seconds=300,
    )
    if res.rc != 0:
        assert_cli_error(res, "tflite")
        return
    assert_cli_ok(res)
    got = res.last_json()["results"][0]
    assert got["labels"] == expected["labels"], f"the planted model answered: {got} vs keras {expected}"
    assert max(abs(a - b) for a, b in zip(got["scores"], expected["scores"], strict=True)) < 1e-3, (
        got,
        expected,
    )


# === 11. odd names, saved files and data folders the lab reads back ===============================
@pytest.mark.parametrize(
    "name",
    ["two\nlines", "\x1b[2Jclear", "tab\there", "x" * 5000],
    ids=["newline", "escape", "tab", "5000-chars"],
)
def test_retrain_run_name(name, good_dataset, capsys):
    res = cli(capsys, "retrain", "--image_dir", good_dataset, *TRAIN, "--name", name)
    if res.rc != 0:
        assert_cli_error(res, "name")
        return
    assert_cli_ok(res)
    listing = cli(capsys, "runs", "--json")
    assert_cli_ok(listing)
    table = listing.out.strip().splitlines()[:-1]  # the human table, then the JSON line
    assert len(table) == 1, f"one run printed as {len(table)} lines: {table!r}"
    assert not CONTROL & set(table[0]), f"a control character reached the terminal: {table[0]!r}"


@pytest.mark.parametrize("kind", ["deep-json", "not-json", "fifo", "folder"])
def test_saved_timings_that_went_bad(kind, lab_home):
    from engine.timing import lab

    good = lab.import_timings(corpus.to_bytes(corpus.timings_report()))
    bad = lab.timings_dir() / "20200101-000000-bad.json"
    if kind == "deep-json":
        bad.write_bytes(corpus.deep_json(200_000))
    elif kind == "not-json":
        bad.write_bytes(b"\xff\xfe garbage")
    elif kind == "fifo":
        os.mkfifo(bad)
    else:
        bad.mkdir()
    listed, err = call_or_lab_error(lab.list_timings, 20, unblock=[bad])
    assert err is None, f"one bad saved file broke the list: {err}"
    assert [r["id"] for r in listed] == [good["id"]]
    assert_lab_error(lambda: lab.load_timings(bad.stem), bad.stem, seconds=20, unblock=[bad])


@pytest.mark.parametrize("kind", ["runs-is-a-file", "datasets-is-a-file", "cache-is-a-file"])
def test_retrain_when_a_lab_folder_is_a_file(kind, lab_home, good_dataset, capsys):
    lab_home.mkdir(parents=True, exist_ok=True)
    blocker = lab_home / kind.split("-", 1)[0]
    blocker.write_text("in the way\n")
    source = "demo" if kind == "datasets-is-a-file" else good_dataset  # only named sources live there
    res = cli(capsys, "retrain", "--image_dir", source, *TRAIN)
    assert_cli_error(res, blocker.name)
    assert blocker.read_text() == "in the way\n"


@pytest.mark.parametrize("kind", ["fifo", "symlink-loop", "dangling-link", "file", "unreadable-listing"])
def test_stored_datasets_with_odd_entries(kind, lab_home):
    from engine import config
    from engine.data.uploads import save_class_images, stored_datasets

    save_class_images("fine", {"red": [("a.jpg", GOOD)], "blue": [("b.jpg", GOOD)]})
    root = config.datasets_dir()
    odd = root / "odd"
    if kind == "fifo":
        os.mkfifo(odd)
    elif kind == "symlink-loop":
        odd.symlink_to("odd")
    elif kind == "dangling-link":
        odd.symlink_to("/no/such/folder")
    elif kind == "file":
        odd.write_text("x")
    else:
        odd.mkdir()
        (odd / "red").mkdir()
        odd.chmod(0)
    found, err = call_or_lab_error(stored_datasets, 20, unblock=[odd])
    assert err is None, f"one odd entry hid every dataset: {err}"
    assert "uploads/fine" in found, found


def test_uploads_quota_bounds_the_folder_as_a_whole(uploads_state, monkeypatch):
    from engine.data import archives
    from engine.data.uploads import save_class_images

    if not hasattr(archives, "UPLOADS_QUOTA_BYTES"):
        pytest.fail("no bound on the uploads folder as a whole (archives.UPLOADS_QUOTA_BYTES)")
    uploads, keep, before = uploads_state
    monkeypatch.setattr(archives, "UPLOADS_QUOTA_BYTES", archives.folder_bytes(uploads) + 4096)
    big = zip_bytes(
        [(f"{c}/{c}_{i}.jpg", image_bytes(seed=300 + i, size=64)) for c in ("x", "y") for i in range(20)]
    )
    assert_lab_error(lambda: archives.extract_zip(big, "more"))
    assert not (uploads / "more").exists()
    files = {"red": [(f"q{i}.jpg", image_bytes(seed=700 + i, size=64)) for i in range(20)]}
    result, err = call_or_lab_error(lambda: save_class_images("more", files))
    if err is None:
        assert archives.folder_bytes(uploads) <= archives.UPLOADS_QUOTA_BYTES + 64 * 1024, result
    assert corpus.snapshot(keep) == before


@pytest.mark.parametrize("where", ["before-pixels", "after-pixels"])
def test_png_orientation_tag_applies_the_same_in_training_and_classify(where, tmp_path):
    """An eXIf orientation chunk rotates the image for classify; training must see the same pixels."""
    import io

    from PIL import Image

    from engine.data.images import load_image, probe_image

    buf = io.BytesIO()
    Image.fromarray(corpus.pixels(9, size=32)[:16]).save(buf, "PNG")  # 32 wide, 16 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise
    raw = exif.tobytes()
    raw = raw[6:] if raw.startswith(b"Exif\0\0") else raw
    data = buf.getvalue()
    chunk = corpus.png_chunk(b"eXIf", raw)
    at = data.find(b"IDAT") - 4 if where == "before-pixels" else data.find(b"IEND") - 4
    path = tmp_path / f"{where}.png"
    path.write_bytes(data[:at] + chunk + data[at:])
    shown = load_image(path)  # what classify sees
    info = probe_image(path)
    if not info.needs_pil:  # training would decode it with TensorFlow, which ignores EXIF
        assert shown.shape[:2] == (16, 32), f"classify rotates it to {shown.shape[:2]}, training does not"
