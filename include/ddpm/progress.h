/* progress: a bar on a TTY (stderr), plain periodic lines otherwise, nothing with quiet. */
#ifndef DDPM_PROGRESS_H
#define DDPM_PROGRESS_H

typedef struct {
    int tty, quiet;
    double t0, last_draw;
    long start;   /* units done before this run (resume), excluded from the rate */
} Progress;

void progress_init(Progress *p, int quiet, long start);
/* Redraw the bar "label done/total [####    ] extra  rate  ETA" (TTY only, at most 10/s). */
void progress_bar(Progress *p, const char *label, long done, long total, const char *unit, const char *extra);
/* A plain line on stderr when not a TTY (and not quiet). */
void progress_line(Progress *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Finish the bar line (newline) if one was drawn. */
void progress_end(Progress *p);

#endif
