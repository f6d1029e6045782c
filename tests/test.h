/* Minimal test harness: every check counts, the binary prints "N passed, N failed" last
 * (followed by ", N skipped" when checks could not run here) and exits 1 if anything
 * failed. Checks print their measured value so a log shows how close each one came to its
 * bound. A check that cannot run on this machine (no OpenMP, a missing dataset) is a
 * T_SKIP saying why, never a pass. */
#ifndef DDPM_TEST_H
#define DDPM_TEST_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_pass, t_fail, t_skip;

#define T_OK(cond, ...)                                                     \
    do {                                                                    \
        if (cond) {                                                         \
            t_pass++;                                                       \
            printf("  ok   ");                                              \
        } else {                                                            \
            t_fail++;                                                       \
            printf("  FAIL %s:%d: ", __FILE__, __LINE__);                   \
        }                                                                   \
        printf(__VA_ARGS__);                                                \
        printf("\n");                                                       \
        fflush(stdout);                                                     \
    } while (0)

/* A check that did not run, and why: "  skip <why>", counted as skipped. */
#define T_SKIP(...)                                                         \
    do {                                                                    \
        t_skip++;                                                           \
        printf("  skip ");                                                  \
        printf(__VA_ARGS__);                                                \
        printf("\n");                                                       \
        fflush(stdout);                                                     \
    } while (0)

/* |a-b| <= tol, printing both. */
#define T_NEAR(a, b, tol, what)                                                          \
    do {                                                                                 \
        double _a = (a), _b = (b);                                                       \
        T_OK(fabs(_a - _b) <= (tol), "%s: %.9g vs %.9g (|d| %.3g, tol %.3g)", what, _a, _b, \
             fabs(_a - _b), (double)(tol));                                              \
    } while (0)

static inline int t_done(void) {
    printf("%d passed, %d failed", t_pass, t_fail);
    if (t_skip) printf(", %d skipped", t_skip);
    printf("\n");
    return t_fail ? 1 : 0;
}

/* Relative L2 difference ||a-b|| / max(||b||, tiny). */
static inline double t_rel_l2(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return sqrt(num) / (den > 1e-30 ? sqrt(den) : 1e-15);
}

/* A temp folder unique to this test binary run (mkdtemp under /tmp). */
static inline const char *t_tmpdir(void) {
    static char dir[256];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/ddpm_test_XXXXXX");
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            exit(1);
        }
    }
    return dir;
}

/* t_tmpdir()/<printf-formatted name>, in one of 16 rotating buffers (so a call can take a
 * few at once) */
static inline char *t_path(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline char *t_path(const char *fmt, ...) {
    static char buf[16][512];
    static int k;
    char *p = buf[k++ & 15];
    int n = snprintf(p, 512, "%s/", t_tmpdir());
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p + n, 512 - n, fmt, ap);
    va_end(ap);
    return p;
}

#endif
