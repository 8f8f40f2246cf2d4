"""Run by test_mpi.py: a task's exception and a killed worker, on the
ranks; prints one JSON line."""
import json
import os
import signal
import traceback

import cmultiprocessing.mpi as mpi


def boom(x):
    raise KeyError("bad key %d" % x)


def suicide(x):
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def square(x):
    return x * x


def bad_init():
    raise OSError("no GPU here")


class Unpicklable:
    def __reduce__(self):
        raise TypeError("nope")


def bad_result(x):
    return Unpicklable()


def _outcome(call):
    try:
        call()
        return "no error"
    except Exception as e:
        return [type(e).__name__, repr(e.__cause__)]


def main():
    out = {}
    with mpi.Pool() as p:
        try:
            p.apply(boom, (7,))
        except KeyError as e:
            out["exc"] = [type(e).__name__, str(e), getattr(e, "__notes__", []),
                          type(e.__cause__).__name__,
                          "boom" in str(e.__cause__), "".join(traceback.format_exception(e))]
        try:
            p.map(suicide, range(6), chunksize=1)
            out["lost"] = "no error"
        except mpi.WorkerLostError as e:
            out["lost"] = str(e)
        out["lost_imap"] = []
        it = p.imap(suicide, range(6))
        for _ in range(6):
            try:
                out["lost_imap"].append(it.next(timeout=20))
            except mpi.WorkerLostError:
                out["lost_imap"].append("lost")
        out["after"] = p.map(square, range(10))
        out["replaced"] = len(p._pool) == p._processes  # the killed worker's successor
        out["bad_result"] = _outcome(lambda: p.apply(bad_result, (1,)))
    with mpi.Pool(initializer=bad_init) as p:
        out["init_map"] = _outcome(lambda: p.map(square, range(10)))
        out["init_apply"] = _outcome(lambda: p.apply(square, (2,)))
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
