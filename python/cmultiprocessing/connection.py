"""multiprocessing.connection: Pipe, Connection, wait, Listener, Client and
the authentication handshake (re-exports of the C extension)."""
from ._cmp import (AuthenticationError, BufferTooShort, Pipe,  # noqa: F401
                   _Client as Client, _Connection as Connection, _Listener as Listener,
                   _address_type as address_type, _answer_challenge as answer_challenge,
                   _arbitrary_address as arbitrary_address,
                   _deliver_challenge as deliver_challenge, _wait as wait)

from ._cmp import _rebuild_connection as rebuild_connection  # noqa: F401
from ._cmp import _reduce_connection as reduce_connection  # noqa: F401
from multiprocessing.connection import ConnectionWrapper  # noqa: F401

__all__ = ["Client", "Listener", "Pipe", "wait"]

# The length of the handshake's random challenge (3.11's name).
MESSAGE_LENGTH = 20

_ConnectionBase = Connection

BUFSIZE = 8192
# Seconds an authenticating Listener.accept() gives its peer to finish the
# handshake (read at each accept(); None waits without limit, as the stdlib
# always does). A peer too slow is closed and accept() raises
# AuthenticationError, as for a wrong key.
CONNECTION_TIMEOUT = 20.0
default_family = "AF_UNIX"
families = ["AF_INET", "AF_UNIX"]

# The handshake's messages, under the names the stdlib 3.11 has them (3.12
# made them private): code that speaks or fakes the handshake uses them.
CHALLENGE = b"#CHALLENGE#"
WELCOME = b"#WELCOME#"
FAILURE = b"#FAILURE#"


def SocketClient(address):
    """A Connection to the listener at address, with no handshake (the
    stdlib's helper of the same name)."""
    return Client(address)


# ---- connections that carry XML-RPC marshalled values -----------------------
# (for peers that must not unpickle; the stdlib's XmlListener/XmlClient)

def _xml_dumps(obj):
    import xmlrpc.client
    return xmlrpc.client.dumps((obj,), None, None, None, 1).encode("utf-8")


def _xml_loads(data):
    import xmlrpc.client
    (obj,), _method = xmlrpc.client.loads(data.decode("utf-8"))
    return obj


class XmlListener(Listener):
    """A Listener whose accepted connections send and receive XML-RPC
    values instead of pickles."""

    def accept(self):
        return ConnectionWrapper(Listener.accept(self), _xml_dumps, _xml_loads)


def XmlClient(*args, **kwds):
    """Client() for an XmlListener."""
    return ConnectionWrapper(Client(*args, **kwds), _xml_dumps, _xml_loads)
