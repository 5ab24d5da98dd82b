"""Progress events and cancellation shared by every long operation.

A progress callback receives one dict per event. Keys every event has: `phase` (one of PHASES),
`done` and `total` (units of the phase; total may be 0 when unknown) and `message` (one line for
humans). Phases add their own keys (e.g. training adds accuracy and cross-entropy).
A cancel check is a zero-argument callable returning True when the user asked to stop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.errors import Cancelled

ProgressFn = Callable[[dict[str, Any]], None]
CancelFn = Callable[[], bool]

PHASES = (
    "download",
    "weights",
    "scan",
    "extract",
    "train",
    "fine_tune",
    "evaluate",
    "save",
    "convert",
    "bench",
    "classify",
)


def emit(
    progress: ProgressFn | None,
    phase: str,
    done: int,
    total: int,
    message: str = "",
    **extra: Any,
) -> None:
    """Send one event to `progress` if there is a callback."""
    if progress is not None:
        progress({"phase": phase, "done": done, "total": total, "message": message, **extra})


def check_cancel(cancel: CancelFn | None) -> None:
    """Raise `Cancelled` if the user asked to stop."""
    if cancel is not None and cancel():
        raise Cancelled("Cancelled by the user")
