"""Shared fixtures: every standard-behaviour test runs twice, once against
the standard library's multiprocessing (proving the test asserts real
behaviour) and once against cmultiprocessing."""
import importlib
import os
import signal
import sys

import pytest

PKG_DIR = os.environ.get(
    "CMP_PKG_DIR",
    os.path.join(os.path.dirname(__file__), "..", "..", "python"))
sys.path.insert(0, os.path.abspath(PKG_DIR))

IMPLEMENTATIONS = ["multiprocessing", "cmultiprocessing"]


@pytest.fixture(params=IMPLEMENTATIONS)
def mp(request):
    """The module under test, with the fork start method."""
    module = importlib.import_module(request.param)
    return module.get_context("fork")


@pytest.fixture
def cmp():
    """cmultiprocessing alone, for behaviour beyond the standard library."""
    return importlib.import_module("cmultiprocessing")


def plain_build_env():
    """The environment for a nested build or a plain C program: no
    sanitizer runtime preloaded, and none of the outer make's variables
    (make sanitize runs the tests with BUILD, EXTRA_CFLAGS... set)."""
    drop = {"LD_PRELOAD", "BUILD", "EXT", "EXTRA_CFLAGS", "OPT", "MAKEFLAGS", "MFLAGS",
            "MAKELEVEL", "MAKEOVERRIDES"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def pytest_sessionfinish(session, exitstatus):
    """Kills the child processes a failed test left behind. One stuck for
    good (a fork that inherited a lock another thread held, say) would
    otherwise keep the run from ending: multiprocessing's exit handler
    joins every child it started, without a timeout."""
    leftover = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                leftover.update(int(pid) for pid in f.read().split())
        except OSError:
            pass
    for pid in sorted(leftover):
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    if leftover:
        print(f"\nconftest: killed {len(leftover)} child process(es) left behind: "
              f"{sorted(leftover)}")
