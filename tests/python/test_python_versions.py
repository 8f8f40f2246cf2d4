"""The extension builds and works on every CPython >= 3.9 found on this
machine (pyenv's interpreters when present), not only the one running the
tests."""
import glob
import os
import subprocess
import sys

import pytest
from conftest import plain_build_env

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SMOKE = os.path.join(os.path.dirname(__file__), "data", "smoke.py")


def interpreters():
    found = []
    for path in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3"))):
        version = os.path.basename(os.path.dirname(os.path.dirname(path)))
        major, minor = (int(x) for x in version.split(".")[:2])
        if (major, minor) >= (3, 9):
            found.append(pytest.param(path, id=version))
    return found or [pytest.param(None, marks=pytest.mark.skip("no other interpreters"))]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("python", interpreters())
def test_builds_and_runs(python, tmp_path):
    out = tmp_path / "pkg"
    # Plain builds: a sanitizer runtime preloaded into this interpreter must
    # not leak into the compiler or the other interpreters.
    env = plain_build_env()
    subprocess.run([os.path.join(ROOT, "scripts", "build-for-python.sh"), python, str(out)],
                   check=True, timeout=280, stdout=subprocess.DEVNULL, env=env)
    result = subprocess.run([python, SMOKE, str(out)], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
