"""multiprocessing.context: the context classes, get_context() and the
package's exceptions (re-exports of the C extension).

The context classes of the three start methods (fork, spawn, forkserver)
and their Process classes are the extension's.
"""
import threading

from . import _cmp
from ._cmp import (AuthenticationError, BaseContext, BufferTooShort,  # noqa: F401
                   DefaultContext, ForkContext, ForkServerContext, ProcessError,
                   SpawnContext, TimeoutError, _ForkProcess as ForkProcess,
                   _ForkServerProcess as ForkServerProcess, _SpawnProcess as SpawnProcess,
                   Process)
from . import process, reduction  # noqa: F401  (the stdlib's module has both)

__all__ = ["BaseContext", "DefaultContext", "ForkContext", "ForkProcess",
           "SpawnContext", "SpawnProcess", "ForkServerContext", "ForkServerProcess",
           "ProcessError", "BufferTooShort", "TimeoutError", "AuthenticationError",
           "get_spawning_popen", "set_spawning_popen", "assert_spawning"]

# the default context, whose bound methods the package exports
_default_context = _cmp.get_context.__self__


# name -> context, as the stdlib's module has it (libraries such as loky add
# theirs here; get_context() of the package knows the built-in ones)
_concrete_contexts = {m: _cmp.get_context(m) for m in _cmp.get_all_start_methods()}


def get_context(method=None):
    return _default_context.get_context(method)


# The process being spawned while its pickle is made, per thread, here and
# in the stdlib's module: the stdlib's own objects (a stdlib Queue built on
# our context, as concurrent.futures' _SafeQueue is) ask that one.
_tls = threading.local()
_stdlib_context = _cmp._stdlib_context


def get_spawning_popen():
    """The process being spawned, while its arguments are pickled (an object
    with duplicate_for_child(fd) and DupFd(fd), as the stdlib's); None
    otherwise, and always with fork. One the stdlib's set_spawning_popen()
    set counts too (a library on the stdlib's spawn machinery, loky, pickles
    the stdlib's objects, whose reductions may find this module under
    `python3 -m cmultiprocessing`)."""
    popen = getattr(_tls, "spawning_popen", None)
    return popen if popen is not None else _stdlib_context.get_spawning_popen()


def set_spawning_popen(popen):
    _tls.spawning_popen = popen
    _stdlib_context.set_spawning_popen(popen)


def assert_spawning(obj):
    """Raises RuntimeError unless a process is being spawned, as the
    stdlib's: for objects that travel only to new processes."""
    if get_spawning_popen() is None and not _cmp._spawning():
        raise RuntimeError(f"{type(obj).__name__} objects should only be shared between "
                           "processes through inheritance")
