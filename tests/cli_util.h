/* Helpers for tests that run the ddpm binary (DDPM_BIN, default ./ddpm) like a user. */
#ifndef DDPM_CLI_UTIL_H
#define DDPM_CLI_UTIL_H

#include <stdarg.h>
#include <sys/wait.h>

#include "test.h"

static char g_out[1 << 16], g_err[1 << 16];

static inline const char *bin(void) {
    const char *b = getenv("DDPM_BIN");
    return b ? b : "./ddpm";
}

static inline void slurp(const char *path, char *buf, size_t n) {
    FILE *f = fopen(path, "rb");
    size_t k = f ? fread(buf, 1, n - 1, f) : 0;
    buf[k] = 0;
    if (f) fclose(f);
}

/* Run "ddpm <args>" through the shell; returns the exit code; stdout/stderr in g_out/g_err. */
static inline int run(const char *fmt, ...) {
    char args[4096], cmd[8192], o[512], e[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(o, sizeof o, "%s/stdout", t_tmpdir());
    snprintf(e, sizeof e, "%s/stderr", t_tmpdir());
    snprintf(cmd, sizeof cmd, "%s %s >%s 2>%s </dev/null", bin(), args, o, e);
    int st = system(cmd);
    slurp(o, g_out, sizeof g_out);
    slurp(e, g_err, sizeof g_err);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* Lines in s. */
static inline int n_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static inline void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

#endif
