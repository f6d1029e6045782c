/* ddpm inpaint / edit / upscale as a user runs them, on the committed tiny model (16x16 grey):
 * kept pixels equal the input, strength 0 is the identity, the upscale matches its input when
 * downsampled, same command => same bytes whatever --batch/--threads, and every bad input is
 * one line with exit 2 and no file left behind. */
#include <dirent.h>
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

/* No temporary or output files in dir (after a refused command). */
static int empty_dir(const char *dir) {
    DIR *dd = opendir(dir);
    if (!dd) return 1;
    struct dirent *e;
    int n = 0;
    while ((e = readdir(dd)))
        if (e->d_name[0] != '.') n++;
    closedir(dd);
    return n == 0;
}

static void expect(int rc, int want, const char *needle, const char *what) {
    T_OK(rc == want && strstr(g_err, needle) && n_lines(g_err) == 1, "%s: exit %d (want %d): %s", what, rc, want, g_err[0] ? g_err : "(no stderr)\n");
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
    rc = run("inpaint %s/000000.png %s/000001.png" M " --mask top -n 2 %s -o %s/ia", in, in, rp, d);
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
    unsigned char *strip = load(p, "000001_strip.png", &sw, &sh);
    T_OK(strip && sw == 4 * 16 && sh == 16, "inpaint strip: original | masked | 2 results (%dx%d)", sw, sh);
    if (strip) stbi_image_free(strip);
    if (r0) stbi_image_free(r0);
    if (r1) stbi_image_free(r1);
    run("inpaint %s/000000.png %s/000001.png" M " --mask top -n 2 %s -o %s/ib --batch 1 --threads 1", in, in, rp, d);
    run("inpaint %s/000000.png %s/000001.png" M " --mask top -n 2 %s -o %s/ic --batch 3", in, in, rp, d);
    T_OK(same(d, "ia", "ib", "000001_1.png") && same(d, "ia", "ic", "000001_1.png") && same(d, "ia", "ib", "000000_strip.png"),
         "inpaint: byte-identical with --batch 1 --threads 1 and --batch 3");
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
    rc = run("inpaint %s/000000.png" M " --mask center %s --trajectory 4 -o %s/it", in, rp, d);
    snprintf(p, sizeof p, "%s/it", d);
    r0 = load(p, "000000_0_traj.png", &w2, &h2);
    T_OK(rc == 0 && r0 && w2 == 64 && h2 == 16, "inpaint --trajectory 4 writes 4 frames (%dx%d)", w2, h2);
    if (r0) stbi_image_free(r0);

    /* --- edit --- */
    rc = run("edit %s/000000.png" M " --strength 0 -o %s/e0", in, d);
    snprintf(p, sizeof p, "%s/e0", d);
    r0 = load(p, "000000_0.png", &w2, &h2);
    T_OK(rc == 0 && r0 && src && !memcmp(r0, src, 256), "edit --strength 0 returns the image");
    if (r0) stbi_image_free(r0);
    rc = run("edit %s/000000.png %s/000001.png" M " --strength 0.3 --sampler ddim --steps 20 -n 2 -o %s/ea", in, in, d);
    int ea = rc == 0 && strstr(g_err, "6 network evaluations") != NULL;
    T_OK(ea, "edit --strength 0.3 --steps 20: DDIM over the remaining 30%% = 6 evaluations: %s", g_err);
    snprintf(p, sizeof p, "%s/ea", d);
    r0 = load(p, "000000_0.png", &w2, &h2);
    double diff = 0;
    for (int i = 0; r0 && src && i < 256; i++) diff += abs(r0[i] - src[i]);
    T_OK(r0 && diff / 256 > 0.5 && diff / 256 < 60, "edit at 0.3 changes the image but stays near it: mean |diff| %.1f levels", diff / 256);
    if (r0) stbi_image_free(r0);
    run("edit %s/000000.png %s/000001.png" M " --strength 0.3 --sampler ddim --steps 20 -n 2 -o %s/eb --batch 1 --threads 1", in, in, d);
    T_OK(same(d, "ea", "eb", "000001_1.png") && same(d, "ea", "eb", "000000_strip.png"), "edit: byte-identical with --batch 1 --threads 1");
    rc = run("edit %s" M " --strength 1 --sampler dpm++2m --steps 5 -o %s/e1", in, d);
    T_OK(rc == 0 && strstr(g_err, "5 network evaluations"), "edit --strength 1 runs the whole process (dpm++2m, 5 evaluations), a folder as input");

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
    rc = run("upscale %s" M " --factor 4 --sampler ddim --steps 25 -n 2 -o %s/ua", p, d);
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
    T_OK(same(d, "ua", "ub", "lo_1.png"), "upscale: byte-identical with --batch 1 --threads 1");
    rc = run("upscale %s/000000.png" M " --factor 2 --sampler ddim --steps 10 -o %s/u2", in, d);
    T_OK(rc == 0 && strstr(g_err, "resized to 8x8"), "upscale of a 16x16 input with factor 2: resized to 8x8, said so");

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
