/* ParamTable: the (name, shape, offset) entries of a parameter block, appended to by the
 * modules of text_nn.h with the layout rules of src/unet.c (64-byte aligned tensors, except
 * a joined one, which follows its predecessor). */
#include <stdarg.h>
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/text_nn.h"

static size_t add(ParamTable *t, int joined, int init, int fan_in, int ndim, const int *shape, const char *fmt,
                  va_list ap) {
    CHECK(ndim >= 1 && ndim <= 4, "ptable_add: ndim %d", ndim);
    CHECK(!joined || t->n > 0, "ptable_add_joined: no tensor to join");
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->P = realloc(t->P, sizeof(Param) * t->cap);
        CHECK(t->P, "out of memory");
    }
    Param *p = &t->P[t->n++];
    memset(p, 0, sizeof *p);
    int len = vsnprintf(p->name, sizeof p->name, fmt, ap);
    CHECK(len > 0 && (size_t)len < sizeof p->name, "ptable_add: parameter name too long (%d chars)", len);
    p->ndim = ndim;
    p->n = 1;
    for (int i = 0; i < ndim; i++) {
        CHECK(shape[i] > 0, "ptable_add: %s: dimension %d is %d", p->name, i, shape[i]);
        p->shape[i] = shape[i];
        p->n *= (size_t)shape[i];
    }
    p->off = joined ? p[-1].off + p[-1].n : t->n_floats;
    p->init = init;
    p->fan_in = fan_in;
    t->n_floats = (p->off + p->n + 15) / 16 * 16;
    return p->off;
}

size_t ptable_add(ParamTable *t, int init, int fan_in, int ndim, const int *shape, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    size_t off = add(t, 0, init, fan_in, ndim, shape, fmt, ap);
    va_end(ap);
    return off;
}

size_t ptable_add_joined(ParamTable *t, int init, int fan_in, int ndim, const int *shape, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    size_t off = add(t, 1, init, fan_in, ndim, shape, fmt, ap);
    va_end(ap);
    return off;
}

const Param *ptable_find(const ParamTable *t, const char *name) {
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->P[i].name, name)) return &t->P[i];
    return NULL;
}
