/* Transitional: the GEMM, the arena and the platform facts now have headers of their own. */
#ifndef DDPM_TENSOR_H
#define DDPM_TENSOR_H
#include "ddpm/arena.h"
#include "ddpm/gemm.h"
#include "ddpm/platform.h"
#endif
