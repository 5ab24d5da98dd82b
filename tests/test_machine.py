"""One machine-facts function: every record of where something ran asks engine.machine.machine_facts."""

from __future__ import annotations

import os
import subprocess
import sys

from engine import machine


def test_core_counts_have_one_meaning_each():
    facts = machine.machine_facts()
    assert facts["cpu_cores"] == os.cpu_count()  # logical CPUs of the machine
    assert 1 <= facts["usable_cores"] <= facts["cpu_cores"]
    assert facts["physical_cores"] is None or 1 <= facts["physical_cores"] <= facts["cpu_cores"]
    assert facts["cpu_model"] and facts["python"].count(".") == 2


def test_without_tensorflow_nothing_imports_it():
    code = (
        "import sys; from engine.machine import machine_facts; f = machine_facts(); "
        "print('gpus' in f, 'tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_every_record_uses_the_same_facts(monkeypatch):
    from engine.runs.store import collect_environment
    from engine.timing import machine as page_facts

    monkeypatch.setattr(machine.os, "cpu_count", lambda: 96)
    assert collect_environment(include_tensorflow=False)["cpu_cores"] == 96
    basic = page_facts.basic_facts()
    assert basic["cpu_cores"] == 96 and {"lab_home", "keras_home"} <= set(basic)
    assert set(basic) - {"lab_home", "keras_home"} == set(machine.machine_facts())
