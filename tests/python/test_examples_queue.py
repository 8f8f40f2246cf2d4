"""The producer/consumer Queue examples, in C and in Python (on the stdlib
and on cmultiprocessing via -m): the consumer gets every number once."""
import os
import subprocess
import sys

import pytest

from conftest import PKG_DIR

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("BUILD", "build")
EXPECTED = f"consumed 200 items, sum of squares {sum(i * i for i in range(200))}"


def run(cmd):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(PKG_DIR))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def check(r):
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [EXPECTED]


def test_python_example_on_stdlib():
    check(run(["/usr/bin/python3", os.path.join(ROOT, "examples", "python", "queues.py")]))


def test_python_example_on_cmultiprocessing():
    check(run([sys.executable, "-m", "cmultiprocessing",
               os.path.join(ROOT, "examples", "python", "queues.py")]))


def test_c_example():
    exe = os.path.join(ROOT, BUILD, "examples", "queue")
    if not os.path.exists(exe):
        exe = os.path.join(ROOT, "build", "examples", "queue")
    if not os.path.exists(exe):
        pytest.skip("C example not built (make)")
    check(run([exe]))
