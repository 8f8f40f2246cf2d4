"""Helpers for the Pool tests: the fixtures (which skip cmultiprocessing
until it has a Pool), the tasks (module level, so that they pickle by
reference), a gate that blocks tasks until the test opens it, and bounded
waits. Every wait has a timeout."""
import contextlib
import importlib
import os
import signal
import threading
import time

import pytest

# seconds any single wait for a result may take before the test fails
T = 10

IMPLEMENTATIONS = ["multiprocessing", "cmultiprocessing"]


def _module_with_pool(name):
    module = importlib.import_module(name)
    if name == "cmultiprocessing" and not hasattr(module, "Pool"):
        pytest.skip("cmultiprocessing has no Pool yet")
    return module


@pytest.fixture(params=IMPLEMENTATIONS)
def pimpl(request):
    """The name of the module under test ("multiprocessing" or
    "cmultiprocessing"); the other fixtures derive from it."""
    _module_with_pool(request.param)
    return request.param


@pytest.fixture
def pmp(pimpl):
    """The module under test, with the fork start method (as conftest's mp),
    skipped for cmultiprocessing while it has no Pool."""
    return importlib.import_module(pimpl).get_context("fork")


@pytest.fixture
def ppool(pimpl):
    """The module's pool submodule (multiprocessing.pool or
    cmultiprocessing.pool)."""
    return importlib.import_module(pimpl + ".pool")


@pytest.fixture
def pcmp():
    """cmultiprocessing's fork context alone, for behaviour beyond the
    standard library; skipped while it has no Pool."""
    return _module_with_pool("cmultiprocessing").get_context("fork")


# -- the gate: tasks that block until the test lets them go -----------------

class FileGate:
    """Open once its file exists. Not an Event: the pool's workers are
    killed while they wait on it (terminate, the crash tests), and the
    stdlib's Event.set() then waits forever for the dead sleeper."""

    def __init__(self, path):
        self.path = path

    def set(self):
        with open(self.path, "w"):
            pass

    def is_set(self):
        return os.path.exists(self.path)

    def wait(self, timeout):
        end = time.monotonic() + timeout
        while not self.is_set() and time.monotonic() < end:
            time.sleep(0.002)
        return self.is_set()


GATE = None


@pytest.fixture
def gate(tmp_path):
    """A FileGate, visible to the pool's workers as the global GATE (they
    inherit it by fork: take the fixture before starting the pool). Opened
    at teardown so no task stays blocked."""
    global GATE
    GATE = FileGate(str(tmp_path / "gate-open"))
    yield GATE
    GATE.set()
    GATE = None


def wait_gate(x):
    """Blocks until the gate opens (at most 20 s), then returns x."""
    GATE.wait(20)
    return x


def note_then_wait(path, x):
    """Records x in path (the task has started), then wait_gate(x)."""
    append_line(path, str(x))
    return wait_gate(x)


# -- tasks ------------------------------------------------------------------

def sq(x):
    return x * x


def add(a, b=0):
    return a + b


def describe_process(module, x):
    """What module's current_process() and parent_process() say."""
    mp = importlib.import_module(module)
    me, parent = mp.current_process(), mp.parent_process()
    return me.name, me.daemon, me._identity, me.pid, parent.pid if parent else None


class Point:
    def __init__(self, x):
        self.x = x

    def __eq__(self, other):
        return type(other) is Point and other.x == self.x


def make_value(i):
    """A plain value or an instance that must be pickled, by i."""
    return [i, str(i), (i, None), Point(i), 1.5 * i, {i: [i]}][i % 6]


def length_and_first(b):
    return len(b), b[0]


def sleep_then_length(args):
    seconds, b = args
    time.sleep(seconds)
    return len(b)


def sleep_then_square(x, seconds):
    time.sleep(seconds)
    return x * x


def type_and_square(x):
    return type(x).__name__, x * x


def pid_and_square(x):
    return os.getpid(), x * x


def raise_value_error(x):
    raise ValueError(f"bad {x}")


def fail_on_3(x):
    if x == 3:
        raise ValueError("three")
    return x * x


def unpicklable_result(x):
    return threading.Lock()


def note_then_sleep(path, seconds, x):
    """Records x in path, then sleeps."""
    append_line(path, str(x))
    time.sleep(seconds)
    return x


def append_line(path, text):
    """One write(2) with O_APPEND: concurrent writers never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def read_lines(path):
    try:
        with open(path) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


_INIT_VALUE = None
_INIT_CALLS = 0


def init_record(path, value=None):
    """Initializer: records this worker's pid in path and sets a global
    that report_init returns."""
    global _INIT_VALUE, _INIT_CALLS
    _INIT_CALLS += 1
    _INIT_VALUE = value
    append_line(path, str(os.getpid()))


def report_init(x):
    return os.getpid(), _INIT_VALUE, _INIT_CALLS


def init_fail(path):
    """Initializer that records its run and raises."""
    append_line(path, str(os.getpid()))
    raise RuntimeError("init failed on purpose")


def kill_self_on(x, bad=(3,)):
    if x in bad:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # not reached: the signal is delivered at once
    return x * x


def exit_3(x):
    os._exit(3)


def raise_base(kind):
    raise {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt}[kind](7)


class NeedsTwoArgs(Exception):
    """Pickles as (cls, (a,)) since only a reaches args; unpickling then
    calls cls(a) and fails with TypeError: the stdlib's pool hangs on it."""

    def __init__(self, a, b):
        super().__init__(a)
        self.b = b


def raise_needs_two_args(x):
    raise NeedsTwoArgs(f"two-args {x}", "b")


def raise_unpicklable_exception(x):
    raise ValueError(f"unpicklable {x}", threading.Lock())


# -- bounded waits ----------------------------------------------------------

def _bounded(call, timeout, what):
    """call() in a daemon thread, failing the test if it takes more than
    timeout seconds (the thread is abandoned then); re-raises what it
    raised."""
    error = []

    def run():
        try:
            call()
        except BaseException as e:  # noqa: B902 (handed to the test thread)
            error.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"{what} did not return in {timeout} s")
    if error:
        raise error[0]


@contextlib.contextmanager
def interrupt_after(seconds):
    """KeyboardInterrupt raised in the main thread after seconds (SIGALRM),
    as Ctrl-C would; the handler and the timer are restored on exit."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def join_pool(pool, timeout=T):
    """pool.join(), bounded by timeout."""
    _bounded(pool.join, timeout, "Pool.join()")


@contextlib.contextmanager
def started(factory, *args, **kwds):
    """factory(*args, **kwds) (a Pool), terminated and joined (bounded) in a
    finally however the test ends."""
    pool = factory(*args, **kwds)
    try:
        yield pool
    finally:
        _bounded(pool.terminate, T, "Pool.terminate()")
        join_pool(pool)


def _in_new_session(fn, args):
    os.setsid()
    return fn(*args)


@contextlib.contextmanager
def session_child(fn, *args):
    """Forks a child that runs fn(*args) in a session (and process group)
    of its own, its exit status the return value (see _sync_helpers.fork);
    yields its pid. On the way out SIGKILLs the whole group: the child if
    still there and the pool workers it left (the stdlib leaves some)."""
    from _sync_helpers import fork
    child = fork(_in_new_session, fn, args)
    try:
        yield child
    finally:
        try:
            os.killpg(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


def drain(it, timeout=T, limit=10000):
    """The items of a Pool iterator, each next() bounded by timeout where
    the iterator has next(timeout) (imap with chunksize > 1 returns a plain
    generator in the stdlib)."""
    step = (lambda: it.next(timeout)) if hasattr(it, "next") else it.__next__
    out = []
    for _ in range(limit):
        try:
            out.append(step())
        except StopIteration:
            return out
    pytest.fail(f"iterator did not end within {limit} items")


def wait_gone(pids, timeout=5.0):
    """Waits until none of pids exists (reaped), failing after timeout."""
    end = time.monotonic() + timeout
    left = set(pids)
    while left:
        for pid in list(left):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                left.discard(pid)
        if not left:
            return
        if time.monotonic() > end:
            pytest.fail(f"processes {sorted(left)} still exist after {timeout} s")
        time.sleep(0.005)


def exception_chain(e):
    """e, its __cause__ and __context__, recursively (each once)."""
    seen = []
    todo = [e]
    while todo:
        x = todo.pop()
        if x is None or any(x is s for s in seen):
            continue
        seen.append(x)
        todo += [x.__cause__, x.__context__]
    return seen


def scale_in_place(args):
    """Multiplies the array it got by k in place (the worker's copy must be
    its own and writable) and returns it with a checksum."""
    a, k = args
    before = float(a.sum())
    a *= k
    return a, before, bool(a.flags.writeable)


# Arrays a worker keeps from earlier tasks (test_pool.py): a later task's
# bytes must never land in them.
_kept = []


def keep_and_sum_kept(a):
    _kept.append(a)
    return [float(k.sum()) for k in _kept]


def np_sum(a):
    return float(a.sum())


# ---- finalizers at a worker's exit -------------------------------------------

_keep = []


def _note_exit(path, what):
    with open(path, "a") as f:
        f.write("%d %s\n" % (os.getpid(), what))


def init_exit_finalizers(util_name, path):
    """A worker initializer that registers util.Finalize callbacks: two with
    an exit priority (run when the worker leaves, highest first) and one
    without (run only when its object is collected)."""
    util = importlib.import_module(util_name)
    util.Finalize(None, _note_exit, args=(path, "prio10"), exitpriority=10)
    util.Finalize(None, _note_exit, args=(path, "prio0"), exitpriority=0)
    obj = type("Kept", (), {})()
    _keep.append(obj)
    util.Finalize(obj, _note_exit, args=(path, "no-priority"))


def getpid_task(_):
    return os.getpid()


# ---- a context whose Process is a library's own -------------------------------

import multiprocessing.context as _std_context  # noqa: E402


class MarkingProcess(_std_context.ForkProcess):
    """A library's Process class: its workers carry a mark."""

    def run(self):
        os.environ["POOL_HELPERS_MARK"] = "marked"
        super().run()


class MarkingContext(_std_context.ForkContext):
    Process = MarkingProcess


def read_mark(_):
    return os.environ.get("POOL_HELPERS_MARK")


def np_block(n):
    """An array of n float64 (n a count), its values n, 2n, 3n, ..."""
    import numpy
    return numpy.arange(1, n + 1, dtype=numpy.float64) * n
