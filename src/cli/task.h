/* Shared by ddpm inpaint, edit and upscale (src/cli/task.c). */
#ifndef DDPM_CLI_TASK_H
#define DDPM_CLI_TASK_H

#include <getopt.h>
#include <stdio.h>

#include "ddpm/cli.h"
#include "ddpm/sampler.h"

typedef struct {
    const char *cmd, *ckpt, *run, *out, *sampler, *spacing;
    int no_ema, n, steps, seed, batch, threads, traj, quiet;
    float eta;
    CliCond cond; /* --class, --guidance, --guidance-rescale */
    char **inputs;
    int n_inputs;
} TaskArgs;

typedef struct {
    Config c;
    Schedule s;
    UNet u;
    SampleOpts so;
    int B, res, C, inited;
    size_t D;
    char **files; /* the input images, folders expanded */
    int n_files;
    CliClasses cl; /* --class: one class for all inputs or one per input */
    int *cls;      /* class of result image g (n_files * n), NULL without --class */
    int n_trans;   /* transitions of the last task_run (trajectory captions) */
    const char *traj_start; /* caption of a trajectory's first frame (NULL: "noise") */
} TaskModel;

/* The options every task command shares, for its --help. */
void task_help(FILE *f);

/* Parse the common options plus `extra` (on_extra gets their codes). Returns 0, 2 on a usage
 * error (printed), -1 after --help (printed). */
int task_parse(TaskArgs *a, const char *cmd, int argc, char **argv, const struct option *extra, int n_extra,
               int (*on_extra)(TaskArgs *, int, const char *), void (*usage)(FILE *));
/* Expand the inputs, load the checkpoint and the model, create the output folder. 0 or the
 * exit code (message printed). */
int task_open(TaskArgs *a, TaskModel *m);
void task_close(TaskModel *m);
/* Load one input as floats in [-1,1] (size x size x C); says once (*noted) when resizing. */
int task_load_image(TaskArgs *a, const char *path, int size, int C, float *out, int *noted);
/* Run the loop for every input x a->n results (image g = input g / n, result g % n), split
 * across MPI ranks and gathered on every rank. out: (n_files * n, D); traj optional. */
void task_run(TaskArgs *a, TaskModel *m, const SampleTask *task, float *out, float *traj);
/* Rank 0 writes per input <name>_strip.png: n_lead frames from lead captioned lead_cap, then
 * the results "result 1".."result n", titled `title` plus the class, guidance and seed (bare
 * with --no-labels); and each result bare as <name>_<k>.png (+ a captioned _traj.png).
 * Returns the exit code. */
int task_write(TaskArgs *a, TaskModel *m, const float *lead, int n_lead, const char *const *lead_cap, const float *out,
               const float *traj, const char *title, const char *what);

#endif
