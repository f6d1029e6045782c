/* ddpm edit: SDEdit (Meng et al. 2022) on the one reverse loop: the input noised to
 * t0 = round(S T) starts a timestep list cut at t0. */
#include <math.h>
#include <string.h>

#include "ddpm/dist.h"
#include "ddpm/err.h"
#include "ddpm/rng.h"
#include "task.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddpm edit IMG... --strength S [-o DIR] [-n N] [options]\n"
            "\n"
            "Noises each image to t0 = round(S T) and runs the reverse process from there (SDEdit):\n"
            "a noisy, scratched or roughly drawn image becomes one the model would make. S = 0\n"
            "returns the image, S = 1 ignores it. The sampler is the checkpoint's (or --sampler)\n"
            "with --steps scaled to the part of the process that is run (ddpm: all t0 steps).\n"
            "Writes DIR/<name>_strip.png (original | noised to t0 | result 1..n, captioned) and DIR/<name>_<k>.png.\n"
            "\n"
            "edit options:\n"
            "  --strength S        in [0, 1] (default 0.5)\n"
            "\n");
    task_help(f);
}

/* --strength S into *(float *)ctx. */
static int on_opt(void *ctx, int o, const char *v) {
    if (o != 'G') return CLI_NOT_MINE;
    char *end;
    double s = strtod(v, &end);
    if (end == v || *end || !(s >= 0 && s <= 1)) return cli_usage_error("edit", "--strength '%s': expected a number from 0 to 1", v);
    *(float *)ctx = (float)s;
    return 0;
}

int cmd_edit(int argc, char **argv) {
    static const struct option opts[] = {TASK_OPTIONS, {"strength", required_argument, 0, 'G'}, {0, 0, 0, 0}};
    TaskArgs a;
    float strength = 0.5f;
    int rc = task_parse(&a, "edit", argc, argv, opts, on_opt, &strength, usage);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    TaskModel m;
    if ((rc = task_open(&a, &m))) goto done;
    size_t D = m.D;
    int nf = m.n_files, n = nf * a.opt.n, noted = 0, T = m.cm.s.T;
    float *ref = xmalloc(sizeof(float) * nf * D), *lead = xmalloc(sizeof(float) * 2 * nf * D);
    float *out = xmalloc(sizeof(float) * n * D), *traj = a.opt.traj ? xmalloc(sizeof(float) * n * a.opt.traj * D) : NULL;
    for (int i = 0; i < nf && !rc; i++) rc = task_load_image(&a, m.files[i], m.res, m.C, ref + i * D, &noted);
    if (rc) {
        rc = cli_fail(rc);
        goto free_all;
    }
    int t0 = (int)lround(strength * T);
    /* K steps over 0..t0-1: ddpm all of them, the others their steps scaled by t0 / T */
    int K = m.cm.so.kind == SAMPLER_DDPM ? t0 : (int)lround((double)m.cm.so.steps * t0 / T);
    if (t0 > 0 && K < 1) K = 1;
    int *lv = xmalloc(sizeof(int) * (T + 2)), nl = 0;
    if (t0 > 0) {
        SampleOpts so = m.cm.so;
        so.steps = K;
        if (K == 1 && (so.spacing == SPACING_LEADING || so.spacing == SPACING_QUADRATIC)) so.spacing = SPACING_TRAILING;
        nl = sample_levels(lv, &so, &m.cm.s, t0);
    }
    /* the lead frames: the original and the input noised to the first level (result 0's noise) */
    for (int i = 0; i < nf; i++) {
        memcpy(lead + 2 * i * D, ref + i * D, sizeof(float) * D);
        float *z = lead + (2 * i + 1) * D;
        rng_normal(z, D, m.cm.so.seed, RNG_STREAM(RNG_SAMPLE, (uint64_t)i * a.opt.n), 0);
        int lv0 = nl ? lv[0] : -1;
        q_sample(z, ref + i * D, z, &lv0, &m.cm.s, 1, D);
    }
    if (nl == 0) { /* strength 0: the image itself */
        for (int g = 0; g < n; g++) memcpy(out + g * D, ref + (g / a.opt.n) * D, sizeof(float) * D);
        for (int g = 0; g < n && traj; g++)
            for (int q = 0; q < a.opt.traj; q++) memcpy(traj + ((size_t)g * a.opt.traj + q) * D, ref + (g / a.opt.n) * D, sizeof(float) * D);
    } else {
        SampleTask task = sample_task_plain(lv, nl);
        task.ref = ref, task.per_ref = a.opt.n, task.init_from_ref = 1;
        if (dist_rank() == 0)
            fprintf(stderr, "ddpm edit: strength %g: from t = %d, %d network evaluations per image (%s)\n", strength, lv[0],
                    levels_evals(lv, nl), sampler_name(m.cm.so.kind));
        task_run(&a, &m, &task, out, traj);
    }
    char noised[48], title[160], start[32];
    snprintf(noised, sizeof noised, "strength %g", strength);
    snprintf(start, sizeof start, "t = %d", nl ? lv[0] : 0);
    const char *lead_cap[] = {"original", noised};
    snprintf(title, sizeof title, "edit: SDEdit from t = %d, %s %d steps", nl ? lv[0] : 0, sampler_name(m.cm.so.kind), nl ? levels_evals(lv, nl) : 0);
    m.traj_start = start; /* the trajectory starts from the input noised to lv[0] */
    rc = task_write(&a, &m, lead, 2, lead_cap, out, traj, title, "original | noised | results");
    free(lv);
free_all:
    free(ref), free(lead), free(out), free(traj);
done:
    task_close(&m);
    return rc;
}
