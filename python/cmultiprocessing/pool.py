"""multiprocessing.pool: Pool and its results (re-exports).

Pool, ApplyResult (AsyncResult), MapResult, WorkerLostError and
InitializerError are implemented in the C extension. ThreadPool and the
exception classes that carry a task's error across processes
(MaybeEncodingError, RemoteTraceback) are the standard library's own, so
that except clauses and isinstance checks written against either module
work with both.
"""
from multiprocessing.pool import (  # noqa: F401
    ExceptionWithTraceback, MaybeEncodingError, RemoteTraceback, ThreadPool)

from ._cmp import (  # noqa: F401
    ApplyResult, AsyncResult, IMapIterator, IMapUnorderedIterator, InitializerError,
    MapResult, TimeoutError, WorkerLostError)
from ._cmp import _Pool as Pool

__all__ = ["Pool", "ThreadPool"]
