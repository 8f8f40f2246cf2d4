"""multiprocessing.queues: Queue, SimpleQueue and JoinableQueue (re-exports),
and the names the stdlib's module also has (queue.Empty/Full, the
_sentinel that its feeder thread stops on)."""
from queue import Empty, Full  # noqa: F401

from ._cmp import JoinableQueue, Queue, SimpleQueue  # noqa: F401

__all__ = ["Queue", "SimpleQueue", "JoinableQueue"]

_sentinel = object()
