/* prof: wall time per kind of work, for `ddpm bench --profile`. Off by default; when
 * on, PROF(kind, call) adds the call's duration to its kind. */
#ifndef DDPM_PROF_H
#define DDPM_PROF_H

enum { PROF_CONV, PROF_GEMM, PROF_NORM, PROF_ATTN, PROF_ELEM, PROF_OPTIM, PROF_N };

extern int g_prof_on;
extern double g_prof_s[PROF_N];
extern const char *const PROF_NAMES[PROF_N];
double prof_now(void);

#define PROF(kind, call)                                    \
    do {                                                    \
        if (g_prof_on) {                                    \
            double _t = prof_now();                         \
            call;                                           \
            g_prof_s[kind] += prof_now() - _t;              \
        } else {                                            \
            call;                                           \
        }                                                   \
    } while (0)

#endif
