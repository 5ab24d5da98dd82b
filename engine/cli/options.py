"""Defaults and list types the CLI's commands share; every default is read from the engine, none copied.

Training flags default to a fresh `TrainConfig()`, dataset flags to `RunConfig`'s field defaults, and
list flags are parsed by `engine.params.parse_list`, the parser the pages use too.
"""

from __future__ import annotations

import argparse

from engine.errors import InvalidArgument
from engine.params import parse_list
from engine.runs.retrain import RunConfig
from engine.training.config import OPTIMIZERS, SCHEDULES, TrainConfig

TRAIN = TrainConfig()  # retrain.py's defaults, as every run saves them
RUN = RunConfig(source="demo")  # only its defaults (backbone, weights, split percentages) are read

__all__ = ["OPTIMIZERS", "RUN", "SCHEDULES", "TRAIN", "floats", "ints", "parse_list"]


def _list_type(cast):
    def parse(text: str) -> list:
        try:
            return parse_list(text, cast)
        except InvalidArgument as exc:  # argparse then prints usage and exits 2, as for any bad flag
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


floats = _list_type(float)
ints = _list_type(int)
