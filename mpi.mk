# libcmp_mpi, its example, tests and the Python binding cmultiprocessing.mpi._mpi:
# built only where Open MPI's mpicc is found (libcmp itself never links MPI).
#
#   make test-mpi    the C tests and the Python ones under mpiexec -n 2 and 3
#   make bench-mpi   our MPI Pool next to mpi4py.futures (bench/mpi_bench.py)
#
# Running as root needs Open MPI's two ALLOW_RUN_AS_ROOT switches, more
# ranks than cores --oversubscribe, and containers refuse CMA (vader's
# single-copy mechanism): MPIEXEC below sets all three, and
# odls_base_sigkill_timeout=0, without which mpiexec sleeps 1-2 s before
# it returns from a job it ends (Ctrl-C, a failed rank 0).

MPICC ?= $(shell command -v mpicc 2>/dev/null)
MPI_SRC := $(sort $(wildcard src/mpi/*.c))
MPI_OBJ := $(MPI_SRC:src/mpi/%.c=$(BUILD)/mpi/%.o)
MPI_EXT := python/cmultiprocessing/mpi/_mpi$(PY_EXT)
MPIEXEC := OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
	OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_odls_base_sigkill_timeout=0 \
	mpiexec --oversubscribe

.PHONY: mpi test-mpi bench-mpi

ifneq ($(MPICC),)
all: mpi
mpi: $(BUILD)/libcmp_mpi.a $(BUILD)/libcmp_mpi.so $(BUILD)/examples/mpi_pool $(MPI_EXT) \
	$(BUILD)/test_mpi

$(BUILD)/mpi/%.o: src/mpi/%.c src/mpi/mpi_internal.h include/cmp_mpi.h include/cmp.h
	@mkdir -p $(dir $@)
	$(MPICC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/libcmp_mpi.a: $(MPI_OBJ)
	ar rcs $@ $^

$(BUILD)/libcmp_mpi.so: $(MPI_OBJ) $(BUILD)/libcmp.so
	$(MPICC) $(CFLAGS_ALL) -shared -Wl,-soname,libcmp_mpi.so.0 -o $@ $(MPI_OBJ) \
		-L$(BUILD) -l:libcmp.so $(LDLIBS)

$(BUILD)/examples/mpi_pool: examples/c/mpi_pool.c $(BUILD)/libcmp_mpi.a $(BUILD)/libcmp.a
	@mkdir -p $(dir $@)
	$(MPICC) $(CFLAGS_ALL) -o $@ $< $(BUILD)/libcmp_mpi.a $(BUILD)/libcmp.a $(LDLIBS)

$(BUILD)/test_mpi: tests/c/test_mpi.c $(BUILD)/libcmp_mpi.a $(BUILD)/libcmp.a
	$(MPICC) $(CFLAGS_ALL) -o $@ $< $(BUILD)/libcmp_mpi.a $(BUILD)/libcmp.a $(LDLIBS)

# The binding links its own copy of libcmp (hidden, as _cmp's is): the local
# pools of a serving rank are made by libcmp_mpi, with _cmp's worker
# callbacks, which it gets from _cmp's capsule.
$(BUILD)/ext/mpi/%.o: python/cmultiprocessing/mpi/%.c python/cmultiprocessing/_cmp/pool.h \
		python/cmultiprocessing/_cmp/_cmp.h include/cmp_mpi.h
	@mkdir -p $(dir $@)
	$(MPICC) $(CFLAGS_ALL) -fvisibility=hidden -I$(PY_INCLUDE) -Ipython/cmultiprocessing/_cmp \
		-c $< -o $@

$(MPI_EXT): $(BUILD)/ext/mpi/_mpi.o $(BUILD)/libcmp_mpi.a $(BUILD)/libcmp.a
	$(MPICC) $(CFLAGS_ALL) -shared -Wl,--exclude-libs,ALL -o $@ $< $(BUILD)/libcmp_mpi.a \
		$(BUILD)/libcmp.a $(LDLIBS)

# tests/python/test_mpi.py runs the C tests (build/test_mpi) alone and under
# mpiexec -n 2 and -n 3, the C example, and its Python scripts; make test
# runs it too (with every other Python test file), skipping it cleanly
# where Open MPI is not installed.
test-mpi: mpi
	cd tests/python && BUILD=$(BUILD) $(PYTHON) -m pytest -q -p no:cacheprovider test_mpi.py test_mpi_hosts.py

bench-mpi: mpi
	$(PYTHON) bench/mpi_bench.py -n 3
else
mpi test-mpi bench-mpi:
	@echo "mpicc not found: libcmp_mpi is not built (apt-get install openmpi-bin libopenmpi-dev)"
endif

# make clean removes the binding too (built or not here)
.PHONY: clean-mpi
clean: clean-mpi
clean-mpi:
	rm -f python/cmultiprocessing/mpi/_mpi*.so
