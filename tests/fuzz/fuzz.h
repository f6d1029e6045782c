/* Shared by the libFuzzer harnesses (make fuzz): the readers under test take a path, so
 * each input is written to a file in a private temporary folder first. Every harness
 * asserts the reader's contract: it returns DDPM_OK with a consistent result, or an error
 * code with a one-line message; never a crash, a sanitizer report or a leak. */
#ifndef DDPM_FUZZ_H
#define DDPM_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ddpm/err.h"

static char fz_dir[64];

static inline void fz_init(void) {
    if (fz_dir[0]) return;
    const char *base = getenv("TMPDIR");
    snprintf(fz_dir, sizeof fz_dir, "%.40s/ddpm_fuzz_XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(fz_dir)) {
        perror("mkdtemp");
        abort();
    }
}

/* Write data to fz_dir/name; returns the path (static buffer). */
static inline const char *fz_file(const char *name, const uint8_t *data, size_t n) {
    static char p[256];
    fz_init();
    snprintf(p, sizeof p, "%s/%s", fz_dir, name);
    FILE *f = fopen(p, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f)) {
        perror(p);
        abort();
    }
    return p;
}

/* The contract on errors: a known code and a non-empty single-line message. */
static inline void fz_check_error(int rc) {
    if (rc != DDPM_EUSAGE && rc != DDPM_ERUNTIME) {
        fprintf(stderr, "unexpected return code %d\n", rc);
        abort();
    }
    const char *m = err_msg();
    if (!m || !*m || strchr(m, '\n')) {
        fprintf(stderr, "error message empty or more than one line: \"%s\"\n", m ? m : "(null)");
        abort();
    }
}

#endif
