"""multiprocessing.reduction: ForkingPickler, send_handle/recv_handle, DupFd.

ForkingPickler is the standard library's class (its dumps()/loads() are
called by programs directly, never by our transports per message). Its
register() fills the registry that our queues and connections consult too
(the package hands ForkingPickler._extra_reducers to the C extension's
pickler, which looks there after its own reducers for Connection and
socket, before copyreg's), so a type registered here or through the
stdlib's module travels through cmultiprocessing.Queue and
Connection.send as it does through the stdlib's. Our Connection is
registered there as well, so ForkingPickler.dumps() of one works (redeemed once, by one
receiver, while the sender lives). send_handle()/recv_handle() pass an fd
over a Connection made by Pipe() (a Unix socket), DupFd() over the stdlib's
resource sharer.
"""
from multiprocessing.reduction import (  # noqa: F401
    ACKNOWLEDGE, HAVE_SEND_HANDLE, AbstractReducer, DupFd, ForkingPickler, dump,
    recv_handle, recvfds, register, send_handle, sendfds)
# the stdlib's own registrations (partial, methods) pickle a reference to
# these by this module's name: under `python3 -m cmultiprocessing` that is us
from multiprocessing.reduction import (  # noqa: F401
    _rebuild_partial, _rebuild_socket, _reduce_method, _reduce_method_descriptor,
    _reduce_partial, _reduce_socket)

__all__ = ["send_handle", "recv_handle", "ForkingPickler", "register", "dump",
           "DupFd", "sendfds", "recvfds"]
