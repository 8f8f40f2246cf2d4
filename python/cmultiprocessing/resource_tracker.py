"""multiprocessing.resource_tracker, on libcmp's tracker (src/tracker.c).

The names and calls of the standard library's module (``register``,
``unregister``, ``ensure_running``, ``getfd``) with its purpose: the named
resources a program registers ("shared_memory", "semaphore") are removed
once the whole program is dead. How it differs, beyond the standard
library:

- The registry is not held in a tracker process's memory but in
  ``/dev/shm/.cmp-tracker-<uid>/`` (one directory per program, written
  before ``register`` returns), and the program's liveness is an ``flock``
  that every one of its processes holds through an inherited descriptor.
  So nothing is lost when the whole program, its watcher included, is
  killed with SIGKILL: the next program that registers a resource (or
  calls ``sweep()``) removes what the dead one left.
- A watcher process still removes leftovers the moment the program ends
  and warns about them, as the standard library's tracker does.
- A resource that another living process still maps or holds open is
  never removed, and no "leaked" warning is printed for it: it stays
  listed until a later sweep finds it unused.
"""
import warnings

from . import _cmp

__all__ = ['ensure_running', 'register', 'unregister']

# What each resource type is removed with, as the standard library's table
# (the tracker itself unlinks the files in C).
_CLEANUP_FUNCS = {'noop': lambda: None}
try:
    import _posixshmem
    _CLEANUP_FUNCS['shared_memory'] = _posixshmem.shm_unlink
    import _multiprocessing
    if hasattr(_multiprocessing, 'sem_unlink'):
        _CLEANUP_FUNCS['semaphore'] = _multiprocessing.sem_unlink
except ImportError:  # pragma: no cover
    pass


class ResourceTracker(object):
    """The tracker of this program. ``_fd`` is the registry's descriptor:
    an exec'd child that is given it (``pass_fds``) joins the program by
    setting it, as the standard library's spawn does with its tracker fd."""

    def ensure_running(self):
        """Creates the program's registry and its watcher, once; starts a
        new watcher if the one this process started died."""
        if _cmp._tracker_start() == 1:
            warnings.warn('resource_tracker: process died unexpectedly, relaunching.  '
                          'Nothing registered is lost: the registry outlives it.')

    def getfd(self):
        self.ensure_running()
        return self._fd

    def register(self, name, rtype):
        """Lists the resource: it is removed once the program is dead."""
        _check_length(name, rtype)
        _cmp._tracker_register(name, rtype)

    def unregister(self, name, rtype):
        """Forgets the resource (its owner removed it)."""
        _check_length(name, rtype)
        _cmp._tracker_unregister(name, rtype)

    @property
    def _fd(self):
        fd = _cmp._tracker_fd()
        return None if fd < 0 else fd

    @_fd.setter
    def _fd(self, fd):
        if fd is not None:
            _cmp._tracker_adopt(fd)

    @property
    def _pid(self):
        return _cmp._tracker_watcher_pid() or None

    def _check_alive(self):
        """Whether the watcher runs (True where another process of the
        program started it: it is not ours to see)."""
        return _cmp._tracker_watcher_alive()

    def _stop(self):
        """Nothing to stop: the watcher ends with the program."""


def _check_length(name, rtype):
    # the standard library's limit: its message must fit an atomic pipe
    # write; ours has none, but a longer name is no name shm_open takes
    if len('UNREGISTER:{0}:{1}\n'.format(name, rtype).encode('ascii')) > 512:
        raise ValueError('msg too long')


_resource_tracker = ResourceTracker()
ensure_running = _resource_tracker.ensure_running
register = _resource_tracker.register
unregister = _resource_tracker.unregister
getfd = _resource_tracker.getfd


def sweep():
    """Removes what dead programs registered and no living process uses
    (beyond the standard library); returns how many resources it removed.
    Runs by itself at each program's first registration, and as
    ``python3 -m cmultiprocessing.resource_tracker`` (at boot, or from cron,
    where no later program may come to do it)."""
    return _cmp._tracker_sweep()


if __name__ == '__main__':
    # python3 -m cmultiprocessing.resource_tracker: one sweep now (say at
    # boot, or from cron, where no later program may come to do it)
    print('removed %d leftover resource(s) of dead programs' % sweep())
