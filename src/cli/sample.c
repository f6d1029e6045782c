/* ddpm sample: images from a checkpoint, DDPM, DDIM or DPM-Solver++(2M), per-image seeds. */
#include <getopt.h>
#include <string.h>
#include <unistd.h>

#include "ddpm/cli.h"
#include "ddpm/dist.h"
#include "ddpm/draw.h"
#include "ddpm/err.h"
#include "ddpm/fsio.h"
#include "ddpm/image.h"
#include "ddpm/checkpoint.h"
#include "ddpm/progress.h"
#include "ddpm/sampler.h"
#include "ddpm/platform.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddpm sample [-n N] [-o DIR] [options]\n"
            "\n"
            "Generates images by reversing the diffusion from pure noise with a trained model.\n"
            "Writes DIR/000000.png ... and DIR/grid.png. The model's config comes from the checkpoint.\n"
            "\n"
            "which model (EMA weights unless --no-ema):\n"
            "  --ckpt FILE         a checkpoint (.safetensors)\n"
            "  --run DIR           DIR/latest.safetensors\n"
            "                      (neither: the most recently modified runs/*/latest.safetensors)\n"
            "  --no-ema            use the raw weights instead of the EMA\n"
            "\n"
            "options:\n"
            "  -n N                number of images (default 16)\n"
            "  -o, --out DIR       output folder (default out/)\n"
            "  --sampler S         ddpm (ancestral, all T steps) | ddim | dpm++2m (DPM-Solver++(2M), fewest\n"
            "                      evaluations for the quality) (default: the config's sample.sampler)\n"
            "  --steps K           network evaluations per image (default sample.steps; ddpm: T)\n"
            "  --eta E             DDIM eta, 0 = deterministic (default sample.eta)\n"
            "  --spacing S         timesteps: leading | trailing | linspace | quadratic | karras\n"
            "                      (default sample.spacing; auto = linspace, measured best)\n"
            "  --var V             DDPM variance: small (posterior) | large (beta_t)\n"
            "  --no-clip           do not clip the predicted x0 to [-1, 1]\n"
            "  --seed N            seed; image i always gets the same noise (default sample.seed)\n"
            "  --batch B           images per forward pass (default sample.batch)\n"
            "  --trajectory K      also write DIR/NNNNNN_traj.png: K frames from noise to image\n"
            "\n"
            "class-conditional models (model.class_cond):\n"
            "  --class C           a class name (case-insensitive, e.g. sneaker), an index, a comma list\n"
            "                      (sneaker,bag) or all: -n images of each, one grid row per class;\n"
            "                      DIR/classes.csv records each file's class. Without --class: no class\n"
            "%s"
            "%s"
            "\n"
            "  --threads N         threads (default: all cores)\n"
            "  --no-labels         bare grid.png and trajectory strips (no captions, no scaling)\n"
            "  -q, --quiet         no progress bar\n"
            "%s"
            "%s"
            "  -h, --help          this help\n",
            CLI_GUIDANCE_HELP, CLI_PROMPT_HELP, CLI_LORA_HELP, CLI_VERBOSE_HELP);
}

/* DIR/classes.csv: "NNNNNN.png,class_index" per image, atomically. */
static int write_classes_csv(const char *path, const int *cls, int n) {
    size_t cap = (size_t)n * 24 + 1, len = 0;
    char *buf = xmalloc(cap);
    for (int i = 0; i < n; i++) len += (size_t)snprintf(buf + len, cap - len, "%06d.png,%d\n", i, cls[i]);
    int rc = atomic_write(path, buf, len);
    free(buf);
    return rc;
}

static void on_progress(void *ctx, long done, long total) { progress_bar(ctx, "sample", done, total, "img-steps", NULL); }

static int on_opt(void *ctx, int o, const char *v) { return cli_sample_opt("sample", ctx, o, v); }

/* What the run made, for the captions and the summary line. */
typedef struct {
    char gd[96];   /* ", guidance S[ rescaled PHI]" for a class-conditional run, else "" */
    int K;         /* network evaluations per image */
    const char *weights; /* "EMA" or "raw" */
} Run;

static void describe(Run *r, const CliModel *m) {
    const Config *c = &m->c;
    r->gd[0] = 0;
    if (m->cl.want || m->n_prompts) {
        snprintf(r->gd, sizeof r->gd, ", guidance %g%s", c->sample.guidance, c->sample.guidance_rescale > 0 ? " rescaled" : "");
        if (c->sample.guidance_rescale > 0) snprintf(r->gd + strlen(r->gd), sizeof r->gd - strlen(r->gd), " %g", c->sample.guidance_rescale);
    }
    r->K = sample_n_steps(&m->so, &m->s);
    r->weights = m->weights == CKPT_RAW || m->weights == CKPT_NO_EMA ? "raw" : "EMA";
}

/* This rank's images first..first+cnt-1 as DIR/NNNNNN.png, and their trajectory strips. */
static int write_images(const CliSampleArgs *a, const CliModel *m, const Run *r, const float *imgs, const float *tr, int first,
                        int cnt) {
    int res = m->u.res, C = m->u.C_img, rc = 0;
    size_t D = (size_t)res * res * C;
    char **fcap = a->traj ? draw_trajectory_captions(a->traj, r->K) : NULL;
    DrawCaptions tcap = {.cell = (const char *const *)fcap};
    uint8_t *px = xmalloc(D);
    for (int i = 0; i < cnt && !rc; i++) {
        char p[1200];
        for (size_t j = 0; j < D; j++) px[j] = image_to_u8(imgs[(size_t)(first + i) * D + j]);
        snprintf(p, sizeof p, "%s/%06d.png", a->out, first + i);
        rc = image_write_png(p, px, res, res, C);
        if (!rc && a->traj) {
            snprintf(p, sizeof p, "%s/%06d_traj.png", a->out, first + i);
            rc = draw_grid_png(p, tr + (size_t)i * a->traj * D, a->traj, res, res, C, a->traj, 0, a->no_labels ? NULL : &tcap);
        }
    }
    free(px);
    free(fcap);
    return rc;
}

/* Rank 0: DIR/classes.csv (or none: a stale one would mislabel these images), DIR/grid.png
 * with one row per class asked for, and the summary lines. */
static int write_grid(const CliSampleArgs *a, const CliModel *m, const Run *r, const float *imgs, double seconds) {
    const CliClasses *cl = &m->cl;
    int total = m->total, rc = 0, n_want = cl->want ? cl->n_want : 0;
    char p[1200], title[256];
    snprintf(p, sizeof p, "%s/classes.csv", a->out);
    if (cl->want) rc = write_classes_csv(p, m->cls, total);
    else unlink(p);
    snprintf(title, sizeof title, "%s, %d steps, seed %d, %s weights%s%s%s", m->c.sample.sampler, r->K, m->c.sample.seed, r->weights, r->gd,
             n_want == 1 ? ", class " : "", n_want == 1 ? cl->names[cl->want[0]] : "");
    snprintf(p, sizeof p, "%s/grid.png", a->out);
    const char **rows = NULL; /* one grid row per class (or prompt) asked for, named */
    if (m->n_prompts) {
        n_want = m->n_prompts;
        rows = xmalloc(sizeof(char *) * n_want);
        for (int k = 0; k < n_want; k++) rows[k] = m->prompts[k];
        if (n_want == 1) snprintf(title + strlen(title), sizeof title - strlen(title), ", \"%s\"", m->prompts[0]);
    } else if (n_want > 1) {
        rows = xmalloc(sizeof(char *) * n_want);
        for (int k = 0; k < n_want; k++) rows[k] = cl->names[cl->want[k]];
    }
    DrawCaptions cap = {.title = title, .row = (const char *const *)rows};
    if (!rc) rc = draw_grid_png(p, imgs, total, m->u.res, m->u.res, m->u.C_img, n_want > 1 ? a->n : 0, 2, a->no_labels ? NULL : &cap);
    free(rows);
    if (rc) return rc;
    printf("%d images (%s, %d steps, %s weights, seed %d%s) in %.1f s: %s/000000.png .. %s/%06d.png, grid %s\n", total,
           sampler_name(m->so.kind), r->K, r->weights, m->c.sample.seed, r->gd, seconds, a->out, a->out, total - 1, p);
    if (cl->want) {
        printf("%s %s/classes.csv; %s:", n_want > 1 ? "grid rows (top to bottom), classes in" : "class in", a->out, n_want > 1 ? "rows" : "class");
        for (int k = 0; k < n_want; k++) printf("%s %s", k ? "," : "", cl->names[cl->want[k]]);
        printf("\n");
    } else if (m->n_prompts) {
        printf("%s:", n_want > 1 ? "grid rows (top to bottom), prompts" : "prompt");
        for (int k = 0; k < n_want; k++) printf("%s \"%s\"", k ? "," : "", m->prompts[k]);
        printf("\n");
    } else if (m->c.model.class_cond) {
        printf("no --class: unconditional samples (the \"no class\" embedding)\n");
    } else if (m->c.model.text.max_len > 0) {
        printf("no --prompt: unconditional samples (the empty caption)\n");
    }
    return 0;
}

/* Sample the images (ranks take contiguous shares and write their own files), gather them
 * on every rank, then rank 0 writes the grid. Returns the exit code. */
static int run_sample(const CliSampleArgs *a, CliModel *m) {
    Run r;
    describe(&r, m);
    int total = m->total, rank = dist_rank(), first, cnt, rc;
    dist_share(total, &first, &cnt);
    size_t D = (size_t)m->u.res * m->u.res * m->u.C_img;
    float *imgs = xcalloc((size_t)total * D, sizeof(float));
    float *tr = a->traj ? xmalloc(sizeof(float) * (size_t)(cnt ? cnt : 1) * a->traj * D) : NULL;
    SampleOpts so = m->so;
    cli_model_call(m, &so, first);
    Progress pr;
    progress_init(&pr, a->quiet || rank != 0, 0);
    double t0 = now_s(), evals = 0;
    if (cnt) evals = (double)sample_images(&m->u, &m->s, &so, cnt, first, m->B, imgs + (size_t)first * D, a->traj, tr, on_progress, &pr);
    progress_end(&pr);
    dist_allreduce_f64(&evals, 1);
    if (a->verbose && rank == 0)
        fprintf(stderr, "ddpm sample: network evaluations (counted): %.0f in all, %.0f per image\n", evals, evals / total);
    rc = write_images(a, m, &r, imgs, tr, first, cnt);
    double rcd = rc;
    dist_allreduce_f64(&rcd, 1);
    if (!rc && rcd) rc = err_set(DDPM_ERUNTIME, "another MPI rank failed to write its images");
    dist_allreduce_f32(imgs, (size_t)total * D); /* every image is zero except on its rank */
    if (!rc && rank == 0) rc = write_grid(a, m, &r, imgs, now_s() - t0);
    free(imgs);
    free(tr);
    return cli_fail(rc);
}

int cmd_sample(int argc, char **argv) {
    static const struct option opts[] = {CLI_SAMPLE_OPTIONS, CLI_SAMPLE_ONLY_OPTIONS, {0, 0, 0, 0}};
    CliSampleArgs a;
    cli_sample_args_init(&a, "out", 16, 100000, -1);
    int rest, rc = cli_parse("sample", argc, argv, CLI_SAMPLE_SHORTOPTS, opts, on_opt, &a, usage, &rest);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    if (rest < argc) return cli_usage_error("sample", "unexpected argument '%s'", argv[rest]);
    if (a.ckpt && a.run) return cli_usage_error("sample", "give --ckpt or --run, not both");
    if ((rc = cli_check_sampler("sample", a.sampler, a.spacing, a.var))) return rc;
    CliModel m;
    if (!(rc = cli_model_open(&m, "sample", &a, 0)) && !(rc = cli_out_dir(a.out))) rc = run_sample(&a, &m);
    cli_model_close(&m);
    return rc;
}
