"""multiprocessing.heap: the stdlib's (BufferWrapper, Heap, Arena).

Our sharedctypes allocate in the C extension's shared blocks and do not
use it; programs that build their own shared buffers on BufferWrapper get
the stdlib's, which works across our forks (its arenas are shared mappings
inherited by the child).
"""
from multiprocessing.heap import Arena, BufferWrapper, Heap  # noqa: F401
# what a pickled Arena names (the stdlib registers reduce_arena for spawn):
# under python3 -m cmultiprocessing, multiprocessing.heap is this module
from multiprocessing.heap import rebuild_arena, reduce_arena  # noqa: F401

__all__ = ["BufferWrapper"]
