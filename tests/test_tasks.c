/* ddpm inpaint / edit / upscale as a user runs them, on the committed tiny model (16x16 grey):
 * kept pixels equal the input, strength 0 is the identity, the upscale matches its input when
 * downsampled, same command => same images (within a grey level) whatever --batch/--threads, and every bad input is
 * one line with exit 2 and no file left behind. */
#include <stb_image.h>
#include <sys/stat.h>

#include "cli_util.h"
#include "ddpm/image.h"

#define FIXTURE "tests/fixtures/tiny_model.safetensors"
#define M " --ckpt " FIXTURE " --quiet"

static unsigned char *load(const char *dir, const char *name, int *w, int *h) {
    char p[700];
    int c;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stbi_load(p, w, h, &c, 1);
}

static int same(const char *d, const char *a, const char *b, const char *name) {
    char pa[700], pb[700];
    snprintf(pa, sizeof pa, "%s/%s/%s", d, a, name);
    snprintf(pb, sizeof pb, "%s/%s/%s", d, b, name);
    return same_file(pa, pb);
}

/* The same images within a grey level (png_maxdiff): runs with another --batch/--threads. */
static int near(const char *d, const char *a, const char *b, const char *name) {
    char pa[700], pb[700];
    snprintf(pa, sizeof pa, "%s/%s/%s", d, a, name);
    snprintf(pb, sizeof pb, "%s/%s/%s", d, b, name);
    int m = png_maxdiff(pa, pb);
    return m >= 0 && m <= 1;
}

/* A labelled strip against its --no-labels twin (n frames of 16x16 in a row): every bare
 * frame appears in the labelled one scaled x4 exactly, side by side in one row, with text
 * (dark pixels on the white background) in the caption band under each frame and, when
 * titled, in the title band above them. */
static void check_labelled(const char *d, const char *lab, const char *bare, const char *name, int n, int titled, const char *what) {
    char pl[700], pb[700];
    snprintf(pl, sizeof pl, "%s/%s/%s", d, lab, name);
    snprintf(pb, sizeof pb, "%s/%s/%s", d, bare, name);
    int W = 0, H = 0, bw = 0, bh = 0, c;
    unsigned char *L = stbi_load(pl, &W, &H, &c, 3), *B = stbi_load(pb, &bw, &bh, &c, 1);
    int ok = L && B && bw == n * 16 && bh == 16 && W >= n * 64 && H >= 64 + 16;
    T_OK(ok, "%s: labelled strip %dx%d holds %d frames scaled x4 (bare %dx%d)", what, W, H, n, bw, bh);
    int fx[16], fy = -1, found = 0;
    for (int f = 0; ok && f < n; f++) { /* where frame f sits: the first place it matches exactly */
        fx[f] = -1;
        for (int y0 = 0; y0 + 64 <= H && fx[f] < 0; y0++)
            for (int x0 = f ? fx[f - 1] + 64 : 0; x0 + 64 <= W && fx[f] < 0; x0++) {
                int m = 1;
                for (int y = 0; m && y < 64; y++)
                    for (int x = 0; m && x < 64; x++) {
                        const unsigned char *q = L + ((size_t)(y0 + y) * W + x0 + x) * 3, v = B[(y / 4) * bw + f * 16 + x / 4];
                        m = q[0] == v && q[1] == v && q[2] == v;
                    }
                if (m && (f == 0 || y0 == fy)) fx[f] = x0, fy = y0;
            }
        found += fx[f] >= 0;
    }
    T_OK(ok && found == n, "%s: all %d frames drawn untouched in one row (first at %d,%d)", what, found, ok && found ? fx[0] : -1, fy);
    if (ok && found == n) {
        int worst = 1 << 30, title = 0;
        for (int f = 0; f < n; f++) { /* the caption band: 16 rows under the frame */
            int dark = 0;
            for (int y = fy + 64; y < fy + 80 && y < H; y++)
                for (int x = fx[f]; x < fx[f] + 64; x++) dark += L[((size_t)y * W + x) * 3] < 160;
            worst = dark < worst ? dark : worst;
        }
        for (int y = 0; y < fy; y++)
            for (int x = 0; x < W; x++) title += L[((size_t)y * W + x) * 3] < 160;
        T_OK(worst >= 10 && (titled ? title >= 30 : title == 0), "%s: captions under every frame (at least %d dark pixels each), %s (%d dark pixels above)",
             what, worst, titled ? "a title" : "no title", title);
    }
    if (L) stbi_image_free(L);
    if (B) stbi_image_free(B);
}

static void expect(int rc, int want, const char *needle, const char *what) {
    T_OK(rc == want && strstr(g_err, needle) && n_lines(g_err) == 1, "%s: exit %d (want %d): %s", what, rc, want, g_err[0] ? g_err : "(no stderr)\n");
}

/* Pixels that differ between two 16x16 grey result PNGs (-1 if one is missing). */
static int n_diff(const char *d, const char *a, const char *b, const char *name) {
    int w, h, n = 0;
    unsigned char *x = load(a, name, &w, &h), *y = load(b, name, &w, &h);
    (void)d;
    if (!x || !y) n = -1;
    for (int i = 0; n >= 0 && i < 256; i++) n += x[i] != y[i];
    if (x) stbi_image_free(x);
    if (y) stbi_image_free(y);
    return n;
}

/* --class / --guidance on the three commands, with a tiny class-conditional model trained
 * here for a few steps (its class embedding rows are N(0,1) and differ, so the class moves
 * the output once the zero-initialised output conv has moved; EMA decay 0.5 so that the EMA
 * weights have too): parsed like `ddpm sample`, the class changes what is
 * regenerated but never the kept pixels, guidance 0 ignores the class, the checkpoint's
 * sample.guidance is the default, and batch/threads do not change a byte. */
static void test_classes(const char *d, const char *in) {
    printf("class-conditional\n");
    char cfg[600], ck[700], p[700], q[700];
    snprintf(cfg, sizeof cfg, "%s/cond.json", d);
    write_text(cfg, "{\"data\": {\"format\": \"idx\", \"path\": \"/usr/share/datasets/fashion-mnist\", \"image_size\": 16,"
                    " \"channels\": 1, \"limit\": 16},"
                    " \"model\": {\"ch\": 16, \"ch_mult\": [1, 2], \"num_res_blocks\": 1, \"attn_resolutions\": [8], \"groups\": 4,"
                    " \"class_cond\": true},"
                    " \"train\": {\"batch_size\": 8, \"steps\": 4, \"lr\": 0.002, \"warmup\": 2, \"log_every\": 2, \"sample_every\": 0,"
                    " \"ckpt_every\": 4, \"keep\": 0, \"seed\": 3, \"ema_decay\": 0.5},"
                    " \"sample\": {\"guidance\": 3, \"sampler\": \"ddim\", \"steps\": 10}}");
    int rc = run("train --config %s --set train.out_dir=%s/cond --quiet", cfg, d);
    T_OK(rc == 0, "trained a tiny class-conditional model (4 steps)%s", rc ? g_err : "");
    snprintf(ck, sizeof ck, " --ckpt %s/cond/latest.safetensors --quiet", d);
    const char *rp = "--steps 10 --jump 5 --resample 2";
    char dir[8][700];
    const char *names[8] = {"c_name", "c_index", "c_other", "c_g0a", "c_g0b", "c_g3", "c_list", "c_list_b1"};
    for (int i = 0; i < 8; i++) snprintf(dir[i], sizeof dir[i], "%s/%s", d, names[i]);
    rc = run("inpaint %s/000000.png%s --mask top -n 2 %s --class SNEAKER -o %s", in, ck, rp, dir[0]);
    int rc2 = run("inpaint %s/000000.png%s --mask top -n 2 %s --class 7 -o %s", in, ck, rp, dir[1]);
    T_OK(rc == 0 && rc2 == 0 && n_diff(d, dir[0], dir[1], "000000_0.png") == 0 && n_diff(d, dir[0], dir[1], "000000_1.png") == 0 &&
             same(d, names[0], names[1], "000000_strip.png"),
         "inpaint --class SNEAKER (any case) and --class 7 are the same class: same bytes%s", rc ? g_err : "");
    run("inpaint %s/000000.png%s --mask top -n 2 %s --class sandal -o %s", in, ck, rp, dir[2]);
    int moved = n_diff(d, dir[0], dir[2], "000000_0.png");
    int w, h, kept = 1;
    unsigned char *src = load(in, "000000.png", &w, &h), *a = load(dir[0], "000000_0.png", &w, &h), *b = load(dir[2], "000000_0.png", &w, &h);
    for (int i = 128; src && a && b && i < 256; i++) kept &= a[i] == src[i] && b[i] == src[i];
    T_OK(moved > 0 && src && a && b && kept, "another class changes the regenerated half (%d pixels differ), the kept half equals the input in both", moved);
    if (src) stbi_image_free(src);
    if (a) stbi_image_free(a);
    if (b) stbi_image_free(b);
    run("inpaint %s/000000.png%s --mask top -n 2 %s --class sneaker --guidance 0 -o %s", in, ck, rp, dir[3]);
    run("inpaint %s/000000.png%s --mask top -n 2 %s --class sandal --guidance 0 -o %s", in, ck, rp, dir[4]);
    T_OK(n_diff(d, dir[3], dir[4], "000000_0.png") == 0 && n_diff(d, dir[3], dir[0], "000000_0.png") > 0,
         "--guidance 0 is unconditional: sneaker and sandal give the same bytes (and differ from guided sneaker)");
    run("inpaint %s/000000.png%s --mask top -n 2 %s --class sneaker --guidance 3 -o %s", in, ck, rp, dir[5]);
    T_OK(n_diff(d, dir[5], dir[0], "000000_0.png") == 0 && n_diff(d, dir[5], dir[0], "000000_1.png") == 0,
         "the default guidance is the checkpoint's sample.guidance (3): same bytes as --guidance 3");
    /* a comma list: one class per input; batch, threads and guidance's 2x rows change nothing */
    rc = run("inpaint %s/000000.png %s/000001.png%s --mask top -n 2 %s --class sneaker,bag -o %s", in, in, ck, rp, dir[6]);
    rc2 = run("inpaint %s/000000.png %s/000001.png%s --mask top -n 2 %s --class sneaker,bag --batch 1 --threads 1 -o %s", in, in, ck, rp,
              dir[7]);
    T_OK(rc == 0 && rc2 == 0 && near(d, names[6], names[7], "000001_1.png") && near(d, names[6], names[7], "000000_0.png") &&
             near(d, names[6], names[7], "000001_strip.png"),
         "--class sneaker,bag: the same images within a grey level with --batch 1 --threads 1");
    T_OK(n_diff(d, dir[6], dir[0], "000000_0.png") == 0 && n_diff(d, dir[6], dir[0], "000000_1.png") == 0,
         "input 1 of 2 with sneaker,bag = the same input alone with sneaker (each image its own stream)");
    snprintf(p, sizeof p, "%s/c_bag", d);
    run("inpaint %s/000000.png %s/000001.png%s --mask top -n 2 %s --class bag -o %s", in, in, ck, rp, p);
    T_OK(n_diff(d, dir[6], p, "000001_0.png") == 0 && n_diff(d, dir[6], p, "000000_0.png") > 0,
         "and input 2 got bag: equal to --class bag for both on input 2, not on input 1");
    /* edit and upscale: the class moves the result too */
    snprintf(p, sizeof p, "%s/ce1", d), snprintf(q, sizeof q, "%s/ce2", d);
    rc = run("edit %s/000000.png%s --strength 0.6 --class trouser -o %s", in, ck, p);
    rc2 = run("edit %s/000000.png%s --strength 0.6 --class bag -o %s", in, ck, q);
    T_OK(rc == 0 && rc2 == 0 && n_diff(d, p, q, "000000_0.png") > 0, "edit --class trouser vs bag: %d pixels differ", n_diff(d, p, q, "000000_0.png"));
    snprintf(p, sizeof p, "%s/cu1", d), snprintf(q, sizeof q, "%s/cu2", d);
    rc = run("upscale %s/000000.png%s --factor 2 --guidance-rescale 0.7 --class coat -o %s", in, ck, p);
    rc2 = run("upscale %s/000000.png%s --factor 2 --guidance-rescale 0.7 --class dress -o %s", in, ck, q);
    T_OK(rc == 0 && rc2 == 0 && n_diff(d, p, q, "000000_0.png") > 0, "upscale --class coat vs dress (rescaled guidance): %d pixels differ",
         n_diff(d, p, q, "000000_0.png"));
    /* errors: one line, exit 2, nothing written */
    snprintf(p, sizeof p, "%s/cx", d);
    expect(run("inpaint %s/000000.png" M " --mask top --class sneaker -o %s", in, p), 2, "unconditional model", "--class with an unconditional checkpoint");
    T_OK(empty_dir(p), "nothing written after it");
    expect(run("edit %s/000000.png%s --class snaeker -o %s", in, ck, p), 2, "did you mean \"Sneaker\"", "--class snaeker: did you mean");
    expect(run("upscale %s/000000.png%s --factor 2 --class 10 -o %s", in, ck, p), 2, "out of range", "--class 10 of 10 classes");
    expect(run("inpaint %s/000000.png%s --mask top --class all -o %s", in, ck, p), 2, "--class all", "--class all: one class per input instead");
    expect(run("inpaint %s/000000.png %s/000001.png%s --mask top --class bag,coat,dress -o %s", in, in, ck, p), 2, "3 classes for 2 inputs",
           "3 classes for 2 inputs");
    expect(run("edit %s/000000.png%s --guidance -1 -o %s", in, ck, p), 2, "--guidance", "--guidance -1");
    expect(run("edit %s/000000.png%s --guidance-rescale 2 -o %s", in, ck, p), 2, "--guidance-rescale", "--guidance-rescale 2");
    T_OK(empty_dir(p), "nothing written after any of them");
}

int main(void) {
    const char *d = t_tmpdir();
    char in[600], p[700];
    snprintf(in, sizeof in, "%s/in", d);
    /* inputs: two images the model made */
    int rc = run("sample" M " -n 2 --sampler ddim --steps 10 --seed 11 -o %s", in);
    T_OK(rc == 0, "made two 16x16 inputs");
    int w, h, w2, h2;
    unsigned char *src = load(in, "000000.png", &w, &h);

    /* --- inpaint --- */
    const char *rp = "--steps 20 --jump 5 --resample 2";
    rc = run("inpaint %s/000000.png %s/000001.png" M " --mask top -n 2 %s -o %s/ia --verbose", in, in, rp, d);
    /* RePaint K = 20, J = 5, R = 2: the K steps down, and at t = 0, 5, 10 (below K - J) J steps
     * up and J down again R - 1 times: 20 + 3 x 5 evaluations per image */
    long all = 0, per = counted_evals(g_err, &all);
    T_OK(rc == 0 && per == 35 && all == 4 * 35 && strstr(g_err, ", 35 network evaluations per image"),
         "inpaint RePaint 20 steps, jump 5, resample 2: the loop counts 35 evaluations per image (%ld), %ld for 2 x 2", per, all);
    snprintf(p, sizeof p, "%s/ia", d);
    unsigned char *r0 = load(p, "000000_0.png", &w2, &h2), *r1 = load(p, "000000_1.png", &w2, &h2);
    int kept = r0 && r1 && src, changed = 0;
    for (int y = 0; kept && y < 16; y++)
        for (int x = 0; x < 16; x++) {
            if (y >= 8) kept &= r0[y * 16 + x] == src[y * 16 + x] && r1[y * 16 + x] == src[y * 16 + x];
            else changed += r0[y * 16 + x] != src[y * 16 + x];
        }
    T_OK(rc == 0 && kept && changed > 0, "inpaint --mask top: the kept bottom half equals the input exactly in both results, %d top pixels changed", changed);
    int sw = 0, sh = 0;
    rc = run("inpaint %s/000000.png %s/000001.png" M " --mask top -n 2 %s -o %s/ia_bare --no-labels", in, in, rp, d);
    snprintf(p, sizeof p, "%s/ia_bare", d);
    unsigned char *strip = load(p, "000001_strip.png", &sw, &sh);
    T_OK(rc == 0 && strip && sw == 4 * 16 && sh == 16, "inpaint --no-labels strip: original | masked | 2 results, bare (%dx%d)", sw, sh);
    if (strip) stbi_image_free(strip);
    T_OK(same(d, "ia", "ia_bare", "000001_1.png"), "--no-labels changes the strip only: the result PNGs are the same bytes");
    check_labelled(d, "ia", "ia_bare", "000001_strip.png", 4, 1, "inpaint");
    snprintf(p, sizeof p, "%s/ia", d);
    if (r0) stbi_image_free(r0);
    if (r1) stbi_image_free(r1);
    run("inpaint %s/000000.png %s/000001.png" M " --mask top -n 2 %s -o %s/ib --batch 1 --threads 1", in, in, rp, d);
    run("inpaint %s/000000.png %s/000001.png" M " --mask top -n 2 %s -o %s/ic --batch 3", in, in, rp, d);
    T_OK(near(d, "ia", "ib", "000001_1.png") && near(d, "ia", "ic", "000001_1.png") && near(d, "ia", "ib", "000000_strip.png"),
         "inpaint: the same images within a grey level with --batch 1 --threads 1 and --batch 3");
    /* a mask file, white = regenerate, of another size (resized, said so) */
    unsigned char mk[32 * 32];
    for (int y = 0; y < 32; y++)
        for (int x = 0; x < 32; x++) mk[y * 32 + x] = x < 16 ? 255 : 0; /* left half white */
    snprintf(p, sizeof p, "%s/mask32.png", d);
    image_write_png(p, mk, 32, 32, 1);
    rc = run("inpaint %s/000000.png" M " --mask %s %s -o %s/im", in, p, rp, d);
    snprintf(p, sizeof p, "%s/im", d);
    r0 = load(p, "000000_0.png", &w2, &h2);
    kept = r0 && src;
    for (int y = 0; kept && y < 16; y++)
        for (int x = 8; x < 16; x++) kept &= r0[y * 16 + x] == src[y * 16 + x];
    T_OK(rc == 0 && kept && strstr(g_err, "resized"), "inpaint --mask FILE (32x32, white = left half): right half kept exactly, resize said: %s", g_err);
    if (r0) stbi_image_free(r0);
    rc = run("inpaint %s/000000.png" M " --mask-box 4,4,6,6 %s -o %s/ibox", in, rp, d);
    snprintf(p, sizeof p, "%s/ibox", d);
    r0 = load(p, "000000_0.png", &w2, &h2);
    kept = r0 && src;
    for (int y = 0; kept && y < 16; y++)
        for (int x = 0; x < 16; x++)
            if (!(x >= 4 && x < 10 && y >= 4 && y < 10)) kept &= r0[y * 16 + x] == src[y * 16 + x];
    T_OK(rc == 0 && kept, "inpaint --mask-box 4,4,6,6: everything outside the box kept exactly");
    if (r0) stbi_image_free(r0);
    /* an all-black mask: nothing to do, the input is returned with a note */
    memset(mk, 0, sizeof mk);
    snprintf(p, sizeof p, "%s/black.png", d);
    image_write_png(p, mk, 32, 32, 1);
    rc = run("inpaint %s/000000.png" M " --mask %s -o %s/iblack", in, p, d);
    snprintf(p, sizeof p, "%s/iblack", d);
    r0 = load(p, "000000_0.png", &w2, &h2);
    T_OK(rc == 0 && r0 && src && !memcmp(r0, src, 256) && strstr(g_err, "all black"), "inpaint with an all-black mask returns the input, with a note");
    if (r0) stbi_image_free(r0);
    /* trajectory */
    rc = run("inpaint %s/000000.png" M " --mask center %s --trajectory 4 -o %s/it --no-labels", in, rp, d);
    snprintf(p, sizeof p, "%s/it", d);
    r0 = load(p, "000000_0_traj.png", &w2, &h2);
    T_OK(rc == 0 && r0 && w2 == 64 && h2 == 16, "inpaint --trajectory 4 --no-labels writes 4 bare frames (%dx%d)", w2, h2);
    if (r0) stbi_image_free(r0);
    rc = run("inpaint %s/000000.png" M " --mask center %s --trajectory 4 -o %s/itl", in, rp, d);
    check_labelled(d, "itl", "it", "000000_0_traj.png", 4, 0, "inpaint --trajectory (labelled)");

    /* --- edit --- */
    rc = run("edit %s/000000.png" M " --strength 0 -o %s/e0", in, d);
    snprintf(p, sizeof p, "%s/e0", d);
    r0 = load(p, "000000_0.png", &w2, &h2);
    T_OK(rc == 0 && r0 && src && !memcmp(r0, src, 256), "edit --strength 0 returns the image");
    if (r0) stbi_image_free(r0);
    rc = run("edit %s/000000.png %s/000001.png" M " --strength 0.3 --sampler ddim --steps 20 -n 2 -o %s/ea --verbose", in, in, d);
    per = counted_evals(g_err, &all);
    T_OK(rc == 0 && per == 6 && all == 24 && strstr(g_err, ", 6 network evaluations per image"),
         "edit --strength 0.3 --steps 20: DDIM over the remaining 30%% = 6 evaluations, counted %ld per image, %ld for 2 x 2: %s", per, all,
         g_err);
    snprintf(p, sizeof p, "%s/ea", d);
    r0 = load(p, "000000_0.png", &w2, &h2);
    double diff = 0;
    for (int i = 0; r0 && src && i < 256; i++) diff += abs(r0[i] - src[i]);
    T_OK(r0 && diff / 256 > 0.5 && diff / 256 < 60, "edit at 0.3 changes the image but stays near it: mean |diff| %.1f levels", diff / 256);
    if (r0) stbi_image_free(r0);
    run("edit %s/000000.png %s/000001.png" M " --strength 0.3 --sampler ddim --steps 20 -n 2 -o %s/eb --batch 1 --threads 1", in, in, d);
    T_OK(near(d, "ea", "eb", "000001_1.png") && near(d, "ea", "eb", "000000_strip.png"),
         "edit: the same images within a grey level with --batch 1 --threads 1");
    run("edit %s/000000.png %s/000001.png" M " --strength 0.3 --sampler ddim --steps 20 -n 2 -o %s/ec --no-labels", in, in, d);
    check_labelled(d, "ea", "ec", "000000_strip.png", 4, 1, "edit");
    rc = run("edit %s" M " --strength 1 --sampler dpm++2m --steps 5 -o %s/e1 --verbose", in, d);
    per = counted_evals(g_err, &all);
    T_OK(rc == 0 && per == 5 && all == 15 && strstr(g_err, ", 5 network evaluations per image"),
         "edit --strength 1 runs the whole process (dpm++2m, 5 evaluations, counted %ld), a folder as input (its 3 PNGs: %ld)", per, all);

    /* --- upscale --- */
    unsigned char lo[16];
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++) { /* a 4x4 image: box-downsample of the input */
            int s = 0;
            for (int yy = 0; yy < 4; yy++)
                for (int xx = 0; xx < 4; xx++) s += src[(y * 4 + yy) * 16 + x * 4 + xx];
            lo[y * 4 + x] = (unsigned char)((s + 8) / 16);
        }
    snprintf(p, sizeof p, "%s/lo.png", d);
    image_write_png(p, lo, 4, 4, 1);
    rc = run("upscale %s" M " --factor 4 --sampler ddim --steps 25 -n 2 -o %s/ua --verbose", p, d);
    per = counted_evals(g_err, &all);
    T_OK(rc == 0 && per == 25 && all == 50, "upscale --sampler ddim --steps 25 -n 2: counted %ld evaluations per image, %ld in all", per, all);
    snprintf(p, sizeof p, "%s/ua", d);
    r0 = load(p, "lo_1.png", &w2, &h2);
    double md = 0, mx = 0;
    for (int y = 0; r0 && y < 4; y++)
        for (int x = 0; x < 4; x++) {
            double s = 0;
            for (int yy = 0; yy < 4; yy++)
                for (int xx = 0; xx < 4; xx++) s += r0[(y * 4 + yy) * 16 + x * 4 + xx];
            double e = fabs(s / 16 - lo[y * 4 + x]);
            md += e / 16, mx = fmax(mx, e);
        }
    /* the block means are exact in float (the clean level alternates clipping and mean
     * restoring); the PNG rounds each pixel by <= 0.5 level, so a block mean moves <= 0.5 */
    T_OK(rc == 0 && r0 && md <= 0.5 && mx <= 0.51, "upscale 4x4 -> 16x16: box-downsampled result matches the input, mean |diff| %.2f, max %.2f levels", md, mx);
    if (r0) stbi_image_free(r0);
    snprintf(p, sizeof p, "%s/lo.png", d);
    run("upscale %s" M " --factor 4 --sampler ddim --steps 25 -n 2 -o %s/ub --batch 1 --threads 1", p, d);
    T_OK(near(d, "ua", "ub", "lo_1.png"), "upscale: the same images within a grey level with --batch 1 --threads 1");
    run("upscale %s" M " --factor 4 --sampler ddim --steps 25 -n 2 -o %s/uc --no-labels", p, d);
    check_labelled(d, "ua", "uc", "lo_strip.png", 3, 1, "upscale");
    rc = run("upscale %s/000000.png" M " --factor 2 --sampler ddim --steps 10 -o %s/u2", in, d);
    T_OK(rc == 0 && strstr(g_err, "resized to 8x8"), "upscale of a 16x16 input with factor 2: resized to 8x8, said so");

    test_classes(d, in);

    /* --- bad input: one line, exit 2, nothing written --- */
    snprintf(p, sizeof p, "%s/bad.png", d);
    write_text(p, "this is not an image");
    expect(run("inpaint %s" M " --mask top -o %s/x1", p, d), 2, "bad.png", "inpaint: unreadable image");
    snprintf(p, sizeof p, "%s/x1", d);
    T_OK(empty_dir(p), "nothing written after the unreadable image");
    expect(run("edit %s/in/000000.png" M " --strength 1.5 -o %s/x2", d, d), 2, "--strength", "edit: strength outside [0,1]");
    expect(run("upscale %s/in/000000.png" M " --factor 3 -o %s/x3", d, d), 2, "--factor 3", "upscale: factor that does not divide 16");
    snprintf(p, sizeof p, "%s/x3", d);
    T_OK(empty_dir(p), "nothing written after the bad factor");
    expect(run("inpaint %s/in/000000.png" M " -o %s/x4", d, d), 2, "no mask", "inpaint without a mask");
    expect(run("inpaint %s/in/000000.png" M " --mask-box 20,0,4,4 -o %s/x5", d, d), 2, "--mask-box", "inpaint: box outside the image");
    expect(run("inpaint %s/in/000000.png" M " --mask top --jump 0 -o %s/x6", d, d), 2, "--jump", "inpaint: --jump 0");
    expect(run("edit" M " --strength 0.5 -o %s/x7", d), 2, "no input", "edit without an input");
    expect(run("edit %s/nothere.png" M " -o %s/x8", d, d), 2, "nothere.png", "edit: missing file");
    expect(run("upscale %s/in/000000.png" M " --sampler euler -o %s/x9", d, d), 2, "--sampler", "upscale: unknown sampler");
    expect(run("inpaint %s/in/000000.png --ckpt " FIXTURE " --mask %s/none.png -o %s/xa", d, d, d), 2, "none.png", "inpaint: missing mask file");
    run("inpaint --help");
    T_OK(strstr(g_out, "WHITE = REGENERATE") != NULL, "inpaint --help states the mask convention");
    if (src) stbi_image_free(src);
    return t_done();
}
