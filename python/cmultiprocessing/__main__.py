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
SUBMODULES = ("connection", "context", "dummy", "managers", "pool", "process",
              "queues", "resource_tracker", "shared_memory", "sharedctypes", "synchronize")


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
    sys.modules["multiprocessing"] = cmultiprocessing
    for name, module in ours.items():
        sys.modules["multiprocessing." + name] = module


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
