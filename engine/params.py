"""Parsing of the comma-separated lists that the CLI and the pages accept ("0.005, 0.01; 0.1")."""

from __future__ import annotations

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
