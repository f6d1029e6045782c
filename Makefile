# ddpm — build, test, demo, bench, install.
#   make            build ./ddpm (installs missing Debian packages first, see scripts/install-deps.sh)
#   make test       build and run every test binary; last line "N passed, N failed"
#   make demo       noise strip + train configs/demo.json (<= 10 min) + 64 samples
#   make bench      ddpm bench next to PyTorch on configs/bench.json (CONFIG=... for another), with ratios
#   make MPI=1      build against Open MPI with mpicc (data-parallel train/sample)
#   make ISA=avx2   build for AVX2+FMA (also avx512, portable; default native)
#   make install PREFIX=/usr/local
CC      ?= cc
PYTHON  ?= python3
PREFIX  ?= /usr/local
# ISA: native (this CPU), avx2 (-march=haswell: AVX2+FMA), avx512 (-march=skylake-avx512)
# or portable (x86-64 baseline: the kernels' plain C loops). Each builds in its own folder.
# -fno-trapping-math lets the compiler vectorize the portable loops' clamps (no FP traps
# are ever enabled); it does not reorder arithmetic, so results stay the same bits.
ISA     ?= native
MARCH_native   := -march=native
MARCH_avx2     := -march=haswell
MARCH_avx512   := -march=skylake-avx512
MARCH_portable := -march=x86-64
ifeq ($(MARCH_$(ISA)),)
$(error ISA=$(ISA): use native, avx2, avx512 or portable)
endif
OPT     ?= -O3 $(MARCH_$(ISA)) -fno-trapping-math
CFLAGS  ?= $(OPT) -g -Wall -Wextra -Wno-unused-parameter -std=gnu11 -fopenmp
VERSION := 0.1.0
PKGS    := openblas libcjson stb zlib
# OpenBLAS built with OpenMP (libopenblas-openmp-dev): one thread pool for ddpm's loops and
# BLAS, and a GEMM called inside a parallel loop runs on the calling thread. Debian installs
# it beside the default pthreads build; its pkg-config file comes first and the binary is
# linked with an rpath to it, whatever /etc/alternatives says.
MULTIARCH   := $(shell $(CC) -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
OPENBLAS_PC := /usr/lib/$(MULTIARCH)/openblas-openmp/pkgconfig
PKGCONF     := PKG_CONFIG_PATH=$(OPENBLAS_PC)$(if $(PKG_CONFIG_PATH),:$(PKG_CONFIG_PATH)) pkg-config

ISA_DIR := $(if $(filter native,$(ISA)),,-$(ISA))
ifeq ($(MPI),1)
CC      := mpicc
BUILD   := build/mpi$(ISA_DIR)
CFLAGS  += -DDDPM_MPI
else
BUILD   := build/cpu$(ISA_DIR)
endif

# Dependencies: when any is missing, scripts/install-deps.sh installs it (or says how).
NODEPS_GOALS := clean help
ifeq ($(filter-out $(NODEPS_GOALS),$(or $(MAKECMDGOALS),all)),)
else
DEPS_OK := $(shell test -f $(OPENBLAS_PC)/openblas.pc && $(PKGCONF) --exists $(PKGS) && test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz \
                   $(if $(filter 1,$(MPI)),&& command -v mpicc >/dev/null) && echo yes)
ifneq ($(DEPS_OK),yes)
$(info ddpm: dependencies missing, running scripts/install-deps.sh)
DEPS_RC := $(shell sh scripts/install-deps.sh $(if $(filter 1,$(MPI)),--mpi) >&2; echo $$?)
ifneq ($(DEPS_RC),0)
$(error dependencies are missing: run the command printed above, then make again)
endif
endif
PKG_CFLAGS := $(shell $(PKGCONF) --cflags $(PKGS))
PKG_LIBS   := $(shell $(PKGCONF) --libs $(PKGS)) -Wl,-rpath,$(shell $(PKGCONF) --variable=libdir openblas)
endif

CPPFLAGS += -Iinclude $(PKG_CFLAGS) -DDDPM_VERSION=\"$(VERSION)\"
LDLIBS   += $(PKG_LIBS) -lm

LIB_SRC  := $(sort $(wildcard src/*.c src/nn/*.c src/cli/*.c))
LIB_SRC  := $(filter-out src/main.c,$(LIB_SRC))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(sort $(wildcard tests/test_*.c))
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: all test demo bench install clean help FORCE
all: ddpm

# ./ddpm is the variant last asked for (MPI=1 or not); each variant builds in its own folder.
ddpm: $(BUILD)/ddpm FORCE
	@cmp -s $< $@ || cp $< $@

$(BUILD)/ddpm: $(BUILD)/src/main.o $(BUILD)/libddpm.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libddpm.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/%.o: %.c $(wildcard include/ddpm/*.h src/nn/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/%.c tests/test.h $(BUILD)/libddpm.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $< $(BUILD)/libddpm.a $(LDLIBS)

# With Open MPI present (mpicc), the MPI variant is built too and tests/test_mpi runs it
# under mpirun; without it that test reports itself skipped.
HAVE_MPICC := $(shell command -v mpicc >/dev/null 2>&1 && echo yes)
test: $(BUILD)/ddpm $(TEST_BIN)
ifeq ($(HAVE_MPICC),yes)
	@$(MAKE) --no-print-directory MPI=1 build/mpi/ddpm
	@DDPM_BIN=$(CURDIR)/$(BUILD)/ddpm DDPM_MPI_BIN=$(CURDIR)/build/mpi/ddpm sh tests/run.sh $(TEST_BIN)
else
	@DDPM_BIN=$(CURDIR)/$(BUILD)/ddpm sh tests/run.sh $(TEST_BIN)
endif

demo: ddpm
	sh scripts/demo.sh

bench: ddpm
	PYTHON=$(PYTHON) $(if $(CONFIG),BENCH_CONFIG=$(CONFIG)) DDPM=./$(BUILD)/ddpm sh scripts/bench.sh

install: ddpm
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 ddpm $(DESTDIR)$(PREFIX)/bin/ddpm

clean:
	rm -rf build ddpm

help:
	@sed -n '2,9p' Makefile | sed 's/^# *//'
