/* ddpm bench: median time of a training step (train_step: noise, forward, loss, backward,
 * optimizer) and of a no-grad forward on random data, next to this machine's sgemm ceiling. */
#include <getopt.h>
#include <math.h>
#include <string.h>
#include <sys/resource.h>

#include "ddpm/cli.h"
#include "ddpm/diffusion.h"
#include "ddpm/err.h"
#include "ddpm/lora.h"
#include "ddpm/optim.h"
#include "ddpm/prof.h"
#include "ddpm/rng.h"
#include "ddpm/gemm.h"
#include "ddpm/platform.h"
#include "ddpm/train.h"
#include "ddpm/unet.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddpm bench [--config FILE] [options]\n"
            "\n"
            "Times a training step (noise, forward, loss, backward, Adam/EMA: the step ddpm train\n"
            "runs) and a no-grad forward on random images at train.batch_size (as sampling runs it:\n"
            "weights fixed, each convolution's Winograd transforms made once), after warm-up, and\n"
            "reports medians, GFLOP/s (nominal: 2 per multiply-add, backward counted as 2x forward),\n"
            "this machine's sgemm ceiling and peak RSS. With train.lora.rank > 0 (e.g. --set\n"
            "train.lora.rank=4) it also times a LoRA step of the same model and batch (base frozen,\n"
            "adapters on train.lora.targets), each right after its full-training twin, and reports\n"
            "the median of the per-repetition ratios.\n"
            "\n"
            "options:\n"
            "  -c, --config FILE   model and batch (default configs/bench.json)\n"
            "  --set KEY=VALUE     override a config key (repeatable)\n"
            "  --steps N           timed repetitions of each (default 10)\n"
            "  --threads N         threads (default: all cores)\n"
            "  --profile           time per kind of work (conv, gemm, norm, attention, elementwise, optimizer)\n"
            "  --scaling           also time every repetition on one thread, right after its twin on\n"
            "                      --threads, and report the median speed-up of the extra threads\n"
            "  --cpu-time          time with the process's CPU clock (every thread's work) instead of\n"
            "                      the wall clock: with --threads 1 on a machine other jobs share, the\n"
            "                      work of a step without the waiting for a core\n"
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
    threads_set(threads);
    double t[7];
    for (int r = 0; r < 8; r++) {
        double t0 = now_s();
        gemm(0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        if (r) t[r - 1] = now_s() - t0;
    }
    free(a), free(b), free(c);
    return 2.0 * n * n * n / median(t, 7) / 1e9;
}

typedef struct {
    CliConfigArgs cfg;
    int steps, threads, profile, json, scaling, cpu_time;
} Args;

static int on_opt(void *ctx, int o, const char *v) {
    Args *a = ctx;
    switch (o) {
    case 'n': return cli_int("bench", "--steps", v, 1, 100000, &a->steps);
    case 'j': return cli_int("bench", "--threads", v, 1, 1024, &a->threads);
    case 'p': a->profile = 1; return 0;
    case 'J': a->json = 1; return 0;
    case 's': a->scaling = 1; return 0;
    case 'T': a->cpu_time = 1; return 0;
    default: return cli_config_opt("bench", &a->cfg, o, v);
    }
}

/* What was measured. ts/tf: the training steps and forwards with `threads`; with --scaling,
 * ts1/tf1 with one thread, each repetition timed right after its `threads` twin so both see
 * the same state of a noisy machine (nrun = 2). */
typedef struct {
    const Args *a;
    int threads, B, nrun;
    size_t nparams;
    double ceiling, gf_step, gf_fwd, rss_mb;
    double *ts, *tf, *ts1, *tf1;
    double *tl;                 /* LoRA steps (NULL: not measured) */
    TrainStep *lora;            /* the LoRA step: same model, adapters attached while it runs */
    struct UNetLora *lora_att;  /*   the attached adapters */
    Prof prof;  /* --profile: the timed training steps with `threads` */
    Prof lprof; /* --profile: the timed LoRA steps */
} Bench;

/* Warm up (2 steps, 1 forward), then time a.steps training steps and no-grad forwards. */
/* the clock the repetitions are timed with */
static double tnow(const Args *a) { return a->cpu_time ? cpu_now_s() : now_s(); }

static int measure(Bench *m, TrainStep *train) {
    const Args *a = m->a;
    UNet *u = train->u;
    int rc = 0;
    for (int r = -2; r < a->steps && !rc; r++)
        for (int k = 0; k < m->nrun && !rc; k++) {
            threads_set(k ? 1 : m->threads);
            m->prof.on = a->profile && r >= 0 && k == 0;
            double t0 = tnow(a), loss, gn;
            if ((rc = train_step(train, r + 2, 1e-6, &loss, &gn))) break;
            if (r >= 0) (k ? m->ts1 : m->ts)[r] = tnow(a) - t0;
            if (m->lora && k == 0) { /* its LoRA twin: base frozen, adapters on */
                unet_set_frozen(u, "", 1);
                u->lora = m->lora_att;
                m->lprof.on = m->prof.on, m->prof.on = 0;
                u->prof = &m->lprof;
                t0 = tnow(a);
                rc = train_step(m->lora, r + 2, 1e-6, &loss, &gn);
                if (r >= 0) m->tl[r] = tnow(a) - t0;
                u->prof = &m->prof;
                m->lprof.on = 0;
                u->lora = NULL;
                unet_set_frozen(u, "", 0);
            }
        }
    m->prof.on = 0;
    u->drop_on = 0;
    unet_fix_weights(u, 1); /* as sampling runs it: the weights no longer change */
    for (int r = -1; r < a->steps && !rc; r++)
        for (int k = 0; k < m->nrun; k++) {
            threads_set(k ? 1 : m->threads);
            double t0 = tnow(a);
            unet_forward_cond(u, train->pred, train->xt, train->t, train->y, m->B);
            if (r >= 0) (k ? m->tf1 : m->tf)[r] = tnow(a) - t0;
        }
    unet_fix_weights(u, 0);
    threads_set(m->threads);
    return rc;
}

static void print_json(const Bench *m) {
    const Args *a = m->a;
    int steps = a->steps;
    double step_s = median(m->ts, steps), fwd_s = median(m->tf, steps);
    printf("{\"config\": \"%s\", \"threads\": %d, \"cpu\": \"%s\", \"kernel_isa\": \"%s\", \"blas_core\": \"%s\", "
           "\"clock\": \"%s\", \"batch\": %d, \"params\": %zu, "
           "\"gflop_per_step\": %.3f, \"gflop_per_forward\": %.3f, \"train_step_s\": %.5f, \"forward_s\": %.5f, "
           "\"train_gflops\": %.2f, \"forward_gflops\": %.2f, \"sgemm_gflops\": %.2f, \"ceiling_fraction\": %.4f, "
           "\"peak_rss_mb\": %.1f",
           a->cfg.path, m->threads, cpu_model_name(), kernel_isa(), blas_core_name(), a->cpu_time ? "cpu" : "wall", m->B, m->nparams, m->gf_step, m->gf_fwd, step_s,
           fwd_s, m->gf_step / step_s, m->gf_fwd / fwd_s, m->ceiling, m->gf_step / step_s / m->ceiling, m->rss_mb);
    if (a->profile) {
        printf(", \"profile_s\": {");
        for (int k = 0; k < PROF_N; k++) printf("%s\"%s\": %.5f", k ? ", " : "", PROF_NAMES[k], m->prof.s[k] / steps);
        printf("}");
        if (m->tl) {
            printf(", \"lora_profile_s\": {");
            for (int k = 0; k < PROF_N; k++) printf("%s\"%s\": %.5f", k ? ", " : "", PROF_NAMES[k], m->lprof.s[k] / steps);
            printf("}");
        }
    }
    if (m->tl) {
        printf(", \"lora_rank\": %d, \"lora_step_s\": %.5f, \"lora_step_ratio\": %.4f", m->lora->c->train.lora.rank, median(m->tl, steps),
               median_ratio(m->tl, m->ts, steps));
        json_list("lora_steps_s", m->tl, steps);
    }
    json_list("train_steps_s", m->ts, steps);
    json_list("forwards_s", m->tf, steps);
    if (m->nrun > 1) {
        printf(", \"train_step_1t_s\": %.5f, \"forward_1t_s\": %.5f, \"scaling_train\": %.4f, \"scaling_forward\": %.4f",
               median(m->ts1, steps), median(m->tf1, steps), median_ratio(m->ts1, m->ts, steps), median_ratio(m->tf1, m->tf, steps));
        json_list("train_steps_1t_s", m->ts1, steps);
        json_list("forwards_1t_s", m->tf1, steps);
    }
    printf("}\n");
}

/* --profile's table: time per kind of work of the steps timed in t (means of n) */
static void print_profile(const char *what, const Prof *p, const double *t, int n) {
    double tot = 0;
    for (int k = 0; k < PROF_N; k++) tot += p->s[k];
    /* the kinds are means over the repetitions, so the rest is against the mean step */
    double mean_s = 0;
    for (int r = 0; r < n; r++) mean_s += t[r] / n;
    printf("  time per %s by kind of work (means of %d):\n", what, n);
    for (int k = 0; k < PROF_N; k++)
        printf("    %-20s %8.1f ms  %5.1f%%\n", PROF_NAMES[k], 1000 * p->s[k] / n, 100 * p->s[k] / tot);
    printf("    %-20s %8.1f ms  (of a mean step of %.1f ms)\n", "(other)", 1000 * (mean_s - tot / n), 1000 * mean_s);
}

static void print_table(const Bench *m) {
    const Args *a = m->a;
    int steps = a->steps;
    double step_s = median(m->ts, steps), fwd_s = median(m->tf, steps);
    printf("bench %s: %zu parameters, batch %d, %d threads%s\n", a->cfg.path, m->nparams, m->B, m->threads,
           a->cpu_time ? ", times on the process's CPU clock" : "");
    printf("  CPU %s; ddpm kernels %s, OpenBLAS core %s (%s)\n", cpu_model_name(), kernel_isa(), blas_core_name(),
           blas_core_source());
    printf("  training step   %8.3f s   %7.1f GFLOP/s  (%.1f GFLOP per step, median of %d)\n", step_s, m->gf_step / step_s, m->gf_step,
           steps);
    printf("  no-grad forward %8.3f s   %7.1f GFLOP/s  (%.1f GFLOP)\n", fwd_s, m->gf_fwd / fwd_s, m->gf_fwd);
    printf("  sgemm ceiling              %7.1f GFLOP/s  (2048^3, %d threads); training step reaches %.0f%%\n", m->ceiling, m->threads,
           100 * m->gf_step / step_s / m->ceiling);
    if (m->tl) {
        char g[64];
        printf("  LoRA step       %8.3f s   %.2fx the training step (rank %d on %s; median of the per-repetition ratios,\n"
               "                  each LoRA step right after its full twin)\n",
               median(m->tl, steps), median_ratio(m->tl, m->ts, steps), m->lora->c->train.lora.rank,
               lora_groups_text(m->lora->c->train.lora.targets, 0, g, sizeof g));
    }
    printf("  peak RSS        %8.0f MB\n", m->rss_mb);
    if (m->nrun > 1)
        printf("  thread scaling  training step 1 thread %.3f s: %.2fx; forward 1 thread %.3f s: %.2fx\n"
               "                  (median of the per-repetition ratios, each 1-thread run right after its twin)\n",
               median(m->ts1, steps), median_ratio(m->ts1, m->ts, steps), median(m->tf1, steps), median_ratio(m->tf1, m->tf, steps));
    if (a->profile) {
        print_profile("training step", &m->prof, m->ts, steps);
        if (m->tl) print_profile("LoRA step", &m->lprof, m->tl, steps);
    }
}

int cmd_bench(int argc, char **argv) {
    static const struct option opts[] = {CLI_CONFIG_OPTIONS,
                                         {"steps", required_argument, 0, 'n'},  {"threads", required_argument, 0, 'j'},
                                         {"profile", no_argument, 0, 'p'},      {"json", no_argument, 0, 'J'},
                                         {"scaling", no_argument, 0, 's'},      {"cpu-time", no_argument, 0, 'T'},
                                         {"help", no_argument, 0, 'h'},         {0, 0, 0, 0}};
    Args a = {.cfg.path = "configs/bench.json", .steps = 10};
    int rest, rc = cli_parse("bench", argc, argv, ":c:h", opts, on_opt, &a, usage, &rest);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    if (rest < argc) return cli_usage_error("bench", "unexpected argument '%s'", argv[rest]);
    Config c;
    if ((rc = cli_config(&c, a.cfg.path, a.cfg.sets, a.cfg.n_sets))) return cli_fail(rc);
    /* a class-conditional config without a dataset: ten classes (the embedding is one row added
     * per image, negligible next to the convolutions; the images get the "no class" row) */
    if (c.model.class_cond && c.model.num_classes == 0) c.model.num_classes = 10;
    if (c.model.text.max_len > 0 && c.model.text.vocab == 0) c.model.text.vocab = 64; /* the vocabulary size barely matters for speed */
    Bench m = {.a = &a, .B = c.train.batch_size};
    m.prof.cpu = m.lprof.cpu = a.cpu_time;
    m.threads = threads_set(a.threads);
    m.nrun = a.scaling && m.threads > 1 ? 2 : 1;
    m.ceiling = sgemm_ceiling(m.threads);
    Schedule s;
    UNet u;
    if ((rc = schedule_init(&s, (ScheduleKind)schedule_kind(c.diffusion.schedule), c.diffusion.T, c.diffusion.beta_start,
                            c.diffusion.beta_end, c.diffusion.cosine_s)))
        return cli_fail(rc);
    if ((rc = unet_init(&u, &c, m.B, 1))) {
        schedule_free(&s);
        return cli_fail(rc);
    }
    unet_init_params(&u, 0);
    Optim opt;
    optim_init(&opt, u.n_floats);
    memcpy(opt.ema, u.params, sizeof(float) * u.n_floats);
    /* the batch: random images in [-1,1], with the "no class" label on a class-conditional model */
    TrainStep train;
    train_step_init(&train, &u, &opt, &s, &c, 0, 1);
    rng_uniform(train.x0, (size_t)m.B * train.D, 1, 1, 0);
    for (size_t i = 0; i < (size_t)m.B * train.D; i++) train.x0[i] = 2 * train.x0[i] - 1;
    for (int i = 0; train.y && i < m.B; i++) train.y[i] = u.n_classes;
    m.ts = xcalloc(a.steps, sizeof(double)), m.tf = xcalloc(a.steps, sizeof(double));
    m.ts1 = xcalloc(a.steps, sizeof(double)), m.tf1 = xcalloc(a.steps, sizeof(double));
    /* LoRA: a set on the targets, its own optimizer, the same batch */
    LoraSet ls = {0};
    Optim lopt = {0};
    TrainStep ltrain;
    float *lgrad = NULL;
    if (c.train.lora.rank > 0) {
        LoraBase *b = unet_lora_bases(&u, u.params), *t = xcalloc((size_t)u.nP, sizeof(LoraBase));
        int n = 0;
        for (int i = 0; i < u.nP; i++)
            if (lora_group_of(b[i].name) & c.train.lora.targets) t[n++] = b[i];
        rc = n ? lora_set_create(&ls, t, n, c.train.lora.rank, c.train.lora.alpha, c.train.lora.targets, 0)
               : err_set(DDPM_EUSAGE, "train.lora.targets: this model has no such layer");
        free(b), free(t);
        if (!rc) {
            /* B = 0 would make the adapters' dA zero: give B values so every GEMM does real work */
            for (int i = 0; i < ls.n; i++) rng_normal(ls.params + ls.p[i].off_b, (size_t)ls.p[i].out * ls.rank, 2, (uint64_t)i, 0);
            lgrad = xcalloc(ls.n_floats, sizeof(float));
            rc = unet_lora_attach_train(&u, &ls, lgrad);
        }
        if (!rc) {
            optim_init(&lopt, ls.n_floats);
            memcpy(lopt.ema, ls.params, sizeof(float) * ls.n_floats);
            ltrain = train;
            ltrain.opt = &lopt, ltrain.p = ls.params, ltrain.g = lgrad, ltrain.n = ls.n_floats;
            m.lora = &ltrain, m.lora_att = u.lora, u.lora = NULL;
            m.tl = xcalloc(a.steps, sizeof(double));
        }
    }
    u.prof = &m.prof;
    if (!rc) rc = measure(&m, &train);
    u.prof = NULL;
    if (!rc) {
        m.ceiling = fmax(m.ceiling, sgemm_ceiling(m.threads)); /* best of a measurement before and after */
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        m.rss_mb = ru.ru_maxrss / 1024.0;
        m.gf_step = 3.0 * u.flops * m.B / 1e9, m.gf_fwd = u.flops * m.B / 1e9;
        for (int i = 0; i < u.nP; i++) m.nparams += u.P[i].n;
        if (a.json) print_json(&m);
        else print_table(&m);
    }
    free(m.ts), free(m.tf), free(m.ts1), free(m.tf1), free(m.tl);
    if (m.lora_att) u.lora = m.lora_att; /* unet_free detaches it */
    lora_set_free(&ls);
    optim_free(&lopt);
    free(lgrad);
    train_step_free(&train);
    optim_free(&opt);
    unet_free(&u);
    schedule_free(&s);
    return cli_fail(rc);
}
