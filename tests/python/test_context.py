"""Contexts and start methods."""
import importlib
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import PKG_DIR

IMPLS = ["multiprocessing", "cmultiprocessing"]


def run_script(code, impl):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(PKG_DIR))
    return subprocess.run([sys.executable, "-c", f"import {impl} as mp\n" + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=30, env=env)


def test_fork_context_api(mp):
    assert mp.get_start_method() == "fork"
    assert mp.get_context() is mp
    assert mp.get_context("fork") is mp
    assert mp._name == "fork"
    for name in ("Process", "current_process", "parent_process", "active_children",
                 "cpu_count", "get_context", "get_start_method", "set_start_method",
                 "ProcessError", "TimeoutError", "BufferTooShort", "AuthenticationError",
                 "freeze_support", "get_logger", "log_to_stderr", "set_executable"):
        assert hasattr(mp, name), name
    assert mp.current_process().name == "MainProcess"
    assert mp.cpu_count() >= 1
    assert issubclass(mp.TimeoutError, mp.ProcessError)
    with pytest.raises(ValueError, match="cannot set start method of concrete context"):
        mp.set_start_method("fork")
    with pytest.raises(ValueError, match="cannot find context for 'nonsense'"):
        mp.get_context("nonsense")
    with pytest.raises(AttributeError):
        mp.no_such_factory


def test_context_process_runs(mp):
    p = mp.Process(target=os.getpid)
    p.start()
    p.join(10)
    assert p.exitcode == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_default_context_start_method_rules(impl):
    r = run_script("""
        print(mp.get_start_method(allow_none=True))
        mp.set_start_method("fork")
        print(mp.get_start_method())
        try:
            mp.set_start_method("fork")
        except RuntimeError as e:
            print("RuntimeError", e)
        mp.set_start_method(None, force=True)
        print(mp.get_start_method(allow_none=True))
        print(mp.get_start_method())           # fixes the default
        try:
            mp.set_start_method("fork")
        except RuntimeError:
            print("set again")
        mp.set_start_method("fork", force=True)
        print(mp.get_context() is mp.get_context("fork"))
        print("fork" in mp.get_all_start_methods())
        try:
            mp.get_context("nonsense")
        except ValueError as e:
            print("ValueError", e)
    """, impl)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n") == [
        "None", "fork", "RuntimeError context has already been set", "None", "fork",
        "set again", "True", "True", "ValueError cannot find context for 'nonsense'", ""]


@pytest.mark.parametrize("impl", IMPLS)
def test_starting_a_default_process_fixes_the_start_method(impl):
    r = run_script("""
        ctx_p = mp.get_context("fork").Process(target=int)
        ctx_p.start(); ctx_p.join(10)
        print(mp.get_start_method(allow_none=True))   # a concrete context: not fixed
        p = mp.Process(target=int)
        p.start(); p.join(10)
        print(mp.get_start_method(allow_none=True))
        try:
            mp.set_start_method("fork")
        except RuntimeError as e:
            print("RuntimeError", e)
        mp.set_start_method("fork", force=True)
        print(p.exitcode, ctx_p.exitcode)
    """, impl)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n") == [
        "None", "fork", "RuntimeError context has already been set", "0 0", ""]


@pytest.mark.parametrize("impl", IMPLS)
def test_every_start_method_has_a_context(impl):
    module = importlib.import_module(impl)
    assert module.get_all_start_methods() == ["fork", "spawn", "forkserver"]
    for method in module.get_all_start_methods():
        ctx = module.get_context(method)
        assert ctx.get_start_method() == method
        assert type(ctx).__name__ == {"fork": "ForkContext", "spawn": "SpawnContext",
                                      "forkserver": "ForkServerContext"}[method]
        assert ctx.Process.__name__ == type(ctx).__name__.replace("Context", "Process")
    with pytest.raises(ValueError):
        module.get_context("vfork")


def test_context_resolves_module_factories(cmp):
    ctx = cmp.get_context("fork")
    assert ctx.ProcessError is cmp.ProcessError
    assert ctx.current_process is cmp.current_process
    assert isinstance(ctx.Process(), cmp.Process)
    assert "Process" in dir(ctx)
    with pytest.raises(RuntimeError):
        import pickle
        pickle.dumps(ctx)


@pytest.mark.parametrize("impl", ["multiprocessing", "cmultiprocessing"])
def test_context_registered_by_a_library(impl):
    """A library adds its context to context._concrete_contexts (loky
    does): get_context(name) finds it; unknown names stay a ValueError."""
    mp = importlib.import_module(impl)
    context = importlib.import_module(impl + ".context")

    class LibraryContext(context.BaseContext):
        _name = "library-test"

    ctx = LibraryContext()
    context._concrete_contexts["library-test"] = ctx
    try:
        assert mp.get_context("library-test") is ctx
        assert mp.get_context().get_context("library-test") is ctx
    finally:
        del context._concrete_contexts["library-test"]
    with pytest.raises(ValueError):
        mp.get_context("library-test")
