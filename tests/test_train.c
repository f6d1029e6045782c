/* Training as a user runs it: a tiny model overfits 8 images; resume repeats the
 * uninterrupted run exactly; SIGTERM and kill -9 leave a checkpoint that resumes; NaN
 * stops with the step named; corrupt checkpoints are refused; the optimizer arithmetic. */
#include <signal.h>
#include <unistd.h>

#include "cli_util.h"
#include "ddpm/safetensors.h"
#include "ddpm/checkpoint.h"
#include "ddpm/optim.h"

static const char *TINY =
    "{\"data\": {\"format\": \"idx\", \"path\": \"/usr/share/datasets/fashion-mnist\", \"image_size\": 16, \"channels\": 1,"
    "            \"limit\": 8, \"hflip\": true},"
    " \"model\": {\"ch\": 16, \"ch_mult\": [1, 2], \"num_res_blocks\": 1, \"attn_resolutions\": [8], \"dropout\": 0.1, \"groups\": 4},"
    " \"diffusion\": {\"T\": 1000, \"schedule\": \"linear\"},"
    " \"train\": {\"batch_size\": 8, \"steps\": 200, \"lr\": 0.002, \"warmup\": 10, \"grad_clip\": 1.0, \"ema_decay\": 0.99,"
    "           \"log_every\": 10, \"sample_every\": 0, \"ckpt_every\": 20, \"keep\": 2, \"seed\": 3, \"sample_n\": 4, \"sample_steps\": 5}}";

static char cfg[512];

static void test_overfit(const char *d) {
    int rc = run("train --config %s --set train.out_dir=%s/overfit --quiet", cfg, d);
    double loss[64];
    char dir[600];
    snprintf(dir, sizeof dir, "%s/overfit", d);
    int n = read_log(dir, loss, 64, NULL, 0);
    double first = n ? loss[0] : 0, last = n ? loss[n - 1] : 1;
    T_OK(rc == 0 && n == 20 && first / last >= 5, "tiny model overfits 8 images: loss %.4f -> %.4f (%.1fx, need 5x) in 200 steps",
         first, last, first / last);
    char p[600];
    snprintf(p, sizeof p, "%s/overfit/loss.png", d);
    T_OK(access(p, F_OK) == 0, "loss.png drawn");
    int milestones = 0;
    for (int s = 20; s <= 200; s += 20) {
        snprintf(p, sizeof p, "%s/overfit/ckpt_%07d.safetensors", d, s);
        milestones += access(p, F_OK) == 0;
    }
    T_OK(milestones == 2, "keep = 2 milestone checkpoints kept (found %d)", milestones);
}

static void test_resume(const char *d) {
    int a = run("train --config %s --set train.out_dir=%s/straight --set train.steps=40 --quiet", cfg, d);
    int b1 = run("train --config %s --set train.out_dir=%s/split --set train.steps=20 --quiet", cfg, d);
    int b2 = run("train --resume %s/split --set train.steps=40 --quiet", d);
    char ra[4096], rb[4096], pa[600], pb[600];
    double l[8];
    snprintf(pa, sizeof pa, "%s/straight", d);
    snprintf(pb, sizeof pb, "%s/split", d);
    int na = read_log(pa, l, 8, ra, sizeof ra), nb = read_log(pb, l, 8, rb, sizeof rb);
    T_OK(a == 0 && b1 == 0 && b2 == 0 && na == 4 && nb == 4 && !strcmp(ra, rb),
         "40 steps straight and 20 + resume + 20 give the same log rows (%d, %d rows)", na, nb);
    snprintf(pa, sizeof pa, "%s/straight/latest.safetensors", d);
    snprintf(pb, sizeof pb, "%s/split/latest.safetensors", d);
    double mr;
    int same = same_tensors(pa, pb, &mr);
    T_OK(same && mr == 0, "and bitwise identical weights, EMA and Adam moments (max rel diff %.3g)", mr);
    T_OK(run("train --config %s --set train.out_dir=%s/straight --quiet", cfg, d) == 2 && strstr(g_err, "--resume"),
         "training into a folder holding a run asks for --resume or --force: %s", g_err);
}

static int wait_for_step(const char *dir, int min_rows, double timeout) {
    double l[64];
    for (double t = 0; t < timeout; t += 0.05) {
        if (read_log(dir, l, 64, NULL, 0) >= min_rows) return 1;
        usleep(50000);
    }
    return 0;
}

static pid_t spawn_train(const char *d, const char *name) {
    pid_t pid = fork();
    if (pid == 0) {
        char out[600];
        snprintf(out, sizeof out, "train.out_dir=%s/%s", d, name);
        freopen("/dev/null", "w", stdout);
        char errp[600];
        snprintf(errp, sizeof errp, "%s/%s.stderr", d, name);
        freopen(errp, "w", stderr);
        execl(bin(), bin(), "train", "--config", cfg, "--set", out, "--set", "train.steps=100000", "--set", "train.log_every=1",
              (char *)NULL);
        _exit(127);
    }
    return pid;
}

static void test_signals(const char *d) {
    char dir[600], p[700];
    snprintf(dir, sizeof dir, "%s/sigterm", d);
    pid_t pid = spawn_train(d, "sigterm");
    int started = wait_for_step(dir, 3, 60);
    kill(pid, SIGTERM);
    int st;
    waitpid(pid, &st, 0);
    snprintf(p, sizeof p, "%s/sigterm.stderr", d);
    slurp(p, g_err, sizeof g_err);
    T_OK(started && WIFEXITED(st) && WEXITSTATUS(st) == 0 && strstr(g_err, "ddpm train --resume"),
         "SIGTERM mid-run: saves, says how to resume, exit 0");
    T_OK(run("train --resume %s --set train.steps=12 --quiet", dir) == 0 || strstr(g_err, "already"), "the SIGTERM checkpoint resumes: %s", g_err);

    /* kill -9 at several moments (mid-step, mid-checkpoint...), resuming after each */
    snprintf(dir, sizeof dir, "%s/kill9", d);
    int all_loadable = 1, rounds = 4;
    for (int round = 0; round < rounds; round++) {
        pid = round == 0 ? spawn_train(d, "kill9") : fork();
        if (round > 0 && pid == 0) {
            freopen("/dev/null", "w", stdout);
            freopen("/dev/null", "w", stderr);
            execl(bin(), bin(), "train", "--resume", dir, "--set", "train.steps=100000", "--set", "train.log_every=1", (char *)NULL);
            _exit(127);
        }
        double l[64];
        int rows0 = read_log(dir, l, 64, NULL, 0);
        wait_for_step(dir, rows0 + 2, 60);
        usleep(7000 + 31000 * round); /* land somewhere else in the step each round */
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        snprintf(p, sizeof p, "%s/latest.safetensors", dir);
        StFile f;
        int ok = st_read(&f, p) == 0;
        if (ok) st_free(&f);
        all_loadable &= ok;
    }
    T_OK(all_loadable, "kill -9 at %d moments of a run: latest.safetensors always loadable", rounds);
    long at = -1;
    StFile f;
    if (st_read(&f, p) == 0) {
        at = atol(st_meta(&f, "step") ? st_meta(&f, "step") : "-1");
        st_free(&f);
    }
    T_OK(at >= 0 && run("train --resume %s --set train.steps=%ld --quiet", dir, at + 3) == 0, "and --resume continues from step %ld: %s",
         at, g_err);
}

static void test_nan(const char *d) {
    int rc = run("train --config %s --set train.out_dir=%s/nan --set train.lr=1e9 --set train.warmup=0 --set train.grad_clip=0 --quiet",
                 cfg, d);
    T_OK(rc == 1 && strstr(g_err, "step ") && strstr(g_err, "latest.safetensors") && n_lines(g_err) == 1,
         "lr 1e9: stops with the step named, exit 1: %s", g_err);
    char p[600];
    snprintf(p, sizeof p, "%s/nan/latest.safetensors", d);
    StFile f;
    int ok = st_read(&f, p) == 0;
    if (ok) st_free(&f);
    T_OK(ok, "the last good checkpoint stays loadable");
}

static void corrupt_copy(const char *src, const char *dst, long truncate_to, long flip_at, int header_len_delta) {
    FILE *f = fopen(src, "rb");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(n);
    fread(b, 1, n, f);
    fclose(f);
    if (flip_at >= 0) b[flip_at] ^= 0x5a;
    if (header_len_delta) {
        uint64_t h;
        memcpy(&h, b, 8);
        h += header_len_delta;
        memcpy(b, &h, 8);
    }
    f = fopen(dst, "wb");
    fwrite(b, 1, truncate_to >= 0 ? truncate_to : n, f);
    fclose(f);
    free(b);
}

static void test_corrupt(const char *d) {
    char good[600], bad[600];
    snprintf(good, sizeof good, "%s/straight/latest.safetensors", d);
    snprintf(bad, sizeof bad, "%s/bad.safetensors", d);
    T_OK(run("sample --ckpt %s -n 2 --sampler ddim --steps 3 -o %s/ok --quiet", good, d) == 0, "a good checkpoint samples");
    struct {
        long trunc, flip;
        int hdelta;
        const char *what;
    } cases[] = {{1000, -1, 0, "truncated"},      {20, -1, 0, "truncated inside the header"}, {-1, 30, 0, "flipped byte in the header"},
                 {-1, 100, 0, "flipped byte in the header (2)"}, {-1, -1, 1 << 30, "header size larger than the file"},
                 {7, -1, 0, "shorter than 8 bytes"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        corrupt_copy(good, bad, cases[i].trunc, cases[i].flip, cases[i].hdelta);
        int rc = run("sample --ckpt %s -n 1 -o %s/x --quiet", bad, d);
        T_OK(rc == 1 && n_lines(g_err) == 1 && strstr(g_err, "bad.safetensors"), "%s checkpoint: exit %d, %s", cases[i].what, rc, g_err);
    }
    /* wrong shapes: the stored config says ch 32 but the tensors are for ch 16 */
    Config a, b;
    config_defaults(&a);
    config_parse(&a, TINY, "tiny");
    b = a;
    b.model.ch = 32;
    UNet u;
    unet_init(&u, &a, 1, 0);
    ckpt_save(bad, &u, NULL, &b, NULL);
    unet_free(&u);
    int rc = run("sample --ckpt %s -n 1 -o %s/x --quiet", bad, d);
    T_OK(rc == 1 && strstr(g_err, "shape"), "checkpoint whose shapes do not match its config: exit %d, %s", rc, g_err);
    /* resume refuses a corrupt latest too */
    char dir[600], lat[700];
    snprintf(dir, sizeof dir, "%s/split", d);
    snprintf(lat, sizeof lat, "%s/latest.safetensors", dir);
    corrupt_copy(good, lat, 5000, -1, 0);
    T_OK(run("train --resume %s --quiet", dir) == 1 && strstr(g_err, "latest.safetensors"), "resume of a truncated checkpoint: exit 1, %s",
         g_err);
}

static void test_optim_arith(void) {
    Config c;
    config_defaults(&c);
    c.train.lr = 2e-4f, c.train.warmup = 5000;
    T_NEAR(optim_lr(&c, 0), 2e-4 / 5000, 1e-6 * 2e-4 / 5000, "warmup lr at update 1 = lr/warmup");
    T_NEAR(optim_lr(&c, 2499), 1e-4, 1e-10, "warmup lr at update 2500 = lr/2");
    T_NEAR(optim_lr(&c, 4999), 2e-4, 1e-10, "lr at the end of warmup");
    T_NEAR(optim_lr(&c, 100000), 2e-4, 1e-10, "lr after warmup (no decay)");
    strcpy(c.train.lr_decay, "cosine");
    c.train.steps = 15000, c.train.min_lr = 0;
    T_NEAR(optim_lr(&c, 10000), 1e-4, 1e-10, "cosine decay halfway = lr/2");
    T_NEAR(optim_lr(&c, 15000), 0, 1e-12, "cosine decay at the end = min_lr");
    c.train.ema_decay = 0.9999f, c.train.ema_warmup = true;
    T_NEAR(optim_ema_decay(&c, 0), 0.1, 1e-12, "EMA warmup decay at update 1 = 1/10");
    T_NEAR(optim_ema_decay(&c, 90), 91.0 / 100, 1e-12, "EMA warmup decay at update 91");
    c.train.ema_warmup = false;
    T_NEAR(optim_ema_decay(&c, 0), 0.9999f, 1e-9, "EMA decay without warmup");
    /* one Adam step by hand: m = 0.1 g, v = 0.001 g^2, bias-corrected update = g/|g| (eps tiny) */
    Optim o;
    optim_init(&o, 2);
    float p[2] = {1.0f, -2.0f}, g[2] = {0.5f, -4.0f};
    o.ema[0] = 1.0f, o.ema[1] = -2.0f;
    c.train.beta1 = 0.9f, c.train.beta2 = 0.999f, c.train.eps = 1e-8f, c.train.weight_decay = 0;
    optim_step(&o, p, g, &c, 0, 0.01, 0.5, 0.9);
    T_NEAR(p[0], 1.0 - 0.01, 1e-6, "Adam first step moves by lr * sign(g)");
    T_NEAR(p[1], -2.0 + 0.01, 1e-6, "Adam first step, negative gradient");
    T_NEAR(o.m[1], 0.1 * (-4.0 * 0.5), 1e-7, "first moment uses the clipped gradient");
    T_NEAR(o.ema[0], 0.9 * 1.0 + 0.1 * 0.99, 1e-6, "EMA = d ema + (1-d) p");
    float gg[3] = {3, 4, 0};
    T_NEAR(optim_grad_norm(gg, 3), 5, 1e-12, "global gradient norm");
    strcpy(c.train.optimizer, "adamw");
    c.train.weight_decay = 0.1f;
    optim_free(&o);
    optim_init(&o, 1);
    float p1[1] = {2.0f}, g1[1] = {1.0f};
    optim_step(&o, p1, g1, &c, 0, 0.01, 1.0, 0.0);
    T_NEAR(p1[0], 2.0 - 0.01 * 0.1 * 2.0 - 0.01, 1e-6, "AdamW decoupled weight decay");
    optim_free(&o);
}

int main(void) {
    const char *d = t_tmpdir();
    snprintf(cfg, sizeof cfg, "%s/tiny.json", d);
    write_text(cfg, TINY);
    test_optim_arith();
    test_overfit(d);
    test_resume(d);
    test_signals(d);
    test_nan(d);
    test_corrupt(d);
    return t_done();
}
