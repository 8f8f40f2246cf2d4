"""Builds the _cmp extension with libcmp compiled in (pip install . works
offline with --no-build-isolation)."""
import glob

from setuptools import Extension, setup

setup(
    packages=["cmultiprocessing"],
    package_dir={"": "python"},
    ext_modules=[
        Extension(
            "cmultiprocessing._cmp",
            sources=sorted(glob.glob("src/*.c")) +
            sorted(glob.glob("python/cmultiprocessing/_cmp/*.c")),
            include_dirs=["include", "src"],
            define_macros=[("_GNU_SOURCE", "1")],
            extra_compile_args=["-std=c11", "-O2"],
            libraries=["pthread", "m"],
        )
    ],
)
