"""python3 -m cmultiprocessing.mpi script.py args...  (under mpiexec)

Rank 0 runs the script as __main__ and, when it ends, stops the other
ranks. Every other rank imports the script as __mp_main__ (its
``if __name__ == "__main__":`` block does not run) so that the functions
it defines unpickle, then serves rank 0's pools until told to stop.
"""
import os
import runpy
import sys
import types


def _usage():
    sys.stderr.write("usage: mpiexec -n H python3 -m cmultiprocessing.mpi script.py [args...]\n")
    sys.exit(2)


def main():
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        _usage()
    from . import _mpi
    if _mpi is None:
        sys.stderr.write("cmultiprocessing.mpi: built without Open MPI; running locally\n")
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
        return
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    rank = _mpi.init()
    if rank == 0:
        try:
            runpy.run_path(script, run_name="__main__")
        finally:
            # the servers stop (their pools terminated) and pass MPI's
            # finalize with us, on an exception or Ctrl-C too
            _mpi.finalize()
        return
    # a server: the script's definitions, as spawn's children import them
    mod = types.ModuleType("__mp_main__")
    mod.__file__ = script
    sys.modules["__mp_main__"] = mod
    sys.modules["__main__"] = mod
    with open(script, "rb") as f:
        code = compile(f.read(), script, "exec")
    exec(code, mod.__dict__)
    try:
        _mpi.serve()
    finally:
        _mpi.finalize()
    # Gone at once, as multiprocessing's children leave: a rank 0 that
    # fails (an exception, Ctrl-C) makes Open MPI kill every rank still
    # there, and none should be (the workers are gone already; the script
    # here only defined things, so the interpreter's teardown is not needed).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
