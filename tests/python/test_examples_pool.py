"""The Pool examples, in C and in Python (on the stdlib, and on
cmultiprocessing via -m once it has a Pool), print [1, 4, 9, 16, 25]."""
import os
import sys

import pytest

from test_examples_process import ROOT, run, run_c_example

EXPECTED = "[1, 4, 9, 16, 25]\n"


def test_python_example_on_stdlib():
    r = run([sys.executable, os.path.join(ROOT, "examples", "python", "pool.py")])
    assert r.returncode == 0, r.stderr
    assert r.stdout == EXPECTED


def test_python_example_on_cmultiprocessing(cmp):
    if not hasattr(cmp, "Pool"):
        pytest.skip("cmultiprocessing has no Pool yet")
    r = run([sys.executable, "-m", "cmultiprocessing",
             os.path.join(ROOT, "examples", "python", "pool.py")])
    assert r.returncode == 0, r.stderr
    assert r.stdout == EXPECTED


def test_c_example():
    assert run_c_example("pool").stdout == EXPECTED
