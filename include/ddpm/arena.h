/* arena: one allocation, bump-pointer sub-allocations aligned to 64 bytes. Sized up front;
 * arena_floats CHECKs that it fits (sizing is a programming contract). */
#ifndef DDPM_ARENA_H
#define DDPM_ARENA_H

#include <stddef.h>

typedef struct {
    char *base;
    size_t cap, used;
} Arena;

void arena_init(Arena *a, size_t bytes);
float *arena_floats(Arena *a, size_t n);
void arena_reset(Arena *a);
void arena_free(Arena *a);
/* Bytes arena_floats(n) consumes (including alignment), for sizing passes. */
size_t arena_need(size_t n_floats);
/* One statement of a two-pass sizing function: adds n floats to `bytes` and, when the arena
 * `a` is given, points `ptr` at them (NULL in the counting pass, never NULL + offset). */
#define ARENA_TAKE(a, bytes, ptr, n)                 \
    do {                                             \
        size_t _n = (size_t)(n);                     \
        (bytes) += arena_need(_n);                   \
        (ptr) = (a) ? arena_floats((a), _n) : NULL;  \
    } while (0)

#endif
