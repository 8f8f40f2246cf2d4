"""make install lays out the library, the header and cmp.pc so that a C
program builds with pkg-config against it, statically or shared."""
import os
import shutil
import subprocess

import pytest
from conftest import plain_build_env

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROGRAM = r"""
#include <cmp.h>
#include <stdio.h>
int main(void)
{
    cmp_shared_t *block;
    if (cmp_shared_alloc(sizeof(cmp_lock_t), &block) < 0)
        return 1;
    cmp_lock_t *lock = cmp_shared_ptr(block);
    cmp_lock_init(lock);
    int rc = cmp_lock_acquire(lock, NULL);
    printf("%s\n", cmp_strerror(rc));
    cmp_lock_release(lock);
    cmp_shared_release(block);
    return rc;
}
"""


@pytest.mark.skipif(shutil.which("pkg-config") is None, reason="pkg-config not installed")
@pytest.mark.parametrize("linkage", ["shared", "static"])
def test_install_and_build_with_pkg_config(tmp_path, linkage):
    env = plain_build_env()
    dest = tmp_path / "root"
    subprocess.run(["make", "-s", "-C", ROOT, "install", f"DESTDIR={dest}", "PREFIX=/usr/local"],
                   check=True, timeout=120, env=env, stdout=subprocess.DEVNULL)
    libdir = dest / "usr/local/lib"
    for name in ("libcmp.a", "libcmp.so", "libcmp.so.0", "pkgconfig/cmp.pc"):
        assert (libdir / name).exists(), name
    assert (dest / "usr/local/include/cmp.h").exists()
    env.update(PKG_CONFIG_PATH=str(libdir / "pkgconfig"), PKG_CONFIG_SYSROOT_DIR=str(dest))
    flags = ["--cflags", "--libs"] + (["--static"] if linkage == "static" else [])
    pc = subprocess.run(["pkg-config", *flags, "cmp"], check=True, capture_output=True,
                        text=True, env=env).stdout.split()
    source = tmp_path / "prog.c"
    source.write_text(PROGRAM)
    binary = tmp_path / "prog"
    if linkage == "static":  # prefer the archive over the shared object
        pc = [f if f != "-lcmp" else str(libdir / "libcmp.a") for f in pc]
    subprocess.run(["cc", "-std=c11", str(source), *pc, "-o", str(binary)], check=True,
                   timeout=60, env=env)
    env["LD_LIBRARY_PATH"] = str(libdir)
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "success\n"
