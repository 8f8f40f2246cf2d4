"""multiprocessing.context: contexts and the package's exceptions (re-exports)."""
from ._cmp import (AuthenticationError, BaseContext, BufferTooShort,  # noqa: F401
                   DefaultContext, ForkContext, ForkServerContext, ProcessError,
                   SpawnContext, TimeoutError, _ForkProcess as ForkProcess,
                   _ForkServerProcess as ForkServerProcess, _SpawnProcess as SpawnProcess,
                   Process)

__all__ = ["BaseContext", "DefaultContext", "ForkContext", "ForkProcess",
           "SpawnContext", "SpawnProcess", "ForkServerContext", "ForkServerProcess",
           "ProcessError", "BufferTooShort", "TimeoutError", "AuthenticationError"]
