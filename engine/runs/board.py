"""The class board: finished runs ranked only against runs on the same data, and two runs side by side.

Runs are grouped by their dataset fingerprint and split (`share.run_fingerprint`): the split hash
recorded at training time (the same image bytes under the same class names in the same splits), or
for runs recorded before fingerprints, a key made from what the run recorded (class names, image
counts per class and split, split percentages). Inside a group runs are ranked by test accuracy,
then final validation accuracy, then who finished first. Imported runs take part like local ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from engine.errors import InvalidArgument
from engine.runs.entities import Run
from engine.runs.results import RunResults
from engine.runs.share import run_fingerprint
from engine.runs.store import RunStore

BEST_PER = (None, "author", "backbone")  # keep every run, or only each author's / backbone's best
UNKNOWN_AUTHOR = "(no name)"


@dataclass(frozen=True)
class BoardEntry:
    """One run's line on the board."""

    run_id: str
    name: str
    author: str
    backbone: str
    weights: str
    learning_rate: float | None
    steps: int | None
    test_accuracy: float
    validation_accuracy: float | None
    finished: float
    imported: bool

    def as_row(self, rank: int) -> dict[str, Any]:
        """A table row (for DataFrames and `--json`)."""
        return {
            "rank": rank,
            "author": self.author,
            "run": self.name,
            "backbone": self.backbone,
            "weights": self.weights,
            "learning rate": self.learning_rate,
            "steps": self.steps,
            "test accuracy": self.test_accuracy,
            "validation accuracy": self.validation_accuracy,
            "imported": self.imported,
            "run id": self.run_id,
        }


@dataclass(frozen=True)
class BoardGroup:
    """The runs on one dataset and split, best first."""

    key: str  # "split:<split hash>" or "recorded:<hash of classes, counts and percentages>"
    label: str  # for people: classes, images, split percentages
    exact: bool  # True when the key is the split hash of the image bytes (not only the counts)
    entries: tuple[BoardEntry, ...]


def dataset_key(run: Run) -> tuple[str, bool]:
    """The board's grouping key of a run and whether it is exact (a content split hash).

    Without a split hash the key hashes class names, image counts per class and split, and the
    split percentages: runs on different photos with the same counts would share it (not exact).
    """
    fingerprint = run_fingerprint(run)
    split_hash = fingerprint.get("split_hash")
    if isinstance(split_hash, str) and split_hash:
        return f"split:{split_hash}", True
    recorded = {
        k: fingerprint.get(k) for k in ("classes", "counts", "validation_percentage", "testing_percentage")
    }
    digest = hashlib.sha256(json.dumps(recorded, sort_keys=True, default=str).encode()).hexdigest()
    return f"recorded:{digest}", False


def _group_label(run: Run) -> str:
    fp = run_fingerprint(run)
    classes = [str(c) for c in fp.get("classes") or []]
    shown = ", ".join(classes[:4]) + (f" +{len(classes) - 4}" if len(classes) > 4 else "")
    images = fp.get("num_images")
    parts = [f"{len(classes)} classes ({shown})"]
    if images:
        parts.append(f"· {images} images")
    parts.append(
        f"· split {fp.get('validation_percentage')}% validation / {fp.get('testing_percentage')}% test"
    )
    return " ".join(parts)


def board_entry(run: Run) -> BoardEntry | None:
    """A finished run's board line; None for runs that cannot be ranked (unfinished, no test score)."""
    results = RunResults.of(run)
    if run.status != "finished" or results.test_accuracy is None:
        return None
    cfg = run.config or {}
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    return BoardEntry(
        run_id=run.id,
        name=run.name,
        author=getattr(run, "author", None) or UNKNOWN_AUTHOR,
        backbone=str(cfg.get("architecture") or "?"),
        weights=str(cfg.get("weights") or "?"),
        learning_rate=train.get("learning_rate"),
        steps=train.get("steps"),
        test_accuracy=float(results.test_accuracy),
        validation_accuracy=results.validation_accuracy,
        finished=run.finished or run.created,
        imported=bool(getattr(run, "imported", False)),
    )


def _rank_key(entry: BoardEntry) -> tuple:
    validation = entry.validation_accuracy if entry.validation_accuracy is not None else -1.0
    return (-entry.test_accuracy, -validation, entry.finished, entry.run_id)


def class_board(store: RunStore | None = None, best_per: str | None = None) -> list[BoardGroup]:
    """Every dataset-and-split group of finished retrain runs, best runs first; biggest groups first.

    Args:
        store: The run store; the default store if None.
        best_per: None keeps every run; "author" or "backbone" keeps the best run of each.

    Raises:
        InvalidArgument: another `best_per`.
    """
    if best_per not in BEST_PER:
        raise InvalidArgument(f"best_per must be one of {BEST_PER}, got best_per={best_per!r}")
    store = store or RunStore()
    groups: dict[str, tuple[bool, str, list[BoardEntry]]] = {}
    for run in store.list_runs(kind="retrain"):
        entry = board_entry(run)
        if entry is None:
            continue
        key, exact = dataset_key(run)
        if key not in groups:
            groups[key] = (exact, _group_label(run), [])
        groups[key][2].append(entry)
    board = []
    for key, (exact, label, entries) in groups.items():
        entries.sort(key=_rank_key)
        if best_per is not None:
            best: dict[str, BoardEntry] = {}
            for entry in entries:  # already best first: the first of each value is its best
                best.setdefault(getattr(entry, best_per), entry)
            entries = list(best.values())
        board.append(BoardGroup(key, label, exact, tuple(entries)))
    board.sort(key=lambda g: (-len(g.entries), -max(e.finished for e in g.entries)))
    return board


def side_by_side(run_a: Run, run_b: Run) -> list[dict[str, Any]]:
    """Two runs' settings and scores as rows (`what`, `a`, `b`) for a table; scores as fractions."""

    def facts(run: Run) -> dict[str, Any]:
        entry = board_entry(run)
        results = RunResults.of(run)
        final = results.final or {}
        return {
            "author": getattr(run, "author", None) or UNKNOWN_AUTHOR,
            "run": run.name,
            "backbone": (run.config or {}).get("architecture"),
            "weights": (run.config or {}).get("weights"),
            "learning rate": entry.learning_rate if entry else None,
            "steps": entry.steps if entry else None,
            "test accuracy": results.test_accuracy,
            "validation accuracy": results.validation_accuracy,
            "validation cross-entropy": results.validation_cross_entropy,
            "train accuracy": final.get("train_accuracy"),
            "training seconds": round(sum((run.phases or {}).values()), 1) or None,
        }

    a, b = facts(run_a), facts(run_b)
    return [{"what": key, "a": a[key], "b": b[key]} for key in a]
