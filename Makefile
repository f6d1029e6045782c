# ddpm — build, test, demo, bench, install.
#   make            build ./ddpm (installs missing Debian packages first, see scripts/install-deps.sh)
#   make test       build and run every test binary; last line "N passed, N failed"
#   make demo       noise strip + train configs/demo.json (<= 10 min) + 64 samples
#   make bench      ddpm bench next to PyTorch on configs/bench.json, with ratios
#   make MPI=1      build against Open MPI with mpicc (data-parallel train/sample)
#   make install PREFIX=/usr/local
CC      ?= cc
PYTHON  ?= python3
PREFIX  ?= /usr/local
OPT     ?= -O3 -march=native
CFLAGS  ?= $(OPT) -g -Wall -Wextra -Wno-unused-parameter -std=gnu11 -fopenmp
VERSION := 0.1.0
PKGS    := openblas libcjson stb zlib

ifeq ($(MPI),1)
CC      := mpicc
BUILD   := build/mpi
CFLAGS  += -DDDPM_MPI
else
BUILD   := build/cpu
endif

# Dependencies: when any is missing, scripts/install-deps.sh installs it (or says how).
NODEPS_GOALS := clean help
ifeq ($(filter-out $(NODEPS_GOALS),$(or $(MAKECMDGOALS),all)),)
else
DEPS_OK := $(shell pkg-config --exists $(PKGS) && test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz \
                   $(if $(filter 1,$(MPI)),&& command -v mpicc >/dev/null) && echo yes)
ifneq ($(DEPS_OK),yes)
$(info ddpm: dependencies missing, running scripts/install-deps.sh)
DEPS_RC := $(shell sh scripts/install-deps.sh $(if $(filter 1,$(MPI)),--mpi) >&2; echo $$?)
ifneq ($(DEPS_RC),0)
$(error dependencies are missing: run the command printed above, then make again)
endif
endif
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS   := $(shell pkg-config --libs $(PKGS))
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

$(BUILD)/%.o: %.c $(wildcard include/ddpm/*.h src/nn/*.h src/cli/*.h)
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
	PYTHON=$(PYTHON) sh scripts/bench.sh

install: ddpm
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 ddpm $(DESTDIR)$(PREFIX)/bin/ddpm

clean:
	rm -rf build ddpm

help:
	@sed -n '2,8p' Makefile | sed 's/^# *//'
