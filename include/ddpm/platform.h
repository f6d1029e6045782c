/* platform: what this machine and this build are, and the clock. */
#ifndef DDPM_PLATFORM_H
#define DDPM_PLATFORM_H

/* The CPU's model name from /proc/cpuinfo ("unknown CPU" if none), static storage. */
const char *cpu_model_name(void);
/* The vector path ddpm's own (non-GEMM) kernels were built for: "avx512", "avx2" or
 * "portable". */
const char *kernel_isa(void);
/* Monotonic clock in seconds. */
double now_s(void);
/* CPU time of the whole process (every thread), in seconds. */
double cpu_now_s(void);

#endif
