#include "ddpm/prof.h"

#include "ddpm/tensor.h"

int g_prof_on;
double g_prof_s[PROF_N];
const char *const PROF_NAMES[PROF_N] = {"conv", "gemm (linear, 1x1)", "norm", "attention", "elementwise", "optimizer"};

double prof_now(void) { return now_s(); }
