"""Barrier: threading.Barrier's semantics across processes — indices,
action, rounds, default and per-call timeouts, abort/reset/broken. Each
standard-behaviour test runs on the stdlib and on cmultiprocessing."""
import os
import pickle
import re
import signal
import threading
import time

import pytest
from threading import BrokenBarrierError

from _sync_helpers import interrupt_status, join_ok, sigint_and_join


def wait_until(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.005)
    time.sleep(0.05)  # let the waiter reach its sleep


def test_single_party(mp):
    b = mp.Barrier(1)
    assert b.parties == 1
    assert b.n_waiting == 0
    assert b.broken is False
    assert b.wait() == 0
    assert b.wait(timeout=-1) == 0
    assert b.wait(5) == 0


def test_repr(mp):
    b = mp.Barrier(3)
    assert re.fullmatch(r"<[\w.]*Barrier at 0x[0-9a-f]+: waiters=0/3>", repr(b))
    b.abort()
    assert re.fullmatch(r"<[\w.]*Barrier at 0x[0-9a-f]+: broken>", repr(b))


def test_action_runs_in_single_party(mp):
    calls = []
    b = mp.Barrier(1, action=lambda: calls.append(1))
    b.wait()
    b.wait()
    assert calls == [1, 1]


def test_failing_action_raises_and_breaks(mp):
    b = mp.Barrier(1, action=lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        b.wait()
    assert b.broken is True
    with pytest.raises(BrokenBarrierError):
        b.wait()
    b.reset()
    assert b.broken is False


def test_default_timeout_breaks(mp):
    b = mp.Barrier(2, timeout=0.1)
    t0 = time.monotonic()
    with pytest.raises(BrokenBarrierError):
        b.wait()
    assert 0.09 <= time.monotonic() - t0 < 2
    assert b.broken is True
    assert b.n_waiting == 0
    with pytest.raises(BrokenBarrierError):
        b.wait()
    b.reset()
    assert b.broken is False


def test_call_timeout_overrides_default(mp):
    b = mp.Barrier(2, timeout=30)
    with pytest.raises(BrokenBarrierError):
        b.wait(timeout=0.05)
    b.reset()
    with pytest.raises(BrokenBarrierError):
        b.wait(-1)


def test_abort_and_reset(mp):
    b = mp.Barrier(2)
    b.abort()
    assert b.broken is True
    with pytest.raises(BrokenBarrierError):
        b.wait(1)
    b.reset()
    assert b.broken is False
    assert b.n_waiting == 0


def test_wait_argument_errors(mp):
    b = mp.Barrier(1)
    with pytest.raises(TypeError):
        b.wait(1, 2)
    with pytest.raises(TypeError):
        b.wait(x=1)


def test_not_picklable(mp):
    with pytest.raises(RuntimeError, match="should only be shared between processes"):
        pickle.dumps(mp.Barrier(2))


def test_two_threads(mp):
    b = mp.Barrier(2)
    got = []
    t = threading.Thread(target=lambda: got.append(b.wait(10)))
    t.start()
    got.append(b.wait(10))
    t.join(10)
    assert sorted(got) == [0, 1]


# --- across processes -------------------------------------------------------

def _rounds_worker(b, rounds, counter, seen):
    for r in range(rounds):
        i = b.wait(20)
        # the action of this round ran before anyone was released
        if counter.value < r + 1:
            os._exit(3)
        seen[r * 4 + i] += 1
        b.wait(20)  # keeps rounds apart for the check above
    os._exit(0)


def test_rounds_across_four_processes(mp):
    rounds = 15
    counter = mp.Value("i", 0)

    def action():
        with counter.get_lock():
            counter.value += 1

    seen = mp.Array("i", rounds * 4)
    b = mp.Barrier(4, action=action)
    procs = [mp.Process(target=_rounds_worker, args=(b, rounds, counter, seen))
             for _ in range(3)]
    for p in procs:
        p.start()
    for r in range(rounds):
        i = b.wait(20)
        assert counter.value >= r + 1
        seen[r * 4 + i] += 1
        b.wait(20)
    assert [join_ok(p, 30) for p in procs] == [0, 0, 0]
    # the action ran once per trip (two trips per round: both waits use
    # the same barrier), and every index was given once per round
    assert counter.value == 2 * rounds
    assert list(seen) == [1] * (rounds * 4)
    assert b.broken is False
    assert b.n_waiting == 0


def _expect_broken(b, ready, timeout=10):
    if ready is not None:
        ready.release()
    try:
        b.wait(timeout)
    except BrokenBarrierError:
        os._exit(5)
    os._exit(1)


def test_abort_while_waiting(mp):
    b = mp.Barrier(3)
    procs = [mp.Process(target=_expect_broken, args=(b, None)) for _ in range(2)]
    for p in procs:
        p.start()
    wait_until(lambda: b.n_waiting == 2)
    b.abort()
    assert [join_ok(p) for p in procs] == [5, 5]
    assert b.broken is True


def _pass_barrier(b):
    os._exit(0 if b.wait(10) in (0, 1) else 1)


def test_reset_while_waiting_then_reuse(mp):
    b = mp.Barrier(2)
    p = mp.Process(target=_expect_broken, args=(b, None))
    p.start()
    wait_until(lambda: b.n_waiting == 1)
    b.reset()
    assert join_ok(p) == 5
    assert b.broken is False
    p = mp.Process(target=_pass_barrier, args=(b,))
    p.start()
    assert b.wait(10) in (0, 1)
    assert join_ok(p) == 0


def test_timeout_in_one_process_breaks_others(mp):
    b = mp.Barrier(3)
    p = mp.Process(target=_expect_broken, args=(b, None))
    p.start()
    wait_until(lambda: b.n_waiting == 1)
    with pytest.raises(BrokenBarrierError):
        b.wait(0.1)
    assert join_ok(p) == 5
    assert b.broken is True


def test_failing_action_breaks_for_the_others(mp):
    def action():
        raise ValueError("boom")

    b = mp.Barrier(2, action=action)
    p = mp.Process(target=_expect_broken, args=(b, None))
    p.start()
    wait_until(lambda: b.n_waiting == 1)
    with pytest.raises(ValueError, match="boom"):
        b.wait(10)  # the last to arrive runs the action
    assert join_ok(p) == 5
    assert b.broken is True


def _interrupted_barrier(b, started):
    started.release()
    os._exit(interrupt_status(lambda: b.wait(20)))


def test_sigint_interrupts_wait(mp):
    b = mp.Barrier(2)
    started = mp.Semaphore(0)
    p = mp.Process(target=_interrupted_barrier, args=(b, started))
    p.start()
    assert started.acquire(timeout=10)
    wait_until(lambda: b.n_waiting == 1)
    code, took = sigint_and_join(p)
    assert code == 7
    assert took < 5.0  # interrupted, not run to its 20 s timeout (loose: CI may be loaded)


# --- beyond the stdlib ------------------------------------------------------

def test_interrupted_waiter_withdraws(cmp):
    # the stdlib leaves a waiter killed by KeyboardInterrupt counted only
    # until its finally clause runs; ours withdraws at once, intact
    b = cmp.Barrier(2)
    started = cmp.Semaphore(0)
    p = cmp.Process(target=_interrupted_barrier, args=(b, started))
    p.start()
    assert started.acquire(timeout=10)
    wait_until(lambda: b.n_waiting == 1)
    os.kill(p.pid, signal.SIGINT)
    assert join_ok(p) == 7
    assert b.n_waiting == 0
    assert b.broken is False


def _die_in_barrier(b):
    b.wait(30)


def test_dead_party_breaks_by_timeout(cmp):
    b = cmp.Barrier(3)
    p = cmp.Process(target=_die_in_barrier, args=(b,))
    p.start()
    wait_until(lambda: b.n_waiting == 1)
    p.kill()
    p.join(5)
    with pytest.raises(BrokenBarrierError):
        b.wait(0.2)
    assert b.broken is True
