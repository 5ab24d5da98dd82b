"""Summaries of training histories: time to a target, divergence and oscillation, accuracy at steps.

Pure functions of history rows (the dicts of engine.training.config.HISTORY_KEYS, as `train_head` returns
them or the store reads them back), with no TensorFlow and no store, so they can be checked on
constructed histories and shared by the experiment engine, the CLI, the page and the CSV export.
A history read back from SQLite has NaN turned into None: a missing cross-entropy next to a present
accuracy therefore counts as non-finite.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.params import human_seconds

NEVER = "never"  # shown where a run never reached the target

# A drop this large from the best validation accuracy to the end is a collapse, not noise.
COLLAPSE_DROP = 0.25
# A change of validation accuracy this large between two evaluations is a swing...
SWING_ACCURACY = 0.10
# ...and so is a cross-entropy that grows or shrinks by this fraction between two evaluations.
SWING_LOSS = 0.5
# More than this fraction of swings over the second half of training is an oscillation.
SWING_FRACTION = 0.2


@dataclass(frozen=True)
class Diagnosis:
    """Whether a run trained stably, and why not in one plain line."""

    flag: str | None  # None (stable), "diverged", "collapsed", "oscillating" or "overconfident"
    explanation: str
    step: int | None = None  # where it went wrong, when there is one step to point at


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def _metric_key(history: Sequence[dict[str, Any]]) -> str:
    """Validation accuracy where the run had a validation set, train accuracy otherwise."""
    has_val = any(row.get("validation_accuracy") is not None for row in history)
    return "validation_accuracy" if has_val else "train_accuracy"


def time_to_target(
    history: Sequence[dict[str, Any]], target: float = 0.8, metric: str | None = None
) -> tuple[int | None, float | None]:
    """(step, elapsed seconds) of the first evaluation at or above `target`; (None, None) if never.

    Args:
        metric: the history key compared; validation accuracy (train accuracy without one) if None.
    """
    key = metric or _metric_key(history)
    for row in history:
        value = row.get(key)
        if _finite(value) and value >= target:
            return int(row["step"]), row.get("elapsed")
    return None, None


def final(history: Sequence[dict[str, Any]], key: str) -> float | None:
    """The last recorded value of `key` (None for an empty history or a missing value)."""
    return history[-1].get(key) if history else None


def first_non_finite(history: Sequence[dict[str, Any]]) -> int | None:
    """The step of the first evaluation whose loss is NaN or infinite (None stored for NaN counts)."""
    for row in history:
        for split in ("train", "validation"):
            loss, accuracy = row.get(f"{split}_cross_entropy"), row.get(f"{split}_accuracy")
            if accuracy is not None and not _finite(loss):
                return int(row["step"])
    return None


def _swing_fraction(values: list[float], relative: bool) -> float:
    """Fraction of consecutive pairs that change by more than the swing threshold."""
    pairs = list(zip(values, values[1:], strict=False))
    if not pairs:
        return 0.0
    if relative:
        swings = [abs(b - a) > SWING_LOSS * max(min(a, b), 1e-3) for a, b in pairs]
    else:
        swings = [abs(b - a) >= SWING_ACCURACY - 1e-9 for a, b in pairs]
    return sum(swings) / len(pairs)


def diagnose(
    history: Sequence[dict[str, Any]], target: float | None = None, num_classes: int | None = None
) -> Diagnosis:
    """Flag a run that diverged (non-finite loss), collapsed, oscillated or ended overconfident.

    Checked in that order; the first that applies is the flag, with a one-line plain reason.

    Args:
        history: the run's rows in step order.
        target: the accuracy the run was meant to reach; only used to word a stable run's line.
        num_classes: enables the overconfidence check (final loss above a uniform guess's ln C).
    """
    if not history:
        return Diagnosis(None, "No evaluations recorded yet.")
    bad_step = first_non_finite(history)
    if bad_step is not None:
        return Diagnosis(
            "diverged",
            f"Diverged: the loss became infinite or NaN at step {bad_step} — each update overshot "
            "so far that the weights, and with them the scores (logits), grew beyond what a float can "
            "hold; lower the learning rate.",
            bad_step,
        )
    key = _metric_key(history)
    which = "validation" if key == "validation_accuracy" else "training"
    accuracy = [row[key] for row in history if _finite(row.get(key))]
    steps = [int(row["step"]) for row in history if _finite(row.get(key))]
    if not accuracy:
        return Diagnosis(None, "No accuracy recorded yet.")
    best = max(accuracy)
    best_step = steps[accuracy.index(best)]
    tail = accuracy[-3:]
    end = sum(tail) / len(tail)
    if best - end >= COLLAPSE_DROP:
        return Diagnosis(
            "collapsed",
            f"Collapsed: {which} accuracy reached {best:.0%} at step {best_step} but fell to "
            f"{end:.0%} by the end — updates this large undo what was learned.",
            best_step,
        )
    half = history[len(history) // 2 :]
    acc_half = [row[key] for row in half if _finite(row.get(key))]
    loss_key = key.replace("accuracy", "cross_entropy")
    loss_half = [row[loss_key] for row in half if _finite(row.get(loss_key))]
    acc_swings = _swing_fraction(acc_half, relative=False)
    loss_swings = _swing_fraction(loss_half, relative=True)
    if len(half) >= 4 and max(acc_swings, loss_swings) > SWING_FRACTION:
        what = (
            f"{which} accuracy jumped by {SWING_ACCURACY:.0%} or more between evaluations "
            f"{acc_swings:.0%} of the time"
            if acc_swings >= loss_swings
            else f"the {which} loss changed by more than {SWING_LOSS:.0%} between evaluations "
            f"{loss_swings:.0%} of the time"
        )
        return Diagnosis(
            "oscillating",
            f"Oscillated: in the second half {what} — the steps are too large to settle; "
            "lower the learning rate or decay it.",
        )
    last_loss, last_accuracy = history[-1].get(loss_key), history[-1].get(key)
    if num_classes and _finite(last_loss) and _finite(last_accuracy):
        guess = math.log(num_classes)  # the cross-entropy of answering 1/C for every class
        if last_loss > guess and last_accuracy >= min(1.0, 2.0 / num_classes):
            return Diagnosis(
                "overconfident",
                f"Overconfident: {last_accuracy:.0%} of {which} answers are right, yet the cross-entropy "
                f"is {last_loss:.2f}, worse than the {guess:.2f} of a uniform guess. Large steps made the "
                "weights and so the scores (logits) huge: every answer is given with near certainty, and a "
                "confidently wrong answer costs a lot of cross-entropy (-ln of a tiny probability), "
                "while accuracy only counts which class scored highest. Lower the learning rate.",
            )
    return Diagnosis(None, _stable_line(history, key, which, target))


def _stable_line(history, key: str, which: str, target: float | None) -> str:
    last = history[-1][key]
    if target is not None:
        step, seconds = time_to_target(history, target, key)
        if step is not None:
            when = f" ({human_seconds(seconds)})" if seconds is not None else ""
            return f"Stable: reached {target:.0%} {which} accuracy at step {step}{when}, ended at {last:.0%}."
    quarter = history[-min(len(history), max(2, len(history) // 4))][key]  # one row: itself
    if _finite(quarter) and last - quarter >= 0.02:
        return (
            f"Stable but slow: still improving at the end ({last:.0%}); "
            "more steps or a larger rate would help."
        )
    return f"Stable: settled at {last:.0%} {which} accuracy."


def race_row(
    history: Sequence[dict[str, Any]],
    test_accuracy: float | None,
    target: float = 0.8,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """One learning-rate race result from a run's history: accuracies, time to target, loss, flag."""
    key = _metric_key(history)
    step, seconds = time_to_target(history, target, key)
    diagnosis = diagnose(history, target, num_classes)
    loss_key = key.replace("accuracy", "cross_entropy")
    return {
        "final_validation_accuracy": final(history, "validation_accuracy"),
        "test_accuracy": test_accuracy,
        "steps_to_target": step,
        "seconds_to_target": seconds,
        "final_cross_entropy": final(history, loss_key),
        "steps": int(history[-1]["step"]) if history else 0,
        "flag": diagnosis.flag,
        "explanation": diagnosis.explanation,
    }


# -- spread over seeds ------------------------------------------------------------------------

# Below this many validation photos one photo moves accuracy by more than 2 points: warn.
SMALL_VALIDATION = 50
SEPARATION_RULE = (
    "Two settings differ when the ranges (lowest to highest) of their final validation accuracy over "
    "the seeds do not overlap and their means are at least one validation photo apart; otherwise the "
    "difference is within what a different seed alone gives."
)


def spread(values: Iterable[Any]) -> dict[str, Any]:
    """n, mean, sample standard deviation (0 for one value), min and max of the finite values."""
    finite = [float(v) for v in values if isinstance(v, int | float) and _finite(v)]
    if not finite:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    mean = sum(finite) / len(finite)
    var = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1) if len(finite) > 1 else 0.0
    return {"n": len(finite), "mean": mean, "sd": math.sqrt(var), "min": min(finite), "max": max(finite)}


def race_groups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The race's runs grouped by setting (`group`: rate and schedule), in first-seen order.

    Each group: its setting, how many seed runs it has and how many finished, the spread of final
    validation accuracy, test accuracy and final cross-entropy over its seeds, how many reached the
    target and the spread of their steps and seconds to it, and the flags its runs got.
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row.get("group") or row.get("name"), []).append(row)
    groups = []
    for label, members in grouped.items():
        done = [r for r in members if r.get("status") == "finished"]
        reached = [r for r in done if r.get("steps_to_target") is not None]
        flags = sorted({r["flag"] for r in done if r.get("flag")})
        groups.append(
            {
                "group": label,
                "learning_rate": members[0].get("learning_rate"),
                "schedule": members[0].get("schedule"),
                "runs": len(members),
                "finished": len(done),
                "seeds": [r.get("seed") for r in members],
                "validation_accuracy": spread(r.get("final_validation_accuracy") for r in done),
                "test_accuracy": spread(r.get("test_accuracy") for r in done),
                "cross_entropy": spread(r.get("final_cross_entropy") for r in done),
                "reached": len(reached),
                "steps_to_target": spread(r["steps_to_target"] for r in reached),
                "seconds_to_target": spread(r.get("seconds_to_target") for r in reached),
                "flags": flags,
            }
        )
    return groups


def _range_text(s: dict[str, Any]) -> str:
    if s["n"] == 0:
        return "no result"
    if s["min"] == s["max"]:
        return f"{s['min']:.0%}"
    return f"{s['min']:.0%}–{s['max']:.0%}"


def separation(groups: Sequence[dict[str, Any]], validation_size: int | None) -> dict[str, Any]:
    """Whether the best setting differs from each other one beyond the spread of its seeds.

    The rule (SEPARATION_RULE) compares ranges over seeds of the final validation accuracy, and asks
    for a gap of at least one validation photo (1/n), the smallest step accuracy can take.

    Returns:
        {"rule", "validation_size", "photo_step" (1/n or None), "warning" (or None), "pairs": [{"a", "b",
        "differ", "gap", "line"}], "lines": the pairs' plain sentences}.
    """
    n = int(validation_size) if validation_size else None
    step = 1.0 / n if n else None
    warning = None
    if n is not None and n < SMALL_VALIDATION:
        warning = (
            f"n = {n} validation photos: one photo = {100 / n:.3g} points, so accuracy moves in "
            f"{100 / n:.3g}-point jumps and settings less than a photo or two apart cannot be told apart "
            "on this split; a larger validation split or more photos would separate them."
        )
    scored = [g for g in groups if g["validation_accuracy"]["n"] > 0]
    result: dict[str, Any] = {"rule": SEPARATION_RULE, "validation_size": n, "photo_step": step,
                              "warning": warning, "pairs": [], "lines": []}  # fmt: skip
    if len(scored) < 2:
        return result
    if min(g["validation_accuracy"]["n"] for g in scored) < 2:
        result["lines"].append(
            "One seed per setting: there is no spread to compare a difference with; race at least 2 "
            "seeds (3 is the default) before calling one setting better."
        )
        return result
    best = max(scored, key=lambda g: g["validation_accuracy"]["mean"])
    b = best["validation_accuracy"]
    for other in scored:
        if other is best:
            continue
        o = other["validation_accuracy"]
        gap = b["mean"] - o["mean"]
        apart = o["max"] < b["min"]
        differ = apart and gap >= (step or 0.0) - 1e-9
        if differ:
            why = "the ranges do not overlap"
        elif apart:
            why = "the ranges do not overlap but the means are less than one validation photo apart"
        else:
            why = "the ranges overlap"
        verdict = "differ" if differ else "within the spread"
        line = (
            f"{best['group']} vs {other['group']}: {verdict} — {_range_text(b)} against "
            f"{_range_text(o)} over {b['n']} and {o['n']} seeds, mean gap {gap * 100:.1f} points; {why}."
        )
        pair = {"a": best["group"], "b": other["group"], "differ": differ, "gap": gap, "line": line}
        result["pairs"].append(pair)
        result["lines"].append(line)
    return result


def steps_table(
    history: Sequence[dict[str, Any]],
    checkpoints: Iterable[int] = (100, 400, 1000, 4000),
    test_accuracy: float | None = None,
) -> list[dict[str, Any]]:
    """Accuracy at chosen training steps, read from one run's history (no retraining).

    Each checkpoint takes the last evaluation at or before it. Test accuracy exists only for the
    final weights, so it appears only on the checkpoint that lands on the last evaluation.
    """
    rows = [r for r in history if r.get("step") is not None]
    last_step = int(rows[-1]["step"]) if rows else 0
    table = []
    for checkpoint in sorted({int(c) for c in checkpoints}):
        before = [r for r in rows if r["step"] <= checkpoint]
        row = before[-1] if before and checkpoint <= last_step else None
        at_end = row is not None and int(row["step"]) == last_step
        table.append(
            {
                "checkpoint": checkpoint,
                "step": None if row is None else int(row["step"]),
                "validation_accuracy": None if row is None else row.get("validation_accuracy"),
                "train_accuracy": None if row is None else row.get("train_accuracy"),
                "test_accuracy": test_accuracy if at_end else None,
                "note": _steps_note(row, checkpoint, last_step),
            }
        )
    return table


def _steps_note(row, checkpoint: int, last_step: int) -> str:
    if row is None:
        return f"not reached: the run trained {last_step} steps"
    if int(row["step"]) != checkpoint:
        return f"nearest evaluation at step {int(row['step'])}"
    return ""


def display(value: Any, percent: bool = False) -> str:
    """A table cell: percentages, 4 significant digits, "never" for a missing time to target."""
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.1%}" if percent else f"{value:.4g}"
    return str(value)


def to_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV text of rows (one header line); None is written as an empty cell."""
    columns = list(columns or (list(rows[0]) if rows else []))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    return out.getvalue()
