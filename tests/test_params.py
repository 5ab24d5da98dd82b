"""engine.params.human_seconds: one formatter for times shown to people."""

import pytest

from engine.params import human_seconds


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "< 1 ms"),
        (0.0004, "< 1 ms"),
        (0.0386, "39 ms"),
        (0.9994, "999 ms"),
        (0.9996, "1.0 s"),
        (2.44, "2.4 s"),
        (9.96, "10 s"),
        (59.4, "59 s"),
        (59.6, "1 min 00 s"),
        (65, "1 min 05 s"),
        (3599.6, "1 h 00 min"),
        (3725, "1 h 02 min"),
    ],
)
def test_human_seconds_reads_like_a_person_would_say_it(seconds, text):
    assert human_seconds(seconds) == text


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), -1.0, "soon", True])
def test_human_seconds_unknown_is_a_dash(bad):
    assert human_seconds(bad) == "—"
