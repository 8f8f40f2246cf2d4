"""In-tree PEP 517 backend: builds the cmultiprocessing wheel with nothing
but the setuptools that ships with the interpreter.

Why not setuptools.build_meta: before setuptools 70 it needs the separate
`wheel` package to make a wheel, which an offline machine may not have.
Here setuptools only compiles the extension (libcmp's sources compiled in);
this file lays out the wheel itself (PEP 427).
"""
import base64
import csv
import glob
import hashlib
import io
import os
import shutil
import sys
import sysconfig
import tarfile
import tempfile
import zipfile

NAME = "cmultiprocessing"
VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUMMARY = "Python's multiprocessing, implemented in C"


def _metadata():
    return (f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\n"
            f"Summary: {SUMMARY}\nLicense: MIT\nRequires-Python: >=3.9\n")


def _tag():
    impl = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return f"{impl}-{impl}{sys.abiflags}-{platform}"


def _compile_extension(build_lib):
    from setuptools import Distribution, Extension
    extension = Extension(
        f"{NAME}._cmp",
        sources=sorted(glob.glob(os.path.join(ROOT, "src", "*.c"))) +
        sorted(glob.glob(os.path.join(ROOT, "python", NAME, "_cmp", "*.c"))),
        include_dirs=[os.path.join(ROOT, "include"), os.path.join(ROOT, "src")],
        define_macros=[("_GNU_SOURCE", "1")],
        # only PyInit__cmp is exported: direct calls into libcmp (see Makefile)
        extra_compile_args=["-std=c11", "-O2", "-fvisibility=hidden"],
        libraries=["pthread", "m"],
    )
    dist = Distribution({"name": NAME, "ext_modules": [extension]})
    command = dist.get_command_obj("build_ext")
    command.build_lib = build_lib
    command.build_temp = os.path.join(build_lib, ".temp")
    command.ensure_finalized()
    command.run()
    shutil.rmtree(command.build_temp, ignore_errors=True)


def _copy_python_sources(build_lib):
    source = os.path.join(ROOT, "python", NAME)
    for path in glob.glob(os.path.join(source, "**", "*.py"), recursive=True):
        target = os.path.join(build_lib, NAME, os.path.relpath(path, source))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(path, target)


def _record_hash(data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    wheel_name = f"{NAME}-{VERSION}-{_tag()}.whl"
    dist_info = f"{NAME}-{VERSION}.dist-info"
    with tempfile.TemporaryDirectory() as build_lib:
        _compile_extension(build_lib)
        _copy_python_sources(build_lib)
        files = {}
        for path in sorted(glob.glob(os.path.join(build_lib, NAME, "**", "*"), recursive=True)):
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    files[os.path.relpath(path, build_lib)] = f.read()
        files[f"{dist_info}/METADATA"] = _metadata().encode()
        files[f"{dist_info}/WHEEL"] = (
            f"Wheel-Version: 1.0\nGenerator: cmp_build\nRoot-Is-Purelib: false\n"
            f"Tag: {_tag()}\n").encode()
        with open(os.path.join(ROOT, "LICENSE"), "rb") as f:
            files[f"{dist_info}/LICENSE"] = f.read()
        record = io.StringIO()
        writer = csv.writer(record, lineterminator="\n")
        for name, data in files.items():
            writer.writerow([name, _record_hash(data), len(data)])
        writer.writerow([f"{dist_info}/RECORD", "", ""])
        files[f"{dist_info}/RECORD"] = record.getvalue().encode()
        with zipfile.ZipFile(os.path.join(wheel_directory, wheel_name), "w",
                             zipfile.ZIP_DEFLATED) as wheel:
            for name, data in files.items():
                wheel.writestr(name, data)
    return wheel_name


def build_sdist(sdist_directory, config_settings=None):
    base = f"{NAME}-{VERSION}"
    name = f"{base}.tar.gz"
    keep = ("include", "src", "python", "build_backend", "tests", "examples", "bench",
            "scripts", "Makefile", "README.md", "LICENSE", "pyproject.toml", "cmp.pc.in")

    def skip_built(info):
        return None if info.name.endswith((".so", ".o", ".pyc")) else info

    with tarfile.open(os.path.join(sdist_directory, name), "w:gz") as tar:
        for entry in keep:
            path = os.path.join(ROOT, entry)
            if os.path.exists(path):
                tar.add(path, arcname=f"{base}/{entry}", filter=skip_built)
        pkg_info = _metadata().encode()
        info = tarfile.TarInfo(f"{base}/PKG-INFO")
        info.size = len(pkg_info)
        tar.addfile(info, io.BytesIO(pkg_info))
    return name


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []
