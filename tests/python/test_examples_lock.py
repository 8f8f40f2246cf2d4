"""The lock examples, in C and in Python (on the stdlib and on
cmultiprocessing via -m): three processes each report holding the lock."""
import os
import subprocess
import sys

import pytest

from conftest import PKG_DIR

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("BUILD", "build")
EXPECTED = {f"Process-{i} acquired the lock" for i in (1, 2, 3)}


def run(cmd):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(PKG_DIR))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)


def check(r):
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3  # one whole line each: never interleaved
    assert set(lines) == EXPECTED


def test_python_example_on_stdlib():
    check(run(["/usr/bin/python3", os.path.join(ROOT, "examples", "python", "lock.py")]))


def test_python_example_on_cmultiprocessing():
    check(run([sys.executable, "-m", "cmultiprocessing",
               os.path.join(ROOT, "examples", "python", "lock.py")]))


def test_c_example():
    exe = os.path.join(ROOT, BUILD, "examples", "lock")
    if not os.path.exists(exe):
        exe = os.path.join(ROOT, "build", "examples", "lock")
    if not os.path.exists(exe):
        pytest.skip("C example not built (make)")
    check(run([exe]))
