"""python3 -m cmultiprocessing script.py [args...]

Runs an unchanged script with ``import multiprocessing`` (and its public
submodules) resolving to cmultiprocessing.
"""
import os
import runpy
import sys

USAGE = "usage: python3 -m cmultiprocessing script.py [args...]\n" \
        "       python3 -m cmultiprocessing -m module [args...]"

# Public submodules that programs import as multiprocessing.<name>.
SUBMODULES = ("connection", "context", "dummy", "heap", "managers", "pool", "process",
              "queues", "reduction", "resource_tracker", "shared_memory", "sharedctypes",
              "synchronize", "util")


def alias_multiprocessing():
    import importlib
    import cmultiprocessing
    # Ours are all imported before any alias is in place: those that
    # re-export or build on a stdlib module (pool, dummy) must get the
    # stdlib's under its own name, not one of ours.
    ours = {}
    for name in SUBMODULES:
        try:
            ours[name] = importlib.import_module("cmultiprocessing." + name)
        except ImportError:
            continue  # not implemented yet: the stdlib's is not mixed in
    global _stdlib_modules
    _stdlib_modules = {k: m for k, m in sys.modules.items()
                       if k == "multiprocessing" or k.startswith("multiprocessing.")}
    sys.modules["multiprocessing"] = cmultiprocessing
    for name, module in ours.items():
        sys.modules["multiprocessing." + name] = module
    sys.meta_path.insert(0, _OnStdlibFinder())


# Libraries built on the stdlib's implementation itself, not only its API:
# loky (joblib's default backend) subclasses the stdlib's pipe-based Queue
# and SimpleQueue and drives their internals (the pipe ends' send_bytes,
# _rlock/_wlock, the feeder thread's _feed, their pickled state), which our
# shared-memory queues do not have. They are imported on the stdlib's
# modules, which they then use, as they do without this runner.
ON_STDLIB = ("loky", "joblib.externals.loky")
_stdlib_modules = {}


class _OnStdlibFinder:
    """Imports the packages of ON_STDLIB and their submodules with
    `multiprocessing` resolving to the stdlib's while their modules run."""

    def find_spec(self, name, path=None, target=None):
        if not any(name == p or name.startswith(p + ".") for p in ON_STDLIB):
            return None
        import importlib.util
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _OnStdlibLoader(spec.loader)
        return spec


class _OnStdlibLoader:
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        ours = {k: sys.modules[k] for k in _stdlib_modules if k in sys.modules}
        sys.modules.update(_stdlib_modules)
        try:
            self.loader.exec_module(module)
        finally:
            sys.modules.update(ours)


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    alias_multiprocessing()
    if argv[0] == "-m":
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    script = argv[0]
    if not os.path.exists(script):
        print(f"cmultiprocessing: can't open file {script!r}", file=sys.stderr)
        return 2
    sys.argv = argv[:]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
