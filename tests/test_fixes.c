/* Regression tests for the bugs of issue 14, each failing without its fix:
 *  - a config the schema accepts (4 levels x 16 res blocks) overflowed the U-Net's skip stack;
 *  - linear layers split rows by the threads asked for, not granted (rows never computed);
 *  - --force over an older, longer run kept its milestones and pruned the new run's, and
 *    leftover ckpt_*.tmp.PID files counted as milestones;
 *  - checkpoint metadata (step, epoch, pos) cast from double without bounds;
 *  - resuming with a larger train.steps under cosine decay made the LR jump back up;
 *  - `ddpm noise --config` ignored beta_start, beta_end, cosine_s;
 *  - tests/run.sh: no per-test time limit, a skipped test counted as "0 passed, 0 failed". */
#include <dirent.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <unistd.h>

#include "cli_util.h"
#include "ddpm/safetensors.h"
#include "ddpm/err.h"
#include "ddpm/nn.h"
#include "ddpm/rng.h"
#include "ddpm/gemm.h"
#include "ddpm/platform.h"

static const char *TINY =
    "{\"data\": {\"format\": \"idx\", \"path\": \"/usr/share/datasets/fashion-mnist\", \"image_size\": 8, \"channels\": 1,"
    "            \"limit\": 8},"
    " \"model\": {\"ch\": 8, \"ch_mult\": [1, 2], \"num_res_blocks\": 1, \"attn_resolutions\": [], \"dropout\": 0, \"groups\": 4},"
    " \"diffusion\": {\"T\": 100},"
    " \"train\": {\"batch_size\": 4, \"steps\": 20, \"lr\": 0.002, \"warmup\": 4, \"lr_decay\": \"cosine\", \"min_lr\": 0.0002,"
    "           \"log_every\": 1, \"sample_every\": 0, \"ckpt_every\": 10, \"keep\": 2, \"seed\": 1}}";

static char cfg[600];

static void test_skip_stack(void) {
    int rc = run("info --no-data --config configs/cifar.json --set model.num_res_blocks=16 --set 'model.ch_mult=[1,2,2,2]'");
    T_OK(rc == 0 && strstr(g_out, "parameters:"), "info: cifar.json with 4 levels x 16 res blocks (69 skips) -> exit %d %s", rc,
         rc ? g_err : "");
    rc = run("info --no-data --config configs/cifar.json --set model.num_res_blocks=16 --set 'model.ch_mult=[1,1,1,1,1,1]'");
    T_OK(rc == 0, "info: 6 levels x 16 res blocks -> exit %d %s", rc, rc ? g_err : "");
}

/* linear_forward/backward called from inside a parallel region with nesting off: the
 * inner team has 1 thread while omp_get_max_threads() still says 2. */
static void test_linear_team(void) {
#ifndef _OPENMP
    T_SKIP("linear layers inside a parallel region: built without OpenMP, there is no inner team");
    return;
#else
    const int N = 256, IN = 128, OUT = 96;
    float *x = malloc(sizeof(float) * N * IN), *w = malloc(sizeof(float) * OUT * IN), *b = malloc(sizeof(float) * OUT);
    float *y = malloc(sizeof(float) * N * OUT), *yr = malloc(sizeof(float) * N * OUT), *dy = malloc(sizeof(float) * N * OUT);
    float *dx = calloc((size_t)N * IN, 4), *dxr = calloc((size_t)N * IN, 4), *dw = calloc((size_t)OUT * IN, 4),
          *dwr = calloc((size_t)OUT * IN, 4);
    rng_normal(x, (size_t)N * IN, 1, 0, 0);
    rng_normal(w, (size_t)OUT * IN, 2, 0, 0);
    rng_normal(b, OUT, 3, 0, 0);
    rng_normal(dy, (size_t)N * OUT, 4, 0, 0);
    gemm_ref(0, 1, N, OUT, IN, 1.0f, x, IN, w, IN, 0.0f, yr, OUT);
    for (int n = 0; n < N; n++)
        for (int j = 0; j < OUT; j++) yr[n * OUT + j] += b[j];
    gemm_ref(0, 0, N, IN, OUT, 1.0f, dy, OUT, w, IN, 0.0f, dxr, IN);
    gemm_ref(1, 0, OUT, IN, N, 1.0f, dy, OUT, x, IN, 0.0f, dwr, IN);
    int th0 = threads_get();
    threads_set(2);
    omp_set_max_active_levels(1);
    int team = 0;
    for (size_t i = 0; i < (size_t)N * OUT; i++) y[i] = NAN;
#pragma omp parallel num_threads(2)
#pragma omp single
    {
#pragma omp parallel
        team = omp_get_num_threads();
        linear_forward(y, x, w, b, N, IN, OUT);
        linear_backward(dx, dw, NULL, dy, x, w, N, IN, OUT);
    }
    double ey = t_rel_l2(y, yr, (size_t)N * OUT), ex = t_rel_l2(dx, dxr, (size_t)N * IN), ew = t_rel_l2(dw, dwr, (size_t)OUT * IN);
    /* float32 GEMM against the double reference: ~sqrt(K) 2^-24 relative, K <= 256 */
    T_OK(ey <= 1e-5 && !isnan(ey), "linear_forward with a 1-thread team (max threads 2, team %d): rel L2 %.3g", team, ey);
    T_OK(ex <= 1e-5 && ew <= 1e-5, "linear_backward with a 1-thread team: dinp rel L2 %.3g, dw %.3g", ex, ew);
    threads_set(th0);
    free(x), free(w), free(b), free(y), free(yr), free(dy), free(dx), free(dxr), free(dw), free(dwr);
#endif
}

static int count_files(const char *dir, const char *prefix, char *list, size_t n) {
    DIR *d = opendir(dir);
    int k = 0;
    if (list) list[0] = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (!strncmp(e->d_name, prefix, strlen(prefix))) {
            k++;
            if (list) snprintf(list + strlen(list), n - strlen(list), " %s", e->d_name);
        }
    if (d) closedir(d);
    return k;
}

static void test_force_milestones(const char *d) {
    char dir[700], p[800], list[2048];
    snprintf(dir, sizeof dir, "%s/force", d);
    int rc = run("train --config %s --set train.out_dir=%s --quiet", cfg, dir); /* milestones 10, 20 */
    /* an older, longer run's milestones and a leftover of a writer killed mid-save */
    const char *old[] = {"ckpt_0000900.safetensors", "ckpt_0000950.safetensors", "ckpt_0000030.safetensors.tmp.999999999"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, old[i]);
        write_text(p, "old run");
    }
    rc = run("train --config %s --set train.out_dir=%s --set train.steps=30 --quiet --force", cfg, dir);
    int n = count_files(dir, "ckpt_", list, sizeof list);
    snprintf(p, sizeof p, "%s/ckpt_0000030.safetensors", dir);
    int has30 = access(p, F_OK) == 0;
    snprintf(p, sizeof p, "%s/ckpt_0000020.safetensors", dir);
    int has20 = access(p, F_OK) == 0;
    T_OK(rc == 0 && n == 2 && has20 && has30, "--force over an older, longer run keeps this run's newest 2 milestones:%s", list);
    /* a resumed run prunes by step and ignores .tmp files */
    snprintf(p, sizeof p, "%s/ckpt_0000035.safetensors.tmp.999999999", dir);
    write_text(p, "partial");
    rc = run("train --resume %s --set train.steps=40 --quiet", dir);
    n = count_files(dir, "ckpt_", list, sizeof list);
    snprintf(p, sizeof p, "%s/ckpt_0000040.safetensors", dir);
    T_OK(rc == 0 && n == 2 && access(p, F_OK) == 0 && !strstr(list, "tmp"),
         "resume: milestones 30, 40 kept, stale .tmp files removed and never counted:%s", list);
}

/* Rewrite a checkpoint's metadata key to `val` (everything else unchanged). */
static int set_meta(const char *src, const char *dst, const char *key, const char *val) {
    StFile f;
    if (st_read(&f, src)) return -1;
    StTensorOut *t = calloc(f.n, sizeof *t);
    for (int i = 0; i < f.n; i++) {
        t[i].name = f.e[i].name, t[i].ndim = f.e[i].ndim;
        for (int k = 0; k < f.e[i].ndim; k++) t[i].shape[k] = f.e[i].shape[k];
        t[i].data = (const float *)(f.data + f.e[i].begin);
    }
    const char **vals = calloc(f.n_meta, sizeof *vals);
    for (int i = 0; i < f.n_meta; i++) vals[i] = strcmp(f.meta_k[i], key) ? f.meta_v[i] : val;
    int rc = st_write(dst, t, f.n, (const char *const *)f.meta_k, vals, f.n_meta);
    free(t), free(vals);
    st_free(&f);
    return rc;
}

static void test_meta_bounds(const char *d) {
    char good[800], dir[700], lat[800], cmd[2000];
    snprintf(good, sizeof good, "%s/good.safetensors", d);
    snprintf(dir, sizeof dir, "%s/meta", d);
    snprintf(lat, sizeof lat, "%s/latest.safetensors", dir);
    const char *cases[][3] = {{"step", "1e300", "\"step\""},      {"step", "-5", "\"step\""},        {"step", "12.5", "\"step\""},
                              {"epoch", "3e9", "\"epoch\""},       {"pos", "9e18", "\"pos\""},        {"pos", "100000", "data position"},
                              {"loss_count", "inf", "loss_count"}, {"elapsed", "nan", "\"elapsed\""}};
    run("train --config %s --set train.out_dir=%s --set train.steps=1 --quiet", cfg, dir);
    snprintf(cmd, sizeof cmd, "cp %s %s", lat, good);
    T_OK(system(cmd) == 0, "a 1-step checkpoint to rewrite");
    for (int i = 0; i < 8; i++) {
        int w = set_meta(good, lat, cases[i][0], cases[i][1]);
        int rc = run("train --resume %s --set train.steps=30 --quiet", dir);
        T_OK(w == 0 && rc == 1 && strstr(g_err, cases[i][2]) && n_lines(g_err) == 1, "metadata %s = %s -> exit %d (%s): %s", cases[i][0],
             cases[i][1], rc, w ? err_msg() : "rewritten", g_err);
    }
}

static void test_cosine_resume(const char *d) {
    char dir[700];
    snprintf(dir, sizeof dir, "%s/cosine", d);
    int rc1 = run("train --config %s --set train.out_dir=%s --quiet", cfg, dir); /* 20 steps, decays to min_lr */
    int rc2 = run("train --resume %s --set train.steps=40 --quiet", dir);
    char p[800], line[256];
    snprintf(p, sizeof p, "%s/log.csv", dir);
    FILE *f = fopen(p, "r");
    double lr[64] = {0}, jump = 0;
    int n = 0;
    while (f && fgets(line, sizeof line, f) && n < 64) {
        long s;
        double l, r;
        if (sscanf(line, "%ld,%lf,%lf", &s, &l, &r) == 3 && s >= 1 && s <= 40) lr[s] = r, n++;
    }
    if (f) fclose(f);
    for (int s = 6; s <= 40; s++) jump = fmax(jump, lr[s] - lr[s - 1]); /* after warmup the LR only falls */
    T_OK(rc1 == 0 && rc2 == 0 && n == 40 && jump <= 0, "cosine LR after a resume with more steps: never rises (largest step-to-step "
         "rise %.3g; lr at 20, 21: %.4g, %.4g)", jump, lr[20], lr[21]);
    T_NEAR(lr[40], 0.0002, 1e-9, "cosine LR reaches min_lr at the new train.steps");
}

static void test_noise_betas(const char *d) {
    char c2[700], csv[700], png[700];
    snprintf(c2, sizeof c2, "%s/betas.json", d);
    snprintf(csv, sizeof csv, "%s/betas.csv", d);
    snprintf(png, sizeof png, "%s/betas.png", d);
    write_text(c2, "{\"diffusion\": {\"T\": 50, \"schedule\": \"linear\", \"beta_start\": 0.001, \"beta_end\": 0.05}}");
    int rc = run("noise --config %s -o %s --csv %s", c2, png, csv);
    char text[8192];
    slurp(csv, text, sizeof text);
    double b0 = 0, b1 = 0;
    int t;
    char *l = strchr(text, '\n');
    if (l) sscanf(l + 1, "%d,%lf", &t, &b0);
    char *last = strstr(text, "\n49,");
    if (last) sscanf(last + 1, "%d,%lf", &t, &b1);
    T_OK(rc == 0 && fabs(b0 - 0.001) < 1e-9 && fabs(b1 - 0.05) < 1e-8, "noise --config uses the config's betas: %.6g .. %.6g", b0, b1);
    write_text(c2, "{\"diffusion\": {\"T\": 50, \"schedule\": \"cosine\", \"cosine_s\": 0.5}}");
    rc = run("noise --config %s -o %s --csv %s", c2, png, csv);
    slurp(csv, text, sizeof text);
    l = strchr(text, '\n');
    double ab0 = 0;
    if (l) sscanf(l + 1, "%d,%lf,%lf", &t, &b0, &ab0);
    /* alpha_bar(0) = f(1)/f(0), f(t) = cos^2(((t/T + s)/(1+s)) pi/2) */
    double s = 0.5, f0 = pow(cos(s / (1 + s) * M_PI / 2), 2), f1 = pow(cos((1.0 / 50 + s) / (1 + s) * M_PI / 2), 2);
    T_OK(rc == 0 && fabs(ab0 - f1 / f0) < 1e-5, "noise --config uses the config's cosine_s: alpha_bar_0 %.6g (want %.6g)", ab0, f1 / f0);
}

/* pid is a live process: it exists and is no zombie (an orphan whose reaper has not come by) */
static int running(int pid) {
    char path[64], stat[256];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    size_t n = fread(stat, 1, sizeof stat - 1, f);
    fclose(f);
    stat[n] = 0;
    const char *e = strrchr(stat, ')'); /* "pid (comm) S ..." */
    return e && e[1] == ' ' && e[2] != 'Z' && e[2] != 'X';
}

static void test_runner(const char *d) {
    char p[700];
    /* the hung test's two sleeps write their pids: the check below asks about those two
     * processes only, not about any sleep another suite on the machine may be running */
    char hang[1400];
    snprintf(hang, sizeof hang, "#!/bin/sh\nsleep 300 & echo $! > '%s/pids'\nsleep 300 &\necho $! >> '%s/pids'\nwait\n", d, d);
    snprintf(p, sizeof p, "%s/hang", d);
    write_text(p, hang);
    snprintf(p, sizeof p, "%s/skip", d);
    write_text(p, "#!/bin/sh\necho '  skipped: no such thing here'\nexit 77\n");
    snprintf(p, sizeof p, "%s/good", d);
    write_text(p, "#!/bin/sh\necho '3 passed, 0 failed'\n");
    snprintf(p, sizeof p, "%s/part", d);
    write_text(p, "#!/bin/sh\necho '  skip one check: not on this machine'\necho '2 passed, 0 failed, 1 skipped'\n");
    char cmd[2048], out[600], text[4096];
    snprintf(out, sizeof out, "%s/runner.out", d);
    snprintf(cmd, sizeof cmd, "cd %s && chmod +x hang skip good part && TEST_TIMEOUT=2 sh '%s/tests/run.sh' good skip part hang >%s 2>&1", d,
             getcwd(p, sizeof p), out);
    double t0 = now_s();
    int st = system(cmd);
    double dt = now_s() - t0;
    slurp(out, text, sizeof text);
    T_OK(WEXITSTATUS(st) == 1 && dt < 30 && strstr(text, "FAIL hang: timed out after 2 s"),
         "run.sh: a hung test fails after TEST_TIMEOUT (%.1f s)", dt);
    T_OK(strstr(text, "SKIPPED: no such thing here") && strstr(text, "skipped: skip") && strstr(text, "\n5 passed, 1 failed, 2 skipped\n"),
         "run.sh: a skipped binary says so and counts as skipped, neither passed nor failed");
    T_OK(strstr(text, "  skip one check: not on this machine\n") && strstr(text, "   2 passed, 0 failed, 1 skipped ("),
         "run.sh: a skipped check is shown with its reason and summed");
    snprintf(p, sizeof p, "%s/pids", d);
    FILE *f = fopen(p, "r");
    int pid, n = 0, alive = 0;
    while (f && fscanf(f, "%d", &pid) == 1) n++, alive += running(pid);
    if (f) fclose(f);
    T_OK(n == 2 && alive == 0, "run.sh: the hung test's children were killed too (%d of %d still alive)", alive, n);
}

int main(void) {
    const char *d = t_tmpdir();
    snprintf(cfg, sizeof cfg, "%s/tiny.json", d);
    write_text(cfg, TINY);
    printf("skip stack\n");
    test_skip_stack();
    printf("linear layers in a smaller team\n");
    test_linear_team();
    printf("milestones with --force\n");
    test_force_milestones(d);
    printf("checkpoint metadata bounds\n");
    test_meta_bounds(d);
    printf("cosine decay on resume\n");
    test_cosine_resume(d);
    printf("noise --config schedule\n");
    test_noise_betas(d);
    printf("tests/run.sh\n");
    test_runner(d);
    return t_done();
}
