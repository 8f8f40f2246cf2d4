"""Process: lifecycle, exit codes, names, misuse errors, introspection.
Each standard-behaviour test runs on the stdlib and on cmultiprocessing."""
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import PKG_DIR


def noop():
    pass


def sleeper(seconds=30):
    time.sleep(seconds)


def exit_with(code):
    sys.exit(code)


def report_to(q_fd, mp_name):
    """Child helper: writes facts about itself to a pipe fd."""
    import importlib
    mp = importlib.import_module(mp_name)
    cur = mp.current_process()
    par = mp.parent_process()
    facts = [cur.name, str(cur.pid == os.getpid()), str(par.pid == os.getppid()),
             par.name, str(par.is_alive()), str(cur.is_alive()),
             str(mp.active_children() == [])]
    os.write(q_fd, ("|".join(facts) + "\n").encode())


def mp_name(mp):
    return type(mp).__module__.split(".")[0]


def run_script(code, impl, timeout=30):
    """Runs code in a fresh interpreter with `mp` bound to the module."""
    prelude = f"import {impl} as mp\n"
    env = dict(os.environ, PYTHONPATH=os.path.abspath(PKG_DIR))
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout, env=env)


IMPLS = ["multiprocessing", "cmultiprocessing"]


# --- exit codes -------------------------------------------------------------

@pytest.mark.parametrize("code,expected", [(0, 0), (3, 3), (None, 0), (255, 255),
                                           (True, 1)])
def test_sys_exit_codes(mp, code, expected):
    p = mp.Process(target=exit_with, args=(code,))
    p.start()
    p.join(10)
    assert p.exitcode == expected


def test_return_is_zero(mp):
    p = mp.Process(target=noop)
    assert p.exitcode is None
    p.start()
    p.join(10)
    assert p.exitcode == 0
    assert not p.is_alive()


@pytest.mark.parametrize("impl", IMPLS)
def test_exception_exit_code_and_traceback(impl):
    r = run_script("""
        def boom():
            raise ValueError("kaboom")
        if __name__ == "__main__":
            p = mp.get_context("fork").Process(target=boom)
            p.start(); p.join(10)
            print("exitcode", p.exitcode)
    """, impl)
    assert r.returncode == 0, r.stderr
    assert "exitcode 1" in r.stdout
    # the fork context's class is ForkProcess, which names its processes
    assert r.stderr.startswith("Process ForkProcess-1:\nTraceback (most recent call last):")
    assert r.stderr.endswith("ValueError: kaboom\n")


@pytest.mark.parametrize("impl", IMPLS)
def test_sys_exit_message(impl):
    r = run_script("""
        import sys
        p = mp.get_context("fork").Process(target=sys.exit, args=("bad things",))
        p.start(); p.join(10)
        print("exitcode", p.exitcode)
    """, impl)
    assert "exitcode 1" in r.stdout
    assert r.stderr == "bad things\n"


@pytest.mark.parametrize("impl", IMPLS)
def test_child_output_flushed_and_not_duplicated(impl):
    r = run_script("""
        import sys
        print("before", end="")      # buffered in the parent, not yet flushed
        def child():
            print("in child", end="")   # flushed by the child on its way out
        p = mp.get_context("fork").Process(target=child)
        p.start(); p.join(10)
        print("|after")
    """, impl)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "beforein child|after\n"


def test_signal_exit_codes(mp):
    p = mp.Process(target=sleeper)
    p.start()
    assert p.is_alive()
    p.terminate()
    p.join(10)
    assert p.exitcode == -signal.SIGTERM
    assert "exitcode=-SIGTERM" in repr(p)

    p = mp.Process(target=sleeper)
    p.start()
    p.kill()
    p.join(10)
    assert p.exitcode == -signal.SIGKILL
    p.terminate()  # a finished process: nothing happens
    p.kill()


def hold_memory_and_exit(code, keep_fd):
    """Child: fills 64 MiB (a child this big lends its address space to a
    helper in ours, and exits before the teardown), then exits with code;
    keep_fd, one end of a pipe, is held open until the exit."""
    ballast = bytearray(64 << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    if code == 99:
        os._exit(code)
    sys.exit(code)


@pytest.mark.parametrize("code", [0, 7, 99])
def test_big_child_exit_code_and_descriptors(mp, code):
    """A child with much memory: join returns its exit code, and its end of a
    pipe is closed by then (read sees the end at once)."""
    r, w = os.pipe()
    try:
        p = mp.Process(target=hold_memory_and_exit, args=(code, w))
        p.start()
        os.close(w)
        w = None
        p.join(30)
        assert p.exitcode == code
        assert select.select([r], [], [], 0)[0] == [r]
        assert os.read(r, 1) == b""
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


# --- names, repr, identity --------------------------------------------------

def test_names_and_repr(mp):
    main = mp.current_process()
    assert main.name == "MainProcess"
    assert repr(main) == "<_MainProcess name='MainProcess' parent=None started>"
    assert mp.parent_process() is None
    cls = type(mp.Process()).__name__
    assert cls == "ForkProcess"
    p = mp.Process(target=noop, name="worker")
    assert p.name == "worker"
    assert repr(p) == f"<{cls} name='worker' parent={os.getpid()} initial>"
    q = mp.Process(target=noop)
    n = int(q.name.split("-")[1])
    assert q.name == f"{cls}-{n}"
    r = mp.Process(target=noop, daemon=True)
    assert r.name == f"{cls}-{n + 1}"
    assert repr(r).endswith(" initial daemon>")
    q.start()
    assert f"pid={q.pid} parent={os.getpid()}" in repr(q)
    q.join(10)
    assert repr(q) == (f"<{cls} name='{cls}-{n}' pid={q.pid} parent={os.getpid()} "
                       f"stopped exitcode=0>")
    q.close()
    assert repr(q) == f"<{cls} name='{cls}-{n}' parent={os.getpid()} closed>"
    with pytest.raises(AssertionError):
        p.name = 5
    p.name = "renamed"
    assert p.name == "renamed"


def test_subclass_name_and_run_override(mp):
    class Worker(mp.Process):
        def __init__(self, fd):
            super().__init__()
            self.fd = fd

        def run(self):
            os.write(self.fd, f"{self.name}:{type(self).__name__}".encode())

    r, w = os.pipe()
    try:
        p = Worker(w)
        assert p.name.startswith("Worker-")
        p.start()
        p.join(10)
        assert p.exitcode == 0
        assert os.read(r, 100).decode() == f"{p.name}:Worker"
        assert isinstance(p, mp.Process)
    finally:
        os.close(r)
        os.close(w)


def test_run_in_parent_calls_target(mp):
    seen = []
    p = mp.Process(target=seen.append, args=(1,))
    p.run()
    p = mp.Process(target=lambda **kw: seen.append(kw), kwargs={"a": 2})
    p.run()
    assert seen == [1, {"a": 2}]


def test_args_and_kwargs_are_copied_with_tuple_and_dict(mp):
    seen = []
    kw = {"a": 1}
    p = mp.Process(target=lambda *a, **k: seen.append((a, k)), args=[1, 2], kwargs=kw)
    kw["b"] = 2  # a copy was taken
    p.run()
    p = mp.Process(target=lambda **k: seen.append(k), kwargs=[("c", 3)])  # pairs, as dict()
    p.run()
    assert seen == [((1, 2), {"a": 1}), {"c": 3}]
    with pytest.raises(TypeError):
        mp.Process(target=int, kwargs=None)
    with pytest.raises(TypeError):
        mp.Process(target=int, args=None)


def test_child_introspection(mp):
    r, w = os.pipe()
    try:
        p = mp.Process(target=report_to, args=(w, mp_name(mp)), name="kid")
        p.start()
        p.join(10)
        assert p.exitcode == 0
        facts = os.read(r, 1000).decode().strip().split("|")
        assert facts == ["kid", "True", "True", "MainProcess", "True", "True", "True"]
    finally:
        os.close(r)
        os.close(w)


def grandchild_names(fd, mp_name):
    import importlib
    mp = importlib.import_module(mp_name).get_context("fork")

    def leaf():
        me = mp.current_process()
        os.write(fd, f"{me.name} {me._identity} {mp.parent_process().name}\n".encode())

    p = mp.Process(target=leaf)
    p.start()
    p.join(10)


def test_children_of_children_names(mp):
    r, w = os.pipe()
    try:
        p = mp.Process(target=grandchild_names, args=(w, mp_name(mp)))
        p.start()
        p.join(10)
        n = p._identity[0]
        assert os.read(r, 1000).decode() == (f"ForkProcess-{n}:1 ({n}, 1) "
                                             f"ForkProcess-{n}\n")
    finally:
        os.close(r)
        os.close(w)


# --- lifecycle: daemon, is_alive, join, sentinel, close ------------------------

def test_daemon_flag(mp):
    p = mp.Process(target=noop)
    assert p.daemon is False
    p.daemon = True
    assert p.daemon is True
    p.start()
    with pytest.raises(AssertionError):
        p.daemon = False
    p.join(10)


def test_join_timeout_and_is_alive(mp):
    p = mp.Process(target=sleeper)
    assert not p.is_alive()
    p.start()
    t0 = time.monotonic()
    p.join(0.2)
    waited = time.monotonic() - t0
    assert 0.15 <= waited < 5
    assert p.is_alive()
    assert p.exitcode is None
    assert p in mp.active_children()
    p.join(0)
    assert p.is_alive()
    p.terminate()
    p.join(10)
    assert not p.is_alive()
    assert p not in mp.active_children()


def test_sentinel_with_select_and_wait(mp):
    import multiprocessing.connection as connection
    p = mp.Process(target=sleeper, args=(0.2,))
    with pytest.raises(ValueError):
        p.sentinel
    p.start()
    s = p.sentinel
    assert isinstance(s, int)
    assert select.select([s], [], [], 0)[0] == []
    assert connection.wait([s], timeout=10) == [s]
    p.join(10)
    assert p.exitcode == 0


def test_close(mp):
    p = mp.Process(target=sleeper)
    p.start()
    with pytest.raises(ValueError):
        p.close()
    p.kill()
    p.join(10)
    p.close()
    p.close()  # twice is fine
    for op in (p.start, p.join, p.is_alive, p.terminate, p.kill):
        with pytest.raises(ValueError):
            op()
    for attr in ("exitcode", "pid", "ident", "sentinel"):
        with pytest.raises(ValueError):
            getattr(p, attr)
    mp.current_process().close()  # no effect on the main process
    assert mp.current_process().is_alive()


def test_pid_and_ident(mp):
    p = mp.Process(target=noop)
    assert p.pid is None and p.ident is None
    p.start()
    assert p.pid == p.ident and p.pid > 0 and p.pid != os.getpid()
    p.join(10)
    assert mp.current_process().pid == os.getpid()


def test_authkey(mp):
    key = mp.current_process().authkey
    assert isinstance(key, bytes) and len(key) == 32
    p = mp.Process(target=noop)
    assert p.authkey == key
    p.authkey = b"secret"
    assert p.authkey == b"secret"
    import pickle
    with pytest.raises(TypeError):
        pickle.dumps(p.authkey)


# --- misuse -------------------------------------------------------------------

def test_misuse_errors(mp):
    with pytest.raises(AssertionError, match="group argument must be None"):
        mp.Process(group=1)
    p = mp.Process(target=noop)
    with pytest.raises(AssertionError):
        p.join()
    with pytest.raises(AttributeError):
        p.terminate()
    p.start()
    with pytest.raises(AssertionError, match="cannot start a process twice"):
        p.start()
    p.join(10)
    with pytest.raises(AssertionError):
        mp.current_process().join()
    with pytest.raises(TypeError):
        mp.Process(target=noop, bogus=1)


def start_from_daemon(fd, mp_name):
    import importlib
    mp = importlib.import_module(mp_name).get_context("fork")
    try:
        mp.Process(target=noop).start()
        os.write(fd, b"started")
    except AssertionError as e:
        os.write(fd, str(e).encode())


def test_daemon_cannot_have_children(mp):
    r, w = os.pipe()
    try:
        p = mp.Process(target=start_from_daemon, args=(w, mp_name(mp)), daemon=True)
        p.start()
        p.join(10)
        assert os.read(r, 1000) == b"daemonic processes are not allowed to have children"
    finally:
        os.close(r)
        os.close(w)


def join_self(fd, mp_name):
    import importlib
    mp = importlib.import_module(mp_name)
    try:
        mp.current_process().join()
        os.write(fd, b"joined")
    except AssertionError:
        os.write(fd, b"AssertionError")


def test_join_self_in_child(mp):
    r, w = os.pipe()
    try:
        p = mp.Process(target=join_self, args=(w, mp_name(mp)))
        p.start()
        p.join(10)
        assert os.read(r, 100) == b"AssertionError"
    finally:
        os.close(r)
        os.close(w)


def test_active_children_reaps(mp):
    ps = [mp.Process(target=noop) for _ in range(3)]
    for p in ps:
        p.start()
    deadline = time.monotonic() + 10
    while any(p in mp.active_children() for p in ps) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(p in mp.active_children() for p in ps)
    assert [p.exitcode for p in ps] == [0, 0, 0]


@pytest.mark.parametrize("impl", IMPLS)
def test_module_level_process_names(impl):
    r = run_script("""
        p = mp.Process(target=print); q = mp.Process()
        print(p.name, q.name, type(p).__name__)
    """, impl)
    assert r.stdout == "Process-1 Process-2 Process\n", r.stderr


def test_module_functions(mp):
    assert mp.cpu_count() == os.cpu_count()
    assert mp.freeze_support() is None
    logger = mp.get_logger()
    assert logger.name == "multiprocessing"
    mp.set_executable(sys.executable)
    mp.set_forkserver_preload(["os"])


# --- exit handling ---------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS)
def test_atexit_joins_and_terminates(impl):
    r = run_script("""
        import os, time, signal
        ctx = mp.get_context("fork")
        def slow():
            time.sleep(0.3)
            print("non-daemon finished", flush=True)
        def forever():
            time.sleep(60)
        a = ctx.Process(target=slow); a.start()
        d = ctx.Process(target=forever, daemon=True); d.start()
        print("daemon", d.pid, flush=True)
    """, impl)
    assert r.returncode == 0, r.stderr
    assert "non-daemon finished" in r.stdout
    pid = int(r.stdout.split("daemon ")[1].split()[0])
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive


@pytest.mark.parametrize("impl", IMPLS)
def test_sigint_interrupts_join(impl):
    code = """
        import time, sys
        ctx = mp.get_context("fork")
        def forever():
            import signal
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            time.sleep(60)
        p = ctx.Process(target=forever, daemon=True); p.start()
        print("ready", flush=True)
        t0 = time.monotonic()
        try:
            p.join()
        except KeyboardInterrupt:
            print("interrupted after %.2f" % (time.monotonic() - t0), flush=True)
        p.kill(); p.join()
    """
    env = dict(os.environ, PYTHONPATH=os.path.abspath(PKG_DIR))
    proc = subprocess.Popen([sys.executable, "-c", f"import {impl} as mp\n" +
                             textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert "interrupted after" in out, err
    assert float(out.split("interrupted after ")[1]) < 5


def test_stdin_is_devnull_in_child(mp):
    r, w = os.pipe()

    def child():
        os.write(w, repr(sys.stdin.read()).encode())

    try:
        p = mp.Process(target=child)
        p.start()
        p.join(10)
        assert os.read(r, 100) == b"''"
    finally:
        os.close(r)
        os.close(w)


def test_non_daemon_thread_waited_in_child(mp):
    r, w = os.pipe()

    def child():
        import threading

        def late():
            time.sleep(0.2)
            os.write(w, b"thread done")
        threading.Thread(target=late).start()

    try:
        p = mp.Process(target=child)
        p.start()
        p.join(10)
        assert p.exitcode == 0
        assert os.read(r, 100) == b"thread done"
    finally:
        os.close(r)
        os.close(w)


# --- threading's state in the child ------------------------------------------
# The child must see threading exactly as after os.fork() (threading's own
# at-fork hook), whatever threads the parent had. The reference is a plain
# os.fork() child made from the same parent state.

def _threading_facts(extra):
    import threading
    main = threading.main_thread()
    ran = []
    t = threading.Thread(target=lambda: ran.append(threading.current_thread().name),
                         name="late")
    t.start()
    t.join(5)
    facts = (threading.current_thread().name, threading.current_thread() is main,
             sorted(x.name for x in threading.enumerate()), threading.active_count(),
             main.is_alive(), main.ident == threading.get_ident(),
             len(threading._shutdown_locks), len(threading._limbo), ran,
             threading._active_limbo_lock.acquire(False),
             threading._shutdown_locks_lock.locked(),
             sorted(x.name for x in threading._dangling if x is not t))
    if extra is not None:
        facts += (extra.is_alive(), extra._is_stopped, extra._tstate_lock is None)
    return repr(facts)


def _facts_via(make_child, extra):
    r, w = os.pipe()
    try:
        def child():
            os.write(w, _threading_facts(extra).encode())
        make_child(child)
        return os.read(r, 10000).decode()
    finally:
        os.close(r)
        os.close(w)


def _with_process(mp):
    def make(child):
        p = mp.Process(target=child)
        p.start()
        p.join(10)
        assert p.exitcode == 0
    return make


def _with_os_fork(child):
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


@pytest.mark.parametrize("state", ["plain", "running", "unstarted", "finished",
                                   "from_thread", "named_main"])
def test_threading_state_in_child(mp, state):
    import threading
    extra = None
    stop = threading.Event()
    if state == "running":
        extra = threading.Thread(target=stop.wait, args=(10,), name="busy")
        extra.start()
    elif state == "unstarted":
        extra = threading.Thread(target=noop, name="never")
    elif state == "finished":
        extra = threading.Thread(target=noop, name="done")
        extra.start()
        extra.join()
    elif state == "named_main":
        old_name = threading.main_thread().name
        threading.main_thread().name = "Renamed"
    try:
        if state == "from_thread":
            results = []
            worker = threading.Thread(target=lambda: results.extend(
                [_facts_via(_with_process(mp), None), _facts_via(_with_os_fork, None)]))
            worker.start()
            worker.join(30)
            ours, reference = results
        else:
            ours = _facts_via(_with_process(mp), extra)
            reference = _facts_via(_with_os_fork, extra)
        assert ours == reference
    finally:
        stop.set()
        if state == "running":
            extra.join(10)
        if state == "named_main":
            threading.main_thread().name = old_name


def test_threading_state_in_grandchild(mp):
    """A fork made inside a child (os.fork and Process alike) gets the same
    treatment again."""
    r, w = os.pipe()

    def child():
        os.write(w, (_facts_via(_with_process(mp), None) + "\n").encode())
        os.write(w, (_facts_via(_with_os_fork, None) + "\n").encode())

    try:
        p = mp.Process(target=child)
        p.start()
        p.join(20)
        assert p.exitcode == 0
        lines = os.read(r, 20000).decode().splitlines()
        assert len(lines) == 2 and lines[0] == lines[1]
        assert lines[0] == _facts_via(_with_os_fork, None)
    finally:
        os.close(r)
        os.close(w)


def test_profiler_sees_threading_fork_hook(mp):
    """A profiler active at fork time sees threading's at-fork hook run in
    the child, as after os.fork()."""
    r, w = os.pipe()
    calls = []

    def profiler(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_name)

    def child():
        os.write(w, repr("_after_fork" in calls).encode())

    try:
        sys.setprofile(profiler)
        try:
            p = mp.Process(target=child)
            p.start()
        finally:
            sys.setprofile(None)
        p.join(10)
        assert p.exitcode == 0
        assert os.read(r, 100) == b"True"
    finally:
        os.close(r)
        os.close(w)


# --- the child's main thread -----------------------------------------------

def _main_native_id():
    import threading
    return threading.main_thread().native_id, threading.get_native_id()


def _report_main_native_id(q):
    q.put(_main_native_id())


def test_main_thread_native_id_is_the_childs(mp):
    """threading.main_thread().native_id in a Process child and in a pool
    worker is the child's own thread id, not the parent's (threading's
    at-fork hook leaves it stale; the stdlib renews it in the child)."""
    parent = _main_native_id()[0]
    q = mp.Queue()
    p = mp.Process(target=_report_main_native_id, args=(q,))
    p.start()
    try:
        main_id, own_id = q.get(timeout=10)
    finally:
        p.join(10)
    assert main_id == own_id != parent
    with mp.Pool(1) as pool:
        main_id, own_id = pool.apply_async(_main_native_id).get(10)
    assert main_id == own_id != parent
