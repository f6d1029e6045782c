/* fsio: atomic file writes and small file helpers, shared by every writer.
 * Nothing is ever half-written: data goes to <path>.tmp.<pid>, is flushed and fsynced,
 * then renamed over <path>; the folder is fsynced so the rename survives a crash. */
#ifndef DDPM_FSIO_H
#define DDPM_FSIO_H

#include <stddef.h>
#include <stdio.h>

typedef struct {
    char *path, *tmp;
    FILE *fp;
} AtomicFile;

/* ERUNTIME "<path>: cannot create: <strerror>" on failure. */
int atomic_open(AtomicFile *af, const char *path);
/* fflush + fsync + rename + fsync(dir). ERUNTIME (e.g. disk full) removes the temp file. */
int atomic_commit(AtomicFile *af);
/* Close and remove the temp file. */
void atomic_abort(AtomicFile *af);
/* Whole-buffer convenience: atomic_open + fwrite + atomic_commit. */
int atomic_write(const char *path, const void *data, size_t n);

/* Read a whole file (malloc'd, NUL-terminated beyond size). ERUNTIME names the path. */
int file_read_all(const char *path, char **out, size_t *size);
/* mkdir -p. ERUNTIME names the path. */
int mkdir_p(const char *path);
int path_exists(const char *path);
int is_dir(const char *path);
/* "a/b" (one slash between them), malloc'd. */
char *path_join(const char *a, const char *b);
/* 1 if s[0..n) is strict UTF-8: no overlongs, no surrogates, nothing above U+10FFFF. */
int utf8_valid(const char *s, size_t n);

#endif
