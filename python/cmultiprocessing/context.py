"""multiprocessing.context: contexts and the package's exceptions (re-exports)."""
from ._cmp import (AuthenticationError, BaseContext, BufferTooShort,  # noqa: F401
                   DefaultContext, ForkContext, ProcessError, TimeoutError,
                   _ForkProcess as ForkProcess, Process)

__all__ = ["BaseContext", "DefaultContext", "ForkContext", "ForkProcess",
           "ProcessError", "BufferTooShort", "TimeoutError", "AuthenticationError"]
