"""Argument handling of the blocking calls: keywords, positions and the
TypeErrors for misuse, the same on both implementations."""
import pytest


def call_variants(mp):
    lock = mp.Lock()
    cond = mp.Condition()
    event = mp.Event()
    barrier = mp.Barrier(1)
    return lock, cond, event, barrier


def test_keywords_are_accepted(mp):
    lock, cond, event, barrier = call_variants(mp)
    assert lock.acquire(block=False) is True
    assert lock.acquire(block=True, timeout=0.01) is False
    lock.release()
    assert lock.acquire(timeout=0.01) is True
    lock.release()
    with cond:
        assert cond.wait(timeout=0.01) is False
        cond.notify(n=2)
    assert event.wait(timeout=0.01) is False
    assert barrier.wait(timeout=1) == 0


@pytest.mark.parametrize("call", [
    lambda lock, cond, event, barrier: lock.acquire(True, 1, 2),
    lambda lock, cond, event, barrier: lock.acquire(bogus=1),
    lambda lock, cond, event, barrier: lock.acquire(True, block=True),
    lambda lock, cond, event, barrier: event.wait(1, 2),
    lambda lock, cond, event, barrier: event.wait(time=1),
    lambda lock, cond, event, barrier: barrier.wait(1, timeout=1),
])
def test_bad_arguments_raise_type_error(mp, call):
    with pytest.raises(TypeError):
        call(*call_variants(mp))


def test_condition_bad_arguments_raise_type_error(mp):
    cond = mp.Condition()
    with cond:
        with pytest.raises(TypeError):
            cond.wait(0.01, timeout=0.01)
        with pytest.raises(TypeError):
            cond.notify(1, 2)
        with pytest.raises(TypeError):
            cond.notify(count=1)
