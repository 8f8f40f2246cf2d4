# cmultiprocessing: libcmp (C library) + the _cmp CPython extension.
#
#   make            libcmp.a, libcmp.so and the extension (in place)
#   make test       every test: C (Criterion) and Python (pytest)
#   make sanitize   the same tests built with ASan + UBSan
#   make valgrind   the C tests under valgrind memcheck (not part of make test)
#   make bench      stdlib vs cmultiprocessing, side by side
#   make demo       the examples on cmultiprocessing, then the bench table
#   make install    library, header and cmp.pc under $(PREFIX)
#   make fuzz       libFuzzer targets (tests/fuzz/), FUZZ_SECONDS (60) each,
#                   then a summary; not part of `make test`
#   make cpython-suite  CPython's own Lib/test/_test_multiprocessing.py on the
#                   stdlib and on cmultiprocessing, per start method; prints
#                   the share of the stdlib-passing tests that pass on ours
#                   and why the others fail (SUITE_PYTHON: a CPython 3.11
#                   with its test package; SUITE_ARGS: e.g. --methods fork
#                   -k Queue --baseline build/cpython-suite/stdlib.json);
#                   not part of `make test`
#   make fuzz-merge adds what `make fuzz` found (new coverage only) to the
#                   seed corpus in tests/fuzz/corpus/
#
# `make deps` (run by test, demo and bench) installs missing Debian packages.

PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
PREFIX ?= /usr/local
BUILD ?= build

CC ?= cc
CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -fPIC -Iinclude -Isrc
OPT ?= -O2 -g
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
CFLAGS_ALL := $(CFLAGS_BASE) $(OPT) $(EXTRA_CFLAGS)
LDLIBS := -lpthread -lm

PY_INCLUDE := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_paths()['include'])" 2>/dev/null)
PY_EXT := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))" 2>/dev/null)

LIB_SRC := $(sort $(wildcard src/*.c))
LIB_OBJ := $(LIB_SRC:src/%.c=$(BUILD)/lib/%.o)
EXT_SRC := $(sort $(wildcard python/cmultiprocessing/_cmp/*.c))
EXT_OBJ := $(EXT_SRC:python/cmultiprocessing/_cmp/%.c=$(BUILD)/ext/%.o)
EXT := python/cmultiprocessing/_cmp$(PY_EXT)
CTEST_SRC := $(filter-out tests/c/test_mpi%,$(sort $(wildcard tests/c/test_*.c)))
CEXAMPLE_SRC := $(filter-out examples/c/mpi_%,$(sort $(wildcard examples/c/*.c)))
CEXAMPLES := $(CEXAMPLE_SRC:examples/c/%.c=$(BUILD)/examples/%)

.PHONY: all lib ext test test-c test-python sanitize bench bench-c demo install deps clean format

all: lib ext $(CEXAMPLES)

include mpi.mk

lib: $(BUILD)/libcmp.a $(BUILD)/libcmp.so

ext: $(EXT)

$(BUILD)/lib/%.o: src/%.c include/cmp.h $(wildcard src/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/libcmp.a: $(LIB_OBJ)
	ar rcs $@ $^

$(BUILD)/libcmp.so: $(LIB_OBJ)
	$(CC) $(CFLAGS_ALL) -shared -Wl,-soname,libcmp.so.0 -o $@ $^ $(LDLIBS)

# The extension exports PyInit__cmp only: with every other symbol hidden
# (its own, and libcmp's through --exclude-libs) calls into libcmp are
# direct, not through the PLT: ~6% of `with v.get_lock(): v.value += 1`.
$(BUILD)/ext/%.o: python/cmultiprocessing/_cmp/%.c $(wildcard python/cmultiprocessing/_cmp/*.h) include/cmp.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -fvisibility=hidden -I$(PY_INCLUDE) -c $< -o $@

$(EXT): $(EXT_OBJ) $(BUILD)/libcmp.a
	$(CC) $(CFLAGS_ALL) -shared -Wl,--exclude-libs,ALL -o $@ $(EXT_OBJ) $(BUILD)/libcmp.a $(LDLIBS)

$(BUILD)/examples/%: examples/c/%.c $(BUILD)/libcmp.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -o $@ $< $(BUILD)/libcmp.a $(LDLIBS)

$(BUILD)/test_c: $(CTEST_SRC) $(wildcard tests/c/*.h) bench/hogs.h $(BUILD)/libcmp.a
	$(CC) $(CFLAGS_ALL) -Itests/c -o $@ $(CTEST_SRC) $(BUILD)/libcmp.a -lcriterion $(LDLIBS)

$(BUILD)/bench/%: bench/%.c bench/hogs.h $(BUILD)/libcmp.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -o $@ $< $(BUILD)/libcmp.a $(LDLIBS)

# Raw C-level numbers (no stdlib comparison): the ring, wake-up costs next
# to the kernel's floor, and manager round trips, at each load in
# BENCH_LOADS (CPU hogs).
BENCH_LOADS ?= 0 1 2
bench-c: $(BUILD)/bench/ring_bench $(BUILD)/bench/wake_bench $(BUILD)/bench/manager_bench
	@for load in $(BENCH_LOADS); do \
		echo "== load $$load"; \
		$(BUILD)/bench/ring_bench --load $$load && $(BUILD)/bench/wake_bench --load $$load \
			&& $(BUILD)/bench/manager_bench --load $$load || exit 1; \
	done

deps:
	@./scripts/install-deps.sh

test: deps
	@$(MAKE) --no-print-directory all $(BUILD)/test_c
	@PYTHON=$(PYTHON) BUILD=$(BUILD) ./scripts/run-tests.sh

test-c: all $(BUILD)/test_c
	$(BUILD)/test_c

test-python: all
	cd tests/python && $(PYTHON) -m pytest -q

# Sanitized build in its own tree; the Python interpreter is not
# instrumented, so the runtime is preloaded into it.
SAN_PKG := build/san/pkg/cmultiprocessing
sanitize: deps
	@rm -rf $(SAN_PKG) && mkdir -p $(SAN_PKG) && cp -r python/cmultiprocessing/. $(SAN_PKG)/ \
		&& rm -f $(SAN_PKG)/_cmp*.so
	@$(MAKE) --no-print-directory BUILD=build/san EXTRA_CFLAGS="$(SAN_FLAGS)" OPT="-O1 -g" \
		EXT=$(SAN_PKG)/_cmp$(PY_EXT) lib $(SAN_PKG)/_cmp$(PY_EXT) build/san/test_c
	@PYTHON=$(PYTHON) BUILD=build/san CMP_PKG_DIR=build/san/pkg SANITIZE=1 ./scripts/run-tests.sh

# The C tests under memcheck, in their own build (-O1 -g) and binary, which
# also links tests/c/valgrind_timeouts.c: each test's Criterion timeout is
# multiplied by VG_TIMEOUT_SCALE, as memcheck runs code 20-50x slower.
# scripts/valgrind.sh runs them one at a time and prints the summary.
VG_BUILD := build/vg
VG_TIMEOUT_SCALE ?= 20
.PHONY: valgrind
valgrind:
	@command -v valgrind >/dev/null || { apt-get update -qq && apt-get install -y -qq valgrind; }
	@$(MAKE) --no-print-directory BUILD=$(VG_BUILD) OPT="-O1 -g" $(VG_BUILD)/test_c_vg
	@CMP_TEST_TIMEOUT_SCALE=$(VG_TIMEOUT_SCALE) PYTHON=$(PYTHON) ./scripts/valgrind.sh $(VG_BUILD)/test_c_vg

$(BUILD)/test_c_vg: $(CTEST_SRC) tests/c/valgrind_timeouts.c $(wildcard tests/c/*.h) bench/hogs.h $(BUILD)/libcmp.a
	$(CC) $(CFLAGS_ALL) -Itests/c -o $@ $(CTEST_SRC) tests/c/valgrind_timeouts.c $(BUILD)/libcmp.a \
		-lcriterion $(LDLIBS)

# The suite runs on an interpreter that ships its test package (Debian's
# /usr/bin/python3 does not), so the extension is built for that one, into
# a tree of its own.
SUITE_PYTHON ?= python3
SUITE_ARGS ?=
SUITE_PKG := $(BUILD)/suite-py
.PHONY: cpython-suite
cpython-suite:
	@./scripts/build-for-python.sh "$$(command -v $(SUITE_PYTHON))" $(SUITE_PKG)
	@$(SUITE_PYTHON) scripts/cpython-suite.py --pkg $(SUITE_PKG) $(SUITE_ARGS)

bench: deps all
	$(PYTHON) bench/bench.py --load 0,1,2

demo: deps all
	@./scripts/demo.sh $(PYTHON)

install: lib
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 $(BUILD)/libcmp.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libcmp.so $(DESTDIR)$(PREFIX)/lib/libcmp.so.0
	ln -sf libcmp.so.0 $(DESTDIR)$(PREFIX)/lib/libcmp.so
	install -m 644 include/cmp.h $(DESTDIR)$(PREFIX)/include/
	sed 's|@PREFIX@|$(PREFIX)|' cmp.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/cmp.pc

# ---- libFuzzer targets (tests/fuzz/: one .c per target) ----------------
# libcmp is rebuilt with clang, coverage-instrumented and sanitized, in its
# own tree; each target links it with libFuzzer. scripts/fuzz.sh runs them
# and keeps what they find out of the tree (see its header).
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_BUILD := build/fuzz
FUZZ_SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
FUZZ_BIN := $(patsubst tests/fuzz/%.c,$(FUZZ_BUILD)/%,$(sort $(wildcard tests/fuzz/fuzz_*.c)))

.PHONY: fuzz fuzz-build fuzz-merge

fuzz-build:
	@./scripts/fuzz.sh deps
	@$(MAKE) --no-print-directory BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) OPT="-O1 -g" \
		EXTRA_CFLAGS="-fsanitize=fuzzer-no-link $(FUZZ_SAN)" $(FUZZ_BUILD)/libcmp.a
	@$(MAKE) --no-print-directory $(FUZZ_BIN)

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(FUZZ_BUILD)/libcmp.a
	$(FUZZ_CC) $(CFLAGS_BASE) -O1 -g -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $< \
		$(FUZZ_BUILD)/libcmp.a -lcrypto $(LDLIBS)

fuzz: fuzz-build
	@FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_BUILD=$(FUZZ_BUILD) ./scripts/fuzz.sh run $(FUZZ_BIN)

fuzz-merge: fuzz-build
	@FUZZ_BUILD=$(FUZZ_BUILD) ./scripts/fuzz.sh merge $(FUZZ_BIN)

format:
	clang-format -i include/*.h src/*.[ch] python/cmultiprocessing/_cmp/*.[ch] tests/c/*.[ch] examples/c/*.c

clean:
	rm -rf build python/cmultiprocessing/_cmp*.so
