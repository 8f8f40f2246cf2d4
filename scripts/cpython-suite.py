"""CPython's own multiprocessing suite, run on the stdlib and on cmultiprocessing.

    python3 scripts/cpython-suite.py --pkg DIR [--methods fork,spawn,forkserver]
        [--baseline FILE] [-k PATTERN] [-j N] [--timeout S] [-v]

Runs Lib/test/_test_multiprocessing.py of the interpreter running this script
(a CPython that ships its `test` package; `make cpython-suite` builds the
extension for it into DIR) for each start method: the processes, threads
and manager variants of every mixin test plus the module's own TestCases,
as CPython's test_multiprocessing_<method> does. Each method is run once on
the standard library (or read from --baseline, a stdlib.json that an
earlier run wrote) and once with every `multiprocessing` module resolved to
cmultiprocessing (sys.modules aliasing, as `python3 -m cmultiprocessing`
does). It prints, per method, how many of the tests that pass on the stdlib
pass on ours and lists the others with the reason.

Each test class runs in a worker process of its own (its own session, killed
as a group when it ends); a test that gives no result within --timeout
seconds is a hang: faulthandler ends the worker, the test is reported as
hung at the line it was blocked on, and the class goes on in a new worker.
Results and worker logs are kept in build/cpython-suite/.

Where cmultiprocessing has no module of a name the suite imports (heap,
util, ...), the stdlib's is used and the header says so; a few attributes
that only the suite's own harness reads (process._dangling, ...) are given
stand-ins when ours has none, also listed. The worker mode of this script
(environment CMP_SUITE_METHOD set) is what runs inside those workers.
"""
import argparse
import concurrent.futures
import fnmatch
import importlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
METHODS = ("fork", "spawn", "forkserver")

# ---------------------------------------------------------------- worker side


def _stdlib_submodules():
    """Every submodule of the stdlib package (imported, so each binds the
    stdlib's own siblings), as {dotted name under the package: module}."""
    import multiprocessing
    if multiprocessing.__name__ != "multiprocessing":
        # a spawn/forkserver child of ours, which aliased the package
        # before importing this script as __mp_main__: the stdlib's copies,
        # freshly imported, for the names ours has not
        aliased = {k: sys.modules.pop(k) for k in list(sys.modules)
                   if k == "multiprocessing" or k.startswith("multiprocessing.")}
        try:
            return _stdlib_submodules()
        finally:
            sys.modules.update(aliased)
    import pkgutil
    mods = {}
    for info in pkgutil.walk_packages(multiprocessing.__path__, "multiprocessing."):
        name = info.name
        if name.endswith("_win32"):
            continue
        try:
            mods[name[len("multiprocessing."):]] = importlib.import_module(name)
        except ImportError:
            pass
    return mods


def _alias_ours():
    """Resolves `multiprocessing` and each of its submodules to ours, the
    stdlib's where ours has none. Returns (fallbacks, stand-ins)."""
    stdlib = _stdlib_submodules()
    import cmultiprocessing
    resolved, fallbacks = {}, []
    for name in sorted(stdlib, key=lambda n: n.count(".")):
        ours = "cmultiprocessing." + name
        parent_ok = "." not in name or resolved.get(name.rpartition(".")[0]) is not None
        try:
            spec = importlib.util.find_spec(ours) if parent_ok else None
        except ImportError:
            spec = None
        if spec is None:
            resolved[name] = None
            fallbacks.append(name)
        else:
            resolved[name] = importlib.import_module(ours)
    sys.modules["multiprocessing"] = cmultiprocessing
    for name in sorted(resolved, key=lambda n: n.count(".")):
        module = resolved[name] or stdlib[name]
        sys.modules["multiprocessing." + name] = module
        parent, _, leaf = name.rpartition(".")
        parent_mod = sys.modules["multiprocessing." + parent] if parent else cmultiprocessing
        if getattr(parent_mod, leaf, None) is not module:
            setattr(parent_mod, leaf, module)
    return fallbacks, _harness_stand_ins()


def _harness_stand_ins():
    """The suite's setUpModule/setUpClass/tearDown read a few private names
    of the stdlib to count dangling processes and to clean up; none is part
    of what a program uses. Where ours lacks one, an inert stand-in keeps the
    harness running (listed in the header; a test that checks the name
    itself still fails)."""
    import weakref
    process = sys.modules["multiprocessing.process"]
    util = sys.modules["multiprocessing.util"]
    added = []
    if not hasattr(process, "_dangling"):
        process._dangling = weakref.WeakSet()
        added.append("process._dangling")
    if not hasattr(process, "_cleanup"):
        process._cleanup = lambda: None
        added.append("process._cleanup")
    if not hasattr(util, "_cleanup_tests"):
        util._cleanup_tests = lambda: None
        added.append("util._cleanup_tests")
    return added


def _worker_setup():
    # A driver started in the background of a shell has SIGINT ignored, and
    # so would every worker (the interpreter keeps an inherited SIG_IGN):
    # the tests that interrupt themselves need KeyboardInterrupt.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    impl = os.environ["CMP_SUITE_IMPL"]
    info = {"impl": impl, "fallbacks": [], "stand_ins": []}
    if impl == "ours":
        sys.path.insert(0, os.environ["CMP_SUITE_PKG"])
        info["fallbacks"], info["stand_ins"] = _alias_ours()
    import test._test_multiprocessing as suite
    suite.install_tests_in_module_dict(globals(), os.environ["CMP_SUITE_METHOD"])
    import multiprocessing
    info["start_methods"] = multiprocessing.get_all_start_methods()
    return info


def _reason(err):
    exc_type, exc, _ = err
    text = str(exc).strip().splitlines()
    reason = exc_type.__name__ + (": " + text[0] if text else "")
    return reason if len(reason) <= 200 else reason[:197] + "..."



class _Recorder(unittest.TestResult):
    """Writes one JSON line per event, flushed, so that what a worker that
    hangs or crashes did before is not lost."""

    def __init__(self, out, timeout):
        super().__init__()
        self.out, self.timeout, self.current = out, timeout, None

    def _emit(self, **record):
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def startTest(self, test):
        import faulthandler
        super().startTest(test)
        self.current = {"id": test.id().partition(".")[2], "outcome": "pass"}
        self._emit(start=self.current["id"])
        faulthandler.dump_traceback_later(self.timeout, exit=True)

    def stopTest(self, test):
        import faulthandler
        faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)
        self._emit(**self.current)
        self.current = None

    def _set(self, test, outcome, reason="", trace=""):
        if self.current is None or not hasattr(test, "_testMethodName"):
            # a setUpModule/setUpClass/tearDown* error: not a test
            self._emit(fixture=str(test), outcome=outcome, reason=reason, trace=trace)
        elif self.current["outcome"] in ("pass", "skip"):
            self.current.update(outcome=outcome, reason=reason, trace=trace)

    def addError(self, test, err):
        self._set(test, "error", _reason(err), self._exc_info_to_string(err, test))

    def addFailure(self, test, err):
        self._set(test, "fail", _reason(err), self._exc_info_to_string(err, test))

    def addSubTest(self, test, subtest, err):
        if err is not None:
            kind = "fail" if issubclass(err[0], test.failureException) else "error"
            self._set(test, kind, f"{subtest._subDescription()}: {_reason(err)}",
                      self._exc_info_to_string(err, test))

    def addSkip(self, test, reason):
        self._set(test, "skip", reason)

    def addExpectedFailure(self, test, err):
        self._set(test, "xfail", _reason(err))

    def addUnexpectedSuccess(self, test):
        self._set(test, "xpass")


def _worker_main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--list", action="store_true")
    p.add_argument("--out")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("tests", nargs="*")
    args = p.parse_args(argv)
    if args.list:
        tests = {}
        for name, cls in sorted(globals().items()):
            if isinstance(cls, type) and issubclass(cls, unittest.TestCase):
                tests[name] = unittest.defaultTestLoader.getTestCaseNames(cls)
        print(json.dumps({"info": WORKER_INFO, "tests": tests}))
        return 0
    # Subtest ids are "Class.test (params)"; the recorder keys by the test.
    module = sys.modules[__name__]
    suite = unittest.TestSuite(
        unittest.defaultTestLoader.loadTestsFromName(t, module) for t in args.tests)
    with open(args.out, "a") as out:
        result = _Recorder(out, args.timeout)
        suite(result)
    return 0


if os.environ.get("CMP_SUITE_METHOD"):
    # a worker, or a spawn/forkserver child re-importing a worker's __main__
    WORKER_INFO = _worker_setup()

# ---------------------------------------------------------------- driver side


def _env(method, impl, pkg):
    env = dict(os.environ, CMP_SUITE_METHOD=method, CMP_SUITE_IMPL=impl)
    if impl == "ours":
        env["CMP_SUITE_PKG"] = pkg
    env.pop("PYTHONPATH", None)
    return env


def _list_tests(method, impl, pkg):
    r = subprocess.run([sys.executable, __file__, "--list"], env=_env(method, impl, pkg),
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"listing the tests ({impl}, {method}) failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _hang_site(log):
    """The suite's innermost frame of the main thread in a faulthandler dump."""
    text = log[log.rfind("Timeout ("):] if "Timeout (" in log else log
    main = text.split("Thread 0x")[-1] if "Current thread" not in text else \
        text[text.find("Current thread"):]
    for m in re.finditer(r'File "([^"]+)", line (\d+) in (\S+)', main):
        return f"{os.path.basename(m.group(1))}:{m.group(2)} in {m.group(3)}"
    return "?"


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run_class(method, impl, pkg, cls, names, outdir, timeout):
    """Runs the tests `names` of class `cls` in workers until each has a
    result; returns {test id: record} and the fixture errors."""
    results, fixtures = {}, []
    todo = [f"{cls}.{n}" for n in names]
    attempt = 0
    while todo:
        attempt += 1
        out = os.path.join(outdir, f"{cls}.{attempt}.jsonl")
        log = os.path.join(outdir, f"{cls}.{attempt}.log")
        for f in (out, log):
            if os.path.exists(f):
                os.unlink(f)
        with open(log, "w") as logf:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--out", out, "--timeout", str(timeout)] + todo,
                env=_env(method, impl, pkg), stdout=logf, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, cwd=outdir)
            # faulthandler ends a hung test; this guards the worker as a
            # whole (a hang in setUpClass, in the interpreter's exit...)
            last, size = time.monotonic(), -1
            while proc.poll() is None:
                time.sleep(0.5)
                now_size = os.path.getsize(out) if os.path.exists(out) else 0
                if now_size != size:
                    last, size = time.monotonic(), now_size
                elif time.monotonic() - last > timeout + 60:
                    _kill_group(proc.pid)
                    proc.wait()
            _kill_group(proc.pid)
        started = None
        if os.path.exists(out):
            with open(out) as f:
                for line in f:
                    rec = json.loads(line)
                    if "start" in rec:
                        started = rec["start"]
                    elif "fixture" in rec:
                        fixtures.append(rec)
                    else:
                        results[rec["id"]] = rec
                        started = None
        with open(log, errors="replace") as f:
            logtext = f.read()
        if started is not None:
            if "Timeout (" in logtext:
                reason = f"hang: no result within {timeout:g} s, at {_hang_site(logtext)}"
            else:
                reason = f"worker died (exit status {proc.returncode}) during the test"
            results[started] = {"id": started, "outcome": "hang", "reason": reason}
        remaining = [t for t in todo if t not in results]
        if len(remaining) == len(todo):
            # nothing ran: a fixture (setUpModule/setUpClass) failed or the
            # worker could not start; the reason goes to each test
            why = next((f"{fx['fixture']}: {fx['reason']}" for fx in fixtures
                        if "setUp" in fx["fixture"]), None)
            if why is None:
                tail = [ln for ln in logtext.strip().splitlines() if ln.strip()]
                why = "worker failed: " + (tail[-1] if tail else f"exit status {proc.returncode}")
            for t in remaining:
                results[t] = {"id": t, "outcome": "error", "reason": why}
            remaining = []
        todo = remaining
    return results, fixtures


def _selected(test, select):
    return not select or any(fnmatch.fnmatchcase(test, f"*{k}*") for k in select)


def _run_method(method, impl, pkg, select, jobs, timeout, outroot, verbose, base=None):
    try:
        listing = _list_tests(method, impl, pkg)
    except RuntimeError as e:
        if base is None:
            raise
        # ours cannot even load the suite: every test fails with that reason
        lines = [ln for ln in str(e).splitlines() if ln.strip()]
        why = "the suite does not load: " + lines[-1]
        print(f"   {why}", flush=True)
        return {"info": {"fallbacks": [], "stand_ins": []}, "fixtures": [],
                "results": {t: {"id": t, "outcome": "error", "reason": why}
                            for t in base["results"]}}
    outdir = os.path.join(outroot, f"{method}-{impl}")
    os.makedirs(outdir, exist_ok=True)
    classes = {}
    for cls, names in listing["tests"].items():
        names = [n for n in names if _selected(f"{cls}.{n}", select)]
        if names:
            classes[cls] = names
    results, fixtures = {}, []
    with concurrent.futures.ThreadPoolExecutor(jobs) as ex:
        futs = {ex.submit(_run_class, method, impl, pkg, cls, names, outdir, timeout): cls
                for cls, names in classes.items()}
        for fut in concurrent.futures.as_completed(futs):
            res, fx = fut.result()
            results.update(res)
            fixtures.extend(fx)
            if verbose:
                bad = sum(r["outcome"] not in ("pass", "skip") for r in res.values())
                print(f"  {method}/{impl}: {futs[fut]}: {len(res)} tests, {bad} not passing",
                      flush=True)
    return {"info": listing["info"], "results": results, "fixtures": fixtures}


def _counts(results):
    c = {}
    for r in results.values():
        c[r["outcome"]] = c.get(r["outcome"], 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(c.items()))


def _report(method, base, ours):
    passing = sorted(t for t, r in base["results"].items() if r["outcome"] == "pass")
    missing = [t for t in passing if t not in ours["results"]]
    bad = [t for t in passing if t in ours["results"]
           and ours["results"][t]["outcome"] != "pass"]
    ok = len(passing) - len(bad) - len(missing)
    pct = 100.0 * ok / len(passing) if passing else 0.0
    print(f"== {method}: {ok} of the {len(passing)} tests that pass on the stdlib pass on "
          f"cmultiprocessing ({pct:.1f} %)")
    print(f"   stdlib: {_counts(base['results'])}")
    print(f"   ours:   {_counts(ours['results'])}")
    if missing:
        print(f"   not run on ours ({len(missing)}): {', '.join(missing)}")
    if bad:
        print(f"   not passing on ours ({len(bad)}):")
        width = max(len(t) for t in bad)
        for t in bad:
            r = ours["results"][t]
            reason = r.get("reason") or r["outcome"]
            if r["outcome"] == "skip":
                reason = "skipped: " + reason
            print(f"     {t:<{width}}  {reason}")
    gained = sorted(t for t, r in ours["results"].items() if r["outcome"] == "pass"
                    and base["results"].get(t, {}).get("outcome") not in (None, "pass"))
    if gained:
        print(f"   pass on ours but not on the stdlib ({len(gained)}): {', '.join(gained)}")
    fx = [f for f in ours["fixtures"]]
    if fx:
        print(f"   fixture errors on ours ({len(fx)}, not counted):")
        for f in fx:
            print(f"     {f['fixture']}  {f['reason']}")
    return pct


def _ours_start_methods(pkg):
    code = "import cmultiprocessing; print(cmultiprocessing.get_all_start_methods())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=pkg, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"cannot import cmultiprocessing from {pkg}:\n{r.stderr}")
    return eval(r.stdout)  # a list literal printed by ourselves


def _driver(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pkg", default=os.path.join(ROOT, "python"),
                   help="directory holding the cmultiprocessing package built for this interpreter")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--baseline", help="stdlib.json of an earlier run (skips the stdlib runs)")
    p.add_argument("--out", default=os.path.join(ROOT, "build", "cpython-suite"))
    p.add_argument("-k", action="append", dest="select", default=[],
                   help="only tests whose Class.test_name matches (glob, substring)")
    p.add_argument("-j", "--jobs", type=int, default=2, help="test classes run at once")
    p.add_argument("--timeout", type=float, default=90, help="seconds a test may take")
    p.add_argument("--stdlib-only", action="store_true",
                   help="only run the stdlib (writes the baseline, stdlib.json)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    try:
        import test._test_multiprocessing  # noqa: F401
    except ImportError as e:
        sys.exit(f"cpython-suite: {sys.executable} has no test._test_multiprocessing ({e}); "
                 "run it with a CPython that ships its test package")
    pkg = os.path.abspath(args.pkg)
    os.makedirs(args.out, exist_ok=True)
    baseline = {}
    if args.baseline:
        with open(args.baseline) as f:
            baseline = json.load(f)
    print(f"cpython-suite: {sys.executable} (Python {sys.version.split()[0]}), "
          f"cmultiprocessing from {pkg}", flush=True)
    ours_methods = METHODS if args.stdlib_only else _ours_start_methods(pkg)
    summary = []
    for method in args.methods.split(","):
        if method not in ours_methods:
            line = (f"== {method}: not available (cmultiprocessing.get_all_start_methods() "
                    f"is {ours_methods})")
            print(line, flush=True)
            summary.append(line)
            continue
        t0 = time.monotonic()
        base = baseline.get(method)
        if base is None:
            base = _run_method(method, "stdlib", pkg, args.select, args.jobs, args.timeout,
                               args.out, args.verbose)
            if not args.select:
                baseline[method] = base
                with open(os.path.join(args.out, "stdlib.json"), "w") as f:
                    json.dump(baseline, f)
        elif args.select:
            base = dict(base, results={t: r for t, r in base["results"].items()
                                       if _selected(t, args.select)})
        if args.stdlib_only:
            line = f"== {method} (stdlib): {_counts(base['results'])}"
            print(line, flush=True)
            summary.append(line)
            continue
        ours = _run_method(method, "ours", pkg, args.select, args.jobs, args.timeout,
                           args.out, args.verbose, base)
        with open(os.path.join(args.out, f"ours-{method}.json"), "w") as f:
            json.dump(ours, f)
        info = ours["info"]
        if info["fallbacks"]:
            print(f"   (the stdlib's modules where cmultiprocessing has none: "
                  f"{', '.join(info['fallbacks'])})")
        if info["stand_ins"]:
            print(f"   (harness-only stand-ins: {', '.join(info['stand_ins'])})")
        pct = _report(method, base, ours)
        print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)
        summary.append(f"== {method}: {pct:.1f} %")
    if len(summary) > 1:
        print("\n".join(["summary:"] + summary))
    return 0


if __name__ == "__main__":
    if os.environ.get("CMP_SUITE_METHOD"):
        sys.exit(_worker_main(sys.argv[1:]))
    sys.exit(_driver(sys.argv[1:]))
