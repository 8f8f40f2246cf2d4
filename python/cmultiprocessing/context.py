"""multiprocessing.context: the context classes, get_context() and the
package's exceptions (re-exports of the C extension).

SpawnContext and ForkServerContext, with their Process classes, are the
extension's once it builds those start methods; until then the names are
importable (isinstance checks and subclassing work) and get_context()
tells which methods it has (get_all_start_methods()).
"""
from . import _cmp
from ._cmp import (AuthenticationError, BaseContext, BufferTooShort,  # noqa: F401
                   DefaultContext, ForkContext, ProcessError, TimeoutError,
                   _ForkProcess as ForkProcess, Process)
from . import process, reduction  # noqa: F401  (the stdlib's module has both)

__all__ = ["BaseContext", "DefaultContext", "ForkContext", "ForkProcess",
           "SpawnContext", "SpawnProcess", "ForkServerContext", "ForkServerProcess",
           "ProcessError", "BufferTooShort", "TimeoutError", "AuthenticationError",
           "get_spawning_popen", "set_spawning_popen", "assert_spawning"]

# the default context, whose bound methods the package exports
_default_context = _cmp.get_context.__self__


def _named(name, fallback):
    return getattr(_cmp, name, None) or fallback


class _UnbuiltContext(BaseContext):
    """A start method this build does not have yet: never instantiated
    (get_context(name) raises ValueError for it)."""


class _UnbuiltProcess(Process):
    _start_method = None

    def start(self):
        raise ValueError(f"start method {self._start_method!r} is not available "
                         f"(get_all_start_methods(): {_cmp.get_all_start_methods()})")


SpawnContext = _named("SpawnContext", type("SpawnContext", (_UnbuiltContext,), {"_name": "spawn"}))
ForkServerContext = _named("ForkServerContext",
                           type("ForkServerContext", (_UnbuiltContext,), {"_name": "forkserver"}))
SpawnProcess = _named("_SpawnProcess",
                      type("SpawnProcess", (_UnbuiltProcess,), {"_start_method": "spawn"}))
ForkServerProcess = _named("_ForkServerProcess",
                           type("ForkServerProcess", (_UnbuiltProcess,),
                                {"_start_method": "forkserver"}))


# name -> context, as the stdlib's module has it (libraries such as loky add
# theirs here; get_context() of the package knows the built-in ones)
_concrete_contexts = {m: _cmp.get_context(m) for m in _cmp.get_all_start_methods()}


def get_context(method=None):
    return _default_context.get_context(method)


def get_spawning_popen():
    """The process being spawned, while its arguments are pickled: None
    with fork (the stdlib's, for its spawn and forkserver)."""
    return getattr(_cmp, "_get_spawning_popen", lambda: None)()


def set_spawning_popen(popen):
    setter = getattr(_cmp, "_set_spawning_popen", None)
    if setter is not None:
        setter(popen)


def assert_spawning(obj):
    """Raises RuntimeError unless a process is being spawned, as the
    stdlib's: for objects that travel only to new processes."""
    if get_spawning_popen() is None:
        raise RuntimeError(f"{type(obj).__name__} objects should only be shared between "
                           "processes through inheritance")
