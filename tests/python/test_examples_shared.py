"""The shared-memory examples print what their documentation says."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PKG_DIR = os.path.abspath(os.environ.get("CMP_PKG_DIR", os.path.join(ROOT, "python")))
EXPECTED = "1 [2, 2, 3]\n"


def run(cmd, **kw):
    env = dict(os.environ, PYTHONPATH=PKG_DIR)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env, **kw)


def test_python_example_on_cmultiprocessing():
    r = run([sys.executable, os.path.join(ROOT, "examples", "python", "shared_memory.py")])
    assert r.returncode == 0, r.stderr
    assert r.stdout == EXPECTED


def test_python_example_on_the_stdlib(tmp_path):
    src = open(os.path.join(ROOT, "examples", "python", "shared_memory.py")).read()
    stdlib_version = src.replace("import cmultiprocessing as multiprocessing",
                                 "import multiprocessing")
    assert stdlib_version != src
    script = tmp_path / "shared_memory_stdlib.py"
    script.write_text(stdlib_version)
    r = run([sys.executable, str(script)])
    assert r.returncode == 0, r.stderr
    assert r.stdout == EXPECTED


NAMED = "[0, 1, 2, 3, 4, 5, 6, 7] [28, 56, 'done']\n"


def test_named_example_on_cmultiprocessing_and_on_the_stdlib(tmp_path):
    path = os.path.join(ROOT, "examples", "python", "named_shared_memory.py")
    src = open(path).read()
    stdlib_version = src.replace("import cmultiprocessing as multiprocessing",
                                 "import multiprocessing").replace(
        "from cmultiprocessing import", "from multiprocessing import")
    assert "cmultiprocessing" not in stdlib_version.split('"""')[2]
    script = tmp_path / "named_stdlib.py"
    script.write_text(stdlib_version)
    for cmd in ([sys.executable, path], [sys.executable, str(script)]):
        r = run(cmd)
        assert r.returncode == 0, r.stderr
        assert r.stdout == NAMED
        assert "leaked" not in r.stderr


def test_c_example():
    builds = [os.environ.get("BUILD", "build"), "build"]
    exes = [os.path.join(b if os.path.isabs(b) else os.path.join(ROOT, b),
                         "examples", "shared_memory") for b in builds]
    exe = next((e for e in exes if os.path.exists(e)), None)
    if exe is None:
        pytest.skip("C example not built (make)")
    r = run([exe])
    assert r.returncode == 0, r.stderr
    assert r.stdout == EXPECTED
