# ddpm — build, test, demo, bench, install.
#   make            build ./ddpm (installs missing Debian packages first, see scripts/install-deps.sh)
#   make test       build and run every test binary; last line "N passed, N failed[, N skipped]"
#   make demo       noise strip + train configs/demo.json (<= 5 min) + 80 samples
#   make text-demo  train configs/text.json on "scenes" (<= 20 min) + a grid of 5 prompts, one held out
#   make bench      ddpm bench next to PyTorch on configs/bench.json (CONFIG=... for another), with ratios
#   make MPI=1      build against Open MPI with mpicc (data-parallel train/sample)
#   make ISA=avx2   build for AVX2+FMA (also avx512, portable; default native)
#   make test-arm64 cross-build for aarch64 and run the kernel, layer and U-Net tests under qemu
#   make check      the test suite built with ASan+UBSan (= make test SAN=1), zero reports
#   make fuzz       libFuzzer harnesses (clang) on the file readers, FUZZ_TIME s each
#   make install PREFIX=/usr/local
CC      ?= cc
FUZZ_CC ?= clang
PYTHON  ?= python3
PREFIX  ?= /usr/local
# ISA: native (this CPU), avx2 (-march=haswell: AVX2+FMA), avx512 (-march=skylake-avx512)
# or portable (x86-64 baseline: the kernels' plain C loops; OpenBLAS keeps its own vector
# kernels), or arm64 (cross-compiled with Debian's aarch64-linux-gnu-gcc against its arm64
# libraries, run under qemu-aarch64: make test-arm64). Each builds in its own folder.
# -fno-trapping-math lets the compiler vectorize the portable loops' clamps (no FP traps
# are ever enabled); it does not reorder arithmetic, so results stay the same bits.
ISA     ?= native
MARCH_native   := -march=native
MARCH_avx2     := -march=haswell
MARCH_avx512   := -march=skylake-avx512
MARCH_portable := -march=x86-64
MARCH_arm64    := -march=armv8-a
ifeq ($(MARCH_$(ISA)),)
$(error ISA=$(ISA): use native, avx2, avx512, portable or arm64)
endif
ifeq ($(ISA),arm64)
CC      := aarch64-linux-gnu-gcc
PKG_CONFIG := aarch64-linux-gnu-pkg-config
endif
PKG_CONFIG ?= pkg-config
OPT     ?= -O3 $(MARCH_$(ISA)) -fno-trapping-math
CFLAGS  ?= $(OPT) -g -Wall -Wextra -Wno-unused-parameter -std=gnu11 -fopenmp
VERSION := 0.1.0
PKGS    := openblas libcjson stb zlib cairo fontconfig nettle
# OpenBLAS built with OpenMP (libopenblas-openmp-dev): one thread pool for ddpm's loops and
# BLAS, and a GEMM called inside a parallel loop runs on the calling thread. Debian installs
# it beside the default pthreads build. ddpm does not link it: src/gemm.c loads that build
# (its path below) at run time, after choosing its kernel family.
MULTIARCH   := $(shell $(CC) -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
OPENBLAS_PC := /usr/lib/$(MULTIARCH)/openblas-openmp/pkgconfig
PKGCONF     := PKG_CONFIG_PATH=$(OPENBLAS_PC)$(if $(PKG_CONFIG_PATH),:$(PKG_CONFIG_PATH)) $(PKG_CONFIG)

ISA_DIR := $(if $(filter native,$(ISA)),,-$(ISA))
ifeq ($(MPI),1)
CC      := mpicc
BUILD   := build/mpi$(ISA_DIR)
CFLAGS  += -DDDPM_MPI
else
BUILD   := build/cpu$(ISA_DIR)
endif

# SAN=1: AddressSanitizer + UndefinedBehaviorSanitizer (with float->int cast overflow, not
# in GCC's "undefined" set), first report fatal. Own build folder, so it never mixes with
# the optimized objects.
SAN_FLAGS := -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all -fno-omit-frame-pointer
ifeq ($(SAN),1)
OPT     := -O1 $(MARCH_$(ISA))
CFLAGS  += $(SAN_FLAGS)
BUILD   := $(BUILD)-san
endif
# OMP=0: build without OpenMP (every kernel then runs on one thread; OpenBLAS still threads).
ifeq ($(OMP),0)
CFLAGS  := $(filter-out -fopenmp,$(CFLAGS)) -Wno-unknown-pragmas
BUILD   := $(BUILD)-noomp
endif

# Dependencies: compiling needs the libraries in PKGS; the tests and the demo also need the
# font (text in pictures) and the Fashion-MNIST dataset, which nothing needs to compile.
# When what the goals need is missing, scripts/install-deps.sh installs it (or says how).
NODEPS_GOALS := clean help test-arm64
RUN_GOALS    := test check demo text-demo
ifeq ($(filter-out $(NODEPS_GOALS),$(or $(MAKECMDGOALS),all)),)
else
NEED_FUZZ := $(filter fuzz fuzz-build,$(MAKECMDGOALS))
NEED_RUN  := $(filter $(RUN_GOALS),$(MAKECMDGOALS))
RUN_FILES := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
DEPS_OK := $(shell test -f $(OPENBLAS_PC)/openblas.pc && $(PKGCONF) --exists $(PKGS) \
                   $(if $(NEED_RUN),$(foreach f,$(RUN_FILES),&& test -f $(f))) \
                   $(if $(filter 1,$(MPI)),&& command -v mpicc >/dev/null) \
                   $(if $(filter arm64,$(ISA)),&& command -v qemu-aarch64 >/dev/null && command -v $(CC) >/dev/null) \
                   $(if $(NEED_FUZZ),&& command -v $(FUZZ_CC) >/dev/null) && echo yes)
ifneq ($(DEPS_OK),yes)
$(info ddpm: dependencies missing, running scripts/install-deps.sh)
DEPS_RC := $(shell sh scripts/install-deps.sh $(if $(NEED_RUN),,--build) $(if $(filter 1,$(MPI)),--mpi) $(if $(NEED_FUZZ),--fuzz) $(if $(filter arm64,$(ISA)),--arm64) >&2; echo $$?)
ifneq ($(DEPS_RC),0)
$(error dependencies are missing: run the command printed above, then make again)
endif
endif
PKG_CFLAGS := $(shell $(PKGCONF) --cflags $(PKGS))
PKG_LIBS   := $(shell $(PKGCONF) --libs $(filter-out openblas,$(PKGS))) -ldl
OPENBLAS_LIB := $(shell $(PKGCONF) --variable=libdir openblas)/libopenblas.so.0
endif

CPPFLAGS += -Iinclude $(PKG_CFLAGS) -DDDPM_VERSION=\"$(VERSION)\" -DDDPM_OPENBLAS_LIB=\"$(OPENBLAS_LIB)\"
LDLIBS   += $(PKG_LIBS) -lm

LIB_SRC  := $(sort $(wildcard src/*.c src/nn/*.c src/cli/*.c))
LIB_SRC  := $(filter-out src/main.c,$(LIB_SRC))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(sort $(wildcard tests/test_*.c))
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)

.PHONY: test-arm64 all test check fuzz fuzz-build demo text-demo bench install clean help FORCE
all: ddpm

# ./ddpm is the variant last asked for (MPI=1 or not); each variant builds in its own folder.
ddpm: $(BUILD)/ddpm FORCE
	@cmp -s $< $@ || { cp $< $@.tmp && mv -f $@.tmp $@; }

$(BUILD)/ddpm: $(BUILD)/src/main.o $(BUILD)/libddpm.a
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/libddpm.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/%.o: %.c $(wildcard include/ddpm/*.h src/nn/*.h src/cli/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/%.c $(wildcard tests/*.h) $(BUILD)/libddpm.a
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $< $(BUILD)/libddpm.a $(LDLIBS)

# With Open MPI present (mpicc), the MPI variant is built too and tests/test_mpi runs it
# under mpirun; without it that test reports itself skipped.
HAVE_MPICC := $(shell command -v mpicc >/dev/null 2>&1 && echo yes)
ifeq ($(SAN),1)
# Every sanitizer report (from a test binary or from a ddpm it runs) goes to a file under
# $(BUILD)/san-reports; the suite fails if any file appears, even when the process that
# hit it exited with a code some test expected. A reduced set, so that it runs in minutes:
# test_mpi is left out (Open MPI's own allocations swamp LeakSanitizer; the MPI code paths
# are the same C as the 1-rank ones), test_sample and test_train too (1000-step samplers
# and trainings of hundreds of steps, two orders of magnitude slower under ASan at -O1);
# what they exercise still runs sanitized elsewhere: DDIM and DDPM sampling in test_edges,
# checkpoint write/read, resume and corrupt files in test_checkpoint, test_fixes and
# test_edges' 2-step trains. test_edges trains only the structural edges (DDPM_EDGES_QUICK).
SAN_DIR  := $(CURDIR)/$(BUILD)/san-reports
SAN_SKIP ?= test_mpi test_sample test_train
SAN_ENV  := ASAN_OPTIONS=log_path=$(SAN_DIR)/asan:detect_leaks=1:abort_on_error=0:exitcode=86 \
            LSAN_OPTIONS=suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0 \
            UBSAN_OPTIONS=log_path=$(SAN_DIR)/ubsan:print_stacktrace=1:halt_on_error=1 TEST_TIMEOUT=1800 \
            DDPM_EDGES_QUICK=1
test: $(BUILD)/ddpm $(TEST_BIN)
	@rm -rf $(SAN_DIR) && mkdir -p $(SAN_DIR)
	@$(SAN_ENV) DDPM_BIN=$(CURDIR)/$(BUILD)/ddpm sh tests/run.sh $(filter-out $(SAN_SKIP:%=$(BUILD)/tests/%),$(TEST_BIN)); rc=$$?; \
	 n=$$(ls $(SAN_DIR) | wc -l); echo "sanitizer reports: $$n (ASan+UBSan+LSan, $(BUILD); skipped: $(SAN_SKIP))"; \
	 if [ $$n -ne 0 ]; then head -n 40 $(SAN_DIR)/*; exit 1; fi; exit $$rc
else
test: $(BUILD)/ddpm $(TEST_BIN)
ifeq ($(HAVE_MPICC),yes)
	@$(MAKE) --no-print-directory MPI=1 build/mpi/ddpm
	@DDPM_BIN=$(CURDIR)/$(BUILD)/ddpm DDPM_MPI_BIN=$(CURDIR)/build/mpi/ddpm sh tests/run.sh $(TEST_BIN)
else
	@DDPM_BIN=$(CURDIR)/$(BUILD)/ddpm sh tests/run.sh $(TEST_BIN)
endif
endif

check:
	@$(MAKE) --no-print-directory SAN=1 test

# arm64: the GEMM, layer and U-Net tests cross-built and run under qemu-aarch64 user
# emulation. It proves the code builds and computes within the same bounds on arm64 with
# OpenBLAS's arm64 kernels; qemu says nothing about speed on real arm64 hardware.
ARM64_TESTS_ONLY := test_core test_nn test_unet
test-arm64:
	@$(MAKE) --no-print-directory ISA=arm64 $(ARM64_TESTS_ONLY:%=build/cpu-arm64/tests/%)
	@TEST_EXEC=qemu-aarch64 sh tests/run.sh $(ARM64_TESTS_ONLY:%=build/cpu-arm64/tests/%)

# libFuzzer harnesses (tests/fuzz/fuzz_*.c) over the library built with clang, ASan and
# UBSan, without OpenMP (the readers are single-threaded; this also keeps the OMP=0 build
# compiling). make fuzz runs each harness FUZZ_TIME seconds from its committed seeds
# (tests/fuzz/seeds/NAME) plus the corpus it grew before (build/fuzz/corpus/NAME).
FUZZ_TIME  ?= 60
FUZZ_NAMES := safetensors config idx cifar10 image lora jsonl vocab
FUZZ_DIR   := build/fuzz
FUZZ_FLAGS := -O1 -g -std=gnu11 -Wno-unknown-pragmas $(SAN_FLAGS)
FUZZ_OBJ   := $(LIB_SRC:%.c=$(FUZZ_DIR)/%.o)
FUZZ_BIN   := $(FUZZ_NAMES:%=$(FUZZ_DIR)/fuzz_%)

$(FUZZ_DIR)/%.o: %.c $(wildcard include/ddpm/*.h src/nn/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_DIR)/libddpm.a: $(FUZZ_OBJ)
	rm -f $@ && ar rcs $@ $^

$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(FUZZ_DIR)/libddpm.a
	$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_DIR)/libddpm.a $(LDLIBS)

fuzz-build: $(FUZZ_BIN)

fuzz: $(FUZZ_BIN)
	@sh tests/fuzz/run.sh $(FUZZ_TIME) $(FUZZ_DIR) $(FUZZ_NAMES)

demo: ddpm
	sh scripts/demo.sh

text-demo: ddpm
	sh scripts/text_demo.sh

bench: ddpm
	PYTHON=$(PYTHON) $(if $(CONFIG),BENCH_CONFIG=$(CONFIG)) DDPM=./$(BUILD)/ddpm sh scripts/bench.sh

install: ddpm
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 ddpm $(DESTDIR)$(PREFIX)/bin/ddpm

clean:
	rm -rf build ddpm

help:
	@sed -n '2,10p' Makefile | sed 's/^# *//'
