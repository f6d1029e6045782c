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

#endif
