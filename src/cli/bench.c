/* ddpm bench: median time of a training step (forward + backward + optimizer) and of a
 * no-grad forward on random data, next to this machine's sgemm ceiling. */
#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <string.h>
#include <sys/resource.h>

#include "ddpm/cli.h"
#include "ddpm/diffusion.h"
#include "ddpm/err.h"
#include "ddpm/optim.h"
#include "ddpm/prof.h"
#include "ddpm/rng.h"
#include "ddpm/tensor.h"
#include "ddpm/unet.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddpm bench [--config FILE] [options]\n"
            "\n"
            "Times a training step (forward + backward + Adam/EMA) and a no-grad forward on random\n"
            "data at train.batch_size, after warm-up, and reports medians, GFLOP/s (nominal: 2 per\n"
            "multiply-add, backward counted as 2x forward), this machine's sgemm ceiling and peak RSS.\n"
            "\n"
            "options:\n"
            "  -c, --config FILE   model and batch (default configs/bench.json)\n"
            "  --set KEY=VALUE     override a config key (repeatable)\n"
            "  --steps N           timed repetitions of each (default 10)\n"
            "  --threads N         threads (default: all cores)\n"
            "  --profile           time per kind of work (conv, gemm, norm, attention, elementwise, optimizer)\n"
            "  --scaling           also time every repetition on one thread, right after its twin on\n"
            "                      --threads, and report the median speed-up of the extra threads\n"
            "  --json              one JSON object on stdout instead of the table\n"
            "  -h, --help          this help\n");
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* median of v[0..n), v left as it is */
static double median(const double *v, int n) {
    double *s = xmalloc(sizeof(double) * n);
    memcpy(s, v, sizeof(double) * n);
    qsort(s, n, sizeof *s, cmp_double);
    double m = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
    free(s);
    return m;
}

/* median over i of a[i] / b[i] */
static double median_ratio(const double *a, const double *b, int n) {
    double *q = xmalloc(sizeof(double) * n);
    for (int i = 0; i < n; i++) q[i] = a[i] / b[i];
    double m = median(q, n);
    free(q);
    return m;
}

/* ", "key": [v0, v1, ...] */
static void json_list(const char *key, const double *v, int n) {
    printf(", \"%s\": [", key);
    for (int i = 0; i < n; i++) printf("%s%.4f", i ? ", " : "", v[i]);
    printf("]");
}

/* Median GFLOP/s of a large square sgemm with every thread: the ceiling of a GEMM-built net. */
static double sgemm_ceiling(int threads) {
    int n = 2048;
    float *a = xmalloc(sizeof(float) * n * n), *b = xmalloc(sizeof(float) * n * n), *c = xmalloc(sizeof(float) * n * n);
    rng_uniform(a, (size_t)n * n, 1, 1, 0);
    rng_uniform(b, (size_t)n * n, 1, 2, 0);
    openblas_set_num_threads(threads);
    double t[7];
    for (int r = 0; r < 8; r++) {
        double t0 = now_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
        if (r) t[r - 1] = now_s() - t0;
    }
    threads_set(threads); /* back to the project's threading */
    free(a), free(b), free(c);
    return 2.0 * n * n * n / median(t, 7) / 1e9;
}

typedef struct {
    const char *cfg_path;
    const char *sets[CLI_MAX_SETS];
    int n_sets, steps, threads, profile, json, scaling;
} Args;

static int on_opt(void *ctx, int o, const char *v) {
    Args *a = ctx;
    switch (o) {
    case 'c': a->cfg_path = v; return 0;
    case 'S': return cli_add_set("bench", v, a->sets, &a->n_sets);
    case 'n': return cli_int("bench", "--steps", v, 1, 100000, &a->steps);
    case 'j': return cli_int("bench", "--threads", v, 1, 1024, &a->threads);
    case 'p': a->profile = 1; return 0;
    case 'J': a->json = 1; return 0;
    case 's': a->scaling = 1; return 0;
    default: return CLI_NOT_MINE;
    }
}

int cmd_bench(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, 0, 'c'}, {"set", required_argument, 0, 'S'},
                                         {"steps", required_argument, 0, 'n'},  {"threads", required_argument, 0, 'j'},
                                         {"profile", no_argument, 0, 'p'},      {"json", no_argument, 0, 'J'},
                                         {"scaling", no_argument, 0, 's'},
                                         {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    Args a = {.cfg_path = "configs/bench.json", .steps = 10};
    int rest, rc = cli_parse("bench", argc, argv, ":c:h", opts, on_opt, &a, usage, &rest);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    if (rest < argc) return cli_usage_error("bench", "unexpected argument '%s'", argv[rest]);
    const char *cfg_path = a.cfg_path;
    int steps = a.steps, threads = a.threads, profile = a.profile, json = a.json, scaling = a.scaling;
    Config c;
    if ((rc = cli_config(&c, cfg_path, a.sets, a.n_sets))) return cli_fail(rc);
    /* a class-conditional config without a dataset: ten classes (the embedding is one row added
     * per image, negligible next to the convolutions; the images get the "no class" row) */
    if (c.model.class_cond && c.model.num_classes == 0) c.model.num_classes = 10;
    threads = threads_set(threads);
    double ceiling = sgemm_ceiling(threads);
    int B = c.train.batch_size;
    UNet u;
    if ((rc = unet_init(&u, &c, B, 1))) return cli_fail(rc);
    unet_init_params(&u, 0);
    Optim opt;
    optim_init(&opt, u.n_floats);
    memcpy(opt.ema, u.params, sizeof(float) * u.n_floats);
    size_t D = (size_t)u.res * u.res * u.C_img;
    float *x = xmalloc(sizeof(float) * B * D), *y = xmalloc(sizeof(float) * B * D), *d = xmalloc(sizeof(float) * B * D);
    int *t = xmalloc(sizeof(int) * B);
    rng_normal(x, B * D, 1, 1, 0);
    rng_normal(d, B * D, 1, 2, 0);
    for (int i = 0; i < B; i++) t[i] = (int)(rng_u32(1, 3, i) % (uint32_t)c.diffusion.T);
    u.drop_on = c.model.dropout > 0, u.drop_seed = 1;
    /* ts/tf: times with `threads`; with --scaling, ts1/tf1 with one thread, each repetition
     * timed right after its `threads` twin so both see the same state of a noisy machine. */
    double *ts = xmalloc(sizeof(double) * steps), *tf = xmalloc(sizeof(double) * steps);
    double *ts1 = xmalloc(sizeof(double) * steps), *tf1 = xmalloc(sizeof(double) * steps);
    const int nrun = scaling && threads > 1 ? 2 : 1;
    for (int r = -2; r < steps; r++) { /* 2 warm-up steps */
        for (int k = 0; k < nrun; k++) {
            threads_set(k ? 1 : threads);
            g_prof_on = profile && r >= 0 && k == 0;
            double t0 = now_s();
            u.drop_step = (uint64_t)(r + 2);
            unet_forward(&u, y, x, t, B);
            unet_zero_grad(&u);
            unet_backward(&u, d, NULL);
            double gn = optim_grad_norm(u.grads, u.n_floats);
            PROF(PROF_OPTIM, optim_step(&opt, u.params, u.grads, &c, r + 2, 1e-6, gn > 1 ? 1 / gn : 1, 0.999));
            if (r >= 0) (k ? ts1 : ts)[r] = now_s() - t0;
        }
    }
    g_prof_on = 0;
    u.drop_on = 0;
    for (int r = -1; r < steps; r++) {
        for (int k = 0; k < nrun; k++) {
            threads_set(k ? 1 : threads);
            double t0 = now_s();
            unet_forward(&u, y, x, t, B);
            if (r >= 0) (k ? tf1 : tf)[r] = now_s() - t0;
        }
    }
    threads_set(threads);
    double scale_step = nrun > 1 ? median_ratio(ts1, ts, steps) : 0, scale_fwd = nrun > 1 ? median_ratio(tf1, tf, steps) : 0;
    double step1_s = nrun > 1 ? median(ts1, steps) : 0, fwd1_s = nrun > 1 ? median(tf1, steps) : 0;
    double step_s = median(ts, steps), fwd_s = median(tf, steps);
    ceiling = fmax(ceiling, sgemm_ceiling(threads)); /* best of a measurement before and after */
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss_mb = ru.ru_maxrss / 1024.0;
    double gf_step = 3.0 * u.flops * B / 1e9, gf_fwd = u.flops * B / 1e9;
    size_t nparams = 0;
    for (int i = 0; i < u.nP; i++) nparams += u.P[i].n;
    if (json) {
        printf("{\"config\": \"%s\", \"threads\": %d, \"cpu\": \"%s\", \"kernel_isa\": \"%s\", \"blas_core\": \"%s\", "
               "\"batch\": %d, \"params\": %zu, "
               "\"gflop_per_step\": %.3f, \"gflop_per_forward\": %.3f, \"train_step_s\": %.5f, \"forward_s\": %.5f, "
               "\"train_gflops\": %.2f, \"forward_gflops\": %.2f, \"sgemm_gflops\": %.2f, \"ceiling_fraction\": %.4f, "
               "\"peak_rss_mb\": %.1f",
               cfg_path, threads, cpu_model_name(), kernel_isa(), blas_core_name(), B, nparams, gf_step, gf_fwd, step_s, fwd_s, gf_step / step_s, gf_fwd / fwd_s,
               ceiling, gf_step / step_s / ceiling, rss_mb);
        if (profile) {
            printf(", \"profile_s\": {");
            for (int k = 0; k < PROF_N; k++) printf("%s\"%s\": %.5f", k ? ", " : "", PROF_NAMES[k], g_prof_s[k] / steps);
            printf("}");
        }
        json_list("train_steps_s", ts, steps);
        json_list("forwards_s", tf, steps);
        if (nrun > 1) {
            printf(", \"train_step_1t_s\": %.5f, \"forward_1t_s\": %.5f, \"scaling_train\": %.4f, \"scaling_forward\": %.4f",
                   step1_s, fwd1_s, scale_step, scale_fwd);
            json_list("train_steps_1t_s", ts1, steps);
            json_list("forwards_1t_s", tf1, steps);
        }
        printf("}\n");
    } else {
        printf("bench %s: %zu parameters, batch %d, %d threads\n", cfg_path, nparams, B, threads);
        printf("  CPU %s; ddpm kernels %s, OpenBLAS core %s\n", cpu_model_name(), kernel_isa(), blas_core_name());
        printf("  training step   %8.3f s   %7.1f GFLOP/s  (%.1f GFLOP per step, median of %d)\n", step_s, gf_step / step_s, gf_step,
               steps);
        printf("  no-grad forward %8.3f s   %7.1f GFLOP/s  (%.1f GFLOP)\n", fwd_s, gf_fwd / fwd_s, gf_fwd);
        printf("  sgemm ceiling              %7.1f GFLOP/s  (2048^3, %d threads); training step reaches %.0f%%\n", ceiling, threads,
               100 * gf_step / step_s / ceiling);
        printf("  peak RSS        %8.0f MB\n", rss_mb);
        if (nrun > 1)
            printf("  thread scaling  training step 1 thread %.3f s: %.2fx; forward 1 thread %.3f s: %.2fx\n"
                   "                  (median of the per-repetition ratios, each 1-thread run right after its twin)\n",
                   step1_s, scale_step, fwd1_s, scale_fwd);
        if (profile) {
            double tot = 0;
            for (int k = 0; k < PROF_N; k++) tot += g_prof_s[k];
            /* the kinds are means over the repetitions, so the rest is against the mean step */
            double mean_s = 0;
            for (int r = 0; r < steps; r++) mean_s += ts[r] / steps;
            printf("  time per training step by kind of work (means of %d):\n", steps);
            for (int k = 0; k < PROF_N; k++)
                printf("    %-20s %8.1f ms  %5.1f%%\n", PROF_NAMES[k], 1000 * g_prof_s[k] / steps, 100 * g_prof_s[k] / tot);
            printf("    %-20s %8.1f ms  (of a mean step of %.1f ms)\n", "(other)", 1000 * (mean_s - tot / steps), 1000 * mean_s);
        }
    }
    free(x), free(y), free(d), free(t), free(ts), free(tf), free(ts1), free(tf1);
    optim_free(&opt);
    unet_free(&u);
    return 0;
}
