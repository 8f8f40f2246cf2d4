"""Messages (serialize.c): every kind of value round-trips through the
encoding a queue uses, the compact path and the pickle path alike."""
import collections
import decimal
import fractions
import math
import pickle

import pytest

np = pytest.importorskip("numpy")


@pytest.fixture
def codec(cmp):
    return cmp._cmp._dumps, cmp._cmp._loads


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)


VALUES = [
    None, True, False, 0, 1, -1, 127, -128, 128, -129, 2**31, 2**63 - 1, -2**63,
    2**63, -2**63 - 1, 2**200, 0.0, -0.0, 1.5, math.inf, -math.inf, 1e-310,
    "", "a", "abc" * 100, "héllo wörld", "日本語", "\U0001F600", "x" * 300,
    "é" * 100_000, "\ud800 lone surrogate",
    b"", b"\x00", b"abc" * 100, bytes(range(256)), b"q" * 65535, b"q" * 65536,
    b"q" * 65537, b"z" * 1_000_001, bytearray(), bytearray(b"xyz"),
    bytearray(200_000), bytearray(200_001),
    (), (1,), (1, "a", None, 2.5), ((1, 2), (3, (4, (5,)))), [], [1, [2, [3]]],
    {}, {"a": 1, "b": [1, 2], 3: (4, 5)}, {1.5: None},
    list(range(10_000)), tuple(range(300)), {str(i): i for i in range(1000)},
    {1, 2, 3}, frozenset({"a"}), collections.OrderedDict(a=1, b=2),
    collections.Counter("hello"), decimal.Decimal("1.1"), fractions.Fraction(1, 3),
    complex(1, 2), range(10), slice(1, 2), Point(1, "two"), ValueError("boom"),
    [b"y" * 50_000, "k", 1], (b"a" * 100_000, bytearray(b"b" * 100_000)),
    [[1] * 40] * 1, [list(range(5)) for _ in range(40)],
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_round_trip(codec, value):
    dumps, loads = codec
    r = loads(dumps(value))
    assert type(r) is type(value)
    if isinstance(value, BaseException):
        assert r.args == value.args
    else:
        assert r == value
    if isinstance(value, float):
        assert math.copysign(1, r) == math.copysign(1, value)


def test_nan(codec):
    dumps, loads = codec
    assert math.isnan(loads(dumps(math.nan)))


def test_small_values_skip_pickle(codec):
    dumps, _ = codec
    for v in [None, 1, 1.5, "abc", b"abc", (1, "a"), [1, 2], {"k": 1}]:
        data = dumps(v)
        assert len(data) < len(pickle.dumps(v, 5))
        assert not data.startswith(b"P")


def test_shared_references_are_kept(codec):
    dumps, loads = codec
    inner = [1, 2]
    r = loads(dumps([inner, inner]))
    assert r == [[1, 2], [1, 2]] and r[0] is r[1]
    d = {}
    r = loads(dumps({"a": d, "b": d}))
    assert r["a"] is r["b"]
    cyc = []
    cyc.append(cyc)
    r = loads(dumps(cyc))
    assert r[0] is r


def test_memoryview_arrives_as_bytes(codec):
    dumps, loads = codec
    mv = memoryview(b"abcdef" * 40_000)[3:]
    assert loads(dumps(mv)) == bytes(mv)
    assert loads(dumps(memoryview(b"abc"))) == b"abc"


def test_non_contiguous_memoryview_fails_like_pickle(codec):
    dumps, _ = codec
    mv = memoryview(bytearray(b"abcdef"))[::2]
    with pytest.raises((TypeError, pickle.PicklingError)):
        dumps(mv)


@pytest.mark.parametrize("array", [
    np.arange(10), np.zeros((1000, 1000)), np.arange(12).reshape(3, 4).T,
    np.arange(30)[::3], np.array(["a", "bc"]), np.array([1.5, None], dtype=object),
    np.ones(0), np.frombuffer(b"abc" * 100_000, dtype=np.uint8),
])
def test_numpy(codec, array):
    dumps, loads = codec
    r = loads(dumps(array))
    assert r.dtype == array.dtype and r.shape == array.shape
    assert np.array_equal(r, array)
    assert r.flags.writeable == array.flags.writeable


def test_numpy_payload_is_out_of_band(codec):
    dumps, _ = codec
    a = np.random.rand(1 << 17)  # 1 MiB
    data = dumps(a)
    assert a.tobytes() in data
    assert len(data) < a.nbytes + 1024
    assert data.count(a.tobytes()[:4096]) == 1  # once, not pickled in-band too


def test_large_bytes_are_copied_once_into_their_object(codec):
    dumps, loads = codec
    payload = bytes(range(256)) * 4096
    data = dumps(payload)
    assert len(data) - len(payload) <= 2  # raw, a tail byte or two
    r = loads(data)
    assert r == payload and type(r) is bytes


def test_unpicklable_raises(codec):
    dumps, _ = codec
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        dumps(lambda: 1)
    with pytest.raises(TypeError):
        dumps([1, (2, __import__("threading").Lock())])


def test_corrupt_data_raises(codec):
    _, loads = codec
    for bad in [b"", b"\xff", b"\x05\x00", b"\x0e\x05\x00\x00\x00\x01", b"P\x00"]:
        with pytest.raises(RuntimeError):
            loads(bad)
