"""The README's quick-starts are real programs: extract and run them."""
import os
import re
import subprocess
import sys

from conftest import plain_build_env

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def snippet(lang, must_contain):
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    for found_lang, code in re.findall(r"```(\w+)\n(.*?)```", text, re.S):
        if found_lang == lang and must_contain in code:
            return code
    raise AssertionError(f"no {lang} snippet with {must_contain!r} in README.md")


def test_python_quick_start(tmp_path):
    script = tmp_path / "quick_start.py"
    script.write_text(snippet("python", "mp.Process"))
    env = dict(os.environ, PYTHONPATH=os.environ.get("CMP_PKG_DIR", os.path.join(ROOT, "python")))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4000"


def test_c_quick_start(tmp_path):
    source = tmp_path / "quick_start.c"
    source.write_text(snippet("c", "cmp_process_start"))
    binary = tmp_path / "quick_start"
    env = plain_build_env()
    subprocess.run(["make", "-s", "-C", ROOT, "lib"], check=True, timeout=120, env=env)
    subprocess.run(["cc", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror",
                    "-I" + os.path.join(ROOT, "include"), str(source),
                    os.path.join(ROOT, "build", "libcmp.a"), "-lpthread", "-lm",
                    "-o", str(binary)], check=True, timeout=60, env=env)
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"child \d+ has the lock\n", result.stdout)
