"""Lock: the stdlib's semantics (run against both implementations), and
dead-holder recovery (cmultiprocessing only)."""
import os
import pickle
import signal
import threading
import time
import warnings

import pytest

from _sync_helpers import (PidSquatter, SharedInts, acquire_abandoned, fork, fork_as,
                           interrupt_status, join, sigint_and_join, wait_readable,
                           wait_until)


def test_acquire_release_basics(mp):
    lock = mp.Lock()
    assert lock.acquire() is True
    assert lock.acquire(False) is False
    assert lock.acquire(block=False) is False
    assert lock.acquire(True, 0) is False
    lock.release()
    assert lock.acquire(block=True, timeout=None) is True
    lock.release()
    assert lock.acquire(False) is True
    lock.release()


def test_release_unlocked_raises_valueerror(mp):
    lock = mp.Lock()
    with pytest.raises(ValueError):
        lock.release()
    lock.acquire()
    lock.release()
    with pytest.raises(ValueError):
        lock.release()


def test_timeout_on_held_lock(mp):
    lock = mp.Lock()
    lock.acquire()
    t0 = time.monotonic()
    assert lock.acquire(timeout=0.1) is False
    took = time.monotonic() - t0
    assert 0.09 <= took < 2.0
    assert lock.acquire(True, -1) is False  # negative counts as zero
    lock.release()


def test_bad_arguments(mp):
    lock = mp.Lock()
    with pytest.raises(TypeError):
        lock.acquire(True, None, 1)
    with pytest.raises(TypeError):
        lock.acquire(nonsense=1)
    with pytest.raises(TypeError):
        lock.acquire(True, timeout="x")


def test_context_manager(mp):
    lock = mp.Lock()
    with lock as r:
        assert r is True
        assert lock.acquire(False) is False
    assert lock.acquire(False) is True
    lock.release()
    with pytest.raises(KeyError):
        with lock:
            raise KeyError("x")
    assert lock.acquire(False) is True  # released on the way out
    lock.release()


def test_repr(mp):
    lock = mp.Lock()
    assert repr(lock) == "<Lock(owner=None)>"
    lock.acquire()
    assert repr(lock) == "<Lock(owner=MainProcess)>"
    seen = []
    t = threading.Thread(target=lambda: seen.append(repr(lock)))
    t.start()
    t.join(10)
    assert seen == ["<Lock(owner=SomeOtherThread)>"]
    lock.release()

    def in_thread():
        with lock:
            seen.append(repr(lock))
    t = threading.Thread(target=in_thread, name="Worker-7")
    t.start()
    t.join(10)
    assert seen[-1] == "<Lock(owner=MainProcess|Worker-7)>"


def test_not_picklable(mp):
    with pytest.raises(RuntimeError, match="through inheritance"):
        pickle.dumps(mp.Lock())


def test_released_by_another_process(mp):
    lock = mp.Lock()
    lock.acquire()
    pid = fork(lock.release)
    assert join(pid) == 0
    assert lock.acquire(False) is True
    lock.release()


def test_waiter_in_child_wakes_on_release(mp):
    lock = mp.Lock()
    shared = SharedInts(2)
    lock.acquire()

    def child():
        shared[0] = 1
        ok = lock.acquire(timeout=10)
        shared[1] = 1
        lock.release()
        return 0 if ok else 3
    pid = fork(child)
    wait_until(lambda: shared[0] == 1)
    time.sleep(0.05)
    assert shared[1] == 0
    lock.release()
    assert join(pid) == 0
    assert shared[1] == 1


def _increment(lock, counter, n):
    for _ in range(n):
        with lock:
            counter.value += 1


def test_mutual_exclusion_8_processes(mp):
    lock = mp.Lock()
    counter = mp.Value("q", 0, lock=False)
    procs = [mp.Process(target=_increment, args=(lock, counter, 10000)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    assert counter.value == 80000


def test_sigint_interrupts_blocked_acquire(mp):
    lock = mp.Lock()
    lock.acquire()
    r, w = os.pipe()

    def child():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.write(w, b"x")
        return interrupt_status(lambda: lock.acquire(timeout=20))
    pid = fork(child)
    wait_readable(r)
    time.sleep(0.1)  # let it block
    code, took = sigint_and_join(pid)
    assert code == 7
    assert took < 5.0  # interrupted, not run to its 20 s timeout (loose: CI may be loaded)
    lock.release()
    os.close(r)
    os.close(w)


def _die_holding(lock):
    lock.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def test_dead_holder_is_taken_over_with_warning(cmp):
    lock = cmp.Lock()
    pid = fork(_die_holding, lock)
    assert join(pid) == -signal.SIGKILL
    with pytest.warns(cmp.AbandonedLockWarning):
        assert lock.acquire(timeout=5) is True
    lock.release()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lock.acquire(timeout=1) is True  # an ordinary lock again
    lock.release()


def test_dead_holder_sleeping_waiter_recovers(cmp):
    lock = cmp.Lock()
    r, w = os.pipe()

    def child():
        lock.acquire()
        os.write(w, b"x")
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGKILL)
    pid = fork(child)
    wait_readable(r)
    t0 = time.monotonic()
    with pytest.warns(cmp.AbandonedLockWarning):
        assert lock.acquire(timeout=5) is True
    assert time.monotonic() - t0 < 2.0
    lock.release()
    assert join(pid) == -signal.SIGKILL
    os.close(r)
    os.close(w)


def test_abandoned_warning_as_error_keeps_lock(cmp):
    lock = cmp.Lock()
    assert join(fork(_die_holding, lock)) == -signal.SIGKILL
    with warnings.catch_warnings():
        warnings.simplefilter("error", cmp.AbandonedLockWarning)
        with pytest.raises(cmp.AbandonedLockWarning):
            lock.acquire(timeout=5)
    assert lock.acquire(False) is False  # held by us, as documented
    lock.release()


def test_abandoned_warning_is_documented(cmp):
    assert issubclass(cmp.AbandonedLockWarning, RuntimeWarning)
    assert "AbandonedLockWarning" in cmp.Lock.__doc__


def test_repr_in_other_process(cmp):
    # (the stdlib only forgets ownership in children started by Process)
    lock = cmp.Lock()
    lock.acquire()
    r, w = os.pipe()
    pid = fork(lambda: os.write(w, repr(lock).encode()) and 0)
    assert join(pid) == 0
    assert os.read(r, 100) == b"<Lock(owner=SomeOtherProcess)>"
    os.close(r)
    os.close(w)
    lock.release()


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
def test_dead_holder_polling_acquire_recovers(cmp, kind):
    # a loop of acquire(False) must not spin forever behind a dead holder
    lock = getattr(cmp, kind)()
    assert join(fork(_die_holding, lock)) == -signal.SIGKILL
    deadline = time.monotonic() + 5
    with pytest.warns(cmp.AbandonedLockWarning):
        while not lock.acquire(False):
            assert time.monotonic() < deadline, "acquire(False) never recovered"
            time.sleep(0.001)
    assert lock.acquire(False) is (kind == "RLock")  # ours now
    lock.release()
    if kind == "RLock":
        lock.release()


def test_polling_acquire_keeps_live_holder(cmp):
    # the liveness check must not steal a lock from a holder that lives
    lock = cmp.Lock()
    r, w = os.pipe()

    def child():
        lock.acquire()
        os.write(w, b"x")
        time.sleep(0.5)
        lock.release()
        return 0
    pid = fork(child)
    wait_readable(r)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t_end = time.monotonic() + 0.3
        while time.monotonic() < t_end:
            assert lock.acquire(False) is False
            time.sleep(0.001)
    assert join(pid) == 0
    os.close(r)
    os.close(w)


# The stdlib never recovers a dead holder, so the pid-reuse tests are ours
# only: the dead holder's pid is given to a live process, which a liveness
# check by pid alone would take for the holder.
def test_dead_holder_pid_reused_is_taken_over(cmp):
    lock = cmp.Lock()
    pid = fork(_die_holding, lock)
    assert join(pid) == -signal.SIGKILL
    with PidSquatter(pid):
        with pytest.warns(cmp.AbandonedLockWarning):
            assert lock.acquire(timeout=1) is True
    lock.release()


def test_dead_holder_pid_reused_polling_acquire_recovers(cmp):
    lock = cmp.Lock()
    pid = fork(_die_holding, lock)
    assert join(pid) == -signal.SIGKILL
    with PidSquatter(pid):
        deadline = time.monotonic() + 5
        with pytest.warns(cmp.AbandonedLockWarning):
            while not lock.acquire(False):
                assert time.monotonic() < deadline, "acquire(False) never recovered"
                time.sleep(0.001)
    lock.release()


def test_process_given_dead_holders_pid_takes_it_over(cmp):
    # ours only: the pid in the lock is the acquirer's own, the holder is not
    lock = cmp.Lock()
    pid = fork(_die_holding, lock)
    assert join(pid) == -signal.SIGKILL
    assert join(fork_as(pid, acquire_abandoned, lock, "<Lock(owner=MainProcess)>")) == 0
    assert lock.acquire(False) is True
    lock.release()
