"""__enter__/__exit__ of the lock-like objects: cmultiprocessing binds them
through its own descriptors, which recycle the bound method objects
(fastmethod.c). They must behave as ordinary methods."""
import gc
import inspect
import pickle
import pydoc
import threading
import weakref

import pytest


def make_all(mp):
    """One object of each kind whose __enter__/__exit__ are recycled."""
    return {
        "Lock": mp.Lock(),
        "RLock": mp.RLock(),
        "Semaphore": mp.Semaphore(1),
        "BoundedSemaphore": mp.BoundedSemaphore(1),
        "Condition": mp.Condition(),
        "Value": mp.Value("i", 0),
        "Array": mp.Array("i", 3),
    }


def held(obj):
    """Whether another thread would fail to take obj's lock right now."""
    lock = obj.get_lock() if hasattr(obj, "get_lock") else obj
    result = []

    def probe():
        got = lock.acquire(False)
        if got:
            lock.release()
        result.append(got)

    t = threading.Thread(target=probe)
    t.start()
    t.join(10)
    return not result[0]


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore", "BoundedSemaphore",
                                  "Condition", "Value", "Array"])
def test_with_and_explicit_calls(mp, kind):
    obj = make_all(mp)[kind]
    for _ in range(10):  # recycled bound objects are reused correctly
        with obj:
            assert held(obj)
        assert not held(obj)
    assert obj.__enter__() is not False
    assert held(obj)
    assert obj.__exit__(None, None, None) is None
    assert not held(obj)
    # unbound, through the class
    type(obj).__enter__(obj)
    assert held(obj)
    type(obj).__exit__(obj, None, None, None)
    assert not held(obj)


def test_exit_raises_through_with(mp):
    lock = mp.Lock()
    with pytest.raises(KeyError):
        with lock:
            raise KeyError("x")
    assert lock.acquire(False)
    lock.release()


def test_bound_exit_outlives_the_lock(mp):
    lock = mp.Lock()
    enter, exit_ = lock.__enter__, lock.__exit__
    ref = weakref.ref(lock) if hasattr(lock, "__weakref__") else None
    del lock
    gc.collect()
    assert enter() is True
    assert exit_(None, None, None) is None
    assert enter.__self__ is exit_.__self__
    assert exit_.__self__.acquire(False)
    exit_.__self__.release()
    del enter, exit_
    gc.collect()
    if ref is not None:
        assert ref() is None


def test_many_live_bound_methods(mp):
    """More bound objects alive at once than any free list holds."""
    locks = [mp.RLock() for _ in range(3)]
    bound = [lock.__enter__ for lock in locks for _ in range(10)]
    for b in bound:
        assert b() is True
    exits = [lock.__exit__ for lock in locks for _ in range(10)]
    for e in exits:
        e()
    for lock in locks:
        assert lock.acquire(False)
        lock.release()


def test_nested_with_rlock(mp):
    rlock = mp.RLock()
    with rlock:
        with rlock:
            with rlock:
                assert held(rlock)
        assert held(rlock)
    assert not held(rlock)


def test_bound_method_equality_and_hash(mp):
    a, b = mp.Lock(), mp.Lock()
    assert a.__enter__ == a.__enter__
    assert hash(a.__enter__) == hash(a.__enter__)
    assert a.__enter__ != b.__enter__
    assert a.__enter__ != a.__exit__
    assert a.__enter__.__self__ is a
    assert a.__enter__.__name__ == "__enter__"
    assert a.__exit__.__qualname__.endswith("Lock.__exit__")


def test_signature_and_help(mp):
    lock = mp.Lock()
    assert str(inspect.signature(lock.__enter__)) == "()"
    assert str(inspect.signature(lock.__exit__)) == "(*args)"
    text = pydoc.render_doc(type(lock), renderer=pydoc.plaintext)
    assert "__enter__" in text and "__exit__" in text
    assert callable(lock.__enter__)
    assert inspect.isroutine(type(lock).__enter__)


def test_bound_method_not_picklable(mp):
    lock = mp.Lock()
    with pytest.raises(RuntimeError, match="through inheritance"):
        pickle.dumps(lock.__exit__)


def test_subclass_inherits_and_overrides(mp):
    base = type(mp.Lock())

    class Plain(base):
        pass

    class Logged(base):
        def __enter__(self):
            self.log.append("enter")
            return super().__enter__()

        def __exit__(self, *args):
            self.log.append("exit")
            return super().__exit__(*args)

    plain = Plain(ctx=mp)
    with plain:
        assert held(plain)
    assert not held(plain)
    logged = Logged(ctx=mp)
    logged.log = []
    with logged:
        assert held(logged)
    assert logged.log == ["enter", "exit"]
    assert not held(logged)


def test_cycle_through_bound_method_is_collected(mp):
    """A subclass instance keeping its own bound __exit__ is garbage the
    cycle collector can free (the bound object is GC-tracked)."""
    base = type(mp.Lock())

    class Holder(base):
        pass

    obj = Holder(ctx=mp)
    obj.exit = obj.__exit__
    ref = weakref.ref(obj)
    del obj
    gc.collect()
    assert ref() is None


def test_descriptor_misuse(cmp):
    lock, rlock = cmp.Lock(), cmp.RLock()
    with pytest.raises(TypeError):
        type(lock).__enter__(rlock)
    with pytest.raises(TypeError):
        type(lock).__enter__()
    with pytest.raises(TypeError):
        lock.__enter__(1)
    with pytest.raises(TypeError):
        lock.__exit__(exc=None)
    with pytest.raises(TypeError):
        type(type(lock).__enter__)()
    with pytest.raises(TypeError):
        type(lock.__enter__)()
    assert type(lock).__dict__["__enter__"].__get__(None, type(lock)) is \
        type(lock).__dict__["__enter__"]
    assert "__enter__" in repr(lock.__enter__)
    assert repr(type(lock).__enter__) == \
        "<method '__enter__' of 'cmultiprocessing.synchronize.Lock' objects>"


def test_bound_methods_are_recycled(cmp):
    """The point of fastmethod.c: no new object per binding once warm."""
    lock = cmp.Lock()
    with lock:
        pass
    ids = {id(lock.__enter__) for _ in range(100)}
    assert len(ids) <= 2


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore", "BoundedSemaphore"])
def test_cached_bound_methods_do_not_keep_the_lock(cmp, kind):
    """Lock and RLock keep their own bound __enter__/__exit__; those must
    not hold the lock alive (no cycle), yet stay usable once the lock's
    other references are gone, and every object is freed in the end."""
    import sys
    cls = getattr(cmp, kind)
    probe = cls()
    bound_type = type(probe.__enter__)
    del probe
    gc.collect()
    types_before = sys.getrefcount(cls), sys.getrefcount(bound_type)

    lock = cls()
    before = sys.getrefcount(lock)
    enter, exit_ = lock.__enter__, lock.__exit__
    assert lock.__enter__ is enter          # the cached object itself
    assert sys.getrefcount(lock) == before  # borrowed while cached
    with lock:
        pass
    del lock                                # the bound methods resurrect it
    gc.collect()
    assert enter() is True
    exit_(None, None, None)
    again = exit_.__self__
    with again:                             # a new cache on the same object
        pass
    enter2 = again.__enter__
    assert enter2 is not enter
    del again, enter, exit_                 # the owners of the lock: it dies
    gc.collect()                            # again, and is resurrected again
    assert enter2() is True
    enter2.__self__.release()
    del enter2
    gc.collect()
    for _ in range(100):
        with cls():
            pass
        cls().__exit__  # noqa: B018 - a cached bound method dropped at once
    gc.collect()
    assert (sys.getrefcount(cls), sys.getrefcount(bound_type)) == types_before


def test_cached_bound_methods_shared_by_threads(cmp):
    rlock = cmp.RLock()
    counter = [0]

    def work():
        for _ in range(2000):
            with rlock:
                with rlock:
                    counter[0] += 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert counter[0] == 8000
    assert not held(rlock)
