/* Restoration (model.cond_image, ddpm restore): the image-conditioned U-Net's gradients by
 * finite differences (its PyTorch reference is in test_unet); the dropped condition equals
 * unconditional sampling with the condition zeroed; training draws the degradations so that
 * resume (also after kill -9) is bit-exact; ddpm restore as a user runs it, and its refusals
 * (one line, exit 2, nothing written). */
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_util.h"
#include "ddpm/config.h"
#include "ddpm/degrade.h"
#include "ddpm/diffusion.h"
#include "ddpm/err.h"
#include "ddpm/image.h"
#include "ddpm/rng.h"
#include "ddpm/sampler.h"
#include "ddpm/unet.h"

/* 8x8 grey, class- and image-conditioned with a mask channel: C_in = 3. */
static const char *TINY_NET =
    "{\"data\": {\"image_size\": 8, \"channels\": 1}, \"model\": {\"ch\": 8, \"ch_mult\": [1, 2], \"num_res_blocks\": 1, "
    "\"attn_resolutions\": [4], \"dropout\": 0, \"groups\": 4, \"cond_image\": true}, "
    "\"train\": {\"degrade\": [{\"type\": \"downscale\", \"factor\": 2}, {\"type\": \"mask\"}]}}";

/* Every parameter small and random (nothing zero, GroupNorm gamma near 1), as test_unet. */
static void random_params(UNet *u, uint64_t seed) {
    for (int i = 0; i < u->nP; i++) {
        const Param *p = &u->P[i];
        float *w = u->params + p->off;
        rng_uniform(w, p->n, seed, RNG_STREAM(RNG_INIT, i), 0);
        float bound = p->fan_in ? 1.0f / sqrtf((float)p->fan_in) : 0.1f;
        for (size_t j = 0; j < p->n; j++) w[j] = (2.0f * w[j] - 1.0f) * bound + (p->init == PINIT_ONE ? 1.0f : 0.0f);
    }
}

static double loss_of(UNet *u, float *out, const float *x, const int *t, const float *R, size_t n) {
    unet_forward(u, out, x, t, 4);
    double L = 0;
    for (size_t i = 0; i < n; i++) L += (double)out[i] * R[i];
    return L;
}

/* L = sum(out * R) over 4 images; central differences for conv_in's weights on the
 * condition's input channels (y and mask) and for dL/dx on those channels. The bound is
 * test_unet's (test_class_emb_grad): rounding of the forward, rms delta = sqrt(D K_max / 2)
 * 2^-24 ||out o R||, gives the difference an error of rms delta / (sqrt2 h), four of those
 * bound the worst entry; the truncation error h^2 L3 / 6 is estimated from the difference at
 * 2h (Richardson). A backward that ignored the extra channels (or mixed them up) errs by
 * ~|grad|, which is checked to be well above the bound. */
static void test_fd(void) {
    Config c;
    config_defaults(&c);
    int rc = config_parse(&c, TINY_NET, "restore fd");
    UNet u;
    if (!rc) rc = unet_init(&u, &c, 4, 1);
    T_OK(rc == 0, "tiny image-conditioned U-Net builds%s%s", rc ? ": " : "", rc ? err_msg() : "");
    if (rc) return;
    const Param *pw = unet_param(&u, "conv_in.weight");
    T_OK(u.C_in == 3 && u.C_img == 1 && pw && pw->shape[3] == 3, "C_in = 3 (x_t, y, mask), output 1 channel, conv_in.weight (8,3,3,%d)",
         pw ? pw->shape[3] : -1);
    /* the unconditioned model has the same table but conv_in's input width */
    Config c0 = c;
    c0.model.cond_image = false;
    c0.train.degrade.n = 0;
    UNet u0;
    rc = unet_plan(&u0, &c0, 1, 0);
    int same = rc == 0 && u0.nP == u.nP;
    for (int i = 0; same && i < u.nP; i++)
        same = !strcmp(u.P[i].name, u0.P[i].name) && (u.P[i].n == u0.P[i].n || (int)i == (int)(pw - u.P));
    T_OK(same, "the unconditioned model's parameter table is the same but for conv_in.weight's width");
    if (!rc) unet_free(&u0);

    random_params(&u, 31);
    size_t nin = (size_t)4 * 8 * 8 * 3, n = (size_t)4 * 8 * 8;
    float *x = malloc(nin * 4), *out = malloc(n * 4), *R = malloc(n * 4), *dx = calloc(nin, 4);
    int t[4] = {10, 500, 999, 250};
    rng_normal(x, nin, 32, 1, 0);
    rng_normal(R, n, 32, 2, 0);
    loss_of(&u, out, x, t, R, n);
    unet_zero_grad(&u);
    unet_backward(&u, R, dx);
    double l2 = 0;
    for (size_t i = 0; i < n; i++) l2 += (double)out[i] * R[i] * out[i] * R[i];
    double K_max = 9.0 * 2 * c.model.ch * 2, D = 4.0 * u.nblk, delta = sqrt(D * K_max / 2) * ldexp(1.0, -24) * sqrt(l2);
    const float h = 1e-2f;
    int bad = 0, cnt = 0;
    double worst = 0, worst_tol = 0, gmin = INFINITY;
    for (int k = 0; k < 2 * 24; k++) {
        /* first 24: conv_in weights of input channels 1 (y) and 2 (mask); then 24 dx entries */
        float *v;
        double an;
        if (k < 24) {
            size_t j = pw->off + (size_t)(k % 8) * 27 + (size_t)((k / 8) % 9) * 3 + 1 + (k & 1);
            v = u.params + j, an = u.grads[j];
        } else {
            size_t j = (size_t)((k - 24) * 37 % 256) * 3 + 1 + (k & 1);
            v = x + j, an = dx[j];
        }
        float s = *v;
        double fd[2];
        for (int q = 0; q < 2; q++) {
            float hk = q ? 2 * h : h;
            *v = s + hk;
            double Lp = loss_of(&u, out, x, t, R, n);
            *v = s - hk;
            double Lm = loss_of(&u, out, x, t, R, n);
            *v = s;
            fd[q] = (Lp - Lm) / ((double)(s + hk) - (double)(s - hk));
        }
        double err = fabs(fd[0] - an), tol = 4 * delta / (sqrt(2.0) * h) + fabs(fd[1] - fd[0]) / 3;
        bad += !(err <= tol);
        cnt++;
        if (err > worst || err != err) worst = err, worst_tol = tol;
        gmin = fmin(gmin, fabs(an));
    }
    T_OK(!bad, "conv_in weights on y and mask, and dL/dx on those channels, vs central differences (h = 1e-2): %d of %d over "
               "their bound; worst |fd - grad| %.2e (its bound %.2e, delta %.2e), smallest |grad| %.2e",
         bad, cnt, worst, worst_tol, delta, gmin);
    free(x), free(out), free(R), free(dx);
    unet_free(&u);
}

/* The dropped condition, defined: y = 0 and mask = 0 (nothing known), what train.cond_drop
 * trains with (degrade_null). Restoring any input with guidance 0 (the condition dropped)
 * must give the bytes of unconditional sampling, sample_images, which runs the model with
 * that null condition (SampleTask.cond = NULL); so must restoring the explicit null
 * condition with guidance 1. Restoring a real input with guidance 1 must differ. */
static void test_dropped(void) {
    Config c;
    config_defaults(&c);
    int rc = config_parse(&c, TINY_NET, "restore dropped");
    UNet u;
    if (!rc) rc = unet_init(&u, &c, 8, 0);
    T_OK(rc == 0, "tiny U-Net for sampling%s%s", rc ? ": " : "", rc ? err_msg() : "");
    if (rc) return;
    random_params(&u, 41);
    Schedule s;
    schedule_init(&s, SCHEDULE_LINEAR, 1000, 1e-4, 0.02, 0.008);
    SampleOpts o;
    sample_opts_from_config(&o, &c);
    o.kind = SAMPLER_DDIM, o.steps = 6, o.eta = 0.5f, o.seed = 5;
    size_t D = 64, Dc = 64 * 2;
    int n = 3;
    float *cond = malloc(sizeof(float) * n * Dc), *nul = calloc((size_t)n * Dc, sizeof(float));
    float *a = malloc(sizeof(float) * n * D), *b = malloc(sizeof(float) * n * D), *g = malloc(sizeof(float) * n * D);
    float *e = malloc(sizeof(float) * n * D);
    rng_normal(cond, (size_t)n * Dc, 42, 0, 0);
    for (size_t i = 0; i < (size_t)n * 64; i++) cond[i * 2 + 1] = 1; /* mask channel: known */
    int lv[16];
    int nl = sample_levels(lv, &o, &s, s.T);
    SampleTask task = sample_task_plain(lv, nl);
    o.guidance = 1;
    sample_images(&u, &s, &o, n, 0, 4, a, 0, NULL, NULL, NULL);
    task.cond = nul;
    sample_run(&u, &s, &o, &task, n, 0, 4, b, 0, NULL, NULL, NULL);
    T_OK(!memcmp(a, b, sizeof(float) * n * D), "the explicit null condition (y = 0, mask 0) = unconditional sampling, bit for bit");
    task.cond = cond;
    o.guidance = 0;
    sample_run(&u, &s, &o, &task, n, 0, 4, b, 0, NULL, NULL, NULL);
    T_OK(!memcmp(a, b, sizeof(float) * n * D), "restoring with the condition dropped (guidance 0) = unconditional sampling, bit for bit");
    o.guidance = 1;
    sample_run(&u, &s, &o, &task, n, 0, 4, e, 0, NULL, NULL, NULL);
    double d = t_rel_l2(e, a, (size_t)n * D);
    T_OK(d > 1e-3, "restoring with the condition (guidance 1) differs from it (rel L2 %.3g)", d);
    /* guided: the conditional and dropped halves in one forward of 2b rows, combined */
    o.guidance = 2;
    sample_run(&u, &s, &o, &task, n, 0, 4, g, 0, NULL, NULL, NULL);
    double d1 = t_rel_l2(g, e, (size_t)n * D), d0 = t_rel_l2(g, a, (size_t)n * D);
    T_OK(d1 > 1e-3 && d0 > 1e-3 && sample_guided(&u, &o), "guidance 2 on the image condition runs both halves and differs from "
         "guidance 1 (rel L2 %.3g) and 0 (%.3g)", d1, d0);
    free(cond), free(nul), free(a), free(b), free(g), free(e);
    schedule_free(&s);
    unet_free(&u);
}

static char cfg[512];
static const char *TINY_TRAIN =
    "{\"data\": {\"format\": \"idx\", \"path\": \"/usr/share/datasets/fashion-mnist\", \"image_size\": 16, \"channels\": 1,"
    "            \"limit\": 16, \"hflip\": true},"
    " \"model\": {\"ch\": 8, \"ch_mult\": [1, 2], \"num_res_blocks\": 1, \"attn_resolutions\": [], \"dropout\": 0.1, \"groups\": 4,"
    "            \"cond_image\": true},"
    " \"diffusion\": {\"T\": 1000, \"schedule\": \"linear\"},"
    " \"train\": {\"batch_size\": 8, \"steps\": 20, \"lr\": 0.002, \"warmup\": 5, \"ema_decay\": 0.99, \"cond_drop\": 0.2,"
    "           \"log_every\": 5, \"sample_every\": 0, \"ckpt_every\": 5, \"keep\": 1, \"seed\": 4,"
    "           \"degrade\": [{\"type\": \"downscale\", \"factor\": [2, 4]}, {\"type\": \"noise\", \"sigma\": [0.1, 0.5]},"
    "                       {\"type\": \"jpeg\"}, {\"chain\": [{\"type\": \"blur\"}, {\"type\": \"mask\"}]}]},"
    " \"sample\": {\"sampler\": \"ddim\", \"steps\": 4, \"guidance\": 1}}";

/* 20 steps straight and 10 + resume + 10: the same log rows and the same bytes of weights,
 * EMA and Adam moments (the degradations are drawn from (seed, step, g), not from a state). */
static void test_resume(const char *d) {
    int a = run("train --config %s --set train.out_dir=%s/straight --quiet", cfg, d);
    int b1 = run("train --config %s --set train.out_dir=%s/split --set train.steps=10 --quiet", cfg, d);
    int b2 = run("train --resume %s/split --set train.steps=20 --quiet", d);
    char ra[4096], rb[4096], pa[600], pb[600];
    double l[8];
    snprintf(pa, sizeof pa, "%s/straight", d);
    snprintf(pb, sizeof pb, "%s/split", d);
    int na = read_log(pa, l, 8, ra, sizeof ra), nb = read_log(pb, l, 8, rb, sizeof rb);
    T_OK(a == 0 && b1 == 0 && b2 == 0 && na == 4 && nb == 4 && !strcmp(ra, rb),
         "restoration training: 20 steps straight and 10 + resume + 10 give the same log rows (%d, %d rows) %s", na, nb, g_err);
    snprintf(pa, sizeof pa, "%s/straight/latest.safetensors", d);
    snprintf(pb, sizeof pb, "%s/split/latest.safetensors", d);
    double mr;
    int same = same_tensors(pa, pb, &mr);
    T_OK(same && mr == 0, "and the same bytes of weights, EMA and Adam moments (max rel diff %.3g)", mr);
    /* a different seed draws different degradations: the loss differs */
    int r = run("train --config %s --set train.out_dir=%s/seed5 --set train.steps=5 --set train.seed=5 --quiet", cfg, d);
    char rs[4096];
    snprintf(pb, sizeof pb, "%s/seed5", d);
    read_log(pb, l, 8, rs, sizeof rs);
    T_OK(r == 0 && strncmp(rs, ra, 16), "another seed gives another first loss row (%.*s vs %.*s)", 20, rs, 20, ra);
}

/* kill -9 during a run, then --resume: the result equals the uninterrupted run's bytes. */
static void test_kill9(const char *d) {
    char dir[600], p[700], q[700];
    snprintf(dir, sizeof dir, "%s/kill9", d);
    pid_t pid = fork();
    if (pid == 0) {
        char out[700];
        snprintf(out, sizeof out, "train.out_dir=%s", dir);
        freopen("/dev/null", "w", stdout);
        freopen("/dev/null", "w", stderr);
        execl(bin(), bin(), "train", "--config", cfg, "--set", out, "--set", "train.log_every=1", "--set", "train.ckpt_every=1",
              (char *)NULL);
        _exit(127);
    }
    double l[64];
    int started = 0;
    for (double t = 0; t < 60 && !started; t += 0.02) {
        started = read_log(dir, l, 64, NULL, 0) >= 7;
        if (!started) usleep(20000);
    }
    usleep(13000);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    StFile f;
    snprintf(p, sizeof p, "%s/latest.safetensors", dir);
    long at = -1;
    if (st_read(&f, p) == 0) {
        at = atol(st_meta(&f, "step") ? st_meta(&f, "step") : "-1");
        st_free(&f);
    }
    int killed = WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL;
    T_OK(started && at > 0 && (at < 20 || !killed), "kill -9 during restoration training: latest.safetensors loadable at step %ld%s", at,
         killed ? "" : " (the run had finished)");
    int r = run("train --resume %s --set train.log_every=1 --set train.ckpt_every=1 --quiet", dir);
    snprintf(q, sizeof q, "%s/straight/latest.safetensors", d);
    double mr;
    int same = same_tensors(p, q, &mr);
    T_OK((r == 0 || strstr(g_err, "already")) && same && mr == 0,
         "--resume after kill -9 ends with the bytes of the uninterrupted run (max rel diff %.3g) %s", mr, r ? g_err : "");
}

static int write_grey(const char *path, int w, int h, int colour, uint8_t v0) {
    int C = colour ? 3 : 1;
    static uint8_t px[16 * 16 * 3]; /* w, h <= 16 */
    int N = w * h * C;
    for (int i = 0; i < N && i < (int)sizeof px; i++) px[i] = (uint8_t)((v0 + i * (colour ? 7 + i % 3 : 5)) & 255);
    return image_write_png(path, px, w, h, C);
}

static int dir_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* ddpm restore as a user runs it, on the run trained above. */
static void test_cli(const char *d) {
    char ck[600], small[600], full[600], col[600], mk[600], mk4[600], out[600], o2[600];
    snprintf(ck, sizeof ck, "%s/straight/latest.safetensors", d);
    snprintf(small, sizeof small, "%s/small.png", d);
    snprintf(full, sizeof full, "%s/full.png", d);
    snprintf(col, sizeof col, "%s/colour.png", d);
    snprintf(mk, sizeof mk, "%s/mask.png", d);
    snprintf(mk4, sizeof mk4, "%s/mask4.png", d);
    write_grey(small, 4, 4, 0, 10);
    write_grey(full, 16, 16, 0, 30);
    write_grey(col, 16, 16, 1, 0);
    uint8_t m[256];
    for (int i = 0; i < 256; i++) m[i] = (i % 16 >= 4 && i % 16 < 12 && i / 16 >= 4 && i / 16 < 12) ? 255 : 0;
    image_write_png(mk, m, 16, 16, 1);
    image_write_png(mk4, m, 4, 4, 1);

    snprintf(out, sizeof out, "%s/out", d);
    int rc = run("restore %s --ckpt %s -o %s -n 2 --steps 3 --quiet", small, ck, out);
    char p[700], p2[700];
    snprintf(p, sizeof p, "%s/small_strip.png", out);
    snprintf(p2, sizeof p2, "%s/small_1.png", out);
    Image im;
    int ok = rc == 0 && image_load(&im, p2, 1) == 0;
    T_OK(ok && im.w == 16 && access(p, F_OK) == 0 && strstr(g_err, "upsampled x4"),
         "ddpm restore of a 4x4 input to a 16 px model: strip and 2 results of 16x16, says it upsampled x4 (%s)", g_err);
    if (ok) image_free(&im);
    snprintf(o2, sizeof o2, "%s/out2", d);
    rc = run("restore %s --ckpt %s -o %s -n 2 --steps 3 --quiet", small, ck, o2);
    snprintf(p, sizeof p, "%s/small_1.png", o2);
    T_OK(rc == 0 && same_file(p, p2), "the same command twice: the same bytes");
    snprintf(o2, sizeof o2, "%s/out3", d);
    rc = run("restore %s --mask %s --ckpt %s -o %s --steps 3 --quiet", full, mk, ck, o2);
    snprintf(p, sizeof p, "%s/full_0.png", o2);
    T_OK(rc == 0 && access(p, F_OK) == 0, "--mask of the input's size: restored (%s)", g_err);
    rc = run("info --ckpt %s", ck);
    T_OK(rc == 0 && strstr(g_out, "restores (model.cond_image") && strstr(g_out, "downscale x2/x4"),
         "ddpm info --ckpt says what it restores");

    /* refusals: one line on stderr, exit 2, no output folder */
    snprintf(o2, sizeof o2, "%s/refused", d);
    rc = run("restore %s --ckpt %s -o %s --quiet", col, ck, o2);
    T_OK(rc == 2 && n_lines(g_err) == 1 && strstr(g_err, "colour") && !dir_exists(o2), "a colour input for a grey model: exit 2, %s",
         g_err);
    rc = run("restore %s --mask %s --ckpt %s -o %s --quiet", full, mk4, ck, o2);
    T_OK(rc == 2 && n_lines(g_err) == 1 && strstr(g_err, "4x4") && !dir_exists(o2), "a mask of another size: exit 2, %s", g_err);
    char plain[700];
    snprintf(plain, sizeof plain, "%s/plain", d);
    rc = run("train --config %s --set train.out_dir=%s --set model.cond_image=false --set train.degrade=[] --set train.steps=1 --quiet",
             cfg, plain);
    rc = rc ? rc : run("restore %s --ckpt %s/latest.safetensors -o %s --quiet", full, plain, o2);
    T_OK(rc == 2 && n_lines(g_err) == 1 && strstr(g_err, "restores nothing") && !dir_exists(o2),
         "a checkpoint that restores nothing: exit 2, %s", g_err);
    rc = run("restore %s/nope.png --ckpt %s -o %s --quiet", d, ck, o2);
    T_OK(rc == 2 && n_lines(g_err) == 1 && !dir_exists(o2), "a missing input: exit 2, %s", g_err);
    rc = run("train --config %s --set model.cond_image=false --set train.out_dir=%s --quiet", cfg, o2);
    T_OK(rc == 2 && strstr(g_err, "model.cond_image") && !dir_exists(o2), "train.degrade without model.cond_image: exit 2, %s", g_err);
}

int main(void) {
    const char *d = t_tmpdir();
    printf("image-conditioned U-Net: finite differences\n");
    test_fd();
    printf("the dropped condition\n");
    test_dropped();
    if (access("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", R_OK) != 0 &&
        access("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte", R_OK) != 0) {
        T_SKIP("training, resume and ddpm restore: no Fashion-MNIST in /usr/share/datasets/fashion-mnist");
        return t_done();
    }
    snprintf(cfg, sizeof cfg, "%s/tiny_restore.json", d);
    write_text(cfg, TINY_TRAIN);
    printf("training: degradations across resume and kill -9\n");
    test_resume(d);
    test_kill9(d);
    printf("ddpm restore\n");
    test_cli(d);
    return t_done();
}
