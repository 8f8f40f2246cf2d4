"""Event: API, defaults, misuse, timeouts and use across processes. Each
standard-behaviour test runs on the stdlib and on cmultiprocessing."""
import os
import pickle
import re
import threading
import time

import pytest

from _sync_helpers import interrupt_status, join_ok, sigint_and_join


def test_set_clear_is_set(mp):
    e = mp.Event()
    assert e.is_set() is False
    assert e.set() is None
    assert e.is_set() is True
    e.set()
    assert e.is_set() is True
    assert e.clear() is None
    assert e.is_set() is False
    e.clear()
    assert e.is_set() is False


def test_repr(mp):
    e = mp.Event()
    assert re.fullmatch(r"<Event at 0x[0-9a-f]+ unset>", repr(e))
    e.set()
    assert re.fullmatch(r"<Event at 0x[0-9a-f]+ set>", repr(e))


def test_wait_returns_the_flag(mp):
    e = mp.Event()
    assert e.wait(0) is False
    assert e.wait(-1) is False
    assert e.wait(timeout=0.0) is False
    e.set()
    assert e.wait() is True
    assert e.wait(0) is True
    assert e.wait(timeout=None) is True


def test_wait_times_out(mp):
    e = mp.Event()
    t0 = time.monotonic()
    assert e.wait(0.1) is False
    assert 0.09 <= time.monotonic() - t0 < 2


def test_wait_argument_errors(mp):
    e = mp.Event()
    with pytest.raises(TypeError):
        e.wait(1, 2)
    with pytest.raises(TypeError):
        e.wait(x=1)
    with pytest.raises(TypeError):
        e.wait("soon")
    with pytest.raises(TypeError):
        e.set(1)


def test_not_picklable(mp):
    with pytest.raises(RuntimeError, match="should only be shared between processes"):
        pickle.dumps(mp.Event())


def test_set_from_thread_wakes_waiter(mp):
    e = mp.Event()
    t = threading.Timer(0.1, e.set)
    t.start()
    assert e.wait(10) is True
    t.join(10)


def _wait_and_report(e, ready, timeout):
    ready.release()
    os._exit(0 if e.wait(timeout) else 1)


def test_set_wakes_every_waiting_process(mp):
    e = mp.Event()
    ready = mp.Semaphore(0)
    procs = [mp.Process(target=_wait_and_report, args=(e, ready, 10)) for _ in range(3)]
    for p in procs:
        p.start()
    for _ in procs:
        assert ready.acquire(timeout=10)
    time.sleep(0.1)
    e.set()
    assert [join_ok(p) for p in procs] == [0, 0, 0]


def test_wait_times_out_in_child(mp):
    e = mp.Event()
    ready = mp.Semaphore(0)
    p = mp.Process(target=_wait_and_report, args=(e, ready, 0.1))
    p.start()
    assert join_ok(p) == 1
    assert e.is_set() is False


def _echo(ping, pong, rounds):
    for _ in range(rounds):
        if not ping.wait(10):
            os._exit(2)
        ping.clear()
        pong.set()
    os._exit(0)


def test_ping_pong_between_processes(mp):
    ping, pong = mp.Event(), mp.Event()
    rounds = 300
    p = mp.Process(target=_echo, args=(ping, pong, rounds))
    p.start()
    for i in range(rounds):
        ping.set()
        assert pong.wait(10), f"round {i}"
        pong.clear()
    assert join_ok(p) == 0


def _interrupted_wait(e, started):
    started.release()
    os._exit(interrupt_status(lambda: e.wait(20)))


def test_sigint_interrupts_wait(mp):
    e = mp.Event()
    started = mp.Semaphore(0)
    p = mp.Process(target=_interrupted_wait, args=(e, started))
    p.start()
    assert started.acquire(timeout=10)
    time.sleep(0.2)
    code, took = sigint_and_join(p)
    assert code == 7
    assert took < 5.0  # interrupted, not run to its 20 s timeout (loose: CI may be loaded)
    assert e.is_set() is False


def _wait_for_pulse(e, ready):
    ready.release()
    os._exit(0 if e.wait(10) else 1)


def test_set_then_clear_still_wakes_sleeper(cmp):
    # beyond the stdlib, whose waiter can miss a set/clear pulse
    e = cmp.Event()
    ready = cmp.Semaphore(0)
    p = cmp.Process(target=_wait_for_pulse, args=(e, ready))
    p.start()
    assert ready.acquire(timeout=10)
    time.sleep(0.1)
    e.set()
    e.clear()
    assert join_ok(p) == 0
