"""CPython's own Pool tests, run against cmultiprocessing's Pool.

Runs the process-pool tests of CPython's Lib/test/_test_multiprocessing.py
(fork start method) with the standard library everywhere except
multiprocessing.Pool, which is cmultiprocessing's. Needs an interpreter
that ships the `test` package (python3 -m test works), and the extension
built in place (make):

    python3 scripts/cpython-pool-tests.py -k Pool

Arguments go to unittest (-k PATTERN, -v, ...).
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import multiprocessing  # noqa: E402
import multiprocessing.context  # noqa: E402

import cmultiprocessing.pool  # noqa: E402


def Pool(processes=None, initializer=None, initargs=(), maxtasksperchild=None):
    return cmultiprocessing.pool.Pool(processes, initializer, initargs, maxtasksperchild)


# the tests reach the Pool both ways
multiprocessing.Pool = Pool
multiprocessing.context.BaseContext.Pool = lambda self, *args, **kwds: Pool(*args, **kwds)

import test._test_multiprocessing as suite  # noqa: E402

suite.install_tests_in_module_dict(globals(), "fork", only_type="processes")

if __name__ == "__main__":
    unittest.main()
