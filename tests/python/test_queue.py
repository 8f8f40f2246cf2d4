"""Queue, SimpleQueue and JoinableQueue: the stdlib's behaviour (each
standard test runs on both implementations) and ours beyond it."""
import os
import pickle
import queue
import random
import signal
import time

import pytest

from _sync_helpers import PidSquatter

np = pytest.importorskip("numpy")


def wait_until(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(0.002)
    return True


# ---- API and standard semantics (stdlib and ours) ------------------------

def test_put_get_fifo(mp):
    q = mp.Queue()
    items = [None, 1, "two", b"three", (4, 5), [6], {"seven": 7}, 8.5, 2**70]
    for it in items:
        q.put(it)
    assert [q.get(timeout=5) for _ in items] == items


def test_get_timeout_raises_empty(mp):
    q = mp.Queue()
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    assert 0.15 < time.monotonic() - t0 < 2
    with pytest.raises(queue.Empty):
        q.get(False)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(True, -1)


def test_maxsize_full(mp):
    q = mp.Queue(2)
    q.put(1)
    q.put(2)
    assert q.full()
    assert q.qsize() == 2
    t0 = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.2)
    assert 0.15 < time.monotonic() - t0 < 2
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    with pytest.raises(queue.Full):
        q.put(3, block=False)
    assert q.get(timeout=5) == 1
    assert not q.full()
    q.put(3)
    assert [q.get(timeout=5), q.get(timeout=5)] == [2, 3]


def test_qsize_empty_full(mp):
    q = mp.Queue(3)
    assert q.qsize() == 0 and q.empty() and not q.full()
    q.put("a")
    assert q.qsize() == 1
    assert wait_until(lambda: not q.empty())  # the stdlib's feeder may lag
    q.put("b")
    q.put("c")
    assert q.qsize() == 3 and q.full()
    for n in (2, 1, 0):
        q.get(timeout=5)
        assert q.qsize() == n
    assert q.empty()


def test_unbounded_is_never_full(mp):
    q = mp.Queue()
    for i in range(1000):
        q.put(i)
    assert not q.full()
    assert q.qsize() == 1000
    assert [q.get(timeout=5) for _ in range(1000)] == list(range(1000))


def test_close_then_use_raises(mp):
    q = mp.Queue()
    q.put(1)
    with pytest.raises(AssertionError):
        q.join_thread()
    q.close()
    with pytest.raises(ValueError, match="is closed"):
        q.put(2)
    with pytest.raises(ValueError, match="is closed"):
        q.get()
    q.join_thread()
    q.cancel_join_thread()


def test_reduce_refuses_outside_spawning(mp):
    for q in (mp.Queue(), mp.SimpleQueue(), mp.JoinableQueue()):
        with pytest.raises(RuntimeError, match="inheritance"):
            pickle.dumps(q)


def test_arguments(mp):
    q = mp.Queue(maxsize=5)
    q.put(obj=1, block=True, timeout=1)
    assert q.get(block=True, timeout=1) == 1
    with pytest.raises(TypeError):
        q.put()
    with pytest.raises(TypeError):
        q.get(1, 2, 3)
    with pytest.raises(TypeError):
        mp.Queue("x")


def test_simple_queue(mp):
    q = mp.SimpleQueue()
    assert q.empty()
    q.put((1, "a"))
    assert wait_until(lambda: not q.empty())
    assert q.get() == (1, "a")
    assert q.empty()
    q.close()
    with pytest.raises(OSError):
        q.get()
    with pytest.raises(OSError):
        q.put(1)


def test_simple_queue_ends_closed_after_close(mp):
    """CPython's TestSimpleQueue.test_closed: both pipe ends of the stdlib's
    SimpleQueue report closed once it is closed; ours are views of the
    queue that say the same, and the writer end sends as put() does."""
    q = mp.SimpleQueue()
    assert not q._reader.closed and not q._writer.closed
    q._writer.send("x")
    assert q.get() == "x"
    q.close()
    assert q._reader.closed and q._writer.closed
    with pytest.raises(OSError):
        q._writer.send("y")
    q.close()  # a second close() is fine


def test_queue_has_both_ends(mp):
    q = mp.Queue()
    assert not q._reader.closed and not q._writer.closed
    q.close()
    q.join_thread()


def test_joinable_queue(mp):
    q = mp.JoinableQueue()
    for i in range(5):
        q.put(i)
    for _ in range(5):
        q.get(timeout=5)
    for _ in range(5):
        q.task_done()
    with pytest.raises(ValueError, match="task_done\\(\\) called too many times"):
        q.task_done()
    q.join()  # returns at once: nothing unfinished


def _worker_done(q, n):
    for _ in range(n):
        q.get(timeout=10)
        time.sleep(0.001)
        q.task_done()


def test_joinable_join_waits_for_workers(mp):
    q = mp.JoinableQueue()
    for i in range(20):
        q.put(i)
    p = mp.Process(target=_worker_done, args=(q, 20))
    p.start()
    q.join()
    assert q.qsize() == 0
    p.join(10)
    assert p.exitcode == 0


def test_submodule_names(mp):
    import importlib
    mod = importlib.import_module(mp.Queue.__module__.split(".")[0] + ".queues") \
        if isinstance(mp.Queue, type) else importlib.import_module("multiprocessing.queues")
    if not isinstance(mp.Queue, type):  # the stdlib's context methods
        assert isinstance(mp.Queue(), mod.Queue)
    assert isinstance(mp.Queue(), mod.Queue)
    assert isinstance(mp.JoinableQueue(), mod.JoinableQueue)
    assert isinstance(mp.SimpleQueue(), mod.SimpleQueue)
    assert issubclass(mod.JoinableQueue, mod.Queue)
    assert mod.SimpleQueue[int] is not None  # generic alias, as in the stdlib


# ---- across processes (stdlib and ours) -----------------------------------

def _producer(q, pid, n, sizes):
    rnd = random.Random(pid)
    for i in range(n):
        q.put((pid, i, bytes([i % 256]) * rnd.choice(sizes)))


def _consumer(q, out, count):
    got = [q.get(timeout=30) for _ in range(count)]
    out.put([(pid, i, len(b), b[:1]) for pid, i, b in got])


@pytest.mark.timeout(120)
def test_many_producers_many_consumers(mp):
    nprod, ncons, n = 3, 2, 300
    q, out = mp.Queue(), mp.Queue()
    sizes = [0, 1, 10, 100, 5000, 70_000]
    total = nprod * n
    counts = [total // ncons + (1 if k < total % ncons else 0) for k in range(ncons)]
    cons = [mp.Process(target=_consumer, args=(q, out, c)) for c in counts]
    prods = [mp.Process(target=_producer, args=(q, k, n, sizes)) for k in range(nprod)]
    for p in cons + prods:
        p.start()
    results = [out.get(timeout=60) for _ in range(ncons)]
    for p in cons + prods:
        p.join(30)
        assert p.exitcode == 0
    seen = set()
    for got in results:
        last = {}
        for pid, i, size, first in got:
            assert (pid, i) not in seen
            seen.add((pid, i))
            assert i > last.get(pid, -1)  # in order per producer
            last[pid] = i
            assert first == (bytes([i % 256]) if size else b"")
    assert len(seen) == total


def _drain_some(q, out, count):
    got = [q.get(timeout=30) for _ in range(count)]
    assert all(pad == b"x" * 200 for _, pad in got)
    out.put([i for i, _ in got])


@pytest.mark.timeout(120)
def test_backlog_drained_by_many_consumers(mp):
    """A backlog put before any consumer runs (ours keeps most of it in the
    spill file behind the ring, read ahead by each consumer), then taken by
    three processes and this one at once: every item exactly once, and each
    consumer's in increasing order."""
    q, out = mp.Queue(), mp.Queue()
    total, counts = 40_000, [9_000, 9_000, 9_000]  # 9 MB, more than a ring
    for i in range(total):
        q.put((i, b"x" * 200))
    cons = [mp.Process(target=_drain_some, args=(q, out, c)) for c in counts]
    for p in cons:
        p.start()
    mine = [q.get(timeout=30)[0] for _ in range(total - sum(counts))]
    results = [out.get(timeout=60) for _ in cons] + [mine]
    for p in cons:
        p.join(30)
        assert p.exitcode == 0
    assert sorted(x for r in results for x in r) == list(range(total))
    for r in results:
        assert r == sorted(r)


def _echo(inq, outq):
    while True:
        item = inq.get(timeout=30)
        if item is None:
            break
        outq.put(item)


def test_queues_passed_as_process_args(mp):
    a, b = mp.Queue(), mp.Queue()
    p = mp.Process(target=_echo, args=(a, b))
    p.start()
    for v in [1, "x", (2, 3), b"y" * 100_000, np.arange(5)]:
        a.put(v)
        r = b.get(timeout=10)
        if isinstance(v, np.ndarray):
            assert np.array_equal(r, v)
        else:
            assert r == v
    a.put(None)
    p.join(10)
    assert p.exitcode == 0


def _sizes_producer(q, sizes):
    for s in sizes:
        q.put(bytes([s % 251]) * s)


@pytest.mark.timeout(120)
def test_random_sizes_up_to_64mib(mp):
    rnd = random.Random(7)
    sizes = [rnd.choice([0, 1, 7, 100, 4096, 65535, 65536, 65537, 1 << 20,
                         rnd.randrange(1, 3 << 20)]) for _ in range(40)]
    sizes += [64 << 20, 33 << 20 | 1]
    q = mp.Queue()
    p = mp.Process(target=_sizes_producer, args=(q, sizes))
    p.start()
    for s in sizes:
        b = q.get(timeout=60)
        assert type(b) is bytes and len(b) == s
        assert b == bytes([s % 251]) * s
    p.join(30)
    assert p.exitcode == 0


def _array_producer(q):
    q.put(np.arange(8 << 20, dtype=np.float64))  # 64 MiB
    q.put(np.arange(100, dtype=np.int32).reshape(10, 10).T)


def test_numpy_arrays(mp):
    q = mp.Queue()
    p = mp.Process(target=_array_producer, args=(q,))
    p.start()
    a = q.get(timeout=60)
    assert a.shape == (8 << 20,) and a[-1] == (8 << 20) - 1 and a.flags.writeable
    a[0] = 5  # writable, as the stdlib delivers it
    b = q.get(timeout=10)
    assert np.array_equal(b, np.arange(100, dtype=np.int32).reshape(10, 10).T)
    p.join(10)
    assert p.exitcode == 0


def _put_and_exit(q, n):
    for i in range(n):
        q.put(("item", i))
    os._exit(0)  # no atexit, no feeder flush


def test_producer_exiting_right_after_put_loses_nothing_cmp(cmp):
    q = cmp.Queue()
    p = cmp.Process(target=_put_and_exit, args=(q, 500))
    p.start()
    p.join(10)
    assert p.exitcode == 0
    assert q.qsize() == 500
    assert [q.get(timeout=5) for _ in range(500)] == [("item", i) for i in range(500)]


# ---- a backlog larger than the ring (spill) -------------------------------

_BACKLOG_SMALL = 200_000
_BACKLOG_BIG = 8 << 20


def _drain_in_order(q, results):
    ok = True
    for i in range(_BACKLOG_SMALL):
        ok = ok and q.get(timeout=30) == ("task", i)
    for k in range(5):
        b = q.get(timeout=30)
        ok = ok and type(b) is bytes and len(b) == _BACKLOG_BIG and b[:1] * 4 == bytes([k]) * 4 \
            and b[-1] == k
    results.put(ok)


@pytest.mark.timeout(120)
def test_put_everything_before_starting_the_consumer(mp):
    # "put all the tasks, then start the workers": no put may wait for a
    # consumer, whatever the backlog
    q = mp.Queue()
    for i in range(_BACKLOG_SMALL):
        q.put(("task", i))
    for k in range(5):
        q.put(bytes([k]) * _BACKLOG_BIG)
    results = mp.Queue()
    p = mp.Process(target=_drain_in_order, args=(q, results))
    p.start()
    assert results.get(timeout=100) is True
    p.join(10)
    assert p.exitcode == 0


def _put_64mib_and_exit(q):
    q.put(b"\x07" * (64 << 20))
    q.put("end")


@pytest.mark.timeout(120)
def test_producer_exits_right_after_a_64mib_put(mp):
    q = mp.Queue()
    p = mp.Process(target=_put_64mib_and_exit, args=(q,))
    p.start()
    b = q.get(timeout=60)
    assert len(b) == 64 << 20 and b == b"\x07" * (64 << 20)
    assert q.get(timeout=10) == "end"
    p.join(10)
    assert p.exitcode == 0


def _put_64mib_and_exit_now(q):
    q.put(b"\x07" * (64 << 20))
    os._exit(0)  # no atexit, no feeder flush


def test_producer_exits_right_after_a_64mib_put_unread_cmp(cmp):
    # beyond the stdlib (whose child would wait at exit for a reader): the
    # message is in shared memory when put() returns
    q = cmp.Queue()
    p = cmp.Process(target=_put_64mib_and_exit_now, args=(q,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert q.qsize() == 1
    b = q.get(timeout=10)
    assert len(b) == 64 << 20 and b == b"\x07" * (64 << 20)


def test_maxsize_full_with_large_items(mp):
    q = mp.Queue(2)
    q.put(b"a" * (8 << 20))
    q.put(b"b" * (8 << 20))
    assert q.full()
    with pytest.raises(queue.Full):
        q.put(b"c" * (8 << 20), timeout=0.2)
    with pytest.raises(queue.Full):
        q.put_nowait(b"c")
    assert q.get(timeout=10) == b"a" * (8 << 20)
    q.put(b"c" * (8 << 20), timeout=5)
    assert q.get(timeout=10) == b"b" * (8 << 20)
    assert q.get(timeout=10) == b"c" * (8 << 20)


def _blocked_get(q, started):
    started.set()
    try:
        q.get(timeout=20)
    except KeyboardInterrupt:
        os._exit(7)
    os._exit(1)


def test_sigint_interrupts_blocking_get(mp):
    q = mp.Queue()
    started = mp.Event()
    p = mp.Process(target=_blocked_get, args=(q, started))
    p.start()
    assert started.wait(10)
    time.sleep(0.2)
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGINT)
    p.join(5)
    assert p.exitcode == 7
    assert time.monotonic() - t0 < 0.5


# ---- beyond the stdlib (ours) ---------------------------------------------

def test_unpicklable_raises_from_put_cmp(cmp):
    q = cmp.Queue()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        q.put(lambda: 1)
    import threading
    with pytest.raises(TypeError):
        q.put({"lock": threading.Lock()})
    assert q.qsize() == 0 and q.empty()
    q.put(1)
    assert q.get(timeout=1) == 1


def test_exact_empty_after_put_cmp(cmp):
    q = cmp.Queue(2)
    q.put(1)
    assert not q.empty() and q.qsize() == 1  # no feeder thread: at once
    q.put(2)
    assert q.full()


def test_put_many_get_many_cmp(cmp):
    q = cmp.Queue()
    q.put_many(range(100))
    q.put_many([b"x" * 100_000, "y"])
    assert q.qsize() == 102
    got = q.get_many(50)
    assert got == list(range(50))
    got = q.get_many(1000, timeout=1)
    assert got[:50] == list(range(50, 100)) and got[50:] == [b"x" * 100_000, "y"]
    with pytest.raises(queue.Empty):
        q.get_many(10, timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get_many(10, block=False)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        q.put_many([1, lambda: 2])
    assert q.qsize() == 0  # nothing put when one item cannot be serialized
    bounded = cmp.Queue(3)
    with pytest.raises(queue.Full, match="3 of 5"):
        bounded.put_many(range(5), timeout=0.1)
    assert bounded.get_many(10) == [0, 1, 2]


def _stream_forever(q, pid):
    i = 0
    payloads = [b"", b"s" * 10, b"m" * 5000, b"L" * 200_000, b"H" * (3 << 20)]
    while True:
        q.put((pid, i, payloads[i % len(payloads)]))
        i += 1


def _steady(q, pid, n):
    for i in range(n):
        q.put((pid, i, b"k" * (i % 300)))


@pytest.mark.timeout(120)
def test_producer_sigkilled_mid_stream_cmp(cmp):
    q = cmp.Queue(64)
    good = cmp.Process(target=_steady, args=(q, "good", 3000))
    good.start()
    last = {}
    got_good = 0
    for round_ in range(6):
        victim = cmp.Process(target=_stream_forever, args=(q, f"v{round_}"))
        victim.start()
        deadline = time.monotonic() + 0.15 + 0.05 * round_
        while time.monotonic() < deadline:
            try:
                pid, i, payload = q.get(timeout=0.5)
            except queue.Empty:
                continue
            if pid == "good":
                assert i == got_good and payload == b"k" * (i % 300)
                got_good += 1
            else:
                assert i > last.get(pid, -1)
                last[pid] = i
                assert len(set(payload)) <= 1  # never a torn message
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(5)
        assert victim.exitcode == -signal.SIGKILL
    # everything else still flows
    while got_good < 3000:
        pid, i, payload = q.get(timeout=10)
        if pid == "good":
            assert i == got_good and payload == b"k" * (i % 300)
            got_good += 1
        else:
            assert i > last.get(pid, -1) and len(set(payload)) <= 1
            last[pid] = i
    good.join(10)
    assert good.exitcode == 0
    # drained: what is left are whole messages from the victims
    while not q.empty():
        pid, i, payload = q.get(timeout=5)
        assert pid != "good" and len(set(payload)) <= 1
    q.put("after")
    assert q.get(timeout=5) == "after"


def test_sigint_interrupts_blocking_put_cmp(cmp):
    q = cmp.Queue(1)
    q.put(0)
    started = cmp.Event()

    def blocked_put():
        started.set()
        try:
            q.put(1, timeout=20)
        except KeyboardInterrupt:
            os._exit(7)
        os._exit(1)

    p = cmp.Process(target=blocked_put)
    p.start()
    assert started.wait(10)
    time.sleep(0.2)
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGINT)
    p.join(5)
    assert p.exitcode == 7
    assert time.monotonic() - t0 < 0.5


# ---- big messages streamed to a waiting consumer --------------------------

_STREAM_ITEMS = [bytes([k]) * ((16 << 20) + k) if k % 2 == 0 else ("small", k)
                 for k in range(6)]


def _get_all_in_order(q, n, results):
    got = [q.get(timeout=30) for _ in range(n)]
    results.put(all(a == b for a, b in zip(got, _STREAM_ITEMS)) and len(got) == n)


@pytest.mark.timeout(120)
def test_big_messages_to_a_waiting_consumer(mp):
    q = mp.Queue()
    results = mp.Queue()
    p = mp.Process(target=_get_all_in_order, args=(q, len(_STREAM_ITEMS), results))
    p.start()
    for item in _STREAM_ITEMS:
        time.sleep(0.02)  # the consumer is waiting when each item comes
        q.put(item)
    assert results.get(timeout=60) is True
    p.join(10)
    assert p.exitcode == 0


def _get_one(q, started):
    started.set()
    q.get(timeout=30)


@pytest.mark.timeout(120)
def test_consumer_sigkilled_mid_stream_redelivers_cmp(cmp):
    # beyond the stdlib (whose pipe would be left mid-message): a consumer
    # killed while a big message streams to it does not lose it; the
    # producer's put still returns and the next consumer gets it once
    import threading
    q = cmp.Queue()
    started = cmp.Event()
    p = cmp.Process(target=_get_one, args=(q, started))
    p.start()
    assert started.wait(10)
    time.sleep(0.1)  # inside get(), waiting
    big = b"\x05" * (256 << 20)
    killer = threading.Timer(0.005, os.kill, (p.pid, signal.SIGKILL))
    killer.start()
    q.put(big)
    killer.join()
    p.join(10)
    assert p.exitcode == -signal.SIGKILL
    q.put("end")
    b = q.get(timeout=10)
    assert len(b) == len(big) and b == big
    assert q.get(timeout=10) == "end"
    with pytest.raises(queue.Empty):
        q.get_nowait()


def _put_blocking(q, ready):
    ready.set()
    q.put("never fully put")  # the queue is full: blocks inside put()


def test_producer_killed_in_put_pid_reused_cmp(cmp):
    # ours only (the stdlib's queue does not survive a producer killed in
    # put()): the dead producer held the producer lock, and its pid now
    # belongs to a live process. The queue must not look full.
    q = cmp.Queue(maxsize=1)
    q.put("first")
    ready = cmp.Event()
    p = cmp.Process(target=_put_blocking, args=(q, ready))
    p.start()
    assert ready.wait(10)
    time.sleep(0.2)  # let it block in put()
    p.kill()
    p.join(10)
    assert p.exitcode == -signal.SIGKILL
    with PidSquatter(p.pid):
        assert q.get(timeout=5) == "first"
        q.put("second", timeout=1)  # no queue.Full
        assert q.get(timeout=5) == "second"
        q.put_nowait("third")
        assert q.get(timeout=5) == "third"
    assert q.empty()
