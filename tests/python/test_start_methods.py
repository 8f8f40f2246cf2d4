"""The spawn and forkserver start methods, differential: the child is a new
interpreter (or a fork of the fork server), gets the parent's __main__ as
__mp_main__, and our objects passed as arguments arrive usable.

Each spawn costs tens of milliseconds: every test shares its processes."""
import importlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

import _spawn_helpers as h
from conftest import PKG_DIR

IMPLS = ["multiprocessing", "cmultiprocessing"]
METHODS = ["spawn", "forkserver"]


@pytest.fixture(params=[(i, m) for i in IMPLS for m in METHODS],
                ids=lambda p: f"{p[0]}-{p[1]}")
def ctx(request):
    impl, method = request.param
    return importlib.import_module(impl).get_context(method)


def test_start_join_exitcode_signals(ctx):
    done = ctx.Process(target=h.exit_with, args=(7,))
    sleeper = ctx.Process(target=h.sleep, args=(30,), daemon=True)
    victim = ctx.Process(target=h.sleep, args=(30,))
    for p in (done, sleeper, victim):
        p.start()
    assert isinstance(done.sentinel, int)
    mp = importlib.import_module(type(ctx).__module__.split(".")[0])
    assert importlib.import_module(mp.__name__ + ".connection").wait([done.sentinel], 30)
    done.join(30)
    assert done.exitcode == 7
    assert not done.is_alive()
    sleeper.join(0.05)
    assert sleeper.is_alive() and sleeper.exitcode is None and sleeper.daemon
    sleeper.terminate()
    victim.kill()
    sleeper.join(30)
    victim.join(30)
    assert sleeper.exitcode == -signal.SIGTERM
    assert victim.exitcode == -signal.SIGKILL
    assert ctx.active_children() == []


def test_child_knows_itself_and_its_parent(ctx):
    out = ctx.Queue()
    p = ctx.Process(target=h.report, args=(out, os.getpid()), name="reporter", daemon=True)
    p.start()
    r = out.get(timeout=30)
    p.join(30)
    assert p.exitcode == 0
    assert r["name"] == "reporter" and r["daemon"] is True
    assert r["authkey"] == bytes(ctx.current_process().authkey)
    assert r["parent_pid"] == os.getpid() and r["parent_alive"] is True
    # a spawned child is ours; a fork server's is the server's
    assert r["ppid_is_parent"] == (ctx.get_start_method() == "spawn")
    assert r["cwd"] == os.getcwd()
    assert os.path.dirname(h.__file__) in r["path"]


def test_objects_as_arguments_arrive_usable(ctx):
    mp = importlib.import_module(type(ctx).__module__.split(".")[0])
    with mp.get_context("fork").Manager() as manager:
        mine, theirs = ctx.Pipe()
        s_mine, s_theirs = socket.socketpair()
        objs = (ctx.Lock(), ctx.RLock(), ctx.Semaphore(0), ctx.BoundedSemaphore(1), ctx.Event(),
                ctx.Condition(), ctx.Barrier(2), ctx.Value("i", 1), ctx.Array("i", 3),
                ctx.RawArray("i", 3), ctx.RawValue("d", 0.5), ctx.Queue(), ctx.SimpleQueue(),
                ctx.JoinableQueue(), theirs, s_theirs, manager.dict())
        (lock, rlock, sem, bsem, event, cond, barrier, value, array, raw, rawvalue, queue,
         squeue, jqueue, conn, sock, proxy) = objs
        out = ctx.Queue()
        lock.acquire()
        p = ctx.Process(target=h.use_objects, args=(objs, out))
        p.start()
        assert sem.acquire(timeout=30)
        for _ in range(3000):  # until the child waits on the condition
            with cond:
                if cond.notify() is None and event.wait(0.01):
                    break
        assert event.wait(30)
        assert barrier.wait(30) in (0, 1)
        mine.send("ping")
        r = out.get(timeout=30)
        # what the child put, before it is joined: the stdlib's child waits
        # until its queues are read
        assert queue.get(timeout=10) == "q" and queue.get(timeout=10) == b"x" * (4 << 20)
        assert squeue.get() == "sq"
        assert jqueue.get(timeout=10) == "jq"
        p.join(30)
        assert p.exitcode == 0
        assert r == {"lock_taken": False, "rlock": True, "bsem": "ValueError", "notified": True,
                     "barrier": True}
        assert value.value == 6 and array[:] == [42, 0, 0] and raw[:] == [0, 7, 0]
        assert rawvalue.value == 2.5
        assert mine.recv() == ("conn", "ping")
        s_mine.settimeout(10)
        assert s_mine.recv(4) == b"sock"
        assert proxy["child"] == p.pid
        s_mine.close()
        s_theirs.close()


def test_unpicklable_target_or_argument(ctx):
    for target, args, exc in ((h.unpicklable, (), pickle.PicklingError),
                              (print, (threading.Lock(),), TypeError)):
        p = ctx.Process(target=target, args=args)
        with pytest.raises(exc):
            p.start()
        assert p._popen is None
    assert ctx.active_children() == []


def test_pool_and_manager_of_the_context(ctx):
    h.set_state("changed in the parent")
    try:
        with ctx.Pool(2, initializer=h.set_state, initargs=("initialized",),
                      maxtasksperchild=2) as pool:
            assert pool.map(h.square, range(5)) == [0, 1, 4, 9, 16]
            info = pool.map(h.worker_info, range(6), chunksize=1)
        with ctx.Pool(1) as pool:
            fresh = pool.apply(h.worker_info, (0,))
    finally:
        h.set_state("as imported")
    # workers are new interpreters (nothing inherited), named for the method,
    # replaced after maxtasksperchild
    prefix = {"spawn": "SpawnPoolWorker", "forkserver": "ForkServerPoolWorker"}
    assert {(state, name) for state, name, _ in info} == {
        ("initialized", prefix[ctx.get_start_method()])}
    assert len({pid for _, _, pid in info}) >= 3
    assert fresh[0] == "as imported"
    with ctx.Manager() as manager:
        d = manager.dict(a=1)
        d["b"] = 2
        assert dict(d) == {"a": 1, "b": 2}


def test_pool_results_bigger_than_the_ring(ctx):
    """Results that do not fit the room left in the pool's result ring go
    to its spill file, which a spawned or fork-server worker must have as
    the forked one does (it died with exit code 3 before)."""
    with ctx.Pool(2) as pool:
        out = pool.map(h.big_result, range(8), chunksize=1)
    assert [len(o) for o in out] == [(1 << 20) + 1] * 8
    assert [o[-1] for o in out] == list(range(8))


def test_manager_server_started_the_contexts_way(ctx):
    """A manager of a spawn or forkserver context runs its server in a
    process started that way (a new interpreter: the parent's changes to a
    module are not there), and its proxies work in that context's
    children; Manager() of the context and a BaseManager(ctx=) alike."""
    impl = type(ctx).__module__.split(".")[0]
    h.set_state("changed in the parent")
    try:
        with h.STATE_MANAGERS[impl](ctx=ctx) as manager:
            state, server_pid = manager.StateBox().state()
        assert state == "as imported" and server_pid != os.getpid()
        with ctx.Manager() as manager:
            d, lst = manager.dict(), manager.list()
            children = [ctx.Process(target=h.fill_proxies, args=(d, lst, k)) for k in "ab"]
            for p in children:
                p.start()
            for p in children:
                p.join(30)
            assert [p.exitcode for p in children] == [0, 0]
            assert sorted(lst) == ["a", "b"] and set(d.keys()) == {"a", "b"}
            assert os.getpid() not in d.values()
    finally:
        h.set_state("as imported")


@pytest.mark.parametrize("impl", IMPLS)
def test_child_default_method_and_log_level(impl):
    """A child of a context's Process has that context's method as its
    default (CPython's TestStartMethod.test_context), and a spawned child
    gets the package logger's effective level once the parent made the
    logger (WithProcessesTestLogging.test_level), also when that level
    comes from the root logger."""
    import logging
    mp = importlib.import_module(impl)
    logger = mp.get_logger()
    root = logging.getLogger()
    old = logger.level, root.level
    old_method = mp.get_start_method(allow_none=True)
    mp.set_start_method("spawn", force=True)  # a default that is not fork's
    seen = {}
    try:
        for level, root_level in ((32, old[1]), (logging.NOTSET, 37)):
            logger.setLevel(level)
            root.setLevel(root_level)
            for method in ("fork", "spawn", "forkserver"):
                ctx = mp.get_context(method)
                r, w = ctx.Pipe(duplex=False)
                p = ctx.Process(target=h.send_start_method_and_log_level, args=(w, impl))
                p.start()
                w.close()
                assert r.poll(30)
                seen[method, level] = r.recv()
                p.join(30)
    finally:
        mp.set_start_method(old_method, force=True)
        logger.setLevel(old[0])
        root.setLevel(old[1])
    assert seen == {(m, lv): (m, 32 if lv == 32 else 37)
                    for m in ("fork", "spawn", "forkserver") for lv in (32, logging.NOTSET)}


SCRIPT = """
    import os, sys
    import {impl} as mp
    print("top", __name__, os.path.basename(__file__), os.path.basename(sys.argv[0]),
          __spec__ is None, flush=True)

    class Worker(mp.Process):
        def __init__(self, q, *, tag):
            super().__init__()
            self.q, self.tag = q, tag

        def run(self):
            import multiprocessing
            self.q.put((__name__, self.tag, self.name, multiprocessing.__name__,
                        sys.argv[1:], "json" in sys.modules))

    if __name__ == "__main__":
        mp.set_start_method("{method}")
        mp.set_executable(sys.executable)
        mp.set_forkserver_preload(["json"])
        q = mp.Queue()
        w = Worker(q, tag="t")
        w.start()
        print(q.get(timeout=30))
        w.join(30)
        print(w.exitcode, mp.get_start_method())
"""


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("runner", ["multiprocessing", "cmultiprocessing",
                                    "-m cmultiprocessing"])
def test_main_module_is_mp_main(tmp_path, method, runner):
    impl = "multiprocessing" if runner.startswith("-m") else runner
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(SCRIPT.format(impl=impl, method=method)))
    cmd = [sys.executable] + (["-m", "cmultiprocessing"] if runner.startswith("-m") else [])
    env = dict(os.environ, PYTHONPATH=os.path.abspath(PKG_DIR))
    r = subprocess.run(cmd + [str(script), "a", "b"], capture_output=True, text=True,
                       timeout=120, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # `import multiprocessing` in the child: ours only under the runner
    module = "cmultiprocessing" if runner.startswith("-m") else "multiprocessing"
    lines = r.stdout.splitlines()
    # the parent's top level, then the child's (or the fork server's) as
    # __mp_main__: the __main__ block does not run there
    assert lines[0] == "top __main__ prog.py prog.py True"
    assert lines[1] == "top __mp_main__ prog.py prog.py True"
    assert lines[2] == repr(("__mp_main__", "t", "Worker-1", module, ["a", "b"],
                             method == "forkserver"))
    assert lines[3:] == ["0 " + method]


@pytest.mark.parametrize("impl", IMPLS)
def test_default_start_method_is_the_interpreters(impl):
    mp = importlib.import_module(impl)
    expected = "forkserver" if sys.version_info >= (3, 14) else "fork"
    code = f"import {impl} as mp; print(mp.get_start_method())"
    env = dict(os.environ, PYTHONPATH=os.path.abspath(PKG_DIR))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.stdout.strip() == expected, r.stderr
    assert mp.get_all_start_methods() == ["fork", "spawn", "forkserver"]


def test_simple_queue_reader_wakes_for_a_spawned_childs_put(ctx):
    """concurrent.futures waits on SimpleQueue()._reader with
    connection.wait() next to its workers' sentinels: a put in a spawned
    child must make it readable in the parent."""
    mp = importlib.import_module(type(ctx).__module__.split(".")[0])
    wait = importlib.import_module(mp.__name__ + ".connection").wait
    q = ctx.SimpleQueue()
    reader = q._reader
    p = ctx.Process(target=h.put_after, args=(q, 0.2, "late"))
    p.start()
    try:
        ready = wait([reader], 30)
        assert ready == [reader]
        assert q.get() == "late"
    finally:
        p.join(30)
    assert p.exitcode == 0


def test_process_pool_executor_on_the_context(ctx):
    """concurrent.futures.ProcessPoolExecutor(mp_context=ctx): its call
    queue is the stdlib's Queue on our primitives, its result queue our
    SimpleQueue."""
    import concurrent.futures as cf
    with cf.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        assert list(ex.map(h.square, range(5), timeout=60)) == [0, 1, 4, 9, 16]


def test_synchronized_structure_as_an_argument(ctx):
    """sharedctypes.synchronized() over a Structure (whose wrapper class,
    Synchronized<Name>, is made per type) arrives usable, as the same
    shared memory."""
    impl = type(ctx).__module__.split(".")[0]
    sharedctypes = importlib.import_module(impl + ".sharedctypes")
    pair = sharedctypes.synchronized(sharedctypes.RawValue(h.Pair, 1, 1.5), ctx.RLock())
    p = ctx.Process(target=h.bump_pair, args=(pair,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert (pair.x, pair.y) == (2, 3.0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("method", METHODS)
def test_segment_attached_in_a_child_is_not_reported_leaked(impl, method, tmp_path):
    """A spawned child that attaches to its parent's segment joins the
    parent's resource tracker: once the parent unlinks it, nobody warns
    that it leaked."""
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(f"""
        from concurrent.futures import ProcessPoolExecutor
        import {impl} as mp
        from {impl} import shared_memory

        def attach(name):
            s = shared_memory.SharedMemory(name=name)
            s.buf[0] = 7
            s.close()

        if __name__ == "__main__":
            ctx = mp.get_context({method!r})
            shm = shared_memory.SharedMemory(create=True, size=64)
            with ProcessPoolExecutor(2, mp_context=ctx) as ex:
                list(ex.map(attach, [shm.name] * 4))
            assert shm.buf[0] == 7
            shm.close()
            shm.unlink()
            print("done")
        """))
    env = dict(os.environ, PYTHONPATH=os.path.abspath(PKG_DIR))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=60, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "done"
    assert "leaked" not in r.stderr, r.stderr
