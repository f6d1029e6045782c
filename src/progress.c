#include "ddpm/progress.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ddpm/platform.h"

void progress_init(Progress *p, int quiet, long start) {
    memset(p, 0, sizeof *p);
    p->quiet = quiet;
    p->tty = isatty(2);
    p->t0 = now_s();
    p->last_draw = -1;
    p->start = start;
}

static void fmt_time(char *b, size_t n, double s) {
    if (s < 0 || s > 1e7) snprintf(b, n, "--:--");
    else if (s >= 3600) snprintf(b, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
    else snprintf(b, n, "%02d:%02d", (int)(s / 60), (int)s % 60);
}

void progress_bar(Progress *p, const char *label, long done, long total, const char *unit, const char *extra) {
    if (p->quiet || !p->tty) return;
    double t = now_s();
    if (done < total && p->last_draw >= 0 && t - p->last_draw < 0.1) return;
    p->last_draw = t;
    double el = t - p->t0, rate = el > 0 ? (done - p->start) / el : 0;
    char eta[16], bar[32];
    fmt_time(eta, sizeof eta, rate > 0 ? (total - done) / rate : -1);
    int w = 24, f = total > 0 ? (int)((double)done / total * w) : 0;
    for (int i = 0; i < w; i++) bar[i] = i < f ? '#' : '.';
    bar[w] = 0;
    fprintf(stderr, "\r%s %ld/%ld [%s] %s  %.1f %s/s  ETA %s\033[K", label, done, total, bar, extra ? extra : "", rate, unit, eta);
    fflush(stderr);
}

void progress_line(Progress *p, const char *fmt, ...) {
    if (p->quiet || p->tty) return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

void progress_end(Progress *p) {
    if (!p->quiet && p->tty && p->last_draw >= 0) fputc('\n', stderr);
    p->last_draw = -1;
}
