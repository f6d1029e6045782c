/* err: one error slot per thread, set where a failure is found, printed by the CLI.
 *
 * Library code never calls exit(). A failing function sets the message with
 * err_set() and returns the exit code the CLI should use:
 *   DDPM_ERUNTIME (1) I/O, corrupt files, NaN      DDPM_EUSAGE (2) bad options or config.
 * The CLI prints "ddpm: <message>" on stderr and exits with that code. */
#ifndef DDPM_ERR_H
#define DDPM_ERR_H

#include <stdio.h>
#include <stdlib.h>

enum { DDPM_OK = 0, DDPM_ERUNTIME = 1, DDPM_EUSAGE = 2 };

/* Store a printf-style message; returns code so callers can `return err_set(...)`. */
int err_set(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The last message set on this thread ("" if none). */
const char *err_msg(void);

/* Always-on precondition check for programming errors (not user errors):
 * prints file:line and aborts. Hot loops use plain assert(). */
#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "ddpm: internal error at %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
            abort();                                                            \
        }                                                                       \
    } while (0)

/* malloc/calloc that CHECK for NULL (out of memory is not recoverable here). */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
/* A malloc'd copy of s, CHECKed likewise. */
char *xstrdup(const char *s);

#endif
