#include "ddpm/prof.h"

#include "ddpm/gemm.h"
#include "ddpm/platform.h"

const char *const PROF_NAMES[PROF_N] = {"conv", "gemm (linear, 1x1)", "norm", "attention", "elementwise", "optimizer"};

double prof_now(const Prof *p) { return p->cpu ? cpu_now_s() : now_s(); }
