"""What every CLI command shares for output: the JSON last line and the tqdm progress bar on stderr."""

from __future__ import annotations

import json
import sys


def print_json(obj) -> None:
    """Write one JSON object as the last line of stdout."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class ProgressBar:
    """A tqdm bar on stderr that restarts for each phase of the progress stream."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled, self.phase, self.bar = enabled, None, None

    def __call__(self, event: dict) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        phase, total = event.get("phase"), int(event.get("total") or 0)
        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = tqdm(total=total or None, desc=phase, file=sys.stderr, leave=True, dynamic_ncols=True)
        if self.bar is not None:
            if total and self.bar.total != total:
                self.bar.total = total
            self.bar.n = int(event.get("done") or 0)
            row = event.get("row") or {}
            if row:
                self.bar.set_postfix(
                    train_acc=f"{row.get('train_accuracy', 0):.3f}",
                    val_acc=_fmt(row.get("validation_accuracy")),
                    refresh=False,
                )
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
