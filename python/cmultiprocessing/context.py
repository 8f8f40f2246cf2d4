"""multiprocessing.context: contexts and the package's exceptions (re-exports)."""
from ._cmp import (AuthenticationError, BaseContext, BufferTooShort,  # noqa: F401
                   ForkContext, ProcessError, TimeoutError)

__all__ = ["BaseContext", "ForkContext", "ProcessError", "BufferTooShort",
           "TimeoutError", "AuthenticationError"]
