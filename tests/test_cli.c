/* The command line as a user meets it: help, versions, usage errors (exit 2), config
 * errors naming the key (exit 2), `ddpm noise` and `ddpm info` on real inputs. */
#include <stb_image.h>

#include "cli_util.h"
#include "ddpm/image.h"

static void expect(int rc, int want, const char *needle, const char *what) {
    int one = n_lines(g_err) == 1;
    T_OK(rc == want && strstr(g_err, needle) && one, "%s: exit %d (want %d), one line: %s", what, rc, want,
         g_err[0] ? g_err : "(no stderr)\n");
}

int main(void) {
    const char *d = t_tmpdir();
    char p[512], q[512];
    T_OK(run("--help") == 0 && strstr(g_out, "usage: ddpm"), "ddpm --help");
    T_OK(run("--version") == 0 && strstr(g_out, "ddpm "), "ddpm --version: %s", g_out);
    T_OK(run("") == 2 && strstr(g_err, "usage"), "no command -> usage, exit 2");
    T_OK(run("frobnicate") == 2 && strstr(g_err, "unknown command"), "unknown command -> exit 2");
    const char *cmds[] = {"noise", "info", "train", "sample", "bench"};
    for (int i = 0; i < 5; i++) {
        T_OK(run("%s --help", cmds[i]) == 0 && strstr(g_out, "usage: ddpm"), "ddpm %s --help", cmds[i]);
        T_OK(run("%s --bogus", cmds[i]) == 2 && strstr(g_err, "unknown option '--bogus'"), "ddpm %s --bogus -> exit 2: %s", cmds[i],
             g_err);
    }

    /* config errors: one line naming the key, exit 2 */
    snprintf(p, sizeof p, "%s/typo.json", d);
    write_text(p, "{\"model\": {\"chanels\": 64}}");
    expect(run("info --config %s --no-data", p), 2, "unknown key \"model.chanels\" (did you mean \"model.ch\"?)", "misspelt key");
    write_text(p, "{\"train\": {\"lr\": \"fast\"}}");
    expect(run("info --config %s --no-data", p), 2, "\"train.lr\" must be a number", "string for a number");
    write_text(p, "{\"data\": {\"image_size\": -3}}");
    expect(run("info --config %s --no-data", p), 2, "\"data.image_size\" = -3 is out of range", "image_size -3");
    write_text(p, "{\"data\": {\"image_size\": 28,}}");
    expect(run("info --config %s --no-data", p), 2, ":1:", "malformed JSON with position");
    expect(run("info --config %s/missing.json --no-data", d), 2, "missing.json", "missing config file");
    expect(run("info --no-data --set model.groups=7"), 2, "not divisible by \"model.groups\"", "--set validated");
    expect(run("info --no-data --set model.chanels=3"), 2, "did you mean \"model.ch\"", "--set unknown key");

    /* info on the default dataset */
    T_OK(run("info --config configs/fashion_mnist.json") == 0 && strstr(g_out, "60000 images, 28x28x1, 10 classes"),
         "info fashion_mnist: 60000 images, 28x28x1, 10 classes");
    T_OK(run("info --config configs/cifar.json --no-data --batch 1") == 0 && strstr(g_out, "parameters: 35746307") &&
             strstr(g_out, "12.44 GFLOP"),
         "info cifar: 35746307 parameters, 12.44 GFLOP per image");
    int bad_cifar = run("info --config configs/cifar.json --set data.path=%s/nowhere", d);
    T_OK(bad_cifar == 1 && strstr(g_err, "get_cifar10.sh"), "missing CIFAR-10 says how to get it, exit 1: %s", g_err);

    /* noise: a photo-like RGB gradient image */
    int W = 48, H = 32;
    uint8_t *img = malloc(W * H * 3);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            img[(y * W + x) * 3] = (uint8_t)(x * 5), img[(y * W + x) * 3 + 1] = (uint8_t)(y * 7), img[(y * W + x) * 3 + 2] = 128;
        }
    snprintf(p, sizeof p, "%s/photo.png", d);
    image_write_png(p, img, W, H, 3);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cd %s && %s noise photo.png --steps 1000 --csv sched.csv --plot sched.png --no-labels", d,
             getenv("DDPM_BIN") ? getenv("DDPM_BIN") : "$OLDPWD/ddpm");
    int rc = system(cmd);
    snprintf(q, sizeof q, "%s/photo_noise.png", d);
    int sw, sh, sc;
    uint8_t *strip = stbi_load(q, &sw, &sh, &sc, 3);
    T_OK(rc == 0 && strip && sw == 10 * W && sh == H, "noise --no-labels writes photo_noise.png, 10 frames of %dx%d (got %dx%d)", W, H, strip ? sw : 0,
         strip ? sh : 0);
    if (strip) {
        double e = 0;
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W * 3; x++) e = fmax(e, fabs((double)strip[y * sw * 3 + x] - img[y * W * 3 + x]));
        T_OK(e <= 8, "first frame is the photo (max pixel difference %.0f of 255)", e);
        stbi_image_free(strip);
    }
    snprintf(q, sizeof q, "%s/sched.csv", d);
    FILE *f = fopen(q, "r");
    int rows = 0;
    char line[256];
    while (f && fgets(line, sizeof line, f)) rows++;
    if (f) fclose(f);
    T_OK(rows == 1001, "--csv writes a header and 1000 rows (%d lines)", rows);
    snprintf(q, sizeof q, "%s/sched.png", d);
    T_OK(stbi_info(q, &sw, &sh, &sc) && sw == 800 && sh == 500, "--plot writes an 800x500 PNG");
    /* labelled (the default): frames scaled to >= 64 pixels with a caption band under them */
    rc = run("noise %s --steps 1000 -o %s/lab.png", p, d);
    snprintf(q, sizeof q, "%s/lab.png", d);
    T_OK(rc == 0 && stbi_info(q, &sw, &sh, &sc) && sw >= 10 * 2 * W && sh > 2 * H + 16, "labelled strip of 10 frames scaled x2: %dx%d", sw, sh);
    /* the last frame's statistics before clipping are reported: mean ~0, std ~1 */
    rc = run("noise %s --steps 1000 --size 64 -o %s/big.png", p, d);
    double mean = 9, sd = 9;
    const char *m = strstr(g_err, "mean ");
    if (m) sscanf(m, "mean %lf, std %lf", &mean, &sd);
    T_OK(rc == 0 && fabs(mean) < 0.1 && fabs(sd - 1) < 0.1, "last frame mean %.3f std %.3f before clipping", mean, sd);
    expect(run("noise %s/none.png", d), 1, "none.png", "noise: missing image -> exit 1");
    snprintf(q, sizeof q, "%s/garbage.png", d);
    write_text(q, "this is not a png");
    expect(run("noise %s", q), 1, "garbage.png", "noise: undecodable image -> exit 1");
    expect(run("noise %s --schedule square", p), 2, "--schedule", "noise: bad schedule -> exit 2");
    expect(run("noise %s --frames 0", p), 2, "--frames", "noise: --frames 0 -> exit 2");
    expect(run("noise"), 2, "missing the image", "noise: no image -> exit 2");
    free(img);

    /* bench --scaling on a small model: one JSON object with the 1-thread twins of both
     * timings, 3 repetitions each, and their ratios (positive; their size is make bench's) */
    const char *small = "--set model.ch=32 --set 'model.ch_mult=[1,2]' --set model.num_res_blocks=1 --set train.batch_size=2";
    rc = run("bench %s --steps 3 --threads 2 --scaling --json", small);
    double s_train = 0, s_fwd = 0;
    const char *k1 = strstr(g_out, "\"scaling_train\": "), *k2 = strstr(g_out, "\"scaling_forward\": ");
    if (k1) s_train = atof(k1 + strlen("\"scaling_train\": "));
    if (k2) s_fwd = atof(k2 + strlen("\"scaling_forward\": "));
    const char *l1 = strstr(g_out, "\"train_steps_1t_s\": [");
    int n_l1 = 0;
    for (const char *c = l1; c && *c && *c != ']'; c++) n_l1 += *c == ',';
    T_OK(rc == 0 && n_lines(g_out) == 1 && s_train > 0 && s_fwd > 0 && l1 && n_l1 == 2,
         "bench --scaling --json: scaling_train %.2f, scaling_forward %.2f, 3 one-thread steps: %s", s_train, s_fwd, g_out);
    rc = run("bench %s --steps 2 --threads 1 --scaling --json", small);
    T_OK(rc == 0 && !strstr(g_out, "scaling_train"), "bench --scaling with one thread: nothing to compare, no ratio");
    /* a LoRA twin on the CPU clock, with the profiles of both steps */
    rc = run("bench %s --set train.lora.rank=2 --set 'train.lora.targets=[\"attn\",\"conv\"]' --steps 2 --threads 1 --cpu-time "
             "--profile --json", small);
    const char *lr = strstr(g_out, "\"lora_step_ratio\": ");
    double ratio = lr ? atof(lr + strlen("\"lora_step_ratio\": ")) : 0;
    T_OK(rc == 0 && n_lines(g_out) == 1 && strstr(g_out, "\"clock\": \"cpu\"") && ratio > 0 && strstr(g_out, "\"profile_s\"") &&
             strstr(g_out, "\"lora_profile_s\""),
         "bench --cpu-time --profile with a LoRA twin: CPU clock, ratio %.2f, both profiles: %s", ratio, g_out);
    return t_done();
}
