"""Pool beyond the standard library (issue 9, section 3): what
cmultiprocessing promises where the stdlib hangs or misbehaves. These run
on cmultiprocessing only (the stdlib hangs on most of them) and are skipped
until it has a Pool. They define the contract: each is small, with a
one-line docstring saying what it checks."""
import functools
import os
import re
import signal
import time

import pytest

import _pool_helpers as h
from _pool_helpers import gate, pcmp  # noqa: F401 (fixtures)
from _pool_helpers import T, session_child, started
from _sync_helpers import join


def _next_or_error(it):
    try:
        return it.next(T)
    except Exception as e:  # noqa: B902 (the test inspects it)
        return e


def _names_sigkill(e):
    return re.search(r"SIGKILL|signal 9\b", str(e)) is not None


def _alive(pid):
    """pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _wait_dead(pids, timeout=5.0):
    end = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > end:
            pytest.fail(f"workers {[p for p in pids if _alive(p)]} still alive")
        time.sleep(0.005)


def _wait_lines(path, n, timeout=T):
    end = time.monotonic() + timeout
    while len(h.read_lines(path)) < n:
        if time.monotonic() > end:
            pytest.fail(f"{path} has {len(h.read_lines(path))} lines, not {n}")
        time.sleep(0.005)
    return h.read_lines(path)


# -- a worker lost mid-task -------------------------------------------------

def test_workerlosterror_is_processerror(pcmp, cmp):
    """WorkerLostError is exported and subclasses ProcessError."""
    assert issubclass(cmp.WorkerLostError, cmp.ProcessError)


def test_sigkill_fails_only_that_task(pcmp, cmp):
    """A worker SIGKILLed mid-task fails exactly that task with
    WorkerLostError naming the signal; the other tasks complete."""
    with started(pcmp.Pool, 2) as p:
        results = [p.apply_async(h.kill_self_on, (x,)) for x in range(6)]
        for x, r in enumerate(results):
            if x == 3:
                with pytest.raises(cmp.WorkerLostError) as info:
                    r.get(T)
                assert _names_sigkill(info.value), str(info.value)
            else:
                assert r.get(T) == x * x


def test_sigkill_in_map_raises_workerlost_and_pool_survives(pcmp, cmp):
    """map raises WorkerLostError for a killed worker; the pool replaces it
    and stays usable."""
    with started(pcmp.Pool, 2) as p:
        with pytest.raises(cmp.WorkerLostError) as info:
            p.map_async(h.kill_self_on, range(8), chunksize=1).get(T)
        assert _names_sigkill(info.value), str(info.value)
        with pytest.raises(cmp.WorkerLostError):
            p.map(h.kill_self_on, range(8), chunksize=1)
        assert p.map_async(h.pid_and_square, range(6), chunksize=1).get(T)[5][1] == 25
        assert p.apply_async(h.sq, (9,)).get(T) == 81


def test_repeated_sigkill_in_imap_fails_those_items(pcmp, cmp):
    """imap raises WorkerLostError at each killed item (three kills in one
    run) and yields every other result in order."""
    task = functools.partial(h.kill_self_on, bad=(2, 5, 7))
    with started(pcmp.Pool, 2) as p:
        it = p.imap(task, range(10))
        out = [_next_or_error(it) for _ in range(10)]
    for x, got in enumerate(out):
        if x in (2, 5, 7):
            assert isinstance(got, cmp.WorkerLostError) and _names_sigkill(got), repr(got)
        else:
            assert got == x * x


def test_os_exit_names_exit_code(pcmp, cmp):
    """os._exit(3) in a task fails it with WorkerLostError naming exit code
    3; the pool stays usable."""
    with started(pcmp.Pool, 2) as p:
        with pytest.raises(cmp.WorkerLostError) as info:
            p.apply_async(h.exit_3, (0,)).get(T)
        msg = str(info.value)
        assert "exit" in msg.lower() and re.search(r"\b3\b", msg), msg
        assert p.apply_async(h.sq, (4,)).get(T) == 16


# -- exceptions that do not travel ------------------------------------------

@pytest.mark.parametrize("how", ["apply_async", "map_async"])
def test_exception_unpicklable_in_parent_names_type(pcmp, how):
    """An exception that can't be unpickled in the parent arrives as an
    error naming the original type and message, not a hang."""
    with started(pcmp.Pool, 2) as p:
        r = getattr(p, how)(h.raise_needs_two_args, (1,) if how == "apply_async" else [1])
        with pytest.raises(Exception) as info:
            r.get(T)
        e = info.value
        assert not isinstance(e, pcmp.TimeoutError), "the call hung"
        assert "NeedsTwoArgs" in str(e) and "two-args 1" in str(e), str(e)
        assert p.apply_async(h.sq, (5,)).get(T) == 25


def test_exception_unpicklable_in_worker_names_type(pcmp):
    """An exception that can't be pickled in the worker stays a
    MaybeEncodingError (as the stdlib's) whose message names the original
    type and message."""
    import cmultiprocessing.pool as cpool
    with started(pcmp.Pool, 2) as p:
        with pytest.raises(cpool.MaybeEncodingError) as info:
            p.apply_async(h.raise_unpicklable_exception, (1,)).get(T)
        assert "ValueError" in str(info.value) and "unpicklable 1" in str(info.value)
        assert p.apply_async(h.sq, (5,)).get(T) == 25


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
def test_base_exception_fails_task_and_worker_is_replaced(pcmp, kind, tmp_path):
    """SystemExit / KeyboardInterrupt in a task fails that task (an error
    naming it, not a hang); the worker is replaced and the pool goes on."""
    path = str(tmp_path / "init")
    with started(pcmp.Pool, 2, initializer=h.init_record, initargs=(path,)) as p:
        _wait_lines(path, 2)
        try:
            p.apply_async(h.raise_base, (kind,)).get(T)
        except BaseException as e:  # noqa: B902 (SystemExit may come back as is)
            got = e
        else:
            pytest.fail("the task did not fail")
        assert not isinstance(got, pcmp.TimeoutError), "the call hung"
        assert type(got).__name__ == kind or kind in str(got), repr(got)
        _wait_lines(path, 3)  # the replacement ran the initializer
        assert p.map_async(h.sq, range(4)).get(T) == [0, 1, 4, 9]


def test_failing_initializer_fails_calls_and_stops_respawning(pcmp, tmp_path):
    """An initializer that raises: the pending calls raise an error carrying
    its exception, and the pool stops starting workers."""
    path = str(tmp_path / "init")
    with started(pcmp.Pool, 2, initializer=h.init_fail, initargs=(path,)) as p:
        pending = [p.apply_async(h.sq, (x,)) for x in range(3)]
        pending.append(p.map_async(h.sq, range(4)))
        for r in pending:
            with pytest.raises(Exception) as info:
                r.get(T)
            chain = h.exception_chain(info.value)
            assert any("init failed on purpose" in str(x) for x in chain), repr(info.value)
        time.sleep(0.2)  # nothing to wait on: respawning must have stopped
        started_workers = len(h.read_lines(path))
        time.sleep(0.5)
        assert len(h.read_lines(path)) == started_workers <= 10


# -- bounded imap -----------------------------------------------------------

def _counting(yielded, cap=100_000):
    """Yields 0, 1, 2, ... (up to cap, so an unbounded reader still ends),
    appending each to yielded first."""
    for i in range(cap):
        yielded.append(i)
        yield i


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_reads_a_bounded_prefix(pcmp, method):
    """imap/imap_unordered over an endless generator, default buffer: after
    10 results at most 64 more items were taken from it."""
    yielded = []
    with started(pcmp.Pool, 2) as p:
        it = getattr(p, method)(h.sq, _counting(yielded))
        got = [it.next(T) for _ in range(10)]
        time.sleep(0.1)  # an unbounded reader runs ahead meanwhile
        assert len(yielded) <= 10 + 64, len(yielded)
        if method == "imap":
            assert got == [x * x for x in range(10)]
        assert it.next(T) >= 0  # still streaming


def test_ten_million_item_imap_in_bounded_memory(pcmp):
    """imap over a 10-million-item generator: the parent's peak memory
    grows by far less than the input or the results would take (at least
    280 MB of ints for either)."""
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    n = 10_000_000
    with started(pcmp.Pool, 2) as p:
        total = count = 0
        for v in p.imap(h.sq, (i for i in range(n)), chunksize=20000):
            total += v
            count += 1
    assert count == n
    assert total == (n - 1) * n * (2 * n - 1) // 6  # the sum of the squares
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 150, grown_mib


def test_imap_input_that_calls_the_pool(pcmp):
    """An imap input generator that itself calls pool.apply() (the stdlib's
    task handler waits for itself there): it runs, since the thread that
    reads the results and feeds the input reads on while it waits."""
    with started(pcmp.Pool, 2) as p:
        def source():
            for x in range(20):
                yield p.apply(h.add, (x, 100))

        got = []
        h._bounded(lambda: got.extend(p.imap(h.sq, source(), 1)), T, "imap")
        assert got == [(x + 100) ** 2 for x in range(20)]


def test_callback_that_calls_the_pool(pcmp):
    """A callback that calls pool.apply() (in the stdlib the result handler
    then waits for itself forever) gets its result."""
    with started(pcmp.Pool, 2) as p:
        inner = []
        r = p.apply_async(h.sq, (3,), callback=lambda v: inner.append(p.apply(h.add, (v, 1))))
        assert r.get(T) == 9
        end = time.monotonic() + T
        while not inner and time.monotonic() < end:
            time.sleep(0.005)
        assert inner == [10]


def test_imap_buffersize(pcmp):
    """imap(buffersize=4): at most 4 tasks beyond what was consumed (one
    more item may be taken, waiting for a slot)."""
    yielded = []
    with started(pcmp.Pool, 2) as p:
        it = p.imap(h.sq, _counting(yielded), buffersize=4)
        assert [it.next(T) for _ in range(10)] == [x * x for x in range(10)]
        time.sleep(0.1)  # an unbounded reader runs ahead meanwhile
        assert len(yielded) <= 10 + 4 + 1, len(yielded)


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_close_feeds_past_the_buffer(pcmp, method):
    """close() before any result is consumed feeds the whole input at once,
    far past buffersize: every result is still handed out, in order for
    imap."""
    with started(pcmp.Pool, 2) as p:
        it = getattr(p, method)(h.sq, iter(range(500)), chunksize=3, buffersize=2)
        p.close()
        got = [it.next(T) for _ in range(500)]
        with pytest.raises(StopIteration):
            it.next(T)
    if method == "imap":
        assert got == [x * x for x in range(500)]
    else:
        assert sorted(got) == [x * x for x in range(500)]


# -- lambdas ----------------------------------------------------------------

def test_lambdas_and_closures_with_cloudpickle(pcmp):
    """With cloudpickle importable, lambdas and closures work as tasks."""
    pytest.importorskip("cloudpickle")
    k = 10
    with started(pcmp.Pool, 2) as p:
        assert p.map(lambda x: x + 1, range(4)) == [1, 2, 3, 4]
        assert p.apply_async(lambda: k * 2).get(T) == 20
        assert [p.imap(lambda x: x * k, [3]).next(T)] == [30]
        assert p.starmap(lambda a, b: a - b, [(5, 2)]) == [3]


# -- progress ---------------------------------------------------------------

@pytest.mark.parametrize("method", ["map", "imap", "imap_unordered", "starmap"])
def test_progress_true_writes_stderr(pcmp, capfd, method):
    """progress=True writes something to stderr (a bar or a line); without
    it nothing is written; the results are unchanged."""
    func, items = (h.add, [(x, x) for x in range(5)]) if method == "starmap" else (h.sq, range(5))
    want = [2 * x for x in range(5)] if method == "starmap" else [x * x for x in range(5)]
    with started(pcmp.Pool, 2) as p:
        capfd.readouterr()
        got = list(getattr(p, method)(func, items))
        assert capfd.readouterr().err == ""
        got = list(getattr(p, method)(func, items, progress=True))
        assert capfd.readouterr().err.strip() != ""
    assert sorted(got) == sorted(want)


def test_progress_is_keyword_only(pcmp):
    """progress cannot be passed positionally (map's 4th argument)."""
    with started(pcmp.Pool, 2) as p:
        with pytest.raises(TypeError):
            p.map(h.sq, range(3), None, True)


@pytest.mark.parametrize("method", ["map", "starmap"])
def test_progress_callable_gets_done_total(pcmp, method):
    """A progress callable receives (done, total): total 5, done rising to
    5 by the time map returns."""
    calls = []
    func, items = (h.add, [(x, 1) for x in range(5)]) if method == "starmap" else (h.sq, range(5))
    with started(pcmp.Pool, 2) as p:
        getattr(p, method)(func, items, chunksize=1, progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1] == (5, 5)
    assert all(t == 5 and 0 <= d <= 5 for d, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


# -- the parent's fate ------------------------------------------------------

def _map_until_interrupted(ctx, path, started_path):
    """In a child: a pool whose workers block in map; 7 if
    KeyboardInterrupt ends the map (an exit status)."""
    p = ctx.Pool(2, initializer=h.init_record, initargs=(path,))
    try:
        p.map(functools.partial(h.note_then_wait, started_path), range(4), chunksize=1)
    except KeyboardInterrupt:
        return 7
    return 1


def test_ctrl_c_during_map(pcmp, gate, tmp_path, capfd):
    """SIGINT to the foreground group (Ctrl-C) during map: KeyboardInterrupt
    within 0.5 s, no worker traceback on stderr, no worker left."""
    path, started_path = str(tmp_path / "init"), str(tmp_path / "started")
    with session_child(_map_until_interrupted, pcmp, path, started_path) as child:
        pids = [int(pid) for pid in _wait_lines(path, 2)]
        _wait_lines(started_path, 2)  # both workers blocked: map waits
        t0 = time.monotonic()
        os.killpg(child, signal.SIGINT)
        assert join(child, timeout=T) == 7
        assert time.monotonic() - t0 < 0.5
        _wait_dead(pids)
    assert "Traceback" not in capfd.readouterr().err


def test_interrupted_map_drops_its_queued_tasks(pcmp, tmp_path):
    """An exception raised in the caller while map() waits (Ctrl-C) drops
    the map's tasks that no worker has taken: nobody can get their results.
    The pool goes on at once with the next call."""
    path = str(tmp_path / "ran")
    with started(pcmp.Pool, 2) as p:
        with h.interrupt_after(0.15), pytest.raises(KeyboardInterrupt):
            p.map(functools.partial(h.note_then_sleep, path, 0.05), range(200), 1)
        t0 = time.monotonic()
        assert p.apply(h.add, (1, 2)) == 3
        assert time.monotonic() - t0 < 1.0  # not behind 200 x 50 ms / 2
        ran = len(h.read_lines(path))
        assert ran < 40, ran


def test_big_tasks_arrive_whole_and_are_let_go(pcmp):
    """Tasks of megabytes (held by reference while they wait for a worker,
    not copied): each arrives whole, and once the map is done, or the pool
    terminated with some still waiting, the pool keeps no reference to
    their bytes."""
    import sys
    blobs = [bytes([i]) * ((3 << 20) + i) for i in range(6)]
    before = [sys.getrefcount(b) for b in blobs]
    with started(pcmp.Pool, 1) as p:
        assert p.map(h.length_and_first, blobs, 1) == [(len(b), b[0]) for b in blobs]
        assert p.map(h.length_and_first, blobs, 2) == [(len(b), b[0]) for b in blobs]
        assert [sys.getrefcount(b) for b in blobs] == before
        p.map_async(h.sleep_then_length, [(0.2, b) for b in blobs], 1)
        time.sleep(0.05)
    assert [sys.getrefcount(b) for b in blobs] == before


def _pool_busy_then_wait(ctx, path, started_path):
    """In a child: a pool whose two workers are busy in blocked tasks;
    sleeps until the test SIGKILLs it."""
    p = ctx.Pool(2, initializer=h.init_record, initargs=(path,))
    p.map_async(functools.partial(h.note_then_wait, started_path), range(2), chunksize=1)
    time.sleep(30)
    return 1


def test_parent_sigkill_leaves_no_worker(pcmp, gate, tmp_path):
    """SIGKILL of the pool's process, its workers busy in tasks: none of
    them stays alive."""
    path, started_path = str(tmp_path / "init"), str(tmp_path / "started")
    with session_child(_pool_busy_then_wait, pcmp, path, started_path) as child:
        pids = [int(pid) for pid in _wait_lines(path, 2)]
        _wait_lines(started_path, 2)
        os.kill(child, signal.SIGKILL)
        assert join(child, timeout=T) == -signal.SIGKILL
        _wait_dead(pids)
