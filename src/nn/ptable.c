/* ParamTable: the (name, shape, offset) entries of a parameter block, appended to by the
 * modules of text_nn.h with the layout rules of src/unet.c (64-byte aligned tensors). */
#include <stdarg.h>
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/text_nn.h"

size_t ptable_add(ParamTable *t, int init, int fan_in, int ndim, const int *shape, const char *fmt, ...) {
    CHECK(ndim >= 1 && ndim <= 4, "ptable_add: ndim %d", ndim);
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->P = realloc(t->P, sizeof(Param) * t->cap);
        CHECK(t->P, "out of memory");
    }
    Param *p = &t->P[t->n++];
    memset(p, 0, sizeof *p);
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    CHECK(len > 0 && (size_t)len < sizeof p->name, "ptable_add: parameter name too long (%d chars)", len);
    p->ndim = ndim;
    p->n = 1;
    for (int i = 0; i < ndim; i++) {
        CHECK(shape[i] > 0, "ptable_add: %s: dimension %d is %d", p->name, i, shape[i]);
        p->shape[i] = shape[i];
        p->n *= (size_t)shape[i];
    }
    p->off = t->n_floats;
    p->init = init;
    p->fan_in = fan_in;
    t->n_floats += (p->n + 15) / 16 * 16;
    return p->off;
}

const Param *ptable_find(const ParamTable *t, const char *name) {
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->P[i].name, name)) return &t->P[i];
    return NULL;
}
