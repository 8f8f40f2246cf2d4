"""multiprocessing.process: Process and process introspection (re-exports)."""
from ._cmp import (Process as BaseProcess, Process,  # noqa: F401
                   _AuthenticationString as AuthenticationString,
                   active_children, current_process, parent_process)

__all__ = ["BaseProcess", "Process", "current_process", "active_children",
           "parent_process"]
