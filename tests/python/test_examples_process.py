"""The process examples, in C and in Python (on cmultiprocessing via -m
and on the stdlib), print the same greeting."""
import os
import subprocess
import sys

import pytest

from conftest import PKG_DIR

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("BUILD", "build")


def run(cmd, **kw):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(PKG_DIR))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env, **kw)


def test_python_example_on_cmultiprocessing():
    r = run([sys.executable, "-m", "cmultiprocessing",
             os.path.join(ROOT, "examples", "python", "process.py")])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Hello from Process-1\n"


def test_python_example_on_stdlib():
    r = run([sys.executable, os.path.join(ROOT, "examples", "python", "process.py")])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Hello from Process-1\n"


def run_c_example(name):
    """Runs build/examples/<name> (skips when it is not built)."""
    exe = os.path.join(ROOT, BUILD, "examples", name)
    if not os.path.exists(exe):
        exe = os.path.join(ROOT, "build", "examples", name)
    if not os.path.exists(exe):
        pytest.skip("C example not built (make)")
    r = run([exe])
    assert r.returncode == 0, r.stderr
    return r


def test_c_example():
    r = run_c_example("process")
    assert r.stdout == "Hello from Process-1\n"
