"""Semaphore and BoundedSemaphore: API, defaults, misuse, timeouts and use
across processes. Each standard-behaviour test runs on the stdlib and on
cmultiprocessing (the `mp` fixture)."""
import errno
import os
import pickle
import threading
import time

import pytest

from _sync_helpers import interrupt_status, join_ok, sigint_and_join


# --- API and defaults -------------------------------------------------------

def test_defaults_and_repr(mp):
    s = mp.Semaphore()
    assert s.get_value() == 1
    assert repr(s) == "<Semaphore(value=1)>"
    b = mp.BoundedSemaphore()
    assert b.get_value() == 1
    assert repr(b) == "<BoundedSemaphore(value=1, maxvalue=1)>"
    assert repr(mp.Semaphore(3)) == "<Semaphore(value=3)>"
    b3 = mp.BoundedSemaphore(3)
    b3.acquire()
    assert repr(b3) == "<BoundedSemaphore(value=2, maxvalue=3)>"
    assert repr(mp.Semaphore(value=0)) == "<Semaphore(value=0)>"


def test_counts(mp):
    s = mp.Semaphore(2)
    assert s.acquire() is True
    assert s.acquire(True) is True
    assert s.get_value() == 0
    assert s.acquire(False) is False
    assert s.acquire(block=False) is False
    s.release()
    s.release()
    s.release()  # an unbounded semaphore may go above its initial value
    assert s.get_value() == 3


def test_context_manager(mp):
    s = mp.Semaphore(1)
    with s as got:
        assert got is True
        assert s.get_value() == 0
    assert s.get_value() == 1
    with pytest.raises(ZeroDivisionError):
        with s:
            1 / 0
    assert s.get_value() == 1


def test_bounded_over_release(mp):
    b = mp.BoundedSemaphore(2)
    b.acquire()
    b.release()
    with pytest.raises(ValueError, match="released too many times"):
        b.release()
    assert b.get_value() == 2
    z = mp.BoundedSemaphore(0)
    assert repr(z) == "<BoundedSemaphore(value=0, maxvalue=0)>"
    with pytest.raises(ValueError):
        z.release()


def test_unbounded_release_at_maximum(mp):
    s = mp.Semaphore(2**31 - 1)
    with pytest.raises(ValueError, match="released too many times"):
        s.release()
    assert s.get_value() == 2**31 - 1


def test_bad_initial_values(mp):
    # multiprocessing reports a negative value with the OSError of sem_open
    with pytest.raises(OSError) as info:
        mp.Semaphore(-1)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        mp.BoundedSemaphore(-5)
    with pytest.raises(OverflowError):
        mp.Semaphore(2**31)
    with pytest.raises(TypeError):
        mp.Semaphore(1.5)
    with pytest.raises(TypeError):
        mp.Semaphore("3")


def test_acquire_argument_errors(mp):
    s = mp.Semaphore(1)
    with pytest.raises(TypeError):
        s.acquire(True, None, 1)
    with pytest.raises(TypeError):
        s.acquire(blocking=True)
    with pytest.raises(TypeError):
        s.release(1)
    z = mp.Semaphore(0)
    with pytest.raises(TypeError):
        z.acquire(timeout="x")


def test_not_picklable(mp):
    for obj, name in ((mp.Semaphore(), "Semaphore"), (mp.BoundedSemaphore(), "BoundedSemaphore")):
        with pytest.raises(RuntimeError, match=name + " objects should only be shared"):
            pickle.dumps(obj)


# --- timeouts ---------------------------------------------------------------

def test_timeouts(mp):
    s = mp.Semaphore(0)
    t0 = time.monotonic()
    assert s.acquire(timeout=0.1) is False
    elapsed = time.monotonic() - t0
    assert 0.09 <= elapsed < 2
    t0 = time.monotonic()
    assert s.acquire(True, -1) is False
    assert s.acquire(True, 0) is False
    assert s.acquire(False, 5) is False  # non-blocking ignores the timeout
    assert time.monotonic() - t0 < 1
    s.release()
    assert s.acquire(timeout=0) is True


# --- threads and processes --------------------------------------------------

def test_blocked_acquire_releases_the_gil(mp):
    s = mp.Semaphore(0)
    result = []
    t = threading.Thread(target=lambda: result.append(s.acquire(timeout=10)))
    t.start()
    time.sleep(0.1)
    s.release()
    t.join(10)
    assert not t.is_alive()
    assert result == [True]
    assert s.get_value() == 0


def _release_later(s):
    time.sleep(0.1)
    s.release()


def test_release_in_child_wakes_parent(mp):
    s = mp.Semaphore(0)
    p = mp.Process(target=_release_later, args=(s,))
    p.start()
    assert s.acquire(timeout=10) is True
    assert join_ok(p) == 0
    assert s.get_value() == 0


def _acquire_in_child(s):
    os._exit(0 if s.acquire(timeout=10) else 1)


def test_child_acquires_what_parent_releases(mp):
    s = mp.BoundedSemaphore(2)
    s.acquire()
    s.acquire()
    procs = [mp.Process(target=_acquire_in_child, args=(s,)) for _ in range(2)]
    for p in procs:
        p.start()
    time.sleep(0.1)
    s.release()
    s.release()
    assert [join_ok(p) for p in procs] == [0, 0]
    assert s.get_value() == 0


def _bounded_worker(s, active, peak, guard):
    for _ in range(20):
        with s:
            with guard:
                active.value += 1
                peak.value = max(peak.value, active.value)
            time.sleep(0.001)
            with guard:
                active.value -= 1


def test_limits_concurrency_across_processes(mp):
    s = mp.Semaphore(2)
    guard = mp.Lock()
    active = mp.Value("i", 0, lock=False)
    peak = mp.Value("i", 0, lock=False)
    procs = [mp.Process(target=_bounded_worker, args=(s, active, peak, guard))
             for _ in range(4)]
    for p in procs:
        p.start()
    assert [join_ok(p, 30) for p in procs] == [0] * 4
    assert 1 <= peak.value <= 2
    assert active.value == 0
    assert s.get_value() == 2


def _interrupted_acquire(s, started):
    started.set()
    os._exit(interrupt_status(lambda: s.acquire(timeout=20)))


def test_sigint_interrupts_blocked_acquire(mp):
    s = mp.Semaphore(0)
    started = mp.Event()
    p = mp.Process(target=_interrupted_acquire, args=(s, started))
    p.start()
    assert started.wait(10)
    time.sleep(0.2)
    code, took = sigint_and_join(p)
    assert code == 7
    assert took < 5.0  # interrupted, not run to its 20 s timeout (loose: CI may be loaded)
