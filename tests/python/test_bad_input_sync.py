"""Bad input to the synchronization primitives (Lock, RLock, Semaphore,
BoundedSemaphore, Event, Condition, Barrier): wrong types, out-of-range
values, NaN/inf/huge/negative timeouts, misuse and pickling, each
asserting the exception type (or the result) the standard library gives.
Where cmultiprocessing deliberately differs, the test says so and why.
Every wait has a timeout."""
import math
import pickle
import threading

import pytest
from _sync_helpers import fork, join

BrokenBarrierError = threading.BrokenBarrierError


def ours(mp):
    return type(mp).__module__.startswith("cmultiprocessing")


def outcome(fn):
    """('ok', value) or ('raise', exception type)."""
    try:
        return ("ok", fn())
    except Exception as e:  # noqa: B902 (the type is the result)
        return ("raise", type(e))


def check(expected, fn):
    """expected: an exception class, or ('ok', value)."""
    got = outcome(fn)
    if isinstance(expected, type) and issubclass(expected, BaseException):
        assert got == ("raise", expected)
    else:
        assert got == expected


WEIRD_PARTIES = [0, -1, -2**31, 2**31, 2**32, 2**64, 1.5, "x", None, math.nan]


# --- Barrier ------------------------------------------------------------------
# The stdlib keeps `parties` as given and trips when an arrival's count
# equals it: any object is accepted, and one that no count equals gives a
# barrier that never trips (every wait ends by its timeout or an abort).

@pytest.mark.parametrize("parties", WEIRD_PARTIES, ids=repr)
def test_barrier_parties_never_reached(mp, parties):
    b = mp.Barrier(parties)
    assert (b.parties is parties or b.parties == parties
            or (parties != parties and b.parties != b.parties))
    assert b.n_waiting == 0 and b.broken is False
    with pytest.raises(BrokenBarrierError):
        b.wait(timeout=0.05)
    assert b.broken is True
    b.reset()
    assert b.broken is False
    b.abort()
    assert b.broken is True


@pytest.mark.parametrize("parties", [True, 1.0, 1], ids=repr)
def test_barrier_parties_equal_to_one(mp, parties):
    b = mp.Barrier(parties)
    assert b.parties is parties
    assert b.wait(timeout=1) == 0
    assert b.wait(timeout=1) == 0


def test_barrier_float_parties_trip(mp):
    b = mp.Barrier(2.0)
    p = mp.Process(target=b.wait, args=(5,))
    p.start()
    try:
        assert b.wait(timeout=5) in (0, 1)
    finally:
        p.join(5)
    assert p.exitcode == 0


@pytest.mark.parametrize("call, expected", [
    (lambda mp: mp.Barrier(), TypeError),
    (lambda mp: mp.Barrier(1, None, None, 1), TypeError),
    (lambda mp: mp.Barrier(1, bogus=1), TypeError),
    (lambda mp: mp.Barrier(parties=1).wait(), ("ok", 0)),
    (lambda mp: mp.Barrier(1).wait(timeout=None), ("ok", 0)),
    (lambda mp: mp.Barrier(1).wait(1, 2), TypeError),
    (lambda mp: mp.Barrier(1).abort(1), TypeError),
    (lambda mp: mp.Barrier(1).reset(1), TypeError),
    (lambda mp: mp.Barrier(2, timeout="x").parties, ("ok", 2)),
    (lambda mp: mp.Barrier(2, action=1).parties, ("ok", 2)),
])
def test_barrier_arguments(mp, call, expected):
    check(expected, lambda: call(mp))


@pytest.mark.parametrize("timeout", [-1, 0, -math.inf, True], ids=repr)
def test_barrier_short_timeouts_break(mp, timeout):
    b = mp.Barrier(2)
    with pytest.raises(BrokenBarrierError):
        b.wait(timeout)
    assert b.broken is True
    b2 = mp.Barrier(2, timeout=timeout)
    with pytest.raises(BrokenBarrierError):
        b2.wait()


@pytest.mark.parametrize("timeout", ["x", [], math.nan], ids=repr)
def test_barrier_bad_timeout_when_it_must_wait(mp, timeout):
    # stdlib: TypeError from its arithmetic, OSError (EINVAL) for NaN from
    # sem_timedwait; ours refuses NaN with ValueError before waiting
    b = mp.Barrier(2)
    if timeout != timeout:
        expected = ValueError if ours(mp) else OSError
    else:
        expected = TypeError
    with pytest.raises(expected):
        b.wait(timeout)


@pytest.mark.parametrize("timeout", ["x", math.nan], ids=repr)
def test_barrier_bad_timeout_of_the_last_arrival(mp, timeout):
    # the stdlib's last arrival never looks at its timeout; ours checks it
    # first (deliberately stricter: the same call fails or not depending on
    # who arrives last otherwise)
    b = mp.Barrier(1)
    if ours(mp):
        with pytest.raises(TypeError if timeout == "x" else ValueError):
            b.wait(timeout)
    else:
        assert b.wait(timeout) == 0


@pytest.mark.parametrize("action", ["x", 1, lambda x: x], ids=["str", "int", "needs-arg"])
def test_barrier_bad_action_raises_and_breaks(mp, action):
    b = mp.Barrier(1, action=action)
    with pytest.raises(TypeError):
        b.wait(1)
    assert b.broken is True
    with pytest.raises(BrokenBarrierError):
        b.wait(1)


def test_barrier_failing_action(mp):
    b = mp.Barrier(1, action=lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        b.wait(1)
    assert b.broken is True


def test_barrier_attributes_read_only(mp):
    b = mp.Barrier(2)
    for name in ("parties", "n_waiting", "broken"):
        with pytest.raises(AttributeError):
            setattr(b, name, 3)


def test_barrier_abort_then_wait(mp):
    b = mp.Barrier(2)
    b.abort()
    with pytest.raises(BrokenBarrierError):
        b.wait(0.05)
    b.reset()
    assert b.broken is False
