"""Pool: Python 3.11's API and semantics, run on the stdlib and on
cmultiprocessing (skipped there until it has a Pool). Two workers, small
inputs; every wait is bounded and every pool is terminated in a finally."""
import functools
import gc
import importlib
import os
import re
import threading
import time

import pytest

import _pool_helpers as h
from _pool_helpers import gate, pimpl, pmp, ppool  # noqa: F401 (fixtures)
from _pool_helpers import T, drain, join_pool, started


# -- construction -----------------------------------------------------------

def test_pool_keywords_processes_initializer_initargs(pmp, tmp_path):
    """Pool(processes=, initializer=, initargs=) starts that many workers,
    each running the initializer once before its tasks."""
    path = str(tmp_path / "init")
    with started(pmp.Pool, processes=2, initializer=h.init_record,
                 initargs=(path, 41)) as p:
        got = p.map_async(h.report_init, range(8), chunksize=1).get(T)
        assert {value for _, value, _ in got} == {41}
        assert {calls for _, _, calls in got} == {1}
    pids = h.read_lines(path)
    assert len(pids) == 2 and len(set(pids)) == 2
    assert {str(pid) for pid, _, _ in got} <= set(pids)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_worker_runs_exit_finalizers_when_it_leaves(pimpl, method, tmp_path):
    """A worker that leaves on its own (maxtasksperchild reached, or the
    pool closed and joined) runs its util.Finalize callbacks that have an
    exit priority, highest first, as the stdlib's worker Process does
    after run(); the one without a priority is not run."""
    ctx = importlib.import_module(pimpl).get_context(method)
    path = str(tmp_path / "exits")
    with ctx.Pool(2, initializer=h.init_exit_finalizers, initargs=(pimpl + ".util", path),
                  maxtasksperchild=2) as pool:
        pids = set(pool.map(h.getpid_task, range(8), chunksize=1))
        pool.close()
        pool.join()
    by_pid = {}
    with open(path) as f:
        for line in f:
            pid, what = line.split()
            by_pid.setdefault(int(pid), []).append(what)
    assert len(pids) >= 4  # each worker ran at most 2 tasks
    assert pids <= set(by_pid)
    assert all(notes == ["prio10", "prio0"] for notes in by_pid.values()), by_pid


def test_worker_current_process(pmp):
    """In a worker, current_process() is a daemonic ForkPoolWorker-N whose
    identity is (N,), and parent_process() is the pool's creator."""
    with started(pmp.Pool, 2) as p:
        module = type(pmp).__module__.split(".")[0]
        got = set(p.map(functools.partial(h.describe_process, module), range(40), 1))
    for name, daemon, identity, pid, parent_pid in got:
        assert re.fullmatch(r"ForkPoolWorker-\d+", name), name
        assert daemon is True
        assert identity == (int(name.rsplit("-", 1)[1]),)
        assert pid != os.getpid() and parent_pid == os.getpid()


def test_worker_pids_from_private_pool_list(pmp):
    """[w.pid for w in pool._pool], a common idiom, gives the workers'
    pids."""
    with started(pmp.Pool, 3) as p:
        pids = [w.pid for w in p._pool]
        assert len(pids) == 3 and os.getpid() not in pids
        seen = {pid for pid, _ in p.map(h.pid_and_square, range(60), 1)}
        assert seen <= set(pids)


def test_state_written_run_warns_at_collection(pmp):
    """CPython's test_resource_warning: RUN written into a terminated
    pool's _state makes its collection warn as a running pool's does."""
    import warnings
    import multiprocessing.pool
    p = pmp.Pool(1)
    p.terminate()
    p.join()
    p._state = multiprocessing.pool.RUN
    assert p._state == "RUN"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = None
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning)
               and "unclosed running multiprocessing pool" in str(w.message) for w in caught)


def test_state_written_does_not_revive_the_pool_cmp(cmp):
    """What _state says is all that writing it changes: a terminated pool
    still refuses tasks (the stdlib's would queue them for nobody), and
    close() or terminate() make _state follow the pool again."""
    import multiprocessing.pool
    p = cmp.Pool(1)
    p.terminate()
    p.join()
    p._state = multiprocessing.pool.RUN
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply(h.sq, (2,))
    p.terminate()
    assert p._state == "TERMINATE"
    with pytest.raises(ValueError):
        p._state = "RUNNING"


def test_context_with_its_own_process_class(pimpl):
    """Pool(context=ctx) starts its workers with ctx.Process when that is
    a library's own class, and the result is still a Pool."""
    pool_mod = importlib.import_module(pimpl + ".pool")
    with pool_mod.Pool(2, context=h.MarkingContext()) as p:
        assert isinstance(p, pool_mod.Pool)
        assert p.map(h.read_mark, range(4)) == ["marked"] * 4
        p.close()
        p.join()


def test_failing_process_start_releases_the_started_ones(pimpl):
    """CPython's TestPoolNotLeakOnFailure: a context whose Process fails
    to start its fourth worker: Pool() raises that error, having terminated
    and joined the three that started."""
    import unittest.mock
    pool_mod = importlib.import_module(pimpl + ".pool")
    made = []
    budget = [3]

    class FailingProcess:
        def __init__(self, **kwds):
            self.name, self.exitcode, self.state = "fake", None, None
            made.append(self)

        def start(self):
            if budget[0] <= 0:
                raise OSError("induced start failure")
            budget[0] -= 1
            self.state = "started"

        def terminate(self):
            self.state = "stopping"

        def join(self):
            if self.state == "stopping":
                self.state = "stopped"

        def is_alive(self):
            return self.state in ("started", "stopping")

    with pytest.raises(OSError, match="induced start failure"):
        pool_mod.Pool(5, context=unittest.mock.MagicMock(Process=FailingProcess))
    assert [p.state for p in made] == ["stopped"] * 3 + [None]


def test_private_pool_list_is_alive(pmp):
    """pool._pool's workers answer is_alive() (programs poll it to notice a
    worker that died): True while the pool runs, False once it is
    terminated and joined; _repopulate_pool() on a full pool changes
    nothing."""
    p = pmp.Pool(2)
    try:
        workers = list(p._pool)
        assert len(workers) == 2 and all(w.is_alive() for w in workers)
        p._repopulate_pool()
        assert sorted(w.pid for w in p._pool) == sorted(w.pid for w in workers)
        assert p.apply_async(h.sq, (3,)).get(T) == 9
    finally:
        p.terminate()
        join_pool(p)
    assert not any(w.is_alive() for w in workers)


def test_state_names_from_private_state(pmp, ppool):
    """pool._state is the pool module's RUN, CLOSE or TERMINATE (code checks
    `pool._state == multiprocessing.pool.RUN` before submitting)."""
    p = pmp.Pool(1)
    try:
        assert p._state == ppool.RUN
        p.close()
        assert p._state == ppool.CLOSE
        p.terminate()
        assert p._state == ppool.TERMINATE
    finally:
        p.terminate()
        join_pool(p)
    with started(ppool.ThreadPool, 1) as tp:
        assert tp._state == ppool.RUN


def test_pool_class_with_context_argument(pmp, ppool):
    """<module>.pool.Pool(processes, context=ctx) works like ctx.Pool (the
    top-level <module>.Pool is the default context's method: no context=)."""
    with started(ppool.Pool, 2, context=pmp) as p:
        assert p.map(h.sq, range(5)) == [0, 1, 4, 9, 16]
    with pytest.raises(TypeError):
        pmp.Pool(2, context=pmp)


def test_module_level_pool(pimpl):
    """<module>.Pool(2) (the default context) runs tasks."""
    module = importlib.import_module(pimpl)
    with started(module.Pool, 2) as p:
        assert p.apply_async(h.sq, (6,)).get(T) == 36


def test_default_processes_is_cpu_count(pmp, tmp_path):
    """Pool() starts os.cpu_count() workers."""
    path = str(tmp_path / "init")
    with started(pmp.Pool, initializer=h.init_record, initargs=(path,)) as p:
        assert p.apply_async(h.sq, (3,)).get(T) == 9
        end = time.monotonic() + T
        while len(h.read_lines(path)) < os.cpu_count() and time.monotonic() < end:
            time.sleep(0.005)  # workers start in the background
    assert len(h.read_lines(path)) == os.cpu_count()


@pytest.mark.parametrize("n", [0, -1])
def test_processes_below_one_is_valueerror(pmp, n):
    """Pool(0) and Pool(-1) raise ValueError('Number of processes must be at
    least 1')."""
    with pytest.raises(ValueError, match=r"^Number of processes must be at least 1$"):
        pmp.Pool(n)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_bad_maxtasksperchild_is_valueerror(pmp, bad):
    """maxtasksperchild that is not a positive int raises ValueError."""
    with pytest.raises(ValueError, match=r"^maxtasksperchild must be a positive int or None$"):
        pmp.Pool(2, maxtasksperchild=bad)


def test_initializer_not_callable_is_typeerror(pmp):
    """A non-callable initializer raises TypeError('initializer must be a
    callable')."""
    with pytest.raises(TypeError, match=r"^initializer must be a callable$"):
        pmp.Pool(2, initializer=3)


def test_repr_shows_state_and_size(pmp):
    """repr(pool) is <...Pool state=RUN pool_size=2>, TERMINATE after
    terminate()."""
    p = pmp.Pool(2)
    try:
        assert re.fullmatch(r"<[\w.]*Pool state=RUN pool_size=2>", repr(p))
    finally:
        p.terminate()
        join_pool(p)
    assert re.fullmatch(r"<[\w.]*Pool state=TERMINATE pool_size=2>", repr(p))


# -- apply ------------------------------------------------------------------

def test_apply_args_and_kwds(pmp):
    """apply(func, args, kwds) returns func(*args, **kwds)."""
    with started(pmp.Pool, 2) as p:
        assert p.apply(h.add, (2,), {"b": 3}) == 5
        assert p.apply(h.add, (4,)) == 4
        assert p.apply(os.getpid) != os.getpid()


def test_apply_async_callback(pmp):
    """apply_async's callback gets the result, before get() returns."""
    got = []
    with started(pmp.Pool, 2) as p:
        r = p.apply_async(h.sq, (7,), callback=got.append)
        assert r.get(T) == 49
        assert got == [49]


def test_apply_from_many_threads(pmp):
    """apply() and map() called from several threads at once each get
    their own results."""
    errors, got = [], {}

    def run(k):
        try:
            got[k] = ([p.apply(h.add, (k, i)) for i in range(50)],
                      p.map(h.add, [k] * 20, 3))
        except BaseException as e:  # noqa: B902 (reported below)
            errors.append(e)

    with started(pmp.Pool, 2) as p:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(T)
        assert not any(t.is_alive() for t in threads), "a caller hung"
    assert not errors, errors
    assert got == {k: ([k + i for i in range(50)], [k] * 20) for k in range(6)}


def test_many_tasks_finishing_out_of_order(pmp):
    """Thousands of tasks in flight that finish out of submission order
    each deliver their own result (the table of tasks in flight)."""
    with started(pmp.Pool, 3) as p:
        pending = [p.apply_async(h.sleep_then_square, (i, (i * 7919) % 5 * 0.0002))
                   for i in range(3000)]
        got = [r.get(T) for r in reversed(pending)]
    assert got == [i * i for i in reversed(range(3000))]


def test_straggler_while_many_tasks_come_and_go(pmp):
    """A long task stays in flight while thousands of others are submitted
    and finish around it; every result is right, the straggler's too."""
    with started(pmp.Pool, 2) as p:
        slow = p.apply_async(h.sleep_then_square, (-1, 0.3))
        for k in range(12):
            pending = [p.apply_async(h.add, (k, i)) for i in range(400)]
            assert p.map(h.sq, range(k, k + 37), 1) == [x * x for x in range(k, k + 37)]
            assert [r.get(T) for r in pending[::-1]] == [k + i for i in range(400)][::-1]
        assert slow.get(T) == 1


def test_callbacks_run_in_the_pool_thread_while_map_waits(pmp):
    """Callbacks run in a thread of the pool, not in a thread that waits
    in map() meanwhile, and each runs once."""
    seen = []
    with started(pmp.Pool, 2) as p:
        pending = [p.apply_async(h.sq, (i,), callback=lambda v: seen.append(
            (threading.get_ident(), v))) for i in range(40)]
        assert p.map(h.sq, range(200), 1) == [x * x for x in range(200)]
        assert [r.get(T) for r in pending] == [i * i for i in range(40)]
    assert sorted(v for _, v in seen) == [i * i for i in range(40)]
    assert threading.get_ident() not in {ident for ident, _ in seen}


def test_pool_usable_after_map_interrupted(pmp):
    """An exception raised in the caller (a signal handler) while map()
    waits leaves the pool running: the next map gets its own results."""
    with started(pmp.Pool, 2) as p:
        with h.interrupt_after(0.2), pytest.raises(KeyboardInterrupt):
            p.map(time.sleep, [0.05] * 40, 1)
        assert p.map(h.sq, range(30), 2) == [x * x for x in range(30)]
        assert p.apply(h.add, (1, 2)) == 3


def test_wait_while_a_slow_callback_runs(pmp):
    """wait()/get() return once a callback that lets go of the GIL (it
    sleeps) has run; they do not wait out their timeout."""
    with started(pmp.Pool, 2) as p:
        r = p.map_async(int, ["a"], error_callback=lambda e: time.sleep(0.02))
        t0 = time.monotonic()
        r.wait(5)
        assert r.ready() and not r.successful()
        r = p.apply_async(h.sq, (3,), callback=lambda v: time.sleep(0.02))
        assert r.get(5) == 9
        assert time.monotonic() - t0 < 2


def test_apply_async_error_callback(pmp):
    """error_callback gets the worker's exception, before get() raises it."""
    got = []
    with started(pmp.Pool, 2) as p:
        r = p.apply_async(h.raise_value_error, (1,), callback=got.append,
                          error_callback=got.append)
        with pytest.raises(ValueError, match="^bad 1$"):
            r.get(T)
        assert len(got) == 1
        assert type(got[0]) is ValueError and got[0].args == ("bad 1",)


# -- map, starmap -----------------------------------------------------------

@pytest.mark.parametrize("chunksize", [None, 1, 3, 100])
def test_map_chunksize_keeps_order(pmp, chunksize):
    """map returns results in input order whatever the chunksize."""
    with started(pmp.Pool, 2) as p:
        assert p.map(h.sq, range(20), chunksize) == [x * x for x in range(20)]


@pytest.mark.parametrize("rng", [range(1000), range(-500, 1500, 7), range(900, 0, -3)])
@pytest.mark.parametrize("chunksize", [None, 16, 250])
def test_map_over_range(pmp, rng, chunksize):
    """map over a range (long chunks of it) calls the function on the same
    ints, in order, whatever the step."""
    with started(pmp.Pool, 2) as p:
        got = p.map(h.type_and_square, rng, chunksize)
    assert got == [("int", x * x) for x in rng]


def test_map_over_range_fails_at_the_item(pmp):
    """An exception at one item of a long range chunk fails the map."""
    with started(pmp.Pool, 2) as p:
        with pytest.raises(ValueError, match="three"):
            p.map(h.fail_on_3, range(100), 50)
        assert p.map(h.sq, range(40), 20)[-1] == 39 * 39


@pytest.mark.parametrize("chunksize", [1, 4, None])
def test_map_results_of_any_type(pmp, chunksize):
    """map's results keep their types and order, whether they are plain
    values or instances that travel pickled."""
    with started(pmp.Pool, 2) as p:
        got = p.map(h.make_value, range(24), chunksize)
    assert got == [h.make_value(i) for i in range(24)]
    assert [type(v) for v in got] == [type(h.make_value(i)) for i in range(24)]


def test_map_over_generator(pmp):
    """map accepts an iterable without len()."""
    with started(pmp.Pool, 2) as p:
        assert p.map(h.sq, (x for x in range(7))) == [x * x for x in range(7)]


def test_map_empty(pmp):
    """map, map_async, imap, imap_unordered and starmap over an empty
    iterable give empty results; map_async is ready at once and (3.11)
    never calls its callback."""
    got = []
    with started(pmp.Pool, 2) as p:
        assert p.map(h.sq, []) == []
        r = p.map_async(h.sq, [], callback=got.append)
        assert r.ready() is True and r.get(0) == []
        assert p.apply(h.sq, (1,)) == 1  # a round trip: a late callback would show
        assert got == []
        assert drain(p.imap(h.sq, [])) == []
        assert drain(p.imap_unordered(h.sq, iter([]))) == []
        assert p.starmap(h.add, []) == []


def test_map_async_callback_gets_the_list(pmp):
    """map_async's callback is called once with the whole result list."""
    got = []
    with started(pmp.Pool, 2) as p:
        r = p.map_async(h.sq, range(6), chunksize=2, callback=got.append)
        assert r.get(T) == [0, 1, 4, 9, 16, 25]
        assert got == [[0, 1, 4, 9, 16, 25]]


def test_map_async_error_callback(pmp):
    """A failing item fails map_async: error_callback gets the exception,
    the callback is not called, get() raises it."""
    got, errors = [], []
    with started(pmp.Pool, 2) as p:
        r = p.map_async(h.fail_on_3, range(6), chunksize=1, callback=got.append,
                        error_callback=errors.append)
        with pytest.raises(ValueError, match="^three$"):
            r.get(T)
        assert got == []
        assert len(errors) == 1 and type(errors[0]) is ValueError


def test_map_raises_the_worker_exception(pmp):
    """map re-raises a task's exception; the pool stays usable."""
    with started(pmp.Pool, 2) as p:
        with pytest.raises(ValueError, match="^three$"):
            p.map(h.fail_on_3, range(6))
        assert p.map(h.sq, range(3)) == [0, 1, 4]


def test_starmap(pmp):
    """starmap unpacks each item as the arguments."""
    with started(pmp.Pool, 2) as p:
        assert p.starmap(h.add, [(1, 2), (3, 4), (5, 6)]) == [3, 7, 11]
        assert p.starmap(pow, [(2, 3), (3, 2)], chunksize=1) == [8, 9]


def test_starmap_async_callbacks(pmp):
    """starmap_async: callback gets the list; error_callback the exception."""
    got, errors = [], []
    with started(pmp.Pool, 2) as p:
        r = p.starmap_async(h.add, [(1, 2), (3, 4)], callback=got.append)
        assert r.get(T) == [3, 7]
        assert got == [[3, 7]]
        r = p.starmap_async(h.add, [(1, "x")], error_callback=errors.append)
        with pytest.raises(TypeError):
            r.get(T)
        assert len(errors) == 1 and type(errors[0]) is TypeError


def test_map_big_numpy_arrays_arrive_writable_and_whole(pmp):
    """Arrays of megabytes (pickled with out-of-band buffers) arrive in the
    worker whole and writable, as the worker's own: changing one there
    changes neither the parent's nor another task's, and the changed array
    comes back."""
    numpy = pytest.importorskip("numpy")
    arrays = [numpy.full((1 << 17) + i, float(i + 1)) for i in range(6)]
    with started(pmp.Pool, 2) as p:
        got = p.map(h.scale_in_place, [(a, 3.0) for a in arrays], 1)
        again = p.apply(h.scale_in_place, ((arrays[0], 2.0),))
    for a, (out, before, writable) in zip(arrays, got):
        assert writable is True
        assert before == float(a.sum())
        assert out.shape == a.shape and (out == a * 3.0).all()
    assert float(arrays[0][0]) == 1.0  # the parent's copy is untouched
    assert (again[0] == arrays[0] * 2.0).all()


@pytest.mark.parametrize("chunksize", [1, 3])
def test_big_array_results_are_each_their_own(pmp, chunksize):
    """Big array results (one a task, or several in one chunk's message)
    come back right and writable, each its own: writing one changes no
    other, and they stay right after later results arrive."""
    numpy = pytest.importorskip("numpy")
    counts = [1 << 17, 8190, 1 << 18, 1 << 17, 9000, 1 << 16]
    with started(pmp.Pool, 2) as p:
        got = p.map(h.np_block, counts, chunksize)
        for a in got:
            a[0] = -1.0
        later = p.map(h.np_block, counts, chunksize)
    for a, b, n in zip(got, later, counts):
        want = numpy.arange(1, n + 1, dtype=numpy.float64) * n
        assert a[0] == -1.0 and (a[1:] == want[1:]).all()
        assert (b == want).all()


def test_big_arrays_a_worker_keeps_stay_intact(pmp):
    """A worker that keeps the arrays of its earlier tasks (in a global)
    still sees each of them whole after later big tasks arrive, of the
    same size, smaller and larger: a new task is never received into
    memory an earlier one's arrays still use."""
    numpy = pytest.importorskip("numpy")
    sizes = [1 << 17, 1 << 17, 1 << 16, 1 << 18, 1 << 17]
    arrays = [numpy.full(n, float(i + 1)) for i, n in enumerate(sizes)]
    with started(pmp.Pool, 1) as p:
        got = p.map(h.keep_and_sum_kept, arrays, 1)
    expected = [float(a.sum()) for a in arrays]
    for i, sums in enumerate(got):
        assert sums == expected[: i + 1]


def test_big_arrays_of_changing_sizes_arrive_whole(pmp):
    """Big tasks one after the other in one worker, growing and shrinking,
    each dropped after its task: every one arrives with its own values."""
    numpy = pytest.importorskip("numpy")
    sizes = [1 << 18, 1 << 18, 1 << 16, 1 << 19, 1 << 17, 1 << 18, 1 << 18]
    arrays = [numpy.arange(n, dtype=numpy.float64) * (i + 1) for i, n in enumerate(sizes)]
    with started(pmp.Pool, 1) as p:
        got = p.map(h.np_sum, arrays, 1)
    assert got == [float(a.sum()) for a in arrays]


# -- imap, imap_unordered ---------------------------------------------------

@pytest.mark.parametrize("chunksize", [1, 3])
def test_imap_in_order(pmp, chunksize):
    """imap yields results in input order (with chunksize > 1 the stdlib
    returns a plain generator over the chunks, without next(timeout))."""
    with started(pmp.Pool, 2) as p:
        assert drain(p.imap(h.sq, range(10), chunksize)) == [x * x for x in range(10)]


@pytest.mark.parametrize("chunksize", [1, 3])
def test_imap_unordered_complete(pmp, chunksize):
    """imap_unordered yields every result exactly once."""
    with started(pmp.Pool, 2) as p:
        got = drain(p.imap_unordered(h.sq, iter(range(10)), chunksize=chunksize))
        assert sorted(got) == [x * x for x in range(10)]


def test_imap_raises_at_the_failing_item(pmp):
    """imap raises a task's exception at that item, then goes on."""
    with started(pmp.Pool, 2) as p:
        it = p.imap(h.fail_on_3, range(6))
        out = []
        for _ in range(6):
            try:
                out.append(it.next(T))
            except ValueError as e:
                out.append(str(e))
        assert out == [0, 1, 4, "three", 16, 25]
        with pytest.raises(StopIteration):
            it.next(T)


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_iterator_protocol(pmp, method):
    """The imap iterators are their own iterators, support next() and
    .next(timeout), and keep raising StopIteration when done."""
    with started(pmp.Pool, 2) as p:
        it = getattr(p, method)(h.sq, [5, 5])
        assert iter(it) is it
        assert next(it) == 25
        assert it.next(timeout=T) == 25
        for _ in range(2):
            with pytest.raises(StopIteration):
                next(it)
        with pytest.raises(StopIteration):
            it.next(T)
        assert list(getattr(p, method)(h.sq, [2, 2, 2])) == [4, 4, 4]


def test_imap_next_timeout(pmp, gate):
    """imap's next(timeout) raises TimeoutError while the item is not done,
    and returns it once it is."""
    with started(pmp.Pool, 2) as p:
        it = p.imap(h.wait_gate, [8])
        t0 = time.monotonic()
        with pytest.raises(pmp.TimeoutError):
            it.next(timeout=0.1)
        assert 0.09 <= time.monotonic() - t0 < 5
        gate.set()
        assert it.next(timeout=T) == 8


# -- AsyncResult ------------------------------------------------------------

def test_async_result_get_timeout(pmp, gate):
    """get(timeout) raises the module's TimeoutError (a ProcessError) while
    the task runs."""
    with started(pmp.Pool, 2) as p:
        r = p.apply_async(h.wait_gate, (1,))
        t0 = time.monotonic()
        with pytest.raises(pmp.TimeoutError):
            r.get(timeout=0.1)
        assert 0.09 <= time.monotonic() - t0 < 5
        assert issubclass(pmp.TimeoutError, pmp.ProcessError)
        gate.set()
        assert r.get(timeout=T) == 1


def test_async_result_ready_wait_successful(pmp, gate):
    """ready() is False and successful() raises ValueError while the task
    runs; wait(timeout) returns None; afterwards ready() and successful()."""
    with started(pmp.Pool, 2) as p:
        r = p.apply_async(h.wait_gate, (2,))
        assert r.ready() is False
        with pytest.raises(ValueError, match="not ready"):
            r.successful()
        assert r.wait(0.05) is None
        assert r.ready() is False
        gate.set()
        assert r.wait(T) is None
        assert r.ready() is True
        assert r.successful() is True
        assert r.get(0) == 2


def test_async_result_unsuccessful(pmp):
    """A failed task: ready() True, successful() False."""
    with started(pmp.Pool, 2) as p:
        r = p.apply_async(h.raise_value_error, (0,))
        r.wait(T)
        assert r.ready() is True
        assert r.successful() is False
        r = p.map_async(h.fail_on_3, range(5))
        r.wait(T)
        assert r.ready() is True and r.successful() is False


# -- exceptions -------------------------------------------------------------

def _check_remote(e, ppool):
    assert type(e) is ValueError and e.args == ("bad 4",)
    cause = e.__cause__
    assert isinstance(cause, ppool.RemoteTraceback)
    text = str(cause)
    assert "Traceback (most recent call last)" in text
    assert "raise_value_error" in text
    assert "ValueError: bad 4" in text


@pytest.mark.parametrize("how", ["apply", "get", "map", "imap"])
def test_worker_exception_with_remote_traceback(pmp, ppool, how):
    """A worker's exception is re-raised in the parent with its type and
    args, and __cause__ a RemoteTraceback carrying the worker's traceback."""
    with started(pmp.Pool, 2) as p:
        calls = {
            "apply": lambda: p.apply(h.raise_value_error, (4,)),
            "get": lambda: p.apply_async(h.raise_value_error, (4,)).get(T),
            "map": lambda: p.map(h.raise_value_error, [4]),
            "imap": lambda: p.imap(h.raise_value_error, [4]).next(T),
        }
        with pytest.raises(ValueError) as info:
            calls[how]()
        _check_remote(info.value, ppool)


@pytest.mark.parametrize("how", ["apply", "map"])
def test_unpicklable_result_is_maybeencodingerror(pmp, ppool, how):
    """A result that can't be pickled raises MaybeEncodingError 'Error
    sending result: <repr>. Reason: <repr of the pickling error>'; the pool
    stays usable."""
    with started(pmp.Pool, 2) as p:
        with pytest.raises(ppool.MaybeEncodingError) as info:
            if how == "apply":
                p.apply(h.unpicklable_result, (1,))
            else:
                p.map(h.unpicklable_result, [1])
        e = info.value
        assert str(e) == f"Error sending result: '{e.value}'. Reason: '{e.exc}'"
        assert "_thread.lock" in e.value
        assert e.value.startswith("[") == (how == "map")  # map sends a chunk
        assert "TypeError" in e.exc and "cannot pickle" in e.exc
        assert p.apply(h.sq, (3,)) == 9


# -- worker life ------------------------------------------------------------

def test_maxtasksperchild_recycles_workers(pmp):
    """maxtasksperchild=2: no worker runs more than 2 tasks, new workers
    replace the old ones, and every result is right."""
    with started(pmp.Pool, 2, maxtasksperchild=2) as p:
        got = p.map_async(h.pid_and_square, range(10), chunksize=1).get(T)
    assert [sq for _, sq in got] == [x * x for x in range(10)]
    pids = [pid for pid, _ in got]
    assert len(set(pids)) >= 5
    assert max(pids.count(pid) for pid in pids) <= 2


def test_maxtasksperchild_one(pmp):
    """maxtasksperchild=1: each task runs in a fresh worker."""
    with started(pmp.Pool, 2, maxtasksperchild=1) as p:
        got = [p.apply_async(h.pid_and_square, (x,)).get(T) for x in range(4)]
        got += p.map_async(h.pid_and_square, range(4, 8), chunksize=1).get(T)
    assert [sq for _, sq in got] == [x * x for x in range(8)]
    assert len({pid for pid, _ in got}) == 8


def test_initializer_runs_once_per_worker(pmp, tmp_path):
    """The initializer runs once in each worker (its global reaches every
    task), and again in each replacement under maxtasksperchild."""
    path = str(tmp_path / "init")
    with started(pmp.Pool, 2, h.init_record, (path, "ready"), 3) as p:
        got = p.map_async(h.report_init, range(12), chunksize=1).get(T)
    assert {value for _, value, _ in got} == {"ready"}
    assert {calls for _, _, calls in got} == {1}
    pids = h.read_lines(path)
    assert len(pids) == len(set(pids))
    assert {str(pid) for pid, _, _ in got} <= set(pids)
    assert len({pid for pid, _, _ in got}) >= 4


# -- close, terminate, join, with -------------------------------------------

def test_close_lets_queued_work_finish(pmp):
    """After close(), queued tasks still complete and join() returns."""
    p = pmp.Pool(2)
    try:
        results = [p.apply_async(h.sq, (x,)) for x in range(6)]
        m = p.map_async(h.sq, range(4))
        p.close()
        join_pool(p)
        assert [r.get(0) for r in results] == [x * x for x in range(6)]
        assert m.get(0) == [0, 1, 4, 9]
    finally:
        p.terminate()
        join_pool(p)


def test_join_while_running_is_valueerror(pmp):
    """join() before close() or terminate() raises ValueError('Pool is still
    running')."""
    with started(pmp.Pool, 2) as p:
        with pytest.raises(ValueError, match="^Pool is still running$"):
            p.join()
        assert p.apply(h.sq, (2,)) == 4


def test_terminate_stops_running_tasks(pmp, gate, tmp_path):
    """terminate() returns promptly with a task still blocked, the workers
    are gone after join()."""
    path = str(tmp_path / "init")
    p = pmp.Pool(2, initializer=h.init_record, initargs=(path,))
    try:
        assert p.apply_async(h.sq, (1,)).get(T) == 1
        p.apply_async(h.wait_gate, (1,))
        t0 = time.monotonic()
        p.terminate()
        join_pool(p, timeout=5)
        assert time.monotonic() - t0 < 5
    finally:
        p.terminate()
        join_pool(p)
    h.wait_gone(int(pid) for pid in h.read_lines(path))


@pytest.mark.parametrize("stop", ["close", "terminate", "with"])
def test_not_running_is_valueerror(pmp, stop):
    """Every submitting method of a closed or terminated pool raises
    ValueError('Pool not running'); close/terminate/join stay allowed."""
    p = pmp.Pool(2)
    try:
        if stop == "with":
            with p:
                pass
        else:
            getattr(p, stop)()
        for call in (lambda: p.apply(h.sq, (1,)),
                     lambda: p.apply_async(h.sq, (1,)),
                     lambda: p.map(h.sq, [1]),
                     lambda: p.map_async(h.sq, [1]),
                     lambda: p.imap(h.sq, [1]),
                     lambda: p.imap_unordered(h.sq, [1]),
                     lambda: p.starmap(h.add, [(1, 2)]),
                     lambda: p.starmap_async(h.add, [(1, 2)])):
            with pytest.raises(ValueError, match="^Pool not running$"):
                call()
        p.close()
        join_pool(p)
        p.terminate()
    finally:
        p.terminate()
        join_pool(p)


def test_context_manager_terminates_on_exit(pmp, gate, tmp_path):
    """`with Pool() as p` returns the pool and terminates it on exit (a
    blocked task does not delay the exit); its workers end."""
    path = str(tmp_path / "init")
    p = pmp.Pool(2, initializer=h.init_record, initargs=(path,))
    try:
        with p as entered:
            assert entered is p
            assert p.apply_async(h.sq, (3,)).get(T) == 9
            p.apply_async(h.wait_gate, (1,))
            t0 = time.monotonic()
        assert time.monotonic() - t0 < 5
        join_pool(p, timeout=5)
    finally:
        p.terminate()
        join_pool(p)
    h.wait_gone(int(pid) for pid in h.read_lines(path))


def test_context_manager_on_exception(pmp):
    """An exception in the with block propagates and the pool is
    terminated."""
    p = pmp.Pool(2)
    try:
        with pytest.raises(KeyError):
            with p:
                raise KeyError("inside")
        with pytest.raises(ValueError, match="^Pool not running$"):
            p.apply(h.sq, (1,))
    finally:
        p.terminate()
        join_pool(p)


def _unreferenced_pool_warns(ctx):
    """In a child: a running pool dropped without close() warns
    ResourceWarning when collected. An exit status: 0 if so."""
    p = ctx.Pool(2)
    assert p.apply_async(h.sq, (2,)).get(T) == 4
    with pytest.warns(ResourceWarning, match="unclosed running multiprocessing pool"):
        del p
        gc.collect()
    return 0


def test_resourcewarning_for_running_pool_collected(pmp):
    """A running pool that is garbage collected warns ResourceWarning
    ('unclosed running multiprocessing pool ...'). Runs in a forked child in
    its own session, killed with its workers afterwards: the stdlib leaves
    the workers of a collected pool running."""
    from _sync_helpers import join
    with h.session_child(_unreferenced_pool_warns, pmp) as child:
        assert join(child, timeout=T) == 0


# -- submodules -------------------------------------------------------------

def test_pool_submodule_names(pmp, ppool):
    """<module>.pool has Pool, ThreadPool, AsyncResult (= ApplyResult),
    MapResult, IMapIterator, IMapUnorderedIterator, and the pool's methods
    return instances of them."""
    for name in ("Pool", "ThreadPool", "AsyncResult", "ApplyResult", "MapResult",
                 "IMapIterator", "IMapUnorderedIterator", "MaybeEncodingError",
                 "RemoteTraceback"):
        assert hasattr(ppool, name), name
    assert ppool.AsyncResult is ppool.ApplyResult
    assert issubclass(ppool.MapResult, ppool.ApplyResult)
    assert issubclass(ppool.IMapUnorderedIterator, ppool.IMapIterator)
    with started(pmp.Pool, 2) as p:
        assert isinstance(p, ppool.Pool)
        r = p.apply_async(h.sq, (2,))
        assert isinstance(r, ppool.ApplyResult) and r.get(T) == 4
        m = p.map_async(h.sq, [2])
        assert isinstance(m, ppool.MapResult) and m.get(T) == [4]
        it = p.imap(h.sq, [2])
        assert isinstance(it, ppool.IMapIterator)
        assert not isinstance(it, ppool.IMapUnorderedIterator)
        assert drain(it) == [4]
        it = p.imap_unordered(h.sq, [2])
        assert isinstance(it, ppool.IMapUnorderedIterator) and drain(it) == [4]


def test_threadpool(ppool):
    """<module>.pool.ThreadPool runs tasks in threads of this process."""
    with started(ppool.ThreadPool, 2) as p:
        assert p.map(h.sq, range(5)) == [0, 1, 4, 9, 16]
        assert p.apply(os.getpid) == os.getpid()
        assert p.apply(threading.get_ident) != threading.get_ident()
        assert isinstance(p, ppool.Pool)
        assert p._processes == 2


def test_dummy_pool(pimpl):
    """<module>.dummy.Pool is the thread-backed pool."""
    dummy = importlib.import_module(pimpl + ".dummy")
    with started(dummy.Pool, 2) as p:
        assert p.map(h.sq, range(4)) == [0, 1, 4, 9]
        assert p.apply(os.getpid) == os.getpid()
        assert drain(p.imap(h.sq, [3])) == [9]


def test_pool_with_a_stand_in_context():
    """pool.Pool(context=<an object whose get_start_method() is not a
    method name>, e.g. a mock in a test) forks its workers, as the default
    context does, instead of crashing the interpreter. Ours only: the
    stdlib's would ask the mock for its Process objects and never start a
    worker."""
    import unittest.mock
    pool_module = importlib.import_module("cmultiprocessing.pool")
    p = pool_module.Pool(2, context=unittest.mock.MagicMock())
    try:
        assert p.map_async(abs, [-1, -2]).get(T) == [1, 2]
    finally:
        p.terminate()
        p.join()
