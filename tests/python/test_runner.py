"""python3 -m cmultiprocessing runs an unchanged script on cmultiprocessing."""
import os
import subprocess
import sys

import pytest

from conftest import PKG_DIR

SCRIPT = '''
import sys

import pytest
import multiprocessing
import multiprocessing.process

def child(q_fd):
    import os
    os.write(q_fd, multiprocessing.current_process().name.encode())

if __name__ == "__main__":
    import os
    assert multiprocessing.__name__ == "cmultiprocessing", multiprocessing.__name__
    assert multiprocessing.process.Process is multiprocessing.Process
    r, w = os.pipe()
    p = multiprocessing.Process(target=child, args=(w,))
    p.start()
    p.join(10)
    print(os.read(r, 100).decode(), p.exitcode, sys.argv[1:])
'''


def run(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(PKG_DIR))
    return subprocess.run([sys.executable, "-m", "cmultiprocessing", *args],
                          capture_output=True, text=True, timeout=30, env=env,
                          cwd=str(tmp_path))


def test_runs_script_with_multiprocessing_aliased(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(SCRIPT)
    r = run([str(script), "a", "b"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Process-1 0 ['a', 'b']\n"


def test_runs_module(tmp_path):
    (tmp_path / "progmod.py").write_text(SCRIPT)
    env_path = str(tmp_path)
    r = run(["-m", "progmod", "x"], tmp_path)
    assert r.returncode == 0, (r.stderr, env_path)
    assert r.stdout == "Process-1 0 ['x']\n"


def test_usage_and_missing_file(tmp_path):
    r = run([], tmp_path)
    assert r.returncode == 2 and "usage" in r.stderr
    r = run([str(tmp_path / "missing.py")], tmp_path)
    assert r.returncode == 2 and "can't open file" in r.stderr


def test_script_exit_code_propagates(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import sys\nsys.exit(7)\n")
    r = run([str(script)], tmp_path)
    assert r.returncode == 7


POOL_ERROR_SCRIPT = '''
import multiprocessing
import multiprocessing.pool

def fail(x):
    raise ValueError(x)

if __name__ == "__main__":
    with multiprocessing.Pool(1) as pool:
        try:
            pool.apply(fail, (7,))
        except Exception as e:
            cause = e.__cause__
            print(type(e).__name__, e.args, type(cause).__name__,
                  isinstance(cause, multiprocessing.pool.RemoteTraceback), "raise ValueError(x)" in cause.tb)
        print(pool._state == multiprocessing.pool.RUN)
'''


@pytest.mark.parametrize("runner", ["stdlib", "cmultiprocessing"])
def test_pool_task_exception_under_the_runner(runner, tmp_path):
    """A worker's exception arrives as itself, its remote traceback as the
    __cause__: the stdlib's ExceptionWithTraceback pickles as a reference
    to multiprocessing.pool.rebuild_exc, which under the runner is our
    pool module (it was missing: MaybeEncodingError instead)."""
    script = tmp_path / "poolerr.py"
    script.write_text(POOL_ERROR_SCRIPT)
    if runner == "stdlib":
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           timeout=30, cwd=str(tmp_path))
    else:
        r = run([str(script)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ValueError (7,) RemoteTraceback True True\nTrue\n"
