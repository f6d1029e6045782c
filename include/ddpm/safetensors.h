/* safetensors: safetensors files (https://huggingface.co/docs/safetensors format):
 *   8 bytes little-endian u64 N = header length, then N bytes of JSON:
 *   {"__metadata__": {"k": "v", ...}, "name": {"dtype": "F32", "shape": [..],
 *    "data_offsets": [begin, end]}, ...}, then the raw little-endian data; offsets are
 *   relative to the byte after the header, tensors contiguous from offset 0.
 * Writing is atomic: <path>.tmp.<pid>, fwrite, fflush, fsync, rename, fsync of the dir.
 * Reading validates everything and never crashes on bad input. */
#ifndef DDPM_SAFETENSORS_H
#define DDPM_SAFETENSORS_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include "ddpm/fsio.h"

#define ST_MAX_DIM 8

typedef struct {
    const char *name;
    int ndim;
    int64_t shape[ST_MAX_DIM];
    const float *data;     /* F32 */
} StTensorOut;

/* Write F32 tensors and string metadata (meta_keys[i] -> meta_vals[i]). ERUNTIME on any
 * I/O failure (message names the path and strerror), leaving no partial file behind. */
int st_write(const char *path, const StTensorOut *t, int n, const char *const *meta_keys,
             const char *const *meta_vals, int n_meta);

typedef struct {
    char *name;
    char dtype[8];         /* "F32", "F16", "BF16", "F64", "I64", "I32", "U8", ... */
    int ndim;
    int64_t shape[ST_MAX_DIM];
    uint64_t begin, end;   /* byte offsets into data */
} StEntry;

typedef struct {
    char *path;
    uint8_t *buf;          /* whole file */
    size_t size;
    const uint8_t *data;   /* buf + 8 + header_len */
    size_t data_size;
    StEntry *e;
    int n;
    char **meta_k, **meta_v;
    int n_meta;
} StFile;

/* Read and validate: file >= 8 bytes; header length <= file size - 8 and <= 100 MB; header
 * is valid JSON object; every entry has a known dtype, non-negative shape, offsets with
 * end - begin == numel * dtype size, inside the data section, not overlapping, and
 * together covering it contiguously; metadata values are strings. ERUNTIME with
 * "<path>: <what is wrong>" otherwise. */
int st_read(StFile *f, const char *path);
void st_free(StFile *f);
const StEntry *st_find(const StFile *f, const char *name);
const char *st_meta(const StFile *f, const char *key);
/* "[a, b, c]" of a shape, for messages (cut short to fit cap). */
void st_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape);
/* Copy an F32 tensor named `name` with the expected shape into dst; ERUNTIME naming the
 * tensor if it is missing, not F32, or has another shape. */
int st_get_f32(const StFile *f, const char *name, int ndim, const int64_t *shape, float *dst);

#endif
