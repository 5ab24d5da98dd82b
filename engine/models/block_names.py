"""Which layer belongs to which block: block naming from Keras' layer names and the graph alone.

Block names follow Keras' layer names: MobileNet v1's depthwise-separable blocks (`conv_dw_N`,
`conv_pw_N` -> "block_N"), MobileNetV2's inverted residuals (`block_N_*`; the first one is
`expanded_conv_*` -> "block_0"), MobileNetV3's `expanded_conv_N_*`, EfficientNet's MBConv blocks
(`blockNx_*`) and InceptionV3's `mixedK` modules (the layers between mixedK-1 and mixedK, found on
the graph because Keras numbers those layers automatically). Layers before the first block are
the "stem", layers after the last one the "head".

Plain names and inbound lists in, a name -> block map out: no Keras and no other module of the lab,
so `architecture` (which assigns blocks) and `blocks` (signature blocks, which read an
architecture) both build on it without importing each other.
"""

from __future__ import annotations

import re
from collections.abc import Callable


def _v1(name: str) -> str | None:
    m = re.match(r"conv_(?:dw|pw|pad)_(\d+)", name)
    return f"block_{int(m.group(1))}" if m else None


def _v2(name: str) -> str | None:
    m = re.match(r"block_(\d+)_", name)
    if m:
        return f"block_{int(m.group(1))}"
    return "block_0" if name.startswith("expanded_conv_") else None


def _v3(name: str) -> str | None:
    m = re.match(r"expanded_conv(?:_(\d+))?_", name)
    return f"block_{int(m.group(1) or 0)}" if m else None


def _efficientnet(name: str) -> str | None:
    m = re.match(r"block(\d+[a-z])_", name)
    return f"block{m.group(1)}" if m else None


_MATCHERS: dict[str, Callable[[str], str | None]] = {
    "mobilenet_v1": _v1,
    "mobilenet_v2": _v2,
    "mobilenet_v3": _v3,
    "efficientnet": _efficientnet,
}
INCEPTION_MODULE = re.compile(r"mixed\d+")


def assign_blocks(family: str, records: list[dict]) -> dict[str, str]:
    """Map every operation name to its block ("stem", a family block, or "head").

    Args:
        family: the registry family ("mobilenet_v1", "inception_v3", ...).
        records: dicts with "name" and "inbound", in topological order.
    """
    if family == "inception_v3":
        return _module_blocks(records)
    match = _MATCHERS.get(family, lambda _name: None)
    direct = [match(r["name"]) for r in records]
    hits = [i for i, block in enumerate(direct) if block]
    if not hits:
        return {r["name"]: "body" for r in records}
    blocks: dict[str, str] = {}
    for i, r in enumerate(records):
        if direct[i]:
            blocks[r["name"]] = direct[i]
        elif i < hits[0]:
            blocks[r["name"]] = "stem"
        elif i > hits[-1]:
            blocks[r["name"]] = "head"
        else:  # an auto-named activation or op inside a block: it follows its input
            blocks[r["name"]] = blocks[r["inbound"][0]] if r["inbound"] else "stem"
    return blocks


def ancestors(records: list[dict]) -> dict[str, frozenset[str]]:
    """Every operation's ancestors, itself included (records are in topological order)."""
    anc: dict[str, frozenset[str]] = {}
    for r in records:
        anc[r["name"]] = frozenset({r["name"]}).union(*(anc[i] for i in r["inbound"]))
    return anc


def join_point(inbound: list[str], anc, position) -> str:
    """The last operation every input of a concat descends from: the module's input."""
    common = frozenset.intersection(*(anc[i] for i in inbound))
    return max(common, key=position.__getitem__)


def _module_blocks(records: list[dict]) -> dict[str, str]:
    anc = ancestors(records)
    position = {r["name"]: i for i, r in enumerate(records)}
    by_name = {r["name"]: r for r in records}
    blocks: dict[str, str] = {}
    for r in records:
        if not INCEPTION_MODULE.fullmatch(r["name"]):
            continue
        start = join_point(by_name[r["name"]]["inbound"], anc, position)
        if not blocks:
            blocks.update(dict.fromkeys(anc[start], "stem"))
        for name in anc[r["name"]] - anc[start]:
            blocks.setdefault(name, r["name"])
    return {r["name"]: blocks.get(r["name"], "head") for r in records}
