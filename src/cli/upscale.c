/* ddpm upscale: ILVR (Choi et al. 2021) on the one reverse loop: after each step the
 * low-frequency part of x is replaced by that of the low-resolution reference noised to the
 * same level. */
#include <math.h>
#include <string.h>

#include "ddpm/dist.h"
#include "ddpm/err.h"
#include "ddpm/image.h"
#include "task.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddpm upscale IMG... --factor F [-o DIR] [-n N] [options]\n"
            "\n"
            "Samples images of the model's resolution guided by a low-resolution one (ILVR): after\n"
            "each reverse step the low-frequency part of x (each FxF block's mean) is replaced by\n"
            "that of the reference noised to the same step. Each input is the low-resolution image,\n"
            "of the model's resolution / F (resized to that when it differs, and said so). Without\n"
            "--stop, the result downsampled by F (box filter) matches the input.\n"
            "Writes DIR/<name>_strip.png (low-res input, enlarged | result 1..n, captioned) and DIR/<name>_<k>.png.\n"
            "\n"
            "upscale options:\n"
            "  --factor F          downsampling factor, divides the resolution (default 4)\n"
            "  --stop S            guide only the steps down to t = S T, in [0, 1] (default 0: all;\n"
            "                      larger S leaves the model more freedom in the details)\n"
            "\n");
    task_help(f);
}

/* upscale's own options. */
typedef struct {
    int factor;  /* --factor F */
    float stop;  /* --stop S */
} Upscale;

static int on_opt(void *ctx, int o, const char *v) {
    Upscale *u = ctx;
    if (o == 'F') return cli_int("upscale", "--factor", v, 1, 1024, &u->factor);
    if (o == 'P') return cli_float("upscale", "--stop", v, 0, 1, &u->stop);
    return CLI_NOT_MINE;
}

int cmd_upscale(int argc, char **argv) {
    static const struct option opts[] = {TASK_OPTIONS, {"factor", required_argument, 0, 'F'}, {"stop", required_argument, 0, 'P'},
                                         {0, 0, 0, 0}};
    TaskArgs a;
    Upscale up = {.factor = 4, .stop = 0};
    int rc = task_parse(&a, "upscale", argc, argv, opts, on_opt, &up, usage);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    TaskModel m;
    if ((rc = task_open(&a, &m))) goto done;
    int res = m.res, C = m.C, F = up.factor, lr = res / F;
    if (res % F) {
        rc = cli_usage_error("upscale", "--factor %d does not divide the model's resolution %d", F, res);
        goto done;
    }
    size_t D = m.D, d = (size_t)lr * lr * C;
    int nf = m.n_files, n = nf * a.opt.n, noted = 0;
    float *small = xmalloc(sizeof(float) * d), *ref = xmalloc(sizeof(float) * nf * D);
    float *out = xmalloc(sizeof(float) * n * D), *traj = a.opt.traj ? xmalloc(sizeof(float) * n * a.opt.traj * D) : NULL;
    for (int i = 0; i < nf && !rc; i++) {
        if ((rc = task_load_image(&a, m.files[i], lr, C, small, &noted))) break;
        for (int y = 0; y < res; y++) /* nearest up: the reference is constant on each F x F block */
            for (int x = 0; x < res; x++)
                for (int c = 0; c < C; c++) ref[i * D + ((size_t)y * res + x) * C + c] = small[((size_t)(y / F) * lr + x / F) * C + c];
    }
    if (rc) {
        rc = cli_fail(rc);
        goto free_all;
    }
    int *lv = xmalloc(sizeof(int) * (m.cm.s.T + 2));
    int nl = sample_levels(lv, &m.cm.so, &m.cm.s, m.cm.s.T);
    SampleTask task = sample_task_plain(lv, nl);
    task.ref = ref, task.per_ref = a.opt.n, task.constraint = CONSTRAINT_ILVR, task.factor = F;
    task.ilvr_stop = up.stop > 0 ? (int)ceil(up.stop * m.cm.s.T) : -1;
    if (dist_rank() == 0)
        fprintf(stderr, "ddpm upscale: %dx%d -> %dx%d (ILVR, factor %d), %d network evaluations per image (%s)\n", lr, lr, res, res, F,
                levels_evals(lv, nl), sampler_name(m.cm.so.kind));
    task_run(&a, &m, &task, out, traj);
    free(lv);
    static const char *const lead_cap[] = {"low-res"};
    char title[160];
    snprintf(title, sizeof title, "upscale: ILVR %dx%d -> %dx%d, %s %d steps", lr, lr, res, res, sampler_name(m.cm.so.kind), nl - 1);
    rc = task_write(&a, &m, ref, 1, lead_cap, out, traj, title, "input enlarged | results");
free_all:
    free(small), free(ref), free(out), free(traj);
done:
    task_close(&m);
    return rc;
}
