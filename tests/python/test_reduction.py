"""Connections and sockets sent through queues and connections (stdlib vs
cmultiprocessing): the receiver gets a working duplicate of the fd. Also
what pickling for our transports must keep: plain pickling of a Connection
still refuses (ours), a dead sender gives an error rather than a hang
(ours), later copyreg registrations, re-entrant and threaded puts."""
import copyreg
import gc
import pickle
import socket
import threading
import time
import weakref

import pytest

T = 10  # seconds: every wait below is bounded by it


def _use_conn(conn_source, how, go=None):
    """In the child: take a Connection from conn_source (once go is set, if
    given), talk both ways."""
    if go is not None:
        assert go.wait(T)
    if how == "conn":
        assert conn_source.poll(T)
        c = conn_source.recv()
    else:
        c = conn_source.get(timeout=T) if how == "queue" else conn_source.get()
    c.send(("from child", c.readable, c.writable))
    assert c.poll(T)
    c.send(("echo", c.recv()))
    c.close()


def stop(p):
    """Joins p, killing it if it has not finished within T."""
    p.join(T)
    if p.exitcode is None:
        p.kill()
        p.join(T)


def _run_and_talk(mp, source, how, mine, give, go=None):
    """Starts the child, and only then give() sends it the Connection.

    Never fork after a put into the stdlib's Queue: its feeder thread
    pickles, and the first Connection it pickles imports
    multiprocessing.resource_sharer. A fork in the middle of that import
    leaves the child the module half-initialised with its import lock held
    by a thread the child does not have: the child's unpickling (which looks
    up resource_sharer.DupFd) waits on that lock for ever."""
    p = mp.Process(target=_use_conn, args=(source, how, go))
    p.start()
    try:
        give()
        assert mine.poll(T)
        assert mine.recv() == ("from child", True, True)
        mine.send([1, "two", 3.0])
        assert mine.poll(T)
        assert mine.recv() == ("echo", [1, "two", 3.0])
    finally:
        stop(p)
    assert p.exitcode == 0


@pytest.mark.parametrize("kind", ["Queue", "SimpleQueue", "JoinableQueue"])
def test_pipe_end_through_queue(mp, kind):
    q = getattr(mp, kind)()
    mine, theirs = mp.Pipe()
    _run_and_talk(mp, q, "queue" if kind != "SimpleQueue" else "simple", mine,
                  lambda: q.put(theirs))
    mine.close()
    theirs.close()


def test_pipe_end_through_connection(mp):
    a, b = mp.Pipe()
    mine, theirs = mp.Pipe()
    _run_and_talk(mp, b, "conn", mine, lambda: a.send(theirs))
    for c in (a, b, mine, theirs):
        c.close()


def test_sender_closing_its_copy_does_not_affect_receiver(mp):
    q = mp.Queue()
    mine, theirs = mp.Pipe()
    go = mp.Event()
    _run_and_talk(mp, q, "queue", mine, lambda: put_then_close(q, theirs, go), go)
    mine.close()


def put_then_close(q, obj, go):
    """Puts obj, closes our copy once it is pickled and only then lets the
    child (already started: see _run_and_talk) take it."""
    q.put(obj)
    # the stdlib pickles in a feeder thread: close() and join_thread() wait
    # until it has pickled obj and written it (ours has by the time put()
    # returns). The child's copy of the queue stays open.
    q.close()
    q.join_thread()
    obj.close()
    go.set()


def test_one_way_pipe_keeps_its_direction(mp):
    q = mp.Queue()
    r, w = mp.Pipe(duplex=False)
    q.put(r)
    q.put(w)
    r2, w2 = q.get(timeout=T), q.get(timeout=T)
    assert (r2.readable, r2.writable) == (True, False)
    assert (w2.readable, w2.writable) == (False, True)
    w2.send("along")
    assert r.poll(T) and r.recv() == "along"
    w.send("back")
    assert r2.poll(T) and r2.recv() == "back"
    for c in (r, w, r2, w2):
        c.close()


def _use_socket(q, go):
    assert go.wait(T)
    s = q.get(timeout=T)
    s.settimeout(T)
    s.sendall(b"ping " + s.recv(16))
    s.close()


def test_socket_through_queue(mp):
    q = mp.Queue()
    mine, theirs = socket.socketpair()
    mine.settimeout(T)
    go = mp.Event()
    p = mp.Process(target=_use_socket, args=(q, go))
    p.start()  # before the put: see _run_and_talk
    try:
        put_then_close(q, theirs, go)
        mine.sendall(b"pong")
        assert mine.recv(16) == b"ping pong"
    finally:
        stop(p)
    assert p.exitcode == 0
    mine.close()


def test_socket_keeps_family_and_type(mp):
    q = mp.SimpleQueue()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    q.put(s)
    s2 = q.get()
    assert (s2.family, s2.type) == (socket.AF_INET, socket.SOCK_DGRAM)
    assert s2.getsockname() == s.getsockname()
    s.close()
    s2.close()


def test_plain_pickle_of_connection_still_refuses_cmp(cmp):
    a, b = cmp.Pipe()
    with pytest.raises(RuntimeError, match="through inheritance"):
        pickle.dumps(a)
    a.close()
    b.close()


def _put_and_exit(q, conn):
    q.put(conn)


def test_receiving_after_the_sender_exited_is_an_error_cmp(cmp):
    q = cmp.Queue()
    a, b = cmp.Pipe()
    p = cmp.Process(target=_put_and_exit, args=(q, b))
    p.start()
    stop(p)
    assert p.exitcode == 0
    start = time.monotonic()
    with pytest.raises(ConnectionRefusedError, match="has exited"):
        q.get(timeout=T)
    assert time.monotonic() - start < 5
    a.close()
    b.close()


def test_each_token_is_redeemed_once_cmp(cmp):
    from cmultiprocessing import _cmp
    a, b = cmp.Pipe()
    data = _cmp._dumps(b)
    c = _cmp._loads(data)
    with pytest.raises(OSError, match="already received once"):
        _cmp._loads(data)
    c.send(1)
    assert a.poll(T) and a.recv() == 1
    for x in (a, b, c):
        x.close()


class Point:
    def __init__(self, x):
        self.x = x


def _rebuild_point(x):
    return Point(x * 10)


def test_copyreg_registration_after_import_is_used(mp):
    q = mp.SimpleQueue()
    copyreg.pickle(Point, lambda p: (_rebuild_point, (p.x,)))
    try:
        q.put(Point(4))
        assert q.get().x == 40
        a, b = mp.Pipe()
        a.send(Point(5))
        assert b.poll(T) and b.recv().x == 50
        a.close()
        b.close()
    finally:
        del copyreg.dispatch_table[Point]


class PutsWhilePickled:
    """Its __reduce__ puts to another queue: pickling inside pickling."""
    side = None

    def __init__(self, tag):
        self.tag = tag

    def __reduce__(self):
        PutsWhilePickled.side.put(("side", self.tag, [self.tag] * 3))
        return (PutsWhilePickled, (self.tag,))


def test_put_from_inside_a_reduce(mp):
    q = mp.SimpleQueue()
    PutsWhilePickled.side = mp.SimpleQueue()
    try:
        q.put([PutsWhilePickled("a"), PutsWhilePickled("b"), {"k": 1}])
        got = q.get()
        assert [o.tag for o in got[:2]] == ["a", "b"] and got[2] == {"k": 1}
        assert PutsWhilePickled.side.get() == ("side", "a", ["a"] * 3)
        assert PutsWhilePickled.side.get() == ("side", "b", ["b"] * 3)
    finally:
        PutsWhilePickled.side = None


class Slow:
    """Lets other threads run in the middle of a dump."""

    def __init__(self, tag):
        self.tag = tag

    def __reduce__(self):
        time.sleep(0.0005)
        return (Slow, (self.tag,))


def test_threads_pickling_at_once(mp):
    q = mp.Queue()
    n_threads, n_items = 4, 50

    def produce(t):
        for i in range(n_items):
            q.put([Slow((t, i)), (t, i), Slow((t, -i))])

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    got = [q.get(timeout=T) for _ in range(n_threads * n_items)]
    for th in threads:
        th.join(T)
    for item in got:
        t, i = item[1]
        assert item[0].tag == (t, i) and item[2].tag == (t, -i)
    assert sorted(item[1] for item in got) == [(t, i) for t in range(n_threads)
                                               for i in range(n_items)]


def test_large_pickles_through_queue_and_connection(mp):
    # more than one pickle frame (64 KiB), with a large in-band bytearray
    obj = [Point(i) for i in range(20000)] + [bytearray(b"x" * 300000)]
    q = mp.Queue()
    q.put(obj)
    back = q.get(timeout=T)
    assert [p.x for p in back[:-1]] == list(range(20000)) and back[-1] == obj[-1]
    a, b = mp.Pipe()
    # bigger than the socket's buffer: send from a thread while we read
    sender = threading.Thread(target=a.send, args=(obj,))
    sender.start()
    assert b.poll(T)
    back = b.recv()
    sender.join(T)
    assert [p.x for p in back[:-1]] == list(range(20000)) and back[-1] == obj[-1]
    a.close()
    b.close()


def test_same_object_twice_is_two_copies(mp):
    q = mp.SimpleQueue()
    p = Point(1)
    q.put(p)
    q.put(p)
    first, second = q.get(), q.get()
    assert first is not second and first.x == second.x == 1


def test_put_keeps_no_reference_to_the_object_cmp(cmp):
    q = cmp.SimpleQueue()
    p = Point(2)
    ref = weakref.ref(p)
    q.put([p, p])
    a, b = cmp.Pipe()
    a.send([p])
    del p
    gc.collect()
    assert ref() is None, "the reused pickler's memo kept the object alive"
    assert q.get()[0].x == 2
    assert b.poll(T) and b.recv()[0].x == 2
    a.close()
    b.close()
