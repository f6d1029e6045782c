/* Helpers for tests that run the ddpm binary (DDPM_BIN, default ./ddpm) like a user. */
#ifndef DDPM_CLI_UTIL_H
#define DDPM_CLI_UTIL_H

#include <dirent.h>
#include <stb_image.h>
#include <stdarg.h>
#include <sys/wait.h>

#include "ddpm/safetensors.h"
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

/* The network evaluations the reverse loop counted, from the line a sampling command prints
 * under --verbose ("ddpm <cmd>: network evaluations (counted): N in all, M per image"): M,
 * and N in *all (may be NULL); -1 when the line is not there. */
static inline long counted_evals(const char *err, long *all) {
    static const char key[] = "network evaluations (counted): ";
    const char *p = strstr(err, key);
    long n, m;
    if (!p || sscanf(p + sizeof key - 1, "%ld in all, %ld per image", &n, &m) != 2) return -1;
    if (all) *all = n;
    return m;
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

/* The largest difference, in grey levels, between two PNGs' pixels; -1 if either cannot be
 * read or their sizes or channel counts differ. Images sampled with another --batch,
 * --threads or rank count agree within float32 rounding (OpenBLAS may sum a product in
 * another order: test_unet's order_bound, relative 1e-5 and below), far below half a grey
 * level (1/510 of the range), so 8-bit rounding can move a pixel by one level at most:
 * such comparisons assert png_maxdiff <= 1. */
static inline int png_maxdiff(const char *a, const char *b) {
    int wa, ha, ca, wb, hb, cb, m = -1;
    unsigned char *x = stbi_load(a, &wa, &ha, &ca, 0), *y = stbi_load(b, &wb, &hb, &cb, 0);
    if (x && y && wa == wb && ha == hb && ca == cb) {
        m = 0;
        for (size_t i = 0; i < (size_t)wa * ha * ca; i++) m = abs(x[i] - y[i]) > m ? abs(x[i] - y[i]) : m;
    }
    if (x) stbi_image_free(x);
    if (y) stbi_image_free(y);
    return m;
}

/* 1 if two files have the same bytes. */
static inline int same_file(const char *a, const char *b) {
    char x[1 << 15], y[1 << 15];
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        size_t na = fread(x, 1, sizeof x, fa), nb = fread(y, 1, sizeof y, fb);
        if (na != nb || memcmp(x, y, na)) same = 0;
        if (na == 0) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

/* 1 if dir does not exist or holds no file (after a refused command: nothing half-written). */
static inline int empty_dir(const char *dir) {
    DIR *dd = opendir(dir);
    if (!dd) return 1;
    struct dirent *e;
    int n = 0;
    while ((e = readdir(dd)))
        if (e->d_name[0] != '.') n++;
    closedir(dd);
    return n == 0;
}

/* 1 if two safetensors files hold the same tensor names and sizes; *maxrel is the largest
 * relative difference of any float in them (0: bitwise the same values; 1e9 if unreadable). */
static inline int same_tensors(const char *a, const char *b, double *maxrel) {
    StFile fa, fb;
    *maxrel = 1e9;
    if (st_read(&fa, a)) return 0;
    if (st_read(&fb, b)) {
        st_free(&fa);
        return 0;
    }
    int ok = fa.n == fb.n;
    *maxrel = 0;
    for (int i = 0; ok && i < fa.n; i++) {
        const StEntry *eb = st_find(&fb, fa.e[i].name);
        if (!eb || eb->end - eb->begin != fa.e[i].end - fa.e[i].begin) {
            ok = 0;
            break;
        }
        const float *x = (const float *)(fa.data + fa.e[i].begin), *y = (const float *)(fb.data + eb->begin);
        for (size_t j = 0; j < (fa.e[i].end - fa.e[i].begin) / 4; j++)
            *maxrel = fmax(*maxrel, fabs(x[j] - y[j]) / (fabs(y[j]) + 1e-6));
    }
    st_free(&fa);
    st_free(&fb);
    return ok;
}

/* The loss column of a run's log.csv (at most max rows; returns the row count) and, with
 * rows != NULL, the rows without their timing columns. */
static inline int read_log(const char *dir, double *loss, int max, char *rows, size_t rn) {
    char p[700], line[512];
    snprintf(p, sizeof p, "%s/log.csv", dir);
    FILE *f = fopen(p, "r");
    int n = 0;
    if (rows) rows[0] = 0;
    if (!f) return 0;
    while (fgets(line, sizeof line, f)) {
        long s;
        double l, lr, gn;
        if (sscanf(line, "%ld,%lf,%lf,%lf", &s, &l, &lr, &gn) != 4) continue;
        if (n < max) loss[n] = l;
        n++;
        if (rows) snprintf(rows + strlen(rows), rn - strlen(rows), "%ld,%.6g,%.6g,%.6g\n", s, l, lr, gn);
    }
    fclose(f);
    return n;
}

#endif
