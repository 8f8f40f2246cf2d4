"""Pipe and Connection (stdlib vs cmultiprocessing): send/recv, the bytes
methods and their errors, EOF, poll, wait() over mixed objects, large
messages, SIGINT during recv and wait, inheritance by a child."""
import array
import importlib
import os
import pickle
import signal
import socket
import time

import pytest

from _sync_helpers import fork, join


@pytest.fixture
def conn(mp):
    """The connection module of the implementation under test."""
    import multiprocessing.context
    if isinstance(mp, multiprocessing.context.BaseContext):
        return importlib.import_module("multiprocessing.connection")
    return importlib.import_module("cmultiprocessing.connection")


def test_duplex_objects_both_ways(mp):
    a, b = mp.Pipe()
    assert a.readable and a.writable and b.readable and b.writable
    a.send({"k": [1, 2.5, "x", None]})
    assert b.recv() == {"k": [1, 2.5, "x", None]}
    b.send(("back", 3))
    assert a.recv() == ("back", 3)
    a.close()
    b.close()


def test_one_way(mp):
    r, w = mp.Pipe(duplex=False)
    assert r.readable and not r.writable
    assert w.writable and not w.readable
    w.send(42)
    assert r.recv() == 42
    with pytest.raises(OSError, match="connection is read-only"):
        r.send(1)
    with pytest.raises(OSError, match="connection is write-only"):
        w.recv()
    with pytest.raises(OSError, match="connection is write-only"):
        w.poll()
    r.close()
    w.close()


def test_send_bytes_offset_size(mp):
    a, b = mp.Pipe()
    a.send_bytes(b"0123456789")
    assert b.recv_bytes() == b"0123456789"
    a.send_bytes(b"0123456789", 2)
    assert b.recv_bytes() == b"23456789"
    a.send_bytes(b"0123456789", 2, 3)
    assert b.recv_bytes() == b"234"
    a.send_bytes(bytearray(b"xyz"), size=2)
    assert b.recv_bytes() == b"xy"
    a.send_bytes(b"")
    assert b.recv_bytes() == b""
    # items wider than a byte count in bytes
    a.send_bytes(array.array("i", [1, 2, 3]), 4, 4)
    assert b.recv_bytes() == array.array("i", [2]).tobytes()
    a.send_bytes(memoryview(b"abcdef")[1:4])
    assert b.recv_bytes() == b"bcd"
    for args, msg in [((b"abc", -1), "offset is negative"),
                      ((b"abc", 4), "buffer length < offset"),
                      ((b"abc", 0, -1), "size is negative"),
                      ((b"abc", 1, 3), r"buffer length < offset \+ size")]:
        with pytest.raises(ValueError, match=msg):
            a.send_bytes(*args)
    assert not b.poll()  # nothing was sent by the failed calls


def test_recv_bytes_maxlength(mp):
    a, b = mp.Pipe()
    a.send_bytes(b"x" * 10)
    a.send_bytes(b"y" * 5)
    with pytest.raises(ValueError, match="negative maxlength"):
        b.recv_bytes(-1)
    with pytest.raises(OSError, match="bad message length"):
        b.recv_bytes(9)
    # the stream is then unusable for reading; a duplex end stays writable
    assert not b.readable and b.writable and not b.closed
    b.send_bytes(b"still")
    assert a.recv_bytes(5) == b"still"

    r, w = mp.Pipe(duplex=False)
    w.send_bytes(b"toolong")
    with pytest.raises(OSError, match="bad message length"):
        r.recv_bytes(3)
    assert r.closed  # a read-only end is closed


def test_recv_bytes_into(mp):
    a, b = mp.Pipe()
    buf = bytearray(10)
    a.send_bytes(b"abc")
    assert b.recv_bytes_into(buf) == 3
    assert buf[:3] == b"abc"
    a.send_bytes(b"xyz")
    assert b.recv_bytes_into(buf, 7) == 3
    assert buf == bytearray(b"abc\0\0\0\0xyz")
    arr = array.array("i", [0, 0, 0])
    a.send_bytes(array.array("i", [7, 8]))
    assert b.recv_bytes_into(arr, 4) == 8
    assert list(arr) == [0, 7, 8]
    with pytest.raises(ValueError, match="negative offset"):
        b.recv_bytes_into(buf, -1)
    with pytest.raises(ValueError, match="offset too large"):
        b.recv_bytes_into(buf, 11)
    a.send_bytes(b"0123456789AB")
    with pytest.raises(mp.BufferTooShort) as info:
        b.recv_bytes_into(buf, 5)
    assert info.value.args[0] == b"0123456789AB"
    big = os.urandom(100000)  # larger than any stack buffer
    a.send_bytes(big)
    with pytest.raises(mp.BufferTooShort) as info:
        b.recv_bytes_into(bytearray(10))
    assert info.value.args[0] == big
    a.send_bytes(big)
    target = bytearray(len(big) + 1)
    assert b.recv_bytes_into(target, 1) == len(big)
    assert target[1:] == big


def test_eof_when_other_end_closed(mp):
    a, b = mp.Pipe()
    a.send("last")
    a.close()
    assert b.poll(1)
    assert b.recv() == "last"
    assert b.poll(0)  # EOF is readable
    with pytest.raises(EOFError):
        b.recv()
    with pytest.raises(EOFError):
        b.recv_bytes()
    r, w = mp.Pipe(duplex=False)
    w.close()
    with pytest.raises(EOFError):
        r.recv_bytes()


def test_closed_connection_errors(mp):
    a, b = mp.Pipe()
    assert not a.closed
    fd = a.fileno()
    assert isinstance(fd, int) and fd >= 0
    a.close()
    a.close()  # idempotent
    assert a.closed
    for call in (a.fileno, a.recv, a.recv_bytes, a.poll, lambda: a.send(1),
                 lambda: a.send_bytes(b"x"), lambda: a.recv_bytes_into(bytearray(1))):
        with pytest.raises(OSError, match="handle is closed"):
            call()
    b.close()


def test_context_manager(mp):
    a, b = mp.Pipe()
    with a as entered:
        assert entered is a
    assert a.closed
    with b:
        pass
    assert b.closed


def test_connection_from_handle(mp, conn):
    s1, s2 = socket.socketpair()
    c1 = conn.Connection(s1.detach())
    c2 = conn.Connection(s2.detach(), readable=False)
    assert not c2.readable and c2.writable
    c2.send_bytes(b"raw")
    assert c1.recv_bytes() == b"raw"
    c1.close()
    c2.close()
    with pytest.raises(ValueError, match="invalid handle"):
        conn.Connection(-1)
    with pytest.raises(ValueError, match="at least one of"):
        conn.Connection(0, readable=False, writable=False)


def test_subclass_with_its_own_init(mp, conn):
    """A Connection subclass whose __init__ takes other arguments and calls
    the base's with the handle, as code written against the stdlib's
    class does."""
    class Tagged(conn.Connection):
        def __init__(self, handle, tag, **kwds):
            super().__init__(handle, **kwds)
            self.tag = tag

    s1, s2 = socket.socketpair()
    c1 = Tagged(s1.detach(), "left")
    c2 = Tagged(s2.detach(), tag="right", readable=False)
    assert (c1.tag, c2.tag) == ("left", "right")
    assert isinstance(c1, conn.Connection) and not c2.readable
    c2.send({"x": 1})
    assert c1.poll(5) and c1.recv() == {"x": 1}
    c1.close()
    c2.close()
    assert c1.closed and c2.closed


def test_xml_listener_and_client(mp, conn):
    """XmlListener/XmlClient: the same handshake, XML-RPC values instead
    of pickles."""
    import threading
    listener = conn.XmlListener(authkey=b"key")
    got = []

    def serve():
        c = listener.accept()
        got.append(c.recv())
        c.send(got[0] + [3])
        c.close()

    t = threading.Thread(target=serve)
    t.start()
    client = conn.XmlClient(listener.address, authkey=b"key")
    client.send([1, "two"])
    assert client.recv() == [1, "two", 3]
    client.close()
    t.join(10)
    listener.close()
    assert got == [[1, "two"]] and conn.MESSAGE_LENGTH == 20


def test_private_handle(mp, conn):
    """conn._handle is the fd (None once closed); set to None, the
    Connection forgets the fd without closing it (someone else owns it)."""
    s1, s2 = socket.socketpair()
    c1 = conn.Connection(s1.detach())
    fd = c1.fileno()
    assert c1._handle == fd
    c1._handle = None
    assert c1.closed
    del c1
    c2 = conn.Connection(s2.detach())
    os.write(fd, b"\0\0\0\2hi")  # the fd stayed open: a message gets through
    assert c2.poll(5) and c2.recv_bytes() == b"hi"
    os.close(fd)
    c2.close()
    assert c2._handle is None


def test_poll_timeouts(mp):
    a, b = mp.Pipe()
    assert b.poll() is False
    t = time.monotonic()
    assert b.poll(0.2) is False
    assert 0.15 < time.monotonic() - t < 2
    assert b.poll(-1) is False
    a.send(1)
    assert b.poll(None) is True
    assert b.poll(5) is True
    assert b.recv() == 1


def test_pickle_refused_outside_spawn(cmp):
    a, b = cmp.Pipe()
    with pytest.raises(RuntimeError, match="through inheritance"):
        pickle.dumps(a)


@pytest.mark.parametrize("duplex", [True, False])
def test_large_message_64mib(mp, duplex):
    r, w = mp.Pipe(duplex=duplex) if not duplex else mp.Pipe()
    data = os.urandom(1 << 20) * 64

    def child():
        r.close() if not duplex else None
        w.send_bytes(data)
        w.send({"big": data[:1000]})
        return 0

    pid = fork(child)
    got = r.recv_bytes()
    assert len(got) == len(data) and got == data
    assert r.recv() == {"big": data[:1000]}
    assert join(pid) == 0


def test_child_process_args(mp):
    """Connections passed to a Process (fork) are inherited."""
    a, b = mp.Pipe()
    p = mp.Process(target=_echo_twice, args=(b,))
    p.start()
    a.send("one")
    assert a.recv() == ("echo", "one")
    a.send_bytes(b"two")
    assert a.recv_bytes() == b"TWO"
    p.join(10)
    assert p.exitcode == 0


def _echo_twice(c):
    c.send(("echo", c.recv()))
    c.send_bytes(c.recv_bytes().upper())


def test_unpicklable_send_raises(mp):
    a, b = mp.Pipe()
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        a.send(lambda: 0)
    a.send("after")
    assert b.recv() == "after"


# ---- wait ------------------------------------------------------------------

def test_wait_mixed_objects(mp, conn):
    a, b = mp.Pipe()
    r, w = mp.Pipe(duplex=False)
    s1, s2 = socket.socketpair()
    pr, pw = os.pipe()
    objs = [b, r, s1, pr]
    assert conn.wait(objs, 0) == []
    t = time.monotonic()
    assert conn.wait(objs, 0.2) == []
    assert time.monotonic() - t >= 0.15
    a.send(1)
    s2.send(b"x")
    assert conn.wait(objs, 5) == [b, s1]
    w.send(2)
    os.write(pw, b"y")
    assert conn.wait(objs, 5) == [b, r, s1, pr]
    assert conn.wait(objs) == [b, r, s1, pr]  # timeout None
    for c in (a, b, r, w, s1, s2):
        c.close()
    os.close(pr)
    os.close(pw)


def test_wait_process_sentinel(mp, conn):
    a, b = mp.Pipe()
    p = mp.Process(target=time.sleep, args=(0.2,))
    p.start()
    ready = conn.wait([b, p.sentinel], 10)
    assert ready == [p.sentinel]
    p.join(5)
    assert p.exitcode == 0
    a.close()
    assert conn.wait([b, p.sentinel], 1) == [b, p.sentinel]
    b.close()


def test_wait_stdlib_connection_in_ours(cmp):
    """Our wait() accepts the stdlib's connections and the reverse."""
    import multiprocessing
    import multiprocessing.connection as stdconn
    from cmultiprocessing import connection as ourconn
    sa, sb = multiprocessing.Pipe()
    oa, ob = cmp.Pipe()
    sa.send(1)
    oa.send(2)
    assert ourconn.wait([sb, ob], 5) == [sb, ob]
    assert stdconn.wait([sb, ob], 5) == [sb, ob]
    for c in (sa, sb, oa, ob):
        c.close()


def test_wait_closed_connection_raises(mp, conn):
    a, b = mp.Pipe()
    b.close()
    with pytest.raises(OSError, match="handle is closed"):
        conn.wait([b], 0)
    a.close()


def test_wait_same_fd_twice_raises(mp, conn):
    a, b = mp.Pipe()
    a.send(1)
    with pytest.raises(KeyError, match="already registered"):
        conn.wait([b, b], 0)
    with pytest.raises(KeyError, match="already registered"):
        conn.wait([b.fileno(), b], 0)
    assert conn.wait([a, b], 1) == [b]
    a.close()
    b.close()


# ---- SIGINT ------------------------------------------------------------------

def _sigint_child(mp, block):
    """In a child: arm SIGINT from a helper process 0.3 s out, block, and
    report through the exit status how long KeyboardInterrupt took."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    a, b = mp.Pipe()
    me = os.getpid()
    killer = os.fork()
    if killer == 0:
        time.sleep(0.3)
        os.kill(me, signal.SIGINT)
        os._exit(0)
    t = time.monotonic()
    try:
        block(a, b)
    except KeyboardInterrupt:
        dt = time.monotonic() - t
        os.waitpid(killer, 0)
        return 0 if dt < 0.8 else 2
    return 3


@pytest.mark.parametrize("what", ["recv", "recv_bytes", "poll", "wait"])
def test_sigint_interrupts(mp, conn, what):
    blocks = {
        "recv": lambda a, b: b.recv(),
        "recv_bytes": lambda a, b: b.recv_bytes(),
        "poll": lambda a, b: b.poll(30),
        "wait": lambda a, b: conn.wait([b], 30),
    }
    pid = fork(_sigint_child, mp, blocks[what])
    assert join(pid, 20) == 0
