"""RLock: the stdlib's semantics (both implementations) and dead-owner
recovery (cmultiprocessing only)."""
import os
import pickle
import signal
import threading
import time

import pytest

from _sync_helpers import (PidSquatter, SharedInts, acquire_abandoned, fork, fork_as,
                           interrupt_status, join, sigint_and_join, wait_readable)


def test_recursion(mp):
    rlock = mp.RLock()
    assert rlock.acquire() is True
    assert rlock.acquire(False) is True
    assert rlock.acquire(block=True, timeout=0) is True
    assert repr(rlock) == "<RLock(MainProcess, 3)>"
    rlock.release()
    rlock.release()
    assert repr(rlock) == "<RLock(MainProcess, 1)>"
    rlock.release()
    assert repr(rlock) == "<RLock(None, 0)>"


def test_release_not_owned_raises_assertionerror(mp):
    rlock = mp.RLock()
    with pytest.raises(AssertionError, match="not owned"):
        rlock.release()
    rlock.acquire()
    errors = []

    def other():
        try:
            rlock.release()
        except AssertionError as e:
            errors.append(e)
        errors.append(rlock.acquire(False))
    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert isinstance(errors[0], AssertionError) and errors[1] is False
    rlock.release()


def test_repr_other_thread(mp):
    rlock = mp.RLock()
    rlock.acquire()
    seen = []
    t = threading.Thread(target=lambda: seen.append(repr(rlock)))
    t.start()
    t.join(10)
    assert seen == ["<RLock(SomeOtherThread, nonzero)>"]
    rlock.release()


def test_timeout_and_nonblocking_in_other_process(mp):
    rlock = mp.RLock()
    rlock.acquire()

    def child():
        if rlock.acquire(False) is not False:
            return 2
        t0 = time.monotonic()
        if rlock.acquire(timeout=0.1) is not False:
            return 3
        return 0 if time.monotonic() - t0 >= 0.09 else 4
    assert join(fork(child)) == 0
    rlock.release()


def test_context_manager(mp):
    rlock = mp.RLock()
    with rlock as r:
        assert r is True
        with rlock:
            assert repr(rlock) == "<RLock(MainProcess, 2)>"
    assert repr(rlock) == "<RLock(None, 0)>"


def test_not_picklable(mp):
    with pytest.raises(RuntimeError, match="through inheritance"):
        pickle.dumps(mp.RLock())


def test_mutual_exclusion_8_processes(mp):
    rlock = mp.RLock()
    counter = SharedInts(1)

    def child():
        for _ in range(5000):
            with rlock:
                with rlock:
                    counter[0] = counter[0] + 1
    pids = [fork(child) for _ in range(8)]
    assert [join(p, 60) for p in pids] == [0] * 8
    assert counter[0] == 40000


def test_sigint_interrupts_blocked_acquire(mp):
    rlock = mp.RLock()
    rlock.acquire()
    r, w = os.pipe()

    def child():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.write(w, b"x")
        return interrupt_status(rlock.acquire)
    pid = fork(child)
    wait_readable(r)
    time.sleep(0.1)
    code, took = sigint_and_join(pid)
    assert code == 7
    assert took < 5.0  # interrupted, not run to its 20 s timeout (loose: CI may be loaded)
    rlock.release()
    os.close(r)
    os.close(w)


def test_repr_in_other_process(cmp):
    rlock = cmp.RLock()
    rlock.acquire()
    r, w = os.pipe()
    pid = fork(lambda: os.write(w, repr(rlock).encode()) and 0)
    assert join(pid) == 0
    assert os.read(r, 100) == b"<RLock(SomeOtherProcess, nonzero)>"
    rlock.release()
    os.close(r)
    os.close(w)


def _die_owning_twice(rlock):
    rlock.acquire()
    rlock.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def test_dead_owner_is_taken_over_with_warning(cmp):
    rlock = cmp.RLock()
    assert join(fork(_die_owning_twice, rlock)) == -signal.SIGKILL
    with pytest.warns(cmp.AbandonedLockWarning):
        assert rlock.acquire(timeout=5) is True
    assert repr(rlock) == "<RLock(MainProcess, 1)>"  # the dead depth is gone
    rlock.release()
    assert repr(rlock) == "<RLock(None, 0)>"
    assert "AbandonedLockWarning" in cmp.RLock.__doc__


def test_dead_owner_pid_reused_is_taken_over(cmp):
    # ours only (the stdlib never recovers a dead owner): the dead owner's
    # pid, and so its main thread's id, now belong to a live process
    rlock = cmp.RLock()
    pid = fork(_die_owning_twice, rlock)
    assert join(pid) == -signal.SIGKILL
    with PidSquatter(pid):
        with pytest.warns(cmp.AbandonedLockWarning):
            assert rlock.acquire(timeout=1) is True
    assert repr(rlock) == "<RLock(MainProcess, 1)>"
    rlock.release()
    assert repr(rlock) == "<RLock(None, 0)>"


def test_process_given_dead_owners_pid_does_not_own_it(cmp):
    # ours only: the process given the dead owner's pid has, in its main
    # thread, the dead main thread's id too; it must take the rlock over
    # (depth 1, with the warning), not re-enter the dead owner's hold
    rlock = cmp.RLock()
    pid = fork(_die_owning_twice, rlock)
    assert join(pid) == -signal.SIGKILL
    assert join(fork_as(pid, acquire_abandoned, rlock, "<RLock(MainProcess, 1)>")) == 0
    assert repr(rlock) == "<RLock(None, 0)>"
