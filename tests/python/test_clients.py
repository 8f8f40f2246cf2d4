"""Real clients of multiprocessing, run as their users run them: the
standard library's concurrent.futures and compileall, logging's queue
handlers, joblib, tqdm and coverage, in-process with our context (the
differential ones run on the stdlib too) or as a program under
`python3 -m cmultiprocessing`."""
import concurrent.futures as cf
import importlib
import logging
import logging.handlers
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import PKG_DIR

# ---- helpers for the workers (module level: pickled by reference) --------


def square(x):
    return x * x


def fail(x):
    raise ValueError(f"bad {x}")


def die(_):
    os.kill(os.getpid(), signal.SIGKILL)


def set_global(v):
    global GLOBAL
    GLOBAL = v


def get_global():
    return GLOBAL


def pid_after(delay):
    time.sleep(delay)
    return os.getpid()


def run_program(tmp_path, source, *args, timeout=60, module_args=None):
    """Runs source as a script (or `-m module_args`) under python3 -m
    cmultiprocessing in tmp_path; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(PKG_DIR))
    if module_args is None:
        script = tmp_path / "prog.py"
        script.write_text(textwrap.dedent(source))
        cmd = [sys.executable, "-m", "cmultiprocessing", str(script), *args]
    else:
        cmd = [sys.executable, "-m", "cmultiprocessing", "-m", *module_args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(tmp_path))


# ---- concurrent.futures.ProcessPoolExecutor ------------------------------


@pytest.fixture(params=["fork", "spawn", "forkserver"])
def ctx(request, mp):
    """mp's context of each start method (the executor's mp_context)."""
    module = importlib.import_module(type(mp).__module__.split(".")[0])
    if request.param not in module.get_all_start_methods():
        pytest.skip(f"no {request.param} start method")
    return module.get_context(request.param)


def test_executor_submit_map_exception(ctx):
    with cf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        assert ex.submit(square, 7).result(timeout=30) == 49
        assert list(ex.map(square, range(20), timeout=30)) == [i * i for i in range(20)]
        assert list(ex.map(square, range(20), chunksize=6, timeout=30)) == \
            [i * i for i in range(20)]
        with pytest.raises(ValueError, match="bad 3"):
            ex.submit(fail, 3).result(timeout=30)


def test_executor_unpicklable_argument_fails_its_future(ctx):
    # the stdlib's feeder thread calls _SafeQueue._on_queue_feeder_error;
    # ours calls it from put(): the future fails, the executor goes on
    with cf.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            ex.submit(square, lambda: 1).result(timeout=30)
        assert ex.submit(square, 3).result(timeout=30) == 9


def test_executor_initializer(ctx):
    with cf.ProcessPoolExecutor(2, mp_context=ctx, initializer=set_global,
                                initargs=(41,)) as ex:
        assert ex.submit(get_global).result(timeout=30) == 41


def test_executor_killed_worker_breaks_the_pool(ctx):
    ex = cf.ProcessPoolExecutor(2, mp_context=ctx)
    try:
        with pytest.raises(cf.process.BrokenProcessPool):
            ex.submit(die, 0).result(timeout=30)
        with pytest.raises(cf.process.BrokenProcessPool):
            ex.submit(square, 1)
    finally:
        ex.shutdown(wait=True)


def test_executor_shutdown_cancel_futures(ctx):
    ex = cf.ProcessPoolExecutor(1, mp_context=ctx)
    futures = [ex.submit(pid_after, 0.2) for _ in range(12)]
    ex.shutdown(wait=True, cancel_futures=True)
    cancelled = sum(f.cancelled() for f in futures)
    assert 0 < cancelled < 12
    assert all(f.done() for f in futures)


@pytest.mark.parametrize("impl", ["multiprocessing", "cmultiprocessing"])
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_executor_max_tasks_per_child(impl, method):
    module = importlib.import_module(impl)
    if method not in module.get_all_start_methods():
        pytest.skip(f"{impl} has no {method} start method yet")
    if sys.version_info < (3, 11):
        pytest.skip("max_tasks_per_child is 3.11's")
    ctx = module.get_context(method)
    with cf.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=2) as ex:
        pids = [ex.submit(pid_after, 0).result(timeout=60) for _ in range(4)]
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[0] != pids[2]


def test_executor_under_the_runner(tmp_path):
    r = run_program(tmp_path, """
        import concurrent.futures as cf, multiprocessing as mp, os, signal, time
        def sq(x): return x * x
        def boom(x): raise KeyError(x)
        def die(x): os.kill(os.getpid(), signal.SIGKILL)
        def init(v):
            global G; G = v
        def getg(): return G
        if __name__ == "__main__":
            assert mp.__name__ == "cmultiprocessing"
            with cf.ProcessPoolExecutor(2) as ex:   # the default context
                print(list(ex.map(sq, range(5))))
                try:
                    ex.submit(boom, 1).result(30)
                except KeyError as e:
                    print("error", e)
            with cf.ProcessPoolExecutor(2, initializer=init, initargs=(5,)) as ex:
                print("init", ex.submit(getg).result(30))
            ex = cf.ProcessPoolExecutor(2, mp_context=mp.get_context("fork"))
            try:
                ex.submit(die, 0).result(30)
            except cf.process.BrokenProcessPool:
                print("broken")
            ex.shutdown()
            ex = cf.ProcessPoolExecutor(1)
            fs = [ex.submit(time.sleep, 0.1) for _ in range(10)]
            ex.shutdown(cancel_futures=True)
            print("cancelled", sum(f.cancelled() for f in fs) > 0)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:5] == ["[0, 1, 4, 9, 16]", "error 1", "init 5", "broken",
                                        "cancelled True"]


def test_compileall_jobs_under_the_runner(tmp_path):
    src = tmp_path / "src" / "pkg"
    src.mkdir(parents=True)
    for i in range(6):
        (src / f"mod{i}.py").write_text(f"VALUE = {i}\n")
    r = run_program(tmp_path, None, module_args=["compileall", "-q", "-j", "2",
                                                 str(tmp_path / "src")])
    assert r.returncode == 0, r.stderr
    assert len(list((src / "__pycache__").glob("mod*.pyc"))) == 6


# ---- logging's QueueHandler / QueueListener ------------------------------


def log_from_child(q, i):
    logger = logging.getLogger(f"clients.child{i}")
    logger.handlers[:] = [logging.handlers.QueueHandler(q)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.info("hello from %d", i)


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_logging_queue_handler_and_listener(mp):
    q = mp.Queue()
    collect = Collect()
    listener = logging.handlers.QueueListener(q, collect)
    listener.start()
    try:
        procs = [mp.Process(target=log_from_child, args=(q, i)) for i in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    finally:
        listener.stop()
    assert sorted(collect.messages) == [f"hello from {i}" for i in range(3)]


# ---- joblib, tqdm, coverage, dask -----------------------------------------


def _run_joblib(tmp_path, backend, more=""):
    """joblib.Parallel over sq(0..9) with backend, then the lines in more,
    in a program run under the runner; checks the printed squares."""
    pytest.importorskip("joblib")
    r = run_program(tmp_path, f"""
        import joblib, multiprocessing
        def sq(x): return x * x
        if __name__ == "__main__":
            assert multiprocessing.__name__ == "cmultiprocessing"
            out = joblib.Parallel(n_jobs=2, backend="{backend}")(
                joblib.delayed(sq)(i) for i in range(10))
{more}            print(out)
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str([i * i for i in range(10)])


def test_joblib_multiprocessing_backend_under_the_runner(tmp_path):
    _run_joblib(tmp_path, "multiprocessing")


def test_joblib_loky_backend_under_the_runner(tmp_path):
    """joblib's default backend, loky, under the runner: loky is built on
    the stdlib's queue internals, so the runner imports it on the stdlib's
    modules; the program's own multiprocessing stays ours."""
    _run_joblib(tmp_path, "loky", """\
            with multiprocessing.Pool(2) as pool:
                assert pool.map(sq, range(3)) == [0, 1, 4]
""")


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_loky_executor_on_our_context(method):
    """loky's ProcessPoolExecutor accepts a context: ours starts its
    workers and makes the locks of loky's queues."""
    loky = pytest.importorskip("joblib.externals.loky")
    cmp = importlib.import_module("cmultiprocessing")
    with loky.ProcessPoolExecutor(2, context=cmp.get_context(method)) as ex:
        assert list(ex.map(square, range(10))) == [i * i for i in range(10)]
        with pytest.raises(ValueError, match="bad 3"):
            ex.submit(fail, 3).result(timeout=60)


def test_tqdm_process_map_under_the_runner(tmp_path):
    pytest.importorskip("tqdm")
    r = run_program(tmp_path, """
        from tqdm.contrib.concurrent import process_map
        def sq(x): return x * x
        if __name__ == "__main__":
            print(process_map(sq, range(20), max_workers=2, chunksize=3, disable=True))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str([i * i for i in range(20)])


def test_dask_imports_under_the_runner(tmp_path):
    pytest.importorskip("dask")
    r = run_program(tmp_path, """
        import dask, multiprocessing.pool
        print(multiprocessing.pool.Pool.__module__)
    """)
    assert r.returncode == 0, r.stderr


COVERAGE_SCRIPT = """
import {module} as mp

def in_child(x):
    y = x + 1
    z = y * 2
    return z

if __name__ == "__main__":
    p = mp.Process(target=in_child, args=(1,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
"""


@pytest.mark.parametrize("how", ["runner -m coverage", "coverage run -m runner",
                                 "coverage run, import cmultiprocessing"])
def test_coverage_measures_our_children(tmp_path, how):
    pytest.importorskip("coverage")
    module = "cmultiprocessing" if "import" in how else "multiprocessing"
    (tmp_path / "prog.py").write_text(COVERAGE_SCRIPT.format(module=module))
    (tmp_path / ".coveragerc").write_text(
        "[run]\nconcurrency = multiprocessing\nparallel = True\n")
    env = dict(os.environ, PYTHONPATH=os.path.abspath(PKG_DIR))
    py = sys.executable
    cmd = {"runner -m coverage": [py, "-m", "cmultiprocessing", "-m", "coverage", "run",
                                  "prog.py"],
           "coverage run -m runner": [py, "-m", "coverage", "run", "-m", "cmultiprocessing",
                                      "prog.py"],
           "coverage run, import cmultiprocessing": [py, "-m", "coverage", "run",
                                                     "prog.py"]}[how]

    def run(args):
        r = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env,
                           cwd=str(tmp_path))
        assert r.returncode == 0, r.stderr
        return r

    run(cmd)
    # one data file per process: the parent's and the child's
    assert len(list(tmp_path.glob(".coverage.*"))) >= 2
    run([py, "-m", "coverage", "combine", "-q"])
    report = run([py, "-m", "coverage", "report", "-m", "--include=prog.py"]).stdout
    line = [ln for ln in report.splitlines() if ln.startswith("prog.py")][0]
    assert line.split()[3] == "100%", report


# ---- util, reduction, process, context -----------------------------------


def test_submodules_import_like_the_stdlibs(mp):
    pkg = sys.modules[type(mp).__module__.split(".")[0]]
    for name in ("util", "reduction", "context", "process", "heap", "connection", "queues",
                 "synchronize"):
        importlib.import_module(f"{pkg.__name__}.{name}")
    util = importlib.import_module(f"{pkg.__name__}.util")
    for attr in ("get_logger", "log_to_stderr", "Finalize", "register_after_fork", "is_exiting",
                 "debug", "info", "sub_debug", "sub_warning", "get_temp_dir",
                 "ForkAwareThreadLock", "ForkAwareLocal"):
        assert hasattr(util, attr), attr
    assert util.is_exiting() is False
    ctx = importlib.import_module(f"{pkg.__name__}.context")
    for attr in ("BaseContext", "DefaultContext", "ForkContext", "SpawnContext",
                 "ForkServerContext", "ForkProcess", "SpawnProcess", "ForkServerProcess",
                 "get_spawning_popen", "assert_spawning", "_concrete_contexts"):
        assert hasattr(ctx, attr), attr
    assert isinstance(mp, ctx.BaseContext)
    proc = importlib.import_module(f"{pkg.__name__}.process")
    assert hasattr(proc.BaseProcess, "_bootstrap")
    assert isinstance(mp.current_process(), proc.BaseProcess)
    assert pkg.util is util  # an attribute of the package, as concurrent.futures reads it
    with pytest.raises(RuntimeError):
        ctx.assert_spawning(object())


class ForkMarker:
    pass


def after_fork_marker(obj):
    obj.forked = os.getpid()


def report_marker(marker, conn):
    conn.send(getattr(marker, "forked", None))


def pid_of_worker_marker(_):
    return getattr(sys.modules[__name__].MARKER, "forked", None), os.getpid()


def test_register_after_fork_runs_in_process_children_and_pool_workers(mp):
    pkg = sys.modules[type(mp).__module__.split(".")[0]]
    util = importlib.import_module(f"{pkg.__name__}.util")
    marker = ForkMarker()
    util.register_after_fork(marker, after_fork_marker)
    r, w = mp.Pipe(duplex=False)
    p = mp.Process(target=report_marker, args=(marker, w))
    p.start()
    assert r.poll(30)
    assert r.recv() == p.pid
    p.join(30)
    assert not hasattr(marker, "forked")  # not in the parent
    sys.modules[__name__].MARKER = marker
    with mp.Pool(1) as pool:
        forked, pid = pool.apply(pid_of_worker_marker, (0,))
    assert forked == pid


def finalize_in_child(path):
    pkg = sys.modules[type(sys.modules[__name__].CTX).__module__.split(".")[0]]
    util = importlib.import_module(f"{pkg.__name__}.util")

    class Obj:
        pass

    obj = Obj()
    sys.modules[__name__].KEEP = obj
    util.Finalize(obj, lambda: open(path, "w").write("done"), exitpriority=5)


def test_finalize_with_exitpriority_runs_at_a_childs_end(mp, tmp_path):
    sys.modules[__name__].CTX = mp
    path = str(tmp_path / "finalized")
    p = mp.Process(target=finalize_in_child, args=(path,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert open(path).read() == "done"


class _Token:
    pass


def append_pid(path):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def test_parents_finalizers_do_not_run_in_a_child(mp, tmp_path):
    """A Finalize the parent registered (the stdlib's queues and managers
    use them to close and shut down) is the parent's: a child does not run
    it when it ends; the parent does, at its own exit."""
    pkg = type(mp).__module__.split(".")[0]
    util = importlib.import_module(pkg + ".util")
    path = str(tmp_path / "ran")
    token = _Token()
    fin = util.Finalize(token, append_pid, args=(path,), exitpriority=5)
    try:
        p = mp.Process(target=square, args=(2,))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert not os.path.exists(path)
    finally:
        fin()
    assert open(path).read().split() == [str(os.getpid())]


class Point:
    def __init__(self, x):
        self.x = x


def reduce_point(pt):
    return Point, (pt.x * 10,)  # visible: the reducer ran


def test_forking_pickler_register_reaches_queues_and_connections(mp):
    pkg = sys.modules[type(mp).__module__.split(".")[0]]
    reduction = importlib.import_module(f"{pkg.__name__}.reduction")
    reduction.ForkingPickler.register(Point, reduce_point)
    try:
        q = mp.Queue()
        q.put(Point(1))
        assert q.get(timeout=30).x == 10
        a, b = mp.Pipe()
        a.send(Point(2))
        assert b.recv().x == 20
        assert reduction.ForkingPickler.loads(reduction.ForkingPickler.dumps(Point(3))).x == 30
    finally:
        reduction.ForkingPickler._extra_reducers.pop(Point, None)


def recv_fd_and_write(conn):
    pkg = sys.modules[type(sys.modules[__name__].CTX).__module__.split(".")[0]]
    reduction = importlib.import_module(f"{pkg.__name__}.reduction")
    fd = reduction.recv_handle(conn)
    os.write(fd, b"through the handle")
    os.close(fd)


def test_send_handle_recv_handle(mp, tmp_path):
    pkg = sys.modules[type(mp).__module__.split(".")[0]]
    reduction = importlib.import_module(f"{pkg.__name__}.reduction")
    sys.modules[__name__].CTX = mp
    a, b = mp.Pipe()
    p = mp.Process(target=recv_fd_and_write, args=(b,))
    p.start()
    path = tmp_path / "out"
    with open(path, "wb") as f:
        reduction.send_handle(a, f.fileno(), p.pid)
        p.join(30)
    assert p.exitcode == 0
    assert path.read_bytes() == b"through the handle"


def test_bootstrap_of_a_subclass_wraps_ours(mp):
    r, w = mp.Pipe(duplex=False)

    class Wrapped(mp.Process):
        def _bootstrap(self, *args, **kwargs):
            w.send("before")
            code = super()._bootstrap(*args, **kwargs)
            w.send(("after", code))
            return code

    p = Wrapped(target=sys.exit, args=(3,))
    p.start()
    assert r.poll(30) and r.recv() == "before"
    assert r.poll(30) and r.recv() == ("after", 3)
    p.join(30)
    assert p.exitcode == 3


def sleep_until_interrupted(conn):
    try:
        conn.send("ready")
        time.sleep(30)
    except KeyboardInterrupt:
        conn.send("interrupted")


def test_interrupt_sends_sigint(cmp):
    ctx = cmp.get_context("fork")
    r, w = ctx.Pipe(duplex=False)
    p = ctx.Process(target=sleep_until_interrupted, args=(w,))
    p.start()
    assert r.poll(30) and r.recv() == "ready"
    p.interrupt()
    assert r.poll(30) and r.recv() == "interrupted"
    p.join(30)
    assert p.exitcode == 0


# ---- subclassing with __init__ keywords of their own --------------------


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Event",
                                  "Condition", "Barrier", "Queue", "JoinableQueue",
                                  "SimpleQueue"])
def test_subclass_with_its_own_init_keywords(mp, kind):
    pkg = sys.modules[type(mp).__module__.split(".")[0]]
    module = importlib.import_module(
        f"{pkg.__name__}.{'queues' if 'Queue' in kind else 'synchronize'}")
    base = getattr(module, kind)
    args = {"Semaphore": (2,), "BoundedSemaphore": (2,), "Barrier": (2,), "Queue": (3,),
            "JoinableQueue": (3,)}.get(kind, ())

    class Sub(base):
        def __init__(self, tag, *, extra=None):
            self.tag = tag
            self.extra = extra
            super().__init__(*args, ctx=mp)

    obj = Sub("t", extra=1)
    assert (obj.tag, obj.extra) == ("t", 1)
    if kind in ("Semaphore", "BoundedSemaphore"):
        assert obj.acquire(False) and obj.acquire(False) and not obj.acquire(False)
    elif kind == "Barrier":
        assert obj.parties == 2
    elif kind in ("Queue", "JoinableQueue"):
        assert obj._maxsize == 3
        obj.put(1)
        assert obj.get(timeout=10) == 1
    elif kind == "SimpleQueue":
        obj.put(1)
        assert obj.get() == 1
    elif kind in ("Lock", "RLock", "Condition"):
        assert obj.acquire(timeout=1)
        obj.release()
