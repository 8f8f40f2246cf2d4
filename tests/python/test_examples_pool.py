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


def test_dummy_and_pool_submodules_under_the_runner(tmp_path):
    """Under python3 -m cmultiprocessing, multiprocessing.dummy.Pool and
    multiprocessing.pool.ThreadPool import and run (the issue's names)."""
    script = tmp_path / "dummy_pool.py"
    script.write_text(
        "from multiprocessing.dummy import Pool\n"
        "from multiprocessing.pool import ThreadPool, Pool as P\n"
        "import multiprocessing\n"
        "if __name__ == '__main__':\n"
        "    with Pool(2) as p:\n"
        "        print(p.map(len, ['a', 'bb']))\n"
        "    with ThreadPool(2) as t:\n"
        "        print(t.map(abs, [-1]))\n"
        "    print(multiprocessing.__name__, P.__module__)\n")
    r = run([sys.executable, "-m", "cmultiprocessing", str(script)])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "[1, 2]\n[1]\ncmultiprocessing cmultiprocessing.pool\n"
