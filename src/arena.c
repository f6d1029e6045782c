#include "ddpm/arena.h"

#include <stdlib.h>
#include <string.h>

#include "ddpm/err.h"

#define ARENA_ALIGN 64

size_t arena_need(size_t n_floats) {
    size_t b = n_floats * sizeof(float);
    return (b + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
}

void arena_init(Arena *a, size_t bytes) {
    a->cap = bytes;
    a->used = 0;
    a->base = NULL;
    if (bytes) {
        a->base = aligned_alloc(ARENA_ALIGN, (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN);
        CHECK(a->base, "out of memory allocating arena of %zu bytes", bytes);
    }
}

float *arena_floats(Arena *a, size_t n) {
    size_t need = arena_need(n);
    CHECK(a->used + need <= a->cap, "arena overflow: %zu + %zu > %zu", a->used, need, a->cap);
    float *p = (float *)(a->base + a->used);
    a->used += need;
    return p;
}

void arena_reset(Arena *a) { a->used = 0; }

void arena_free(Arena *a) {
    free(a->base);
    memset(a, 0, sizeof *a);
}
