"""Parsing of what the CLI and the pages accept (comma-separated lists, display names); times for people."""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable
from typing import TypeVar

from engine.errors import InvalidArgument

T = TypeVar("T")

_KINDS = {float: "numbers", int: "whole numbers", str: "names"}


def parse_list(text: str, cast: Callable[[str], T] = str, what: str | None = None) -> list[T]:
    """Split `text` on commas (or semicolons), strip each item, drop empty ones, cast the rest.

    Args:
        text: e.g. "0.005, 0.01,0.1" or "flowers;beans".
        cast: applied to each stripped item (`float`, `int`, `str`, ...).
        what: how the error names the list, e.g. "Learning rates" (None: "expected ...").

    Returns:
        The cast items in their order (possibly empty).

    Raises:
        InvalidArgument: an item cannot be cast; the message echoes that item and the whole text.
    """
    items = [item.strip() for item in str(text).replace(";", ",").split(",")]
    values = []
    for item in items:
        if not item:
            continue
        try:
            values.append(cast(item))
        except ValueError:
            expected = f"comma-separated {_KINDS.get(cast, 'values')}"
            lead = f"{what} must be {expected}" if what else f"expected {expected}"
            raise InvalidArgument(f"{lead}, got {item!r} in {text!r}") from None
    return values


PERSON_NAME_MAX = 40  # characters of a person's display name ("Your name" in the sidebar)
# control, format (bidi overrides, zero-width), line/paragraph separators, surrogates: none in a name
_NOT_IN_NAMES = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def person_name(text: str | None) -> str | None:
    """A person's display name, stripped; None when empty.

    Raises:
        InvalidArgument: not text, longer than PERSON_NAME_MAX characters, or holding a control,
            invisible-format or line-separator character (it would mislead or break every list it is in).
    """
    if text is None:
        return None
    if not isinstance(text, str):
        raise InvalidArgument(f"a display name must be text, got {type(text).__name__}")
    name = text.strip()
    if len(name) > PERSON_NAME_MAX:
        raise InvalidArgument(f"a display name has at most {PERSON_NAME_MAX} characters, got {len(name)}")
    bad = sorted({f"U+{ord(ch):04X}" for ch in name if unicodedata.category(ch) in _NOT_IN_NAMES})
    if bad:
        raise InvalidArgument(
            f"a display name cannot hold control or invisible characters ({', '.join(bad)})"
        )
    return name or None


def human_seconds(seconds: float | None) -> str:
    """A duration for people: '< 1 ms', '39 ms', '2.4 s', '12 s', '1 min 05 s', '1 h 02 min' ('—': unknown).

    One formatter for every page and command, so a time reads the same everywhere: milliseconds below a
    second (0.0386 -> '39 ms', never '0.0 s'), one decimal below ten seconds, whole units above.

    Args:
        seconds: a duration; None, NaN, infinite or negative values count as unknown.
    """
    if seconds is None or isinstance(seconds, bool):
        return "—"
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(value) or value < 0:
        return "—"
    millis = round(value * 1000)
    if millis < 1:
        return "< 1 ms"
    if millis < 1000:
        return f"{millis} ms"
    if round(value, 1) < 10:
        return f"{value:.1f} s"
    whole = int(round(value))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    minutes = int(round(value / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min"
