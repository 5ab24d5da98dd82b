"""What a finished run found, as one value object instead of a dict pages dig in.

The store keeps results as JSON (`Run.results`); runs written by older versions of the lab lack some
keys, and failed or running runs have almost none, so every field has an empty default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class RunResults:
    """A run's test evaluation and bookkeeping; build it with `RunResults.of(run)`."""

    # fraction of test images classified right; None when the test split is empty or the run unfinished
    test_accuracy: float | None = None
    test_count: int = 0
    # class name -> fraction right on that class's test images
    per_class_accuracy: dict[str, float] = field(default_factory=dict)
    # rows: true class, columns: predicted class, in class_names order
    confusion_matrix: list[list[int]] = field(default_factory=list)
    # test images it got wrong: {"path", "true", "predicted", "probability"}
    misclassified: list[dict[str, Any]] = field(default_factory=list)
    # the last history row (step, train/validation accuracy and cross-entropy)
    final: dict[str, Any] = field(default_factory=dict)
    # what fine-tuning did ("layers", "head_test_accuracy", ...); empty when the run did not fine-tune
    fine_tune: dict[str, Any] = field(default_factory=dict)
    # dataset summary (classes, images per split), bottleneck cache hits/misses, seconds per phase
    dataset: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    # phases done once for several runs (an experiment's scan and extraction)
    shared_phases: dict[str, float] = field(default_factory=dict)
    num_classes: int | None = None
    class_names: list[str] = field(default_factory=list)
    # a remark on the results, e.g. why there is no test accuracy
    note: str | None = None
    # why the accuracy may mislead, in words (byte-identical images across splits or classes)
    accuracy_warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RunResults:
        """Results from their stored dict; unknown keys are ignored, missing or null ones take defaults."""
        data = data if isinstance(data, dict) else {}
        known = {f.name: f for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        return cls(**values)

    @classmethod
    def of(cls, run) -> RunResults:
        """The results of a `Run` (anything with a `.results` dict)."""
        return cls.from_dict(getattr(run, "results", None))

    @property
    def validation_accuracy(self) -> float | None:
        return self.final.get("validation_accuracy")

    @property
    def validation_cross_entropy(self) -> float | None:
        return self.final.get("validation_cross_entropy")

    @property
    def warnings(self) -> list[str]:
        """The dataset scan's warnings (empty classes, duplicates, skipped files, ...)."""
        return list(self.dataset.get("warnings") or [])

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Files the run did not use: {"path", "reason"} (the path printable)."""
        return list(self.dataset.get("skipped") or [])

    @property
    def head_test_accuracy(self) -> float | None:
        """Test accuracy of the head alone (before fine-tuning, when the run fine-tuned)."""
        return self.fine_tune.get("head_test_accuracy", self.test_accuracy)

    def as_dict(self) -> dict[str, Any]:
        """The dict the store keeps (None values left out, except test_accuracy)."""
        return {k: v for k, v in asdict(self).items() if v is not None or k == "test_accuracy"}


def test_results(probs, y_test, test_records, class_names: list[str], history: list[dict]) -> RunResults:
    """Score class probabilities on the test split: accuracy, per class, confusion, the images it got wrong.

    Args:
        probs: (N, C) probabilities; y_test: (N,) true class indices; test_records: the N image records.
        history: the run's history rows (the last one becomes `final`).
    """
    if len(y_test) == 0:
        return RunResults(test_accuracy=None, test_count=0, note="The test split is empty.")
    from engine.training.evaluate import evaluate

    ev = evaluate(probs, y_test, class_names)
    misclassified = [
        {
            "path": rec.path,
            "true": class_names[int(t)],
            "predicted": class_names[int(p)],
            "probability": round(float(probs[i, int(p)]), 4),
        }
        for i, (rec, t, p) in enumerate(zip(test_records, y_test, ev.predicted, strict=True))
        if t != p
    ]
    return RunResults(
        test_accuracy=float(ev.accuracy),
        test_count=int(len(y_test)),
        per_class_accuracy=ev.per_class_accuracy,
        confusion_matrix=ev.confusion,
        misclassified=misclassified,
        final=dict(history[-1]) if history else {},
    )
