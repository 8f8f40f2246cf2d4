"""Listener and Client (stdlib vs cmultiprocessing), authentication, and
wire interoperability in both directions with the stdlib's
multiprocessing.connection (objects and bytes, with and without authkey,
AF_UNIX and AF_INET on 127.0.0.1)."""
import importlib
import os
import threading

import pytest

from _sync_helpers import fork, join


def connmod(name):
    return importlib.import_module(name + ".connection")


@pytest.fixture
def conn(mp):
    import multiprocessing.context
    if isinstance(mp, multiprocessing.context.BaseContext):
        return connmod("multiprocessing")
    return connmod("cmultiprocessing")


def _serve(listener, n=1):
    """Accepts n connections in a thread; each echoes objects and bytes."""
    errors = []

    def run():
        try:
            for _ in range(n):
                with listener.accept() as c:
                    obj = c.recv()
                    c.send(("echo", obj))
                    c.send_bytes(c.recv_bytes()[::-1])
        except Exception as e:  # reported to the test
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errors


def _talk(c):
    c.send({"n": 1, "s": "é"})
    assert c.recv() == ("echo", {"n": 1, "s": "é"})
    big = os.urandom(3 << 20)
    c.send_bytes(big)
    assert c.recv_bytes() == big[::-1]


@pytest.mark.parametrize("family", ["AF_UNIX", "AF_INET"])
@pytest.mark.parametrize("authkey", [None, b"secret"])
def test_listener_client_round_trip(conn, family, authkey):
    address = ("127.0.0.1", 0) if family == "AF_INET" else None
    with conn.Listener(address, family=family, authkey=authkey) as l:
        t, errors = _serve(l)
        with conn.Client(l.address, authkey=authkey) as c:
            _talk(c)
        t.join(10)
        assert not errors
        if family == "AF_INET":
            host, port = l.address
            assert host == "127.0.0.1" and port > 0
            assert l.last_accepted[0] == "127.0.0.1"
        else:
            assert isinstance(l.address, str) and os.path.exists(l.address)
        path = l.address
    if family == "AF_UNIX":
        assert not os.path.exists(path)  # close() unlinks the socket


@pytest.mark.parametrize("server,client", [("cmultiprocessing", "multiprocessing"),
                                           ("multiprocessing", "cmultiprocessing")])
@pytest.mark.parametrize("family", ["AF_UNIX", "AF_INET"])
@pytest.mark.parametrize("authkey", [None, b"k" * 32])
def test_interop_with_stdlib(server, client, family, authkey):
    srv, cli = connmod(server), connmod(client)
    address = ("127.0.0.1", 0) if family == "AF_INET" else None
    with srv.Listener(address, family=family, authkey=authkey) as l:
        t, errors = _serve(l)
        with cli.Client(l.address, authkey=authkey) as c:
            _talk(c)
        t.join(10)
        assert not errors


@pytest.mark.parametrize("server,client", [("cmultiprocessing", "multiprocessing"),
                                           ("multiprocessing", "cmultiprocessing"),
                                           ("cmultiprocessing", "cmultiprocessing")])
def test_wrong_authkey(server, client):
    srv, cli = connmod(server), connmod(client)
    import multiprocessing
    import cmultiprocessing
    server_errors = (multiprocessing.AuthenticationError, cmultiprocessing.AuthenticationError,
                     EOFError, OSError)
    with srv.Listener(("127.0.0.1", 0), authkey=b"right") as l:
        errors = []

        def run():
            try:
                l.accept()
            except server_errors as e:
                errors.append(e)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        with pytest.raises(cli.AuthenticationError, match="digest sent was rejected"):
            cli.Client(l.address, authkey=b"wrong")
        t.join(10)
        assert errors and isinstance(errors[0], srv.AuthenticationError)
        assert "digest received was wrong" in str(errors[0])


def test_client_without_key_to_keyed_listener(conn):
    """A client that does not authenticate reads the challenge as a
    message; the listener then fails on its answer."""
    with conn.Listener(("127.0.0.1", 0), authkey=b"x") as l:
        errors = []
        t = threading.Thread(target=lambda: errors.append(_accept_err(l)), daemon=True)
        t.start()
        with conn.Client(l.address) as c:
            first = c.recv_bytes()
            assert first.startswith(b"#CHALLENGE#")
            c.send_bytes(b"nonsense-answer-of-odd-length")
            assert c.recv_bytes() == b"#FAILURE#"
        t.join(10)
        assert isinstance(errors[0], conn.AuthenticationError)


def _accept_err(l):
    try:
        l.accept()
    except Exception as e:
        return e
    return None


def test_handshake_functions_on_pipes(mp, conn):
    """deliver_challenge/answer_challenge work on any connection."""
    a, b = mp.Pipe()
    pid = fork(lambda: conn.answer_challenge(b, b"key") or 0)
    conn.deliver_challenge(a, b"key")
    assert join(pid) == 0
    with pytest.raises(ValueError, match="Authkey must be bytes"):
        conn.deliver_challenge(a, "key")
    with pytest.raises(ValueError, match="Authkey must be bytes"):
        conn.answer_challenge(a, "key")


def test_authkey_type_and_family_errors(conn):
    with pytest.raises(TypeError, match="authkey should be a byte string"):
        conn.Listener(("127.0.0.1", 0), authkey="str")
    with pytest.raises(ValueError):
        conn.Listener(family="AF_PIPE")
    with pytest.raises(TypeError, match="unrecognized"):
        conn.Client(12345)
    with pytest.raises(ValueError, match="unrecognized"):
        conn.Client(b"no-leading-nul")


def test_arbitrary_address(conn):
    assert conn.arbitrary_address("AF_INET") == ("localhost", 0)
    a, b = conn.arbitrary_address("AF_UNIX"), conn.arbitrary_address("AF_UNIX")
    assert isinstance(a, str) and a != b and not os.path.exists(a)


def test_abstract_unix_address(conn):
    name = "\0cmp-test-%d" % os.getpid()
    with conn.Listener(name) as l:
        t, errors = _serve(l)
        with conn.Client(l.address) as c:
            _talk(c)
        t.join(10)
        assert not errors
        assert l.address == name.encode()


def test_accept_after_close_and_refused(conn):
    l = conn.Listener(("127.0.0.1", 0))
    address = l.address
    l.close()
    l.close()
    with pytest.raises(OSError, match="listener is closed"):
        l.accept()
    with pytest.raises(ConnectionRefusedError):
        conn.Client(address)
    with pytest.raises(FileNotFoundError):
        conn.Client("/nonexistent-dir-cmp/sock")


def test_listener_in_parent_client_in_child(mp, conn):
    with conn.Listener(authkey=b"pk") as l:
        def child():
            with conn.Client(l.address, authkey=b"pk") as c:
                c.send(os.getpid())
                return 0 if c.recv() == "thanks" else 1
        pid = fork(child)
        with l.accept() as c:
            assert c.recv() == pid
            c.send("thanks")
        assert join(pid) == 0


class _ScriptedConnection:
    """Answers recv_bytes() from a script; what is sent is kept."""

    def __init__(self, *replies):
        self.replies, self.sent = list(replies), []

    def recv_bytes(self, maxlength=None):
        return self.replies.pop(0) if self.replies else b""

    def send_bytes(self, data):
        self.sent.append(bytes(data))


def test_handshake_message_names(mp, conn):
    """The handshake's messages by their 3.11 names: a peer whose challenge
    starts with CHALLENGE and that then replies neither WELCOME nor
    FAILURE fails the handshake with AuthenticationError."""
    assert (conn.CHALLENGE, conn.WELCOME, conn.FAILURE) == (
        b"#CHALLENGE#", b"#WELCOME#", b"#FAILURE#")
    fake = _ScriptedConnection(conn.CHALLENGE + b"x" * 20, b"something bogus")
    with pytest.raises(mp.AuthenticationError):
        conn.answer_challenge(fake, b"abc")
    assert len(fake.sent) == 1  # the answer went out before the bogus reply
