"""The manager examples, in C and in Python (on the stdlib, and on
cmultiprocessing via -m): three processes append "data" to the list a
manager holds, and the list has three items."""
import os
import sys

from test_examples_process import ROOT, run, run_c_example

EXPECTED = "['data', 'data', 'data']\n"


def test_python_example_on_stdlib():
    r = run([sys.executable, os.path.join(ROOT, "examples", "python", "manager.py")])
    assert r.returncode == 0, r.stderr
    assert r.stdout == EXPECTED


def test_python_example_on_cmultiprocessing():
    r = run([sys.executable, "-m", "cmultiprocessing",
             os.path.join(ROOT, "examples", "python", "manager.py")])
    assert r.returncode == 0, r.stderr
    assert r.stdout == EXPECTED


def test_c_example():
    assert run_c_example("manager").stdout == EXPECTED
