/* prof: wall time per kind of work, for `ddpm bench --profile`. PROF_TO(p, kind, call) adds
 * the call's duration to p->s[kind] when p is not NULL and p->on; otherwise it only makes
 * the call. */
#ifndef DDPM_PROF_H
#define DDPM_PROF_H

enum { PROF_CONV, PROF_GEMM, PROF_NORM, PROF_ATTN, PROF_ELEM, PROF_OPTIM, PROF_N };

typedef struct Prof {
    int on;            /* timing now (bench turns it off for warm-up and its other runs) */
    int cpu;           /* time with the process's CPU clock instead of the wall clock */
    double s[PROF_N];  /* seconds per kind of work */
} Prof;

extern const char *const PROF_NAMES[PROF_N];
/* now on p's clock */
double prof_now(const Prof *p);

#define PROF_TO(p, kind, call)                              \
    do {                                                    \
        Prof *_p = (p);                                     \
        if (_p && _p->on) {                                 \
            double _t = prof_now(_p);                       \
            call;                                           \
            _p->s[kind] += prof_now(_p) - _t;               \
        } else {                                            \
            call;                                           \
        }                                                   \
    } while (0)

#endif
