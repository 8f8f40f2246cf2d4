"""Value, Array, RawValue, RawArray and the synchronized wrappers, against
the standard library's behaviour (the `mp` fixture runs each test on both)."""
import ctypes
import importlib
import pickle
import threading

import pytest

TYPECODES = {
    # typecode: (a value that round-trips exactly, its ctypes type)
    "c": (b"x", ctypes.c_char),
    "u": ("\u20ac", ctypes.c_wchar),
    "b": (-100, ctypes.c_byte),
    "B": (200, ctypes.c_ubyte),
    "h": (-30000, ctypes.c_short),
    "H": (60000, ctypes.c_ushort),
    "i": (-2**31, ctypes.c_int),
    "I": (2**32 - 1, ctypes.c_uint),
    "l": (-2**63, ctypes.c_long),
    "L": (2**64 - 1, ctypes.c_ulong),
    "q": (-2**62, ctypes.c_longlong),
    "Q": (2**63 + 5, ctypes.c_ulonglong),
    "f": (0.5, ctypes.c_float),
    "d": (1e300, ctypes.c_double),
}
ZERO = {"c": b"\x00", "u": "\x00", "f": 0.0, "d": 0.0}


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]


def sharedctypes_of(mp):
    """The sharedctypes submodule matching the implementation under test."""
    pkg = "cmultiprocessing" if type(mp).__module__.startswith("cmultiprocessing") \
        else "multiprocessing"
    return importlib.import_module(pkg + ".sharedctypes")


def run_child(mp, target, *args):
    p = mp.Process(target=target, args=args)
    p.start()
    p.join(20)
    if p.is_alive():
        p.kill()
        p.join(5)
        pytest.fail("child did not finish in time")
    assert p.exitcode == 0


# ---- values ---------------------------------------------------------------

@pytest.mark.parametrize("code", sorted(TYPECODES))
def test_value_every_typecode_round_trips(mp, code):
    value, ctype = TYPECODES[code]
    v = mp.Value(code)
    assert v.value == ZERO.get(code, 0)
    v.value = value
    assert v.value == value
    assert type(v.get_obj()) is ctype
    assert v.get_obj().value == value
    w = mp.Value(code, value)
    assert w.value == value
    r = mp.RawValue(code, value)
    assert type(r) is ctype and r.value == value


@pytest.mark.parametrize("code", sorted(TYPECODES))
def test_array_every_typecode_round_trips(mp, code):
    value, ctype = TYPECODES[code]
    a = mp.Array(code, 3)
    zeros = {"c": b"\x00" * 3, "u": "\x00" * 3}.get(code, [ZERO.get(code, 0)] * 3)
    assert a[:] == zeros
    a[1] = value
    assert a[1] == value
    assert a[-2] == value
    assert a.get_obj()._type_ is ctype
    r = mp.RawArray(code, [value, value])
    assert isinstance(r, ctypes.Array) and r[0] == value and r[1] == value


def test_integers_wrap_and_reject_like_ctypes(mp):
    v = mp.Value("b")
    v.value = 200
    assert v.value == -56
    v.value = True
    assert v.value == 1
    u = mp.Value("I")
    u.value = -1
    assert u.value == 2**32 - 1
    for bad in ("a", 1.5, None):
        with pytest.raises(TypeError):
            v.value = bad
    a = mp.Array("H", 2)
    a[0] = -1
    assert a[0] == 65535
    with pytest.raises(TypeError):
        a[1] = 2.5
    d = mp.Value("d")
    d.value = 3
    assert d.value == 3.0 and isinstance(d.value, float)
    with pytest.raises(TypeError):
        d.value = "x"
    f = mp.Value("f", 0.1)
    assert f.value == ctypes.c_float(0.1).value


def _store(v, value):
    v.value = value


@pytest.mark.parametrize("code, stored, expected", [
    ("i", 2**32 + 5, 5),              # wraps: the stored int is not what is read
    ("i", -7, -7),
    ("b", 300, 44),
    ("B", -1, 255),
    ("H", 70000, 70000 - 65536),
    ("I", 2**32 - 1, 2**32 - 1),
    ("I", -2, 2**32 - 2),
    ("q", -2**63, -2**63),
    ("Q", 2**64 - 1, 2**64 - 1),
    ("Q", -1, 2**64 - 1),
    ("L", -3, 2**64 - 3),
    ("l", 2**63, -2**63),
    ("f", 0.1, ctypes.c_float(0.1).value),  # rounds to float32
    ("d", 0.1, 0.1),
    ("d", -0.0, -0.0),
    (ctypes.c_bool, 5, True),
])
def test_value_reads_back_what_memory_holds(mp, code, stored, expected):
    """Reading .value right after a store gives the value as converted to
    the C type (cmultiprocessing reuses the stored object only when it is
    the same value), and changes made behind its back are seen."""
    v = mp.Value(code)
    v.value = stored
    for _ in range(2):
        got = v.value
        assert got == expected and type(got) is type(expected)
        assert str(got) == str(expected)  # tells -0.0 from 0.0
    if code is ctypes.c_bool:
        return
    if code not in "fd":
        v.value = True
        assert v.value == 1 and type(v.value) is int
    v.get_obj().value = 0      # directly through ctypes
    assert v.value == 0
    v.value = 42
    run_child(mp, _store, v, 43)  # from another process
    assert v.value == 43
    with v.get_lock():
        v.value += 1
        v.value += 1
    assert v.value == 45


def test_ctypes_types(mp):
    assert mp.Value(ctypes.c_int, 7).value == 7
    assert mp.Value(ctypes.c_double, 2.5).value == 2.5
    b = mp.Value(ctypes.c_bool)
    assert b.value is False
    b.value = 5
    assert b.value is True
    assert mp.RawValue(ctypes.c_short, -3).value == -3
    arr = mp.Array(ctypes.c_double, [0.5, 1.5])
    assert arr[:] == [0.5, 1.5]
    assert mp.Value(ctypes.c_uint8, 255).value == 255


def test_value_of_structure(mp):
    v = mp.Value(Point, 3, 4.5)
    assert type(v).__name__ == "SynchronizedPoint"
    assert v.x == 3 and v.y == 4.5
    v.x = 10
    assert v.get_obj().x == 10
    assert isinstance(v.get_obj(), Point)
    with v:
        v.y += 1
    assert v.y == 5.5
    r = mp.RawValue(Point, 1, 2)
    assert isinstance(r, Point) and (r.x, r.y) == (1, 2.0)
    assert type(mp.Value(Point)) is type(v)  # the wrapper class is cached


def test_array_of_structures(mp):
    a = mp.Array(Point, [(1, 1.5), (2, 2.5)])
    assert len(a) == 2
    assert (a[0].x, a[1].y) == (1, 2.5)
    a[1] = Point(7, 8.0)
    assert (a[1].x, a[1].y) == (7, 8.0)
    assert [p.x for p in a] == [1, 7]
    z = mp.Array(Point, 3)
    assert all(p.x == 0 and p.y == 0.0 for p in z)


# ---- locks ---------------------------------------------------------------

def test_lock_true_and_none_make_an_rlock(mp):
    for lock in (True, None):
        v = mp.Value("i", lock=lock)
        assert type(v.get_lock()) is type(mp.RLock())
        a = mp.Array("i", 2, lock=lock)
        assert type(a.get_lock()) is type(mp.RLock())
    v = mp.Value("i")
    assert v.get_lock() is not mp.Value("i").get_lock()


def test_lock_false_gives_the_raw_object(mp):
    v = mp.Value("i", 5, lock=False)
    assert type(v) is ctypes.c_int and v.value == 5
    a = mp.Array("d", [1.0], lock=False)
    assert isinstance(a, ctypes.Array) and a[0] == 1.0


def test_given_lock_is_used(mp):
    lock = mp.Lock()
    v = mp.Value("i", lock=lock)
    assert v.get_lock() is lock
    with v:
        assert not lock.acquire(False)
    assert lock.acquire(False)
    lock.release()
    v.acquire()
    assert not lock.acquire(False)
    v.release()
    a = mp.Array("i", 3, lock=lock)
    assert a.get_lock() is lock


def test_foreign_lock_object(mp):
    tl = threading.Lock()
    v = mp.Value("i", lock=tl)
    v.value = 4
    assert v.value == 4 and not tl.locked()
    with v:
        assert tl.locked()
    a = mp.Array("i", 2, lock=threading.RLock())
    a[0] = 1
    assert a[:] == [1, 0]


@pytest.mark.parametrize("bad", [0, "lock", 2.5])
def test_lock_without_acquire_is_attribute_error(mp, bad):
    with pytest.raises(AttributeError, match="has no method 'acquire'"):
        mp.Value("i", lock=bad)
    with pytest.raises(AttributeError, match="has no method 'acquire'"):
        mp.Array("i", 1, lock=bad)


def test_value_ops_hold_the_lock(mp):
    """.value waits for a lock held elsewhere."""
    lock = mp.Lock()
    v = mp.Value("i", lock=lock)
    lock.acquire()
    done = threading.Event()

    def writer():
        v.value = 9
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    assert not done.wait(0.2)
    lock.release()
    assert done.wait(5)
    t.join(5)
    assert v.value == 9


# ---- arrays --------------------------------------------------------------

def test_array_sequence_protocol(mp):
    a = mp.Array("i", range(10))
    assert len(a) == 10
    assert a[0] == 0 and a[9] == 9 and a[-1] == 9 and a[-10] == 0
    assert a[2:5] == [2, 3, 4]
    assert a[::3] == [0, 3, 6, 9]
    assert a[::-1] == list(range(9, -1, -1))
    a[2:5] = [20, 30, 40]
    assert a[:] == [0, 1, 20, 30, 40, 5, 6, 7, 8, 9]
    a[-1] = -9
    assert a[9] == -9
    assert list(a) == a[:]
    assert 40 in a
    assert sum(a) == sum(a[:])
    assert a.get_obj()[2] == 20


def test_array_errors(mp):
    a = mp.Array("i", 3)
    for i in (3, -4, 100):
        with pytest.raises(IndexError):
            a[i]
        with pytest.raises(IndexError):
            a[i] = 1
    with pytest.raises(ValueError):
        a[0:2] = [1]
    with pytest.raises(TypeError):
        a["x"]
    with pytest.raises((AttributeError, TypeError)):
        del a[0]
    with pytest.raises(ValueError):
        mp.Array("i", -1)
    with pytest.raises(TypeError):
        mp.Array("i", 2.5)
    with pytest.raises(TypeError):
        mp.Array("i", ["a"])


def test_char_array_value_and_raw(mp):
    s = mp.Array("c", b"hello")
    assert type(s).__name__ == "SynchronizedString"
    assert s.value == b"hello" and s.raw == b"hello"
    s.value = b"hi"
    assert s.value == b"hi"
    assert s.raw == b"hi\x00lo"
    s.raw = b"abcde"
    assert s[:] == b"abcde" and s[1] == b"b"
    z = mp.Array("c", 4)
    assert z.raw == b"\x00" * 4 and z.value == b""
    with pytest.raises(ValueError):
        s.value = b"too long for it"


def test_initializer_length_sets_size(mp):
    a = mp.Array("d", [1.0, 2.0])
    assert len(a) == 2 and a[:] == [1.0, 2.0]
    assert len(mp.Array("i", 0)) == 0
    assert mp.Array("i", 0)[:] == []
    b = mp.Array("B", b"\x01\x02\x03")
    assert b[:] == [1, 2, 3]


# ---- errors, repr, pickling, helpers ---------------------------------------

@pytest.mark.parametrize("code", ["x", "", "ii", "z"])
def test_bad_typecode_is_type_error(mp, code):
    with pytest.raises(TypeError):
        mp.Value(code)
    with pytest.raises(TypeError):
        mp.Array(code, 3)
    with pytest.raises(TypeError):
        mp.RawValue(code)
    with pytest.raises(TypeError):
        mp.RawArray(code, [1])


def test_constructor_argument_errors(mp):
    with pytest.raises(TypeError):
        mp.Value("i", 1, 2)
    with pytest.raises(TypeError):
        mp.Value()
    with pytest.raises(TypeError):
        mp.Array("i")
    with pytest.raises(TypeError):
        mp.Array("i", 3, True)  # lock is keyword-only
    with pytest.raises(TypeError):
        mp.Value("i", bogus=1)


def test_repr(mp):
    assert repr(mp.Value("i", 7)) == "<Synchronized wrapper for c_int(7)>"
    assert repr(mp.Value("d")) == "<Synchronized wrapper for c_double(0.0)>"
    r = repr(mp.Array("i", 2))
    assert r.startswith("<SynchronizedArray wrapper for <") and "c_int_Array_2" in r
    assert repr(mp.Array("c", 2)).startswith("<SynchronizedString wrapper for <")


def test_pickling_outside_spawn_is_runtime_error(mp):
    for obj, name in ((mp.Value("i"), "Synchronized"),
                      (mp.Array("i", 2), "SynchronizedArray"),
                      (mp.Array("c", 2), "SynchronizedString")):
        with pytest.raises(RuntimeError, match=name + " objects should only be shared"):
            pickle.dumps(obj)


def test_classes_and_isinstance(mp):
    sc = sharedctypes_of(mp)
    v, a, s = mp.Value("i"), mp.Array("i", 1), mp.Array("c", 1)
    assert isinstance(v, sc.Synchronized) and isinstance(v, sc.SynchronizedBase)
    assert isinstance(a, sc.SynchronizedArray) and not isinstance(a, sc.Synchronized)
    assert isinstance(s, sc.SynchronizedString) and isinstance(s, sc.SynchronizedArray)
    assert isinstance(mp.Value(Point), sc.SynchronizedBase)


def test_copy_and_synchronized(mp):
    sc = sharedctypes_of(mp)
    raw = sc.RawArray("i", [1, 2, 3])
    dup = sc.copy(raw)
    assert dup[:] == [1, 2, 3] and type(dup) is type(raw)
    dup[0] = 99
    assert raw[0] == 1
    p = sc.copy(Point(5, 6.0))
    assert (p.x, p.y) == (5, 6.0)
    s = sc.synchronized(sc.RawValue("i", 4))
    assert isinstance(s, sc.Synchronized) and s.value == 4
    assert type(s.get_lock()) is type(mp.RLock())
    lock = mp.Lock()
    s2 = sc.synchronized(sc.RawArray("c", b"ab"), lock)
    assert isinstance(s2, sc.SynchronizedString) and s2.get_lock() is lock
    with pytest.raises(AssertionError):
        sc.synchronized(s)
    wrapped = sc.synchronized(Point(1, 2.0))
    assert wrapped.x == 1


def test_synchronized_base_direct(mp):
    sc = sharedctypes_of(mp)
    obj = sc.RawValue("i", 3)
    w = sc.Synchronized(obj, mp.RLock())
    assert w.get_obj() is obj and w.value == 3
    lock = mp.Lock()
    w2 = sc.Synchronized(obj, lock)
    assert w2.get_lock() is lock
    w2.value = 8
    assert w.value == 8


# ---- across processes --------------------------------------------------------

def _child_modify(num, arr, raw):
    assert num.value == 1 and arr[:] == [1, 2, 3] and raw[0] == 5
    num.value += 10
    arr[0] = 100
    arr[-1] = -3
    raw[1] = 6


def test_child_modifies_value_and_array(mp):
    num = mp.Value("i", 1)
    arr = mp.Array("i", [1, 2, 3])
    raw = mp.RawArray("d", [5.0, 0.0])
    run_child(mp, _child_modify, num, arr, raw)
    assert num.value == 11
    assert arr[:] == [100, 2, -3]
    assert raw[:] == [5.0, 6.0]


def _child_structure_and_string(v, s):
    v.x += 1
    v.y *= 2
    s.value = b"child"


def test_child_modifies_structure_and_string(mp):
    v = mp.Value(Point, 1, 1.5)
    s = mp.Array("c", 8)
    run_child(mp, _child_structure_and_string, v, s)
    assert (v.x, v.y) == (2, 3.0)
    assert s.value == b"child"


def _child_numpy(arr, expect):
    import numpy as np
    view = np.frombuffer(arr.get_obj(), dtype=np.int32)
    assert view.tolist() == expect
    view *= 2


def test_numpy_shares_memory_with_children(mp):
    np = pytest.importorskip("numpy")
    arr = mp.Array("i", 4)
    view = np.frombuffer(arr.get_obj(), dtype=np.int32)
    view[:] = [1, 2, 3, 4]
    assert arr[:] == [1, 2, 3, 4]
    run_child(mp, _child_numpy, arr, [1, 2, 3, 4])
    assert view.tolist() == [2, 4, 6, 8]
    assert arr[:] == [2, 4, 6, 8]
    raw = mp.RawArray("d", 3)
    rv = np.frombuffer(raw, dtype=np.float64)
    rv[1] = 2.5
    assert raw[1] == 2.5


def _increment(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


@pytest.mark.timeout(120)
def test_many_processes_increment_exactly(mp):
    v = mp.Value("i", 0)
    procs = [mp.Process(target=_increment, args=(v, 10000)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(100)
    assert all(p.exitcode == 0 for p in procs)
    assert v.value == 80000


def _increment_array(a, n):
    for _ in range(n):
        with a:
            a[0] += 1
            a[1] -= 1


def test_array_increments_under_with(mp):
    a = mp.Array("q", 2)
    procs = [mp.Process(target=_increment_array, args=(a, 2000)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert a[:] == [6000, -6000]


# ---- beyond the standard library -----------------------------------------------

def test_freed_value_memory_is_reused(cmp):
    v = cmp.RawArray("i", 100)
    addr = ctypes.addressof(v)
    del v
    w = cmp.RawArray("i", 100)
    assert ctypes.addressof(w) == addr
    assert w[:] == [0] * 100


def test_raw_objects_are_64_byte_aligned(cmp):
    for code in "bidc":
        assert ctypes.addressof(cmp.RawArray(code, 3)) % 64 == 0
        assert ctypes.addressof(cmp.RawValue(code)) % 64 == 0


def _child_big(arr):
    arr[len(arr) - 1] = 42.0
    arr[0] = arr[1] + 1


def test_big_array_shared(cmp):
    ctx = cmp.get_context("fork")
    arr = ctx.Array("d", 2_000_000)
    arr[1] = 6.0
    run_child(ctx, _child_big, arr)
    assert arr[1999999] == 42.0 and arr[0] == 7.0
