"""multiprocessing.sharedctypes: ctypes objects in shared memory (re-exports)."""
from ._cmp import (Array, RawArray, RawValue, Synchronized,  # noqa: F401
                   SynchronizedArray, SynchronizedBase, SynchronizedString,
                   Value, copy, synchronized)

__all__ = ["RawValue", "RawArray", "Value", "Array", "copy", "synchronized"]
