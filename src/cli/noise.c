/* ddpm noise IMG: the forward process q(x_t | x_0) as a strip of frames. */
#include <getopt.h>
#include <libgen.h>
#include <math.h>
#include <string.h>

#include "ddpm/cli.h"
#include "ddpm/data.h"
#include "ddpm/diffusion.h"
#include "ddpm/draw.h"
#include "ddpm/err.h"
#include "ddpm/fsio.h"
#include "ddpm/image.h"
#include "ddpm/rng.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddpm noise IMG [options]\n"
            "       ddpm noise --config FILE [--index N] [options]\n"
            "\n"
            "Writes a PNG strip of K frames x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps at evenly\n"
            "spaced t from 0 to T-1 (left to right, the same eps for every frame).\n"
            "\n"
            "options:\n"
            "  --steps T        diffusion steps (default 1000)\n"
            "  --schedule S     linear | cosine | sigmoid (default linear: 1e-4 -> 0.02)\n"
            "  --frames K       frames in the strip (default 10)\n"
            "  --size N         center-crop and resize to N x N (default: the image's own size,\n"
            "                   or 256 when its longer side exceeds 512)\n"
            "  --seed N         noise seed (default 0)\n"
            "  -o, --out FILE   output PNG (default: <IMG name>_noise.png in the current folder)\n"
            "  --config FILE    take the image from this config's dataset instead of a file\n"
            "  --index N        which dataset image (default 0); the config's T, schedule, beta_start,\n"
            "                   beta_end and cosine_s apply (--steps / --schedule override T / the kind)\n"
            "                   unless --steps or --schedule is given\n"
            "  --csv FILE       also write the schedule: t,beta,alpha_bar,snr\n"
            "  --plot FILE      also write a PNG plot of alpha_bar_t for all schedules\n"
            "  --no-labels      bare pictures: no t under the frames, no text on the plot\n"
            "  -h, --help       this help\n");
}

/* Plot alpha_bar_t of the three schedules, the chosen one drawn thicker and named so. */
static int write_plot(const char *path, int T, int chosen, double b0, double b1, double cs, int bare) {
    Schedule s[3];
    DrawSeries ds[3];
    char names[3][96], title[64];
    double *x = xmalloc(sizeof(double) * T);
    for (int t = 0; t < T; t++) x[t] = t;
    int ns = 0;
    for (int k = 0; k < 3; k++) {
        if (schedule_init(&s[ns], (ScheduleKind)k, T, b0, b1, cs)) continue;
        if (k == SCHEDULE_COSINE) snprintf(names[ns], sizeof names[ns], "cosine (s = %g)", cs);
        else snprintf(names[ns], sizeof names[ns], "%s (beta %g to %g)", k == SCHEDULE_LINEAR ? "linear" : "sigmoid", b0, b1);
        if (k == chosen) strncat(names[ns], "  \u2190 chosen", sizeof names[ns] - strlen(names[ns]) - 1);
        ds[ns] = (DrawSeries){.name = names[ns], .x = x, .y = s[ns].alpha_bar, .n = T, .color = k, .width = k == chosen ? 3.5 : 2};
        ns++;
    }
    snprintf(title, sizeof title, "noise schedules: \u1fb1_t for t = 0 .. %d", T - 1);
    DrawPlot p = draw_plot_defaults();
    p.title = title, p.xlabel = "t (diffusion step)", p.ylabel = "\u1fb1_t  (x_t = \u221a\u1fb1_t\u00b7x0 + \u221a(1 \u2212 \u1fb1_t)\u00b7\u03b5)";
    p.ymin = 0, p.ymax = 1, p.bare = bare;
    int rc = draw_plot_png(path, &p, ds, ns);
    for (int k = 0; k < ns; k++) schedule_free(&s[k]);
    free(x);
    return rc;
}

/* Image `index` of the config's dataset, with the dataset's channels. */
static int dataset_image(Image *img, const char *cfg_path, int index) {
    Config c;
    Dataset ds;
    int rc = cli_config(&c, cfg_path, NULL, 0);
    if (rc || (rc = dataset_load(&ds, &c))) return rc;
    if (index >= ds.n) {
        rc = err_set(DDPM_EUSAGE, "--index %d: the dataset has %d images", index, ds.n);
        dataset_free(&ds);
        return rc;
    }
    size_t n = (size_t)ds.size * ds.size * ds.c;
    img->w = img->h = ds.size, img->c = ds.c;
    img->pix = xmalloc(n);
    memcpy(img->pix, ds.pix + (size_t)index * n, n);
    dataset_free(&ds);
    return DDPM_OK;
}

static int write_csv(const char *path, const Schedule *s) {
    AtomicFile af;
    int rc = atomic_open(&af, path);
    if (rc) return rc;
    fprintf(af.fp, "t,beta,alpha_bar,snr\n");
    for (int t = 0; t < s->T; t++) fprintf(af.fp, "%d,%.9g,%.9g,%.9g\n", t, s->beta[t], s->alpha_bar[t], s->snr[t]);
    return atomic_commit(&af);
}

typedef struct {
    int T, K, size, seed, index, steps_set, sched_set, no_labels;
    const char *cfg_path, *sched, *out, *csv, *plot;
} Args;

static int on_opt(void *ctx, int o, const char *v) {
    Args *a = ctx;
    switch (o) {
    case 'T': a->steps_set = 1; return cli_int("noise", "--steps", v, 2, 100000, &a->T);
    case 'K': return cli_int("noise", "--frames", v, 1, 1000, &a->K);
    case 'N': return cli_int("noise", "--size", v, 1, 4096, &a->size);
    case 's': return cli_int("noise", "--seed", v, 0, 2147483647, &a->seed);
    case 'S': a->sched = v, a->sched_set = 1; return 0;
    case 'o': a->out = v; return 0;
    case 'c': a->csv = v; return 0;
    case 'p': a->plot = v; return 0;
    case 'C': a->cfg_path = v; return 0;
    case 'I': return cli_int("noise", "--index", v, 0, 2147483647, &a->index);
    case 'L': a->no_labels = 1; return 0;
    default: return CLI_NOT_MINE;
    }
}

int cmd_noise(int argc, char **argv) {
    static const struct option opts[] = {
        {"steps", required_argument, 0, 'T'}, {"schedule", required_argument, 0, 'S'},
        {"frames", required_argument, 0, 'K'}, {"size", required_argument, 0, 'N'},
        {"seed", required_argument, 0, 's'},  {"out", required_argument, 0, 'o'},
        {"csv", required_argument, 0, 'c'},   {"plot", required_argument, 0, 'p'},
        {"config", required_argument, 0, 'C'}, {"index", required_argument, 0, 'I'},
        {"no-labels", no_argument, 0, 'L'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    Args a = {.T = 1000, .K = 10, .sched = "linear"};
    int rest, rc = cli_parse("noise", argc, argv, ":o:h", opts, on_opt, &a, usage, &rest);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    int T = a.T, K = a.K, size = a.size, steps_set = a.steps_set, sched_set = a.sched_set;
    const char *cfg_path = a.cfg_path, *sched = a.sched, *out = a.out, *csv = a.csv, *plot = a.plot;
    char sched_buf[16];
    if (rest != argc - (cfg_path ? 0 : 1))
        return cli_usage_error("noise", rest >= argc ? "missing the image to noise (or --config FILE)"
                                                     : "expected one image, got %d", argc - rest);
    const char *in = cfg_path ? "dataset" : argv[rest];
    /* the forward process: the config's (T, schedule, beta_start, beta_end, cosine_s), with
     * --steps / --schedule overriding T and the kind; without --config the defaults */
    double beta_start = 1e-4, beta_end = 0.02, cosine_s = 0.008;
    if (cfg_path) {
        Config c;
        if ((rc = cli_config(&c, cfg_path, NULL, 0))) return cli_fail(rc);
        if (!steps_set) T = c.diffusion.T;
        if (!sched_set) {
            snprintf(sched_buf, sizeof sched_buf, "%s", c.diffusion.schedule);
            sched = sched_buf;
        }
        beta_start = c.diffusion.beta_start, beta_end = c.diffusion.beta_end, cosine_s = c.diffusion.cosine_s;
    }
    int kind = schedule_kind(sched);
    if (kind < 0) return cli_usage_error("noise", "--schedule '%s': use linear, cosine or sigmoid", sched);

    Schedule s;
    if ((rc = schedule_init(&s, (ScheduleKind)kind, T, beta_start, beta_end, cosine_s))) return cli_fail(rc);
    Image img;
    rc = cfg_path ? dataset_image(&img, cfg_path, a.index) : image_load(&img, in, 3);
    if (rc) {
        schedule_free(&s);
        return cli_fail(rc);
    }
    int w = img.w, h = img.h;
    int C = img.c;
    uint8_t *src = img.pix;
    if (!size && (w > 512 || h > 512)) size = 256;
    if (size) {
        src = xmalloc((size_t)size * size * C);
        image_crop_resize(src, img.pix, img.w, img.h, C, size);
        w = h = size;
    }
    size_t D = (size_t)w * h * C;
    float *x0 = xmalloc(D * sizeof(float)), *eps = xmalloc(D * sizeof(float)), *xt = xmalloc(D * sizeof(float));
    for (size_t i = 0; i < D; i++) x0[i] = image_to_float(src[i]);
    rng_normal(eps, D, (uint64_t)a.seed, RNG_STREAM(RNG_NOISECMD, 0), 0);
    float *frames = xmalloc(sizeof(float) * D * K);
    char (*tlab)[24] = xmalloc(sizeof(*tlab) * K);
    const char **cells = xmalloc(sizeof(char *) * K);
    double mean = 0, var = 0;
    int t_last = 0;
    for (int k = 0; k < K; k++) {
        int t = K > 1 ? (int)((long)k * (T - 1) / (K - 1)) : 0;
        q_sample(xt, x0, eps, &t, &s, 1, D);
        memcpy(frames + (size_t)k * D, xt, sizeof(float) * D);
        snprintf(tlab[k], sizeof tlab[k], "t = %d", t);
        cells[k] = tlab[k];
        if (k == K - 1) {
            t_last = t;
            for (size_t i = 0; i < D; i++) mean += xt[i];
            mean /= D;
            for (size_t i = 0; i < D; i++) var += (xt[i] - mean) * (xt[i] - mean);
            var /= D;
        }
    }
    char defpath[4096];
    if (!out) {
        char *copy = xstrdup(in), *base = basename(copy), *dot = strrchr(base, '.');
        if (dot && dot != base) *dot = 0;
        snprintf(defpath, sizeof defpath, "%s_noise.png", base);
        free(copy);
        out = defpath;
    }
    char title[96];
    snprintf(title, sizeof title, "x_t = \u221a\u1fb1_t x0 + \u221a(1 \u2212 \u1fb1_t) \u03b5, %s schedule, T = %d", sched, T);
    DrawCaptions cap = {.title = K >= 4 ? title : NULL, .cell = cells};
    rc = draw_grid_png(out, frames, K, h, w, C, K, 0, a.no_labels ? NULL : &cap);
    if (!rc && csv) rc = write_csv(csv, &s);
    if (!rc && plot) rc = write_plot(plot, T, kind, beta_start, beta_end, cosine_s, a.no_labels);
    if (!rc) {
        printf("%s\n", out);
        fprintf(stderr, "%d frames of %dx%d, t = 0..%d (%s schedule); last frame (t = %d): mean %.3f, std %.3f before clipping\n",
                K, w, h, T - 1, sched, t_last, mean, sqrt(var));
        if (csv) printf("%s\n", csv);
        if (plot) printf("%s\n", plot);
    }
    free(frames);
    free(tlab);
    free(cells);
    free(x0);
    free(eps);
    free(xt);
    if (src != img.pix) free(src);
    image_free(&img);
    schedule_free(&s);
    return cli_fail(rc);
}
