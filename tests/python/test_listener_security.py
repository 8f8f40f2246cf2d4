"""Who can reach a Listener, and what a peer that does not authenticate
costs it.

Default AF_UNIX addresses live in a private 0700 directory of the process
tree (the stdlib's util.get_temp_dir), so another user cannot connect even
at umask 000, and the directory goes when the process that made it exits
(differential). An authenticating accept() gives its peer
connection.CONNECTION_TIMEOUT to finish the handshake, then closes it and
raises AuthenticationError (cmultiprocessing only: the stdlib waits forever).
"""
import hmac
import importlib
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import PKG_DIR
from test_listener import conn  # noqa: F401 (the fixture)

PKG = os.path.abspath(PKG_DIR)


def _run(conn, body, umask=None, stdin=None, **popen):
    """Runs body in a fresh interpreter with `connection` bound to the
    module under test (its temporary directory is made there, under the
    given umask)."""
    code = "import sys\nsys.path.insert(0, %r)\nimport %s as connection\n" % (
        PKG, conn.__name__) + textwrap.dedent(body)
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stdin=stdin, text=True, preexec_fn=pre, **popen)


def _check_private(d):
    st = os.lstat(d)
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o700, oct(st.st_mode)
    assert st.st_uid == os.geteuid()


@pytest.mark.parametrize("how", ["default", "family"])
def test_default_address_in_private_dir_at_umask_0(conn, how):
    body = """
    import os
    l = connection.Listener() if %r == "default" else connection.Listener(family="AF_UNIX")
    print(l.address, flush=True)
    print(oct(os.stat(l.address).st_mode), flush=True)
    sys.stdin.read()
    l.close()
    """ % how
    p = _run(conn, body, umask=0, stdin=subprocess.PIPE)
    try:
        address = p.stdout.readline().strip()
        sock_mode = int(p.stdout.readline(), 8)
        assert os.path.basename(address).startswith("listener-")
        _check_private(os.path.dirname(address))
        # The socket file itself follows the umask (world-writable here):
        # the directory is what keeps others out.
        assert stat.S_ISSOCK(sock_mode)
    finally:
        p.communicate("", timeout=30)
    assert p.returncode == 0


def test_private_dir_honours_tmpdir(conn, tmp_path):
    body = """
    print(connection.Listener().address, flush=True)
    """
    p = _run(conn, body, env=dict(os.environ, TMPDIR=str(tmp_path)))
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0
    assert os.path.dirname(os.path.dirname(out.strip())) == str(tmp_path)
    assert os.listdir(tmp_path) == []  # removed at exit


def test_private_dir_shared_by_children_removed_by_creator(conn):
    body = """
    import os
    import multiprocessing as stdlib_mp
    mp = __import__(connection.__name__.split(".")[0]).get_context("fork")
    l = connection.Listener()
    d = os.path.dirname(l.address)
    q = mp.Queue()
    def child():
        # the child's default address is in the same directory, and its
        # exit leaves the directory to the parent
        c = connection.Listener()
        q.put(os.path.dirname(c.address))
    p = mp.Process(target=child)
    p.start()
    got = q.get(timeout=30)
    p.join(30)
    print(d, flush=True)
    print(got == d and os.path.isdir(d), flush=True)
    # left open on purpose: exit removes it with the directory
    """
    p = _run(conn, body)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    d, shared = out.split()
    assert shared == "True"
    assert not os.path.exists(d)


def test_explicit_address_used_as_given(conn, tmp_path):
    path = str(tmp_path / "mine.sock")
    with conn.Listener(path) as l:
        assert l.address == path
        assert stat.S_ISSOCK(os.stat(path).st_mode)


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="needs root and setpriv to connect as uid 65534")


def _connect_as(uid, address):
    """Exit status of a plain socket connect to address as uid."""
    code = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)\n")
    cmd = [sys.executable, "-c", code, address]
    if uid is not None:
        cmd = ["setpriv", "--reuid=%d" % uid, "--regid=%d" % uid, "--clear-groups"] + cmd
    return subprocess.run(cmd, timeout=30).returncode


@needs_root
def test_other_uid_cannot_connect_at_umask_0(conn):
    body = """
    l = connection.Listener()
    print(l.address, flush=True)
    sys.stdin.read()
    l.close()
    """
    p = _run(conn, body, umask=0, stdin=subprocess.PIPE)
    try:
        address = p.stdout.readline().strip()
        assert _connect_as(65534, address) == 13
        assert _connect_as(None, address) == 0  # the test can tell: we get in
    finally:
        p.communicate("", timeout=30)
    assert p.returncode == 0


# ---- the handshake deadline (beyond the stdlib, which waits forever) ------


@pytest.fixture
def short_timeout(cmp):
    c = importlib.import_module("cmultiprocessing.connection")
    old = c.CONNECTION_TIMEOUT
    c.CONNECTION_TIMEOUT = 0.3
    yield c
    c.CONNECTION_TIMEOUT = old


def _good_client(c, address, key, results):
    def run():
        try:
            with c.Client(address, authkey=key) as k:
                k.send("hi")
                results.append(k.recv())
        except Exception as e:  # reported to the test
            results.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("peer", ["silent", "half_header", "half_answer"])
def test_stalled_peer_costs_the_deadline_then_next_is_served(short_timeout, peer):
    c = short_timeout
    with c.Listener(authkey=b"key", backlog=4) as l:
        s = socket.socket(socket.AF_UNIX)
        s.connect(l.address)  # first in the backlog
        s.settimeout(10)
        closed = []

        def stall():
            if peer == "half_header":
                s.sendall(b"\x00\x00")
            elif peer == "half_answer":
                s.recv(4)  # the challenge's header, once accept() runs
                s.sendall(struct.pack("!i", 40) + b"{sha256}")
            while s.recv(1 << 16):  # until the server closes us
                pass
            closed.append(True)

        st = threading.Thread(target=stall, daemon=True)
        st.start()
        results = []
        t = _good_client(c, l.address, b"key", results)
        start = time.monotonic()
        with pytest.raises(c.AuthenticationError, match="CONNECTION_TIMEOUT"):
            l.accept()
        took = time.monotonic() - start
        assert 0.25 <= took < 5, took
        st.join(10)
        assert closed == [True]
        s.close()
        with l.accept() as k:
            assert k.recv() == "hi"
            k.send("served")
        t.join(10)
        assert results == ["served"]


def test_wrong_key_still_raises_at_once(short_timeout):
    c = short_timeout
    c.CONNECTION_TIMEOUT = 10
    with c.Listener(authkey=b"right") as l:
        results = []
        t = _good_client(c, l.address, b"wrong", results)
        start = time.monotonic()
        with pytest.raises(c.AuthenticationError, match="digest received was wrong"):
            l.accept()
        assert time.monotonic() - start < 5
        t.join(10)
        assert len(results) == 1 and isinstance(results[0], c.AuthenticationError)


def _signal_main_thread(signum, every, stop):
    """Sends signum to the main thread every `every` s until stop is set
    (not an itimer: pytest-timeout owns SIGALRM)."""
    main = threading.main_thread().ident

    def run():
        while not stop.wait(every):
            signal.pthread_kill(main, signum)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_slow_peer_survives_signals(short_timeout):
    """A peer that sends its answer byte by byte while signals keep
    interrupting the server still authenticates: the handshake resumes
    where it stopped."""
    c = short_timeout
    c.CONNECTION_TIMEOUT = 10
    import multiprocessing.connection as stdconn
    key = b"slow"
    with c.Listener(authkey=key) as l:
        done = []

        def peer():
            try:
                talk()
            except BaseException as e:  # reported to the test
                done.append(e)

        def talk():
            s = socket.socket(socket.AF_UNIX)
            s.connect(l.address)
            s.settimeout(10)
            n = struct.unpack("!i", s.recv(4, socket.MSG_WAITALL))[0]
            challenge = s.recv(n, socket.MSG_WAITALL)
            msg = challenge[len(b"#CHALLENGE#"):]
            answer = b"{sha256}" + hmac.new(key, msg, "sha256").digest()
            for b in struct.pack("!i", len(answer)) + answer:
                s.sendall(bytes([b]))
                time.sleep(0.005)
            s.settimeout(None)  # the stdlib's Connection wants a blocking fd
            k = stdconn.Connection(s.detach())
            assert k.recv_bytes(256) == b"#WELCOME#"
            stdconn.deliver_challenge(k, key)
            done.append(k.recv())
            k.close()

        t = threading.Thread(target=peer, daemon=True)
        ticks = []
        old = signal.signal(signal.SIGUSR1, lambda *a: ticks.append(1))
        stop = threading.Event()
        ticker = _signal_main_thread(signal.SIGUSR1, 0.01, stop)
        try:
            t.start()
            with l.accept() as k:
                k.send("ok")
        finally:
            stop.set()
            ticker.join(10)
            signal.signal(signal.SIGUSR1, old)
        t.join(10)
        assert done == ["ok"]
        assert ticks  # the handshake was interrupted and resumed


def test_signal_interrupts_handshake_wait(short_timeout):
    c = short_timeout
    c.CONNECTION_TIMEOUT = 30

    class Stop(Exception):
        pass

    def handler(*a):
        raise Stop

    with c.Listener(authkey=b"key") as l:
        s = socket.socket(socket.AF_UNIX)
        s.connect(l.address)
        old = signal.signal(signal.SIGUSR1, handler)
        stop = threading.Event()
        ticker = _signal_main_thread(signal.SIGUSR1, 0.2, stop)
        start = time.monotonic()
        try:
            with pytest.raises(Stop):
                l.accept()
        finally:
            stop.set()
            ticker.join(10)
            signal.signal(signal.SIGUSR1, old)
        assert time.monotonic() - start < 5
        s.close()


@pytest.mark.parametrize("peer,exc,match", [
    ("garbage", "AuthenticationError", ""),  # 3.11 and 3.12 word it differently
    ("cut_short", OSError, "got end of file during message"),
    ("leaves", EOFError, ""),
    ("oversized", OSError, "bad message length"),
])
def test_bad_peer_raises_as_stdlib_then_next_is_served(conn, peer, exc, match):
    """What accept() raises for a peer that breaks the handshake, same as
    the stdlib's; the listener serves the next client afterwards."""
    if isinstance(exc, str):
        exc = getattr(conn, exc)
    with conn.Listener(authkey=b"key", backlog=4) as l:
        s = socket.socket(socket.AF_UNIX)
        s.connect(l.address)
        s.settimeout(10)

        def misbehave():
            n = struct.unpack("!i", s.recv(4, socket.MSG_WAITALL))[0]
            s.recv(n, socket.MSG_WAITALL)  # the challenge
            if peer == "garbage":
                s.sendall(struct.pack("!i", 5) + b"hello")
                s.recv(64)  # FAILURE
            elif peer == "cut_short":
                s.sendall(struct.pack("!i", 40) + b"{sha")
            elif peer == "oversized":
                s.sendall(struct.pack("!i", 1 << 20))
            s.close()

        st = threading.Thread(target=misbehave, daemon=True)
        st.start()
        with pytest.raises(exc, match=match):
            l.accept()
        st.join(10)
        results = []
        t = _good_client(conn, l.address, b"key", results)
        with l.accept() as k:
            assert k.recv() == "hi"
            k.send("served")
        t.join(10)
        assert results == ["served"]
