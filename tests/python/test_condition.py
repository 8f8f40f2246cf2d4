"""Condition: the stdlib's semantics (both implementations) and recovery
from a dead holder of its lock (cmultiprocessing only)."""
import os
import pickle
import signal
import threading
import time

import pytest

from _sync_helpers import (PidSquatter, SharedInts, fork, interrupt_status, join,
                           sigint_and_join, wait_readable, wait_until)


def test_defaults_and_repr(mp):
    cond = mp.Condition()
    assert repr(cond) == "<Condition(<RLock(None, 0)>, 0)>"
    with cond:
        with cond:  # an RLock by default
            assert repr(cond) == "<Condition(<RLock(MainProcess, 2)>, 0)>"
    cond = mp.Condition(mp.Lock())
    assert repr(cond) == "<Condition(<Lock(owner=None)>, 0)>"
    assert cond.acquire() is True
    assert cond.acquire(False) is False
    cond.release()
    with pytest.raises(RuntimeError, match="through inheritance"):
        pickle.dumps(cond)


def test_wait_notify_without_lock_raise_assertionerror(mp):
    for cond in (mp.Condition(), mp.Condition(mp.Lock())):
        with pytest.raises(AssertionError):
            cond.wait(0.01)
        with pytest.raises(AssertionError):
            cond.notify()
        with pytest.raises(AssertionError):
            cond.notify_all()


def test_wait_timeout_keeps_lock(mp):
    for lock in (mp.RLock(), mp.Lock()):
        cond = mp.Condition(lock)
        with cond:
            t0 = time.monotonic()
            assert cond.wait(0.1) is False
            assert time.monotonic() - t0 >= 0.09
            assert cond.wait(timeout=0) is False
            cond.notify()  # still held: no AssertionError
        assert lock.acquire(False) is True
        lock.release()


def test_wait_releases_every_rlock_level(mp):
    rlock = mp.RLock()
    cond = mp.Condition(rlock)
    shared = SharedInts(1)
    r, w = os.pipe()

    def child():
        os.write(w, b"x")
        with cond:  # only possible while the parent waits
            shared[0] = 1
            cond.notify()
    with cond:
        with cond:
            pid = fork(child)
            wait_readable(r)
            assert cond.wait_for(lambda: shared[0] == 1, timeout=10) is True
            assert repr(rlock) == "<RLock(MainProcess, 2)>"
    assert join(pid) == 0
    os.close(r)
    os.close(w)


def test_wait_for(mp):
    cond = mp.Condition()
    with cond:
        t0 = time.monotonic()
        assert cond.wait_for(lambda: 0, timeout=0.15) == 0
        assert time.monotonic() - t0 >= 0.14
        assert cond.wait_for(lambda: "ok") == "ok"
        assert cond.wait_for(lambda: None, 0) is None


def test_producer_consumer_between_processes(mp):
    cond = mp.Condition(mp.Lock())
    # [0] head, [1] tail, [2..5] a ring of 4 items
    buf = SharedInts(6)
    n_items = 200

    def producer(first):
        for i in range(first, first + n_items // 2):
            with cond:
                if not cond.wait_for(lambda: buf[1] - buf[0] < 4, timeout=10):
                    return 3
                buf[2 + buf[1] % 4] = i
                buf[1] = buf[1] + 1
                cond.notify_all()
    pids = [fork(producer, 1), fork(producer, n_items // 2 + 1)]
    total = 0
    for _ in range(n_items):
        with cond:
            assert cond.wait_for(lambda: buf[1] != buf[0], timeout=10)
            total += buf[2 + buf[0] % 4]
            buf[0] = buf[0] + 1
            cond.notify_all()
    assert [join(p) for p in pids] == [0, 0]
    assert total == n_items * (n_items + 1) // 2


def _notify_counts(mp, lock_factory):
    cond = mp.Condition(lock_factory())
    shared = SharedInts(2)  # [0] waiting, [1] woken

    def waiter():
        with cond:
            shared[0] = shared[0] + 1
            ok = cond.wait(10)
            shared[1] = shared[1] + 1
        return 0 if ok else 3
    n = 4
    pids = [fork(waiter) for _ in range(n)]

    def all_waiting():
        with cond:
            return shared[0] == n
    wait_until(all_waiting)
    with cond:
        cond.notify(2)
    wait_until(lambda: shared[1] == 2)
    time.sleep(0.2)
    assert shared[1] == 2
    with cond:
        cond.notify(n=1)
    wait_until(lambda: shared[1] == 3)
    time.sleep(0.1)
    assert shared[1] == 3
    with cond:
        cond.notify_all()
    assert [join(p) for p in pids] == [0] * n
    assert shared[1] == n


def test_notify_n_counts_rlock(mp):
    _notify_counts(mp, mp.RLock)


def test_notify_n_counts_lock(mp):
    _notify_counts(mp, mp.Lock)


def test_sigint_interrupts_wait(mp):
    cond = mp.Condition()
    r, w = os.pipe()

    def child():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with cond:
            os.write(w, b"x")
            return interrupt_status(lambda: cond.wait(20))
    pid = fork(child)
    wait_readable(r)
    with cond:  # the child is inside wait() once we get the lock
        pass
    time.sleep(0.05)
    code, took = sigint_and_join(pid)
    assert code == 7
    assert took < 5.0  # interrupted, not run to its 20 s timeout (loose: CI may be loaded)
    os.close(r)
    os.close(w)


def test_interrupted_waiter_keeps_lock_and_withdraws(cmp):
    cond = cmp.Condition()
    r, w = os.pipe()
    shared = SharedInts(1)

    def child():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with cond:
            os.write(w, b"x")
            try:
                cond.wait(20)
            except KeyboardInterrupt:
                shared[0] = 1 if "MainProcess, 1" in repr(cond) else 2
        return 0
    pid = fork(child)
    wait_readable(r)
    with cond:
        pass
    time.sleep(0.05)
    os.kill(pid, signal.SIGINT)
    assert join(pid, 5) == 0
    assert shared[0] == 1
    assert repr(cond) == "<Condition(<RLock(None, 0)>, 0)>"
    os.close(r)
    os.close(w)


def test_lock_type_checked(cmp):
    # AttributeError, the stdlib's type for a lock without acquire(); ours
    # refuses at once any lock it cannot wait on (the stdlib only at wait())
    with pytest.raises(AttributeError):
        cmp.Condition(object())
    with pytest.raises(AttributeError):
        cmp.Condition(threading.Lock())


def _die_holding(cond):
    cond.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("kind", ["RLock", "Lock"])
def test_dead_holder_of_condition_lock(cmp, kind):
    cond = cmp.Condition(getattr(cmp, kind)())
    assert join(fork(_die_holding, cond)) == -signal.SIGKILL
    with pytest.warns(cmp.AbandonedLockWarning):
        assert cond.acquire(timeout=5) is True
    cond.release()
    assert "AbandonedLockWarning" in cmp.Condition.__doc__


@pytest.mark.parametrize("kind", ["RLock", "Lock"])
def test_dead_holder_pid_reused_of_condition_lock(cmp, kind):
    # ours only (the stdlib never recovers a dead holder): the dead holder's
    # pid now belongs to a live process
    cond = cmp.Condition(getattr(cmp, kind)())
    pid = fork(_die_holding, cond)
    assert join(pid) == -signal.SIGKILL
    with PidSquatter(pid):
        with pytest.warns(cmp.AbandonedLockWarning):
            assert cond.acquire(timeout=1) is True
        assert cond.wait(0.05) is False
        cond.notify_all()
    cond.release()


def test_dead_holder_while_waiting(cmp):
    cond = cmp.Condition()
    with cond:
        # the child gets the lock only while we wait, and dies with it
        pid = fork(_die_holding, cond)
        with pytest.warns(cmp.AbandonedLockWarning):
            assert cond.wait(0.3) is False
        assert "MainProcess, 1" in repr(cond)
    assert join(pid) == -signal.SIGKILL


def _herd(mp, lock_factory, rounds=60, n_procs=3, n_threads=2):
    """Each round the main thread bumps a generation under the lock and
    notifies all; waiter processes and threads of this process each wait
    for every generation, while a contender process takes and releases the
    same lock. A lost hand-off stalls a round past its timeout."""
    cond = mp.Condition(lock_factory())
    shared = SharedInts(3)  # [0] generation, [1] hand-offs seen, [2] stop

    def waiter():
        with cond:
            for seen in range(1, rounds + 1):
                if not cond.wait_for(lambda: shared[0] >= seen, timeout=20):
                    return 3
                shared[1] = shared[1] + 1
        return 0

    def contender():
        while not shared[2]:
            with cond:
                pass
        return 0

    pids = [fork(waiter) for _ in range(n_procs)]
    pids.append(fork(contender))
    results = []
    threads = [threading.Thread(target=lambda: results.append(waiter())) for _ in range(n_threads)]
    for t in threads:
        t.start()
    n = n_procs + n_threads
    for gen in range(1, rounds + 1):
        # every waiter saw the last generation: all wait (or are about to)
        wait_until(lambda: shared[1] >= (gen - 1) * n, timeout=20)
        with cond:
            shared[0] = gen
            cond.notify_all()
    for t in threads:
        t.join(30)
    assert results == [0] * n_threads
    assert [join(p) for p in pids[:-1]] == [0] * n_procs
    shared[2] = 1
    assert join(pids[-1]) == 0
    assert shared[1] == rounds * n


def test_notify_all_herd_rlock(mp):
    _herd(mp, mp.RLock)


def test_notify_all_herd_lock(mp):
    _herd(mp, mp.Lock)


def _notify_and_die(cond):
    cond.acquire()
    cond.notify()
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("kind", ["RLock", "Lock"])
def test_notified_waiter_survives_a_notifier_that_dies_holding_the_lock(cmp, kind):
    # ours only (the stdlib never recovers a dead holder): the notify moved
    # this waiter to the lock, whose holder then died without releasing it
    cond = cmp.Condition(getattr(cmp, kind)())
    with cond:
        pid = fork(_notify_and_die, cond)
        t0 = time.monotonic()
        with pytest.warns(cmp.AbandonedLockWarning):
            assert cond.wait(20) is True
        assert time.monotonic() - t0 < 5
    assert join(pid) == -signal.SIGKILL


def test_sleeper_counts_as_the_stdlib_reads_them(mp):
    """CPython's check_invariant reads _sleeping_count, _woken_count and
    _wait_semaphore (get_value()): the waiters not yet notified are the
    first minus the second; at rest both differences are 0."""
    cond = mp.Condition()

    def sleepers():
        return cond._sleeping_count.get_value() - cond._woken_count.get_value()

    def waiter():
        with cond:
            cond.wait(10)

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while sleepers() != 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sleepers() == 3
    with cond:
        cond.notify_all()
    for t in threads:
        t.join(10)
    assert sleepers() == 0 and cond._wait_semaphore.get_value() == 0
