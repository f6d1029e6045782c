/* Shared by ddpm inpaint, edit and upscale (src/cli/task.c). */
#ifndef DDPM_CLI_TASK_H
#define DDPM_CLI_TASK_H

#include <getopt.h>
#include <stdio.h>

#include "ddpm/cli.h"
#include "ddpm/sampler.h"

struct TaskModel;

typedef struct {
    const char *cmd;
    CliSampleArgs opt;    /* the options every sampling command takes */
    char **inputs;        /* the image arguments, as given */
    int n_inputs;
    char out_default[64]; /* "out/<cmd>" */
    /* run by task_open after the model is open and before the output folder is made, so that
     * a refused input or model writes nothing (NULL: none); returns 0 or the exit code with
     * the message printed */
    int (*prepare)(struct TaskModel *m, void *ctx);
    void *prepare_ctx;
} TaskArgs;

typedef struct TaskModel {
    CliModel cm;   /* the model, cm.total = n_files x -n results */
    int res, C;    /* the model's images: res x res x C = D floats */
    size_t D;
    char **files;  /* the input images, folders expanded */
    int n_files;
    int n_trans;   /* transitions of the last task_run (trajectory captions) */
    const char *traj_start; /* caption of a trajectory's first frame (NULL: "noise") */
} TaskModel;

/* The options every task command shares, for its --help. */
void task_help(FILE *f);

/* Parse argv: opts lists TASK_OPTIONS and the command's own options, whose codes go to
 * on_opt(ctx, code, value). Returns 0, CLI_HELP after --help (printed), or the exit code of a
 * usage error (printed). */
#define TASK_OPTIONS CLI_SAMPLE_OPTIONS
int task_parse(TaskArgs *a, const char *cmd, int argc, char **argv, const struct option *opts, CliOptFn on_opt, void *ctx,
               void (*usage)(FILE *));
/* Expand the inputs, open the model (cli_model_open), create the output folder. 0 or the
 * exit code (message printed); task_close in both cases. */
int task_open(TaskArgs *a, TaskModel *m);
void task_close(TaskModel *m);
/* Load one input as floats in [-1,1] (size x size x C); says once (*noted) when resizing. */
int task_load_image(TaskArgs *a, const char *path, int size, int C, float *out, int *noted);
/* Run the loop for every input x -n results (image g = input g / n, result g % n), split
 * across MPI ranks and gathered on every rank. out: (n_files * n, D); traj optional. */
void task_run(TaskArgs *a, TaskModel *m, const SampleTask *task, float *out, float *traj);
/* Rank 0 writes per input <name>_strip.png: n_lead frames from lead captioned lead_cap, then
 * the results "result 1".."result n", titled `title` plus the class, guidance and seed (bare
 * with --no-labels); and each result bare as <name>_<k>.png (+ a captioned _traj.png).
 * Returns the exit code. */
int task_write(TaskArgs *a, TaskModel *m, const float *lead, int n_lead, const char *const *lead_cap, const float *out,
               const float *traj, const char *title, const char *what);

#endif
