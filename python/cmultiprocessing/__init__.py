"""cmultiprocessing: Python's multiprocessing, implemented in C.

    import cmultiprocessing as multiprocessing

Every name is implemented in the C extension ``_cmp`` (on top of libcmp);
this file only re-exports them.
"""
from . import _cmp
from ._cmp import *  # noqa: F401,F403  (the public names of the extension)

__version__ = "0.1.0"
__all__ = [name for name in dir(_cmp) if not name.startswith("_")]
