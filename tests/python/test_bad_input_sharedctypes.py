"""Bad and unusual input to Value, Array, RawValue, RawArray and the rest of
sharedctypes, against the standard library: the same exception type, the
same value, and never a crash.

Also the lifetime of the shared block under a ctypes object: ctypes keeps
what a c_char_p, c_wchar_p or py_object stores in the object's _objects,
*replacing* what was there, so the block must be kept alive by something
else (issue 7, point 1). Pointer types are only meaningful in the process
that stored them; nothing here reads a pointer in a child."""
import ctypes
import gc
import importlib
import os
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import PKG_DIR


class S(ctypes.Structure):
    _fields_ = [("a", ctypes.c_int), ("p", ctypes.c_char_p), ("o", ctypes.py_object)]


class Inner(ctypes.Structure):
    _fields_ = [("w", ctypes.c_wchar_p), ("n", ctypes.c_double)]


class Outer(ctypes.Structure):
    _fields_ = [("inner", Inner), ("pair", Inner * 2), ("ip", ctypes.POINTER(ctypes.c_int))]


class Derived(S):  # S's fields, then its own
    _fields_ = [("extra", ctypes.c_int)]


class U(ctypes.Union):
    _fields_ = [("i", ctypes.c_int), ("d", ctypes.c_double), ("p", ctypes.c_char_p)]


class Empty(ctypes.Structure):
    _fields_ = []


class Incomplete(ctypes.Structure):
    pass


class BigEndian(ctypes.BigEndianStructure):
    _fields_ = [("a", ctypes.c_int)]


class Bits(ctypes.Structure):
    _fields_ = [("a", ctypes.c_int, 3), ("b", ctypes.c_uint, 5)]


FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)
INT_P = ctypes.POINTER(ctypes.c_int)


def sharedctypes_of(mp):
    pkg = "cmultiprocessing" if type(mp).__module__.startswith("cmultiprocessing") \
        else "multiprocessing"
    return importlib.import_module(pkg + ".sharedctypes")


def churn(mp, n=50):
    """Frees what can be freed and allocates over it, writing bytes that
    make a stale read visible (and, under ASan, reports the stale access)."""
    gc.collect()
    keep = [mp.RawArray("b", [-1] * 24) for _ in range(n)]
    keep += [mp.RawValue(ctypes.c_double, -1.0) for _ in range(n)]
    keep.append(mp.RLock())
    return keep


# ---- the crashes of issue 7, each in a child interpreter --------------------

REPRODUCERS = {
    "value_c_char_p": ("print(m.Value(ctypes.c_char_p, b'abc').value)", "b'abc'"),
    "py_object_then_rlock": (
        "v = m.RawValue(ctypes.py_object, 'hello')\n"
        "l = m.RLock()\nl.acquire()\nprint(v.value)", "hello"),
    "c_char_p_then_rawvalue": (
        "v = m.RawValue(ctypes.c_char_p)\nv.value = b'abc'\n"
        "w = m.RawValue(ctypes.c_char_p)\nprint(v.value)", "b'abc'"),
}


@pytest.mark.parametrize("case", sorted(REPRODUCERS))
def test_issue_reproducers_print_the_value(mp, case):
    code, expected = REPRODUCERS[case]
    pkg = type(mp).__module__.split(".")[0]
    script = f"import ctypes, sys\nsys.path.insert(0, {os.path.abspath(PKG_DIR)!r})\n" \
             f"import {pkg} as m\n" + code
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected


# ---- pointer types in the creating process -----------------------------------

def test_c_char_p_and_c_wchar_p_keep_their_strings(mp):
    a = mp.RawValue(ctypes.c_char_p, b"abc" * 10)
    b = mp.RawValue(ctypes.c_wchar_p, "\u20ac" * 7)
    c = mp.RawValue(ctypes.c_char_p)
    c.value = b"set later " + bytes(range(65, 75))
    v = mp.Value(ctypes.c_wchar_p, "wrapped")
    churn(mp)
    assert a.value == b"abc" * 10
    assert b.value == "\u20ac" * 7
    assert c.value == b"set later ABCDEFGHIJ"
    assert v.value == "wrapped"
    v.value = "again"
    churn(mp)
    assert v.value == "again" and v.get_obj().value == "again"


def test_py_object_keeps_its_object(mp):
    obj = ["a", "list", object()]
    v = mp.RawValue(ctypes.py_object, obj)
    w = mp.Value(ctypes.py_object, {"k": 1})
    del obj
    churn(mp)
    assert v.value[:2] == ["a", "list"]
    assert w.value == {"k": 1}
    w.value = "replaced"
    churn(mp)
    assert w.value == "replaced"
    empty = mp.RawValue(ctypes.py_object)
    with pytest.raises(ValueError):  # a NULL PyObject *, as plain ctypes says
        empty.value


def test_c_void_p_and_pointers(mp):
    target = ctypes.c_int(41)
    vp = mp.RawValue(ctypes.c_void_p, ctypes.addressof(target))
    ip = mp.RawValue(INT_P, target)
    late = mp.RawValue(INT_P)
    assert not late
    late.contents = ctypes.c_int(7)  # only `late` keeps this c_int alive
    churn(mp)
    assert vp.value == ctypes.addressof(target)
    assert ip.contents.value == 41
    ip.contents.value += 1
    assert target.value == 42
    assert late.contents.value == 7 and late[0] == 7
    with pytest.raises(TypeError):
        mp.RawValue(INT_P, 1)


def test_structures_and_arrays_holding_pointers(mp):
    s = mp.RawValue(S, 3, b"bytes", ("a", "tuple"))
    o = mp.RawValue(Outer)
    o.inner.w = "inner"
    o.pair[1].w = "pair one"
    o.ip = ctypes.pointer(ctypes.c_int(9))
    arr = mp.RawArray(ctypes.c_char_p, [b"x", b"yy", None])
    objs = mp.Array(ctypes.py_object, ["p", 2, None])
    un = mp.RawValue(U)
    un.p = b"union"
    churn(mp)
    assert (s.a, s.p, s.o) == (3, b"bytes", ("a", "tuple"))
    assert o.inner.w == "inner" and o.pair[1].w == "pair one" and o.ip[0] == 9
    assert arr[:] == [b"x", b"yy", None]
    assert objs[:] == ["p", 2, None]
    assert un.p == b"union"


def test_derived_objects_outlive_their_parent(mp):
    """A field, an element or get_obj() of a dropped object still views
    live memory, as every ctypes object does its base's."""
    sc = sharedctypes_of(mp)
    o = mp.RawValue(Outer)
    o.inner.w = "field"
    o.inner.n = 2.5
    inner = o.inner
    pair = o.pair
    structs = mp.RawArray(Inner, 3)
    structs[2].w = "element"
    elem = structs[2]
    sliced = structs[1:3]
    wrapped_slice = mp.Array(Inner, 3)
    wrapped_slice[2] = Inner("in a slice", 1.0)
    from_slice = wrapped_slice[1:][1]
    wrapped = mp.Array(Inner, 2)
    wrapped.get_obj()[1].n = 7.0
    wrapped_elem = wrapped.get_obj()[1]
    value = mp.Value(S, 5, b"s", None)
    raw = value.get_obj()
    syn = sc.synchronized(mp.RawValue(ctypes.c_char_p, b"syn"))
    syn_obj = syn.get_obj()
    nested = mp.RawArray(ctypes.c_int * 3, 2)
    nested[1][2] = 12
    row = nested[1]
    del o, structs, wrapped, value, syn, nested, wrapped_slice
    churn(mp)
    assert (inner.w, inner.n) == ("field", 2.5)
    assert len(pair) == 2 and pair[0].w is None
    assert elem.w == "element" and sliced[1].w == "element"
    assert (from_slice.w, from_slice.n) == ("in a slice", 1.0)
    assert wrapped_elem.n == 7.0
    assert (raw.a, raw.p) == (5, b"s")
    assert syn_obj.value == b"syn"
    assert row[:] == [0, 0, 12]
    inner.w = "stored through the field"
    churn(mp)
    assert inner.w == "stored through the field"


def _bytes_of(obj):
    """obj's bytes, copied by memcpy: under make sanitize ASan reports the
    copy if the block under obj was freed (the heap poisons what a process
    releases until it allocates it again)."""
    raw = obj.get_obj() if hasattr(obj, "get_obj") else obj
    data = memoryview(raw).cast("B").tobytes()
    assert len(data) == ctypes.sizeof(raw)
    return data


def test_gc_stress_create_drop_allocate_read(mp):
    live = []
    for i in range(300):
        kind = i % 6
        if kind == 0:
            o = mp.RawValue(ctypes.c_char_p, b"c%d" % i)
        elif kind == 1:
            o = mp.RawValue(ctypes.py_object, ("o", i))
        elif kind == 2:
            o = mp.RawValue(ctypes.c_wchar_p)
            o.value = "w%d" % i
        elif kind == 3:
            o = mp.Value(ctypes.c_char_p, b"v%d" % i)
        elif kind == 4:
            o = mp.RawValue(S, i, b"s%d" % i, i)
        else:
            o = mp.RawArray(ctypes.py_object, [i, str(i)])
        _bytes_of(o)
        live.append((i, o))
        if i % 7 == 3:
            del live[len(live) // 2]  # drop one, so the next allocation reuses it
        if i % 50 == 49:
            gc.collect()
    churn(mp)
    for i, o in live:
        _bytes_of(o)
        kind = i % 6
        if kind in (0, 3):
            assert o.value == (b"c%d" if kind == 0 else b"v%d") % i
        elif kind == 1:
            assert o.value == ("o", i)
        elif kind == 2:
            assert o.value == "w%d" % i
        elif kind == 4:
            assert (o.a, o.p, o.o) == (i, b"s%d" % i, i)
        else:
            assert o[:] == [i, str(i)]


def _child_counts(counter):
    counter.value += 1


def test_pointer_types_across_a_fork_in_the_creating_process(mp):
    # The child reads no pointer: a pointer means nothing in another process.
    s = mp.RawValue(ctypes.c_char_p, b"parent bytes")
    o = mp.Value(ctypes.py_object, ["parent", "list"])
    st = mp.RawValue(S, 1, b"field", "obj")
    counter = mp.Value("i", 0)
    for _ in range(3):
        p = mp.Process(target=_child_counts, args=(counter,))
        p.start()
        p.join(30)
        assert p.exitcode == 0
    churn(mp)
    assert counter.value == 3
    assert s.value == b"parent bytes"
    assert o.value == ["parent", "list"]
    assert (st.a, st.p, st.o) == (1, b"field", "obj")


# ---- copy() ---------------------------------------------------------------------

def test_copy_of_pointer_types(mp):
    sc = sharedctypes_of(mp)
    src = mp.RawValue(ctypes.c_char_p, b"copied")
    dup = sc.copy(src)
    assert dup.value == b"copied" and type(dup) is ctypes.c_char_p
    dup.value = b"changed"
    assert src.value == b"copied"
    s = sc.copy(mp.RawValue(S, 4, b"p", None))
    assert (s.a, s.p, s.o) == (4, b"p", None)
    assert sc.copy(ctypes.c_wchar_p("plain"))


def test_copy_keeps_what_the_source_referenced(cmp):
    # Deliberately better than the standard library, whose copy() keeps the
    # source's references in a temporary pointer, so that the copy of a
    # py_object (or c_char_p) dangles once the source is gone.
    sc = importlib.import_module("cmultiprocessing.sharedctypes")
    src = sc.RawValue(ctypes.py_object, "x" * 40 + str(os.getpid()))
    dup = sc.copy(src)
    s = sc.copy(sc.RawValue(S, 1, b"bytes " + str(os.getpid()).encode(), ["o"]))
    derived = sc.RawValue(Derived)
    derived.p, derived.extra = b"in the base's fields " + str(os.getpid()).encode(), 4
    dup_derived = sc.copy(derived)
    del src, derived
    churn(cmp)
    junk = [str(i) * 40 for i in range(2000)]
    assert dup.value == "x" * 40 + str(os.getpid())
    assert s.p == b"bytes " + str(os.getpid()).encode() and s.o == ["o"]
    assert dup_derived.p == b"in the base's fields " + str(os.getpid()).encode()
    assert dup_derived.extra == 4
    del junk


# ---- bad input, explicitly --------------------------------------------------------

@pytest.mark.parametrize("size", [-1, -2**31, -2**63])
def test_negative_size_is_value_error(mp, size):
    with pytest.raises(ValueError):
        mp.RawArray("i", size)
    with pytest.raises(ValueError):
        mp.Array(ctypes.c_char_p, size)


@pytest.mark.parametrize("size", [2**63, 2**64, 2**200])
def test_size_beyond_ssize_t_is_overflow_error(mp, size):
    with pytest.raises(OverflowError):
        mp.RawArray("i", size)


def test_size_of_four_tebibytes(cmp):
    # cmultiprocessing only: the standard library's heap ftruncate()s a file
    # that big and dies of SIGBUS when it touches it. Ours maps a memfd
    # lazily: it gets the object (or MemoryError), and nothing here touches
    # it beyond the first and last page.
    try:
        a = cmp.RawArray("b", 2**42)
    except (MemoryError, OSError):
        return
    assert len(a) == 2**42
    a[0] = 1
    a[2**42 - 1] = 2
    assert (a[0], a[2**42 - 1]) == (1, 2)


@pytest.mark.parametrize("size_or_init", [1.5, None, "abc", iter([1, 2]), [1.5],
                                          [None], [b"a"], [[1, 2]], object()])
def test_bad_size_or_initializer_for_ints_is_type_error(mp, size_or_init):
    with pytest.raises(TypeError):
        mp.RawArray("i", size_or_init)
    with pytest.raises(TypeError):
        mp.Array("i", size_or_init)


def test_initializer_too_long_or_wrong_type(mp):
    with pytest.raises(TypeError):
        mp.RawValue("i", 1, 2)
    with pytest.raises(TypeError):
        mp.Value("c", b"ab")
    with pytest.raises(TypeError):
        mp.Value("u", 1)
    with pytest.raises(TypeError):
        mp.RawValue(Empty, 1)
    with pytest.raises(TypeError):
        mp.RawValue(ctypes.c_int * 3 * 2, 1)
    with pytest.raises(TypeError):
        mp.RawValue(ctypes.c_char_p, "str, not bytes")
    with pytest.raises(TypeError):
        mp.RawValue(ctypes.c_wchar_p, b"bytes, not str")
    with pytest.raises(TypeError):
        mp.RawValue(S, "a", b"p")
    with pytest.raises(TypeError):
        mp.RawValue(S, 1, b"p", None, "one too many")
    a = mp.RawArray("c", 3)
    with pytest.raises(ValueError):
        a.value = b"abcd"
    with pytest.raises(ValueError):
        mp.Array("i", 2)[:] = [1, 2, 3]


@pytest.mark.parametrize("tc", ["x", "", "ii", "z", "P", "O", "?", 0, None, 1.5, b"i",
                                int, object, ctypes.c_int(1), ctypes.Structure,
                                ctypes.Array, ctypes._SimpleCData, ctypes._Pointer])
def test_bad_typecode_or_type_is_type_error(mp, tc):
    with pytest.raises(TypeError):
        mp.RawValue(tc)
    with pytest.raises(TypeError):
        mp.Value(tc)
    with pytest.raises(TypeError):
        mp.Array(tc, 3)


@pytest.mark.parametrize("lock", ["x", 2, object(), [], ctypes.c_int(1)])
def test_lock_without_acquire_is_attribute_error(mp, lock):
    with pytest.raises(AttributeError):
        mp.Value("i", 1, lock=lock)
    with pytest.raises(AttributeError):
        mp.Array("i", 3, lock=lock)


def test_lock_equal_to_true_makes_an_rlock(mp):
    for lock in (1, 1.0, True, None):  # compared with ==, as the stdlib does
        assert type(mp.Value("i", lock=lock).get_lock()) is type(mp.RLock())


@pytest.mark.parametrize("lock", ["x", 1, object()])
def test_synchronized_with_a_lock_without_acquire(mp, lock):
    sc = sharedctypes_of(mp)
    with pytest.raises(AttributeError):
        sc.synchronized(mp.RawValue("i", 1), lock)


def test_synchronized_with_false_lock_makes_an_rlock(mp):
    sc = sharedctypes_of(mp)
    for lock in (0, None, False, ""):
        w = sc.synchronized(mp.RawValue("i", 1), lock)
        assert type(w.get_lock()) is type(mp.RLock())


def test_ctx_argument_of_sharedctypes(mp):
    sc = sharedctypes_of(mp)
    assert sc.Value("i", 2, ctx=mp).value == 2
    with pytest.raises(AttributeError):
        sc.Value("i", ctx="no RLock here")
    with pytest.raises(AttributeError):
        sc.Array("i", 2, ctx=object())
    assert sc.Array("i", 2, lock=False, ctx="unused without a lock")[:] == [0, 0]


def test_wrong_arguments(mp):
    sc = sharedctypes_of(mp)
    for call in (lambda: sc.copy(), lambda: sc.synchronized(), lambda: mp.Value(),
                 lambda: mp.RawArray("i"), lambda: sc.Array("i", 2, 3),
                 lambda: sc.Value("i", lock=True, foo=1), lambda: sc.copy(1),
                 lambda: sc.copy(None), lambda: sc.copy(ctypes.c_int)):
        with pytest.raises(TypeError):
            call()
    for obj in (1, None, "x", object()):
        with pytest.raises(AttributeError):  # ctypes would say what it is
            sc.synchronized(obj)
    with pytest.raises(AssertionError):
        sc.synchronized(mp.Value("i"))


# ---- the whole product, value by value against the standard library ----------------

TYPES = {
    "i": "i", "c": "c", "u": "u", "d": "d", "char_p": ctypes.c_char_p,
    "wchar_p": ctypes.c_wchar_p, "void_p": ctypes.c_void_p, "py_object": ctypes.py_object,
    "int_p": INT_P, "S": S, "Outer": Outer, "U": U, "Empty": Empty, "Incomplete": Incomplete,
    "BigEndian": BigEndian, "Bits": Bits, "FN": FN, "array_of_arrays": ctypes.c_int * 3 * 2,
    "bool": ctypes.c_bool, "longdouble": ctypes.c_longdouble,
    "int_be": ctypes.c_int.__ctype_be__, "bad": "x", "none": None,
}
# pointers to address 1 and friends are left out: dereferencing them
# crashes ctypes by itself, anywhere. So is a bit-field Structure given a
# ctypes instance (CPython's own bug, not shared memory's).
VALUE_ARGS = [(), (1,), (1, 2), (b"abc",), ("abc",), (None,), (1.5,), (2**70,),
              (object(),), (ctypes.c_int(5),), (INT_P(ctypes.c_int(5)),), ((1, 2),),
              (float("nan"),)]
ARRAY_ARGS = [0, -1, 3, 1.5, None, "abc", b"abc", [1, 2, 3], (1.5, 2), [b"a", b"b"], ["a"],
              [None], range(3), {1: 2}, set(), True, [[1, 2], [3]], [object()]]
POINTERS = (ctypes.c_char_p, ctypes.c_wchar_p, FN)


def _describe(obj):
    """What a test may compare: type name and value, without addresses."""
    if isinstance(obj, ctypes.Array) or hasattr(obj, "get_obj") and hasattr(obj, "__len__"):
        value = list(obj[:3]) if not isinstance(obj[:0], (bytes, str)) else obj[:]
    elif hasattr(obj, "value"):
        try:
            value = obj.value
        except ValueError as e:  # a NULL py_object
            value = type(e)
    else:
        value = repr(obj)
    return type(obj).__name__, re.sub(r"0x[0-9a-f]+", "ADDR", repr(value))[:80]


def _outcome(fn, read=True):
    try:
        obj = fn()
    except Exception as e:  # the type is what must match
        return type(e).__name__
    if not read:
        return type(obj).__name__
    try:
        return _describe(obj)
    except Exception as e:
        return type(obj).__name__, "read: " + type(e).__name__


def _readable(t, args):
    if t in POINTERS and args and not isinstance(args[0], (bytes, str, type(None))):
        return False  # c_char_p(1) points at address 1
    if t is ctypes.c_char_p and args and isinstance(args[0], (bytes, list, range, dict, set)) \
            and not isinstance(args[0], bytes):
        return False
    return True


def _cases(mod, t):
    m = mod.get_context("fork")
    out = []
    for args in VALUE_ARGS:
        if t is Bits and args and isinstance(args[0], (ctypes._SimpleCData, ctypes._Pointer)):
            continue
        readable = _readable(t, args)
        out.append(("RawValue", args, _outcome(lambda: m.RawValue(t, *args), readable)))
        out.append(("Value", args, _outcome(lambda: m.Value(t, *args), readable)))
    for arg in ARRAY_ARGS:
        readable = not (t in POINTERS and arg not in (0, 3, -1, None, 1.5))
        out.append(("RawArray", arg, _outcome(lambda: m.RawArray(t, arg), readable)))
        out.append(("Array", arg, _outcome(lambda: m.Array(t, arg, lock=False), readable)))
    return out


@pytest.mark.parametrize("name", sorted(TYPES))
def test_every_input_matches_the_standard_library(cmp, name):
    import multiprocessing
    t = TYPES[name]
    expected = _cases(multiprocessing, t)
    got = _cases(cmp, t)
    assert got == expected


def test_docstrings_say_a_pointer_means_nothing_in_another_process(cmp):
    sc = importlib.import_module("cmultiprocessing.sharedctypes")
    for fn in (cmp.Value, cmp.Array, cmp.RawValue, cmp.RawArray, sc.Value, sc.RawArray):
        assert "means nothing in any other process" in fn.__doc__


LOCKS = {
    "True": lambda mp: True, "None": lambda mp: None, "Lock": lambda mp: mp.Lock(),
    "RLock": lambda mp: mp.RLock(), "Semaphore": lambda mp: mp.Semaphore(),
    "BoundedSemaphore": lambda mp: mp.BoundedSemaphore(2),
    "Condition": lambda mp: mp.Condition(),
}


@pytest.mark.parametrize("kind", sorted(LOCKS))
def test_every_kind_of_lock_guards_pointer_values(mp, kind):
    sc = sharedctypes_of(mp)
    lock = LOCKS[kind](mp)
    v = mp.Value(ctypes.c_char_p, b"locked", lock=lock)
    a = mp.Array(ctypes.py_object, [1, "two"], lock=lock)
    # synchronized() takes a lock object or a false value, not True
    w = sc.synchronized(mp.RawValue(S, 1, b"s", None), None if lock is True else lock)
    if lock not in (True, None):
        assert v.get_lock() is lock and a.get_lock() is lock and w.get_lock() is lock
    churn(mp)
    if kind in ("True", "None", "RLock", "Condition"):  # re-entrant: nest
        with v:
            v.value = v.value + b" twice"
        with a.get_lock():
            a[1] = a[1] * 2
    else:  # each access takes the lock by itself
        v.value = v.value + b" twice"
        a[1] = a[1] * 2
    w.p = b"field"
    churn(mp)
    assert v.value == b"locked twice"
    assert a[:] == [1, "twotwo"]
    assert (w.a, w.p) == (1, b"field")
