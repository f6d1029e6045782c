/* Sampling as a user runs it: a committed tiny checkpoint samples to stored pixels; the
 * same seed gives the same files whatever --batch and --threads; trajectories; each bad
 * input gets one line and exit 1 or 2. */
#include <stb_image.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_util.h"

#define FIXTURE "tests/fixtures/tiny_model.safetensors"
#define EXPECTED "tests/fixtures/tiny_model_grid.png"

static int same_dirs(const char *d, const char *a, const char *b, int n) {
    int same = 1;
    char pa[600], pb[600];
    for (int i = 0; i < n; i++) {
        snprintf(pa, sizeof pa, "%s/%s/%06d.png", d, a, i);
        snprintf(pb, sizeof pb, "%s/%s/%06d.png", d, b, i);
        same &= same_file(pa, pb);
    }
    snprintf(pa, sizeof pa, "%s/%s/grid.png", d, a);
    snprintf(pb, sizeof pb, "%s/%s/grid.png", d, b);
    return same && same_file(pa, pb);
}

/* The largest pixel difference (grey levels) over the n images and the grid of two runs; -1
 * when a file is missing or of another size. */
static int near_dirs(const char *d, const char *a, const char *b, int n) {
    int worst = 0;
    char pa[600], pb[600];
    for (int i = 0; i <= n; i++) {
        if (i < n) snprintf(pa, sizeof pa, "%s/%s/%06d.png", d, a, i), snprintf(pb, sizeof pb, "%s/%s/%06d.png", d, b, i);
        else snprintf(pa, sizeof pa, "%s/%s/grid.png", d, a), snprintf(pb, sizeof pb, "%s/%s/grid.png", d, b);
        int m = png_maxdiff(pa, pb);
        if (m < 0) return -1;
        worst = m > worst ? m : worst;
    }
    return worst;
}

static void expect(int rc, int want, const char *needle, const char *what) {
    T_OK(rc == want && strstr(g_err, needle) && n_lines(g_err) == 1, "%s: exit %d (want %d): %s", what, rc, want, g_err[0] ? g_err : "(no stderr)\n");
}

int main(void) {
    const char *d = t_tmpdir();
    /* the committed model samples to the committed grid */
    int rc = run("sample --ckpt " FIXTURE " -n 8 --sampler ddim --steps 10 --seed 7 -o %s/fix --quiet --no-labels", d);
    char p[600];
    snprintf(p, sizeof p, "%s/fix/grid.png", d);
    int w1, h1, c1, w2, h2, c2;
    unsigned char *got = stbi_load(p, &w1, &h1, &c1, 0), *want = stbi_load(EXPECTED, &w2, &h2, &c2, 0);
    int maxd = 999;
    unsigned long sum_got = 0, sum_want = 0;
    if (got && want && w1 == w2 && h1 == h2 && c1 == c2) {
        maxd = 0;
        for (int i = 0; i < w1 * h1 * c1; i++) {
            int dd = abs(got[i] - want[i]);
            if (dd > maxd) maxd = dd;
            sum_got = sum_got * 31 + got[i], sum_want = sum_want * 31 + want[i];
        }
    }
    /* exact pixels on the machine the fixture was made on; another BLAS kernel may round a
     * float differently, so up to 2 levels of 255 are reported but tolerated */
    T_OK(rc == 0 && maxd <= 2, "committed tiny checkpoint samples to the stored grid: checksum %016lx vs %016lx, max pixel diff %d", sum_got,
         sum_want, maxd);
    if (got) stbi_image_free(got);
    if (want) stbi_image_free(want);

    /* determinism: run twice, other --batch, other --threads */
    const char *base = "sample --ckpt " FIXTURE " -n 6 --seed 3 --sampler ddim --steps 20 --eta 0.5 --quiet";
    int a = run("%s -o %s/a --batch 4", base, d);
    int b = run("%s -o %s/b --batch 4", base, d);
    int c = run("%s -o %s/c --batch 1", base, d);
    int e = run("%s -o %s/e --batch 6 --threads 1", base, d);
    T_OK(a == 0 && b == 0 && same_dirs(d, "a", "b", 6), "the same command twice gives byte-identical files");
    int nc = near_dirs(d, "a", "c", 6), ne = near_dirs(d, "a", "e", 6);
    T_OK(c == 0 && nc >= 0 && nc <= 1, "--batch 1 and --batch 4: the same images within a grey level (max diff %d)", nc);
    T_OK(e == 0 && ne >= 0 && ne <= 1, "1 thread and all threads: the same images within a grey level (max diff %d)", ne);
    int f = run("sample --ckpt " FIXTURE " -n 3 --seed 3 --sampler ddpm --batch 2 -o %s/f --quiet", d);
    int g = run("sample --ckpt " FIXTURE " -n 3 --seed 3 --sampler ddpm --batch 3 -o %s/g --quiet", d);
    int nfg = near_dirs(d, "f", "g", 3);
    T_OK(f == 0 && g == 0 && nfg >= 0 && nfg <= 1, "DDPM (1000 steps): --batch 2 and 3, the same images within a grey level (max diff %d)",
         nfg);
    /* a different seed gives different images */
    run("%s -o %s/s2 --seed 4 --batch 4", base, d);
    T_OK(!same_dirs(d, "a", "s2", 1), "another seed gives other images");
    /* trajectory strips */
    rc = run("sample --ckpt " FIXTURE " -n 2 --sampler ddim --steps 8 --trajectory 5 -o %s/t --quiet --no-labels", d);
    snprintf(p, sizeof p, "%s/t/000001_traj.png", d);
    int tw = 0, th = 0, tc;
    int ok = stbi_info(p, &tw, &th, &tc);
    snprintf(p, sizeof p, "%s/t/000001.png", d);
    int iw = 0, ih = 0;
    stbi_info(p, &iw, &ih, &tc);
    T_OK(rc == 0 && ok && tw == 5 * iw && th == ih, "--trajectory 5 writes a strip of 5 frames (%dx%d for %dx%d images)", tw, th, iw, ih);
    /* the last trajectory frame is the image itself */
    snprintf(p, sizeof p, "%s/t/000001_traj.png", d);
    unsigned char *tr = stbi_load(p, &tw, &th, &tc, 1);
    snprintf(p, sizeof p, "%s/t/000001.png", d);
    unsigned char *im = stbi_load(p, &iw, &ih, &tc, 1);
    int last_ok = tr && im;
    for (int y = 0; last_ok && y < ih; y++) last_ok = !memcmp(tr + y * tw + 4 * iw, im + y * iw, iw);
    T_OK(last_ok, "the trajectory's last frame is the sampled image");
    if (tr) stbi_image_free(tr);
    if (im) stbi_image_free(im);
    /* labelled (the default): grid and strips are captioned and scaled up, images unchanged */
    rc = run("sample --ckpt " FIXTURE " -n 2 --sampler ddim --steps 8 --trajectory 5 -o %s/tl --quiet", d);
    snprintf(p, sizeof p, "%s/tl/000001_traj.png", d);
    int lw = 0, lh = 0;
    stbi_info(p, &lw, &lh, &tc);
    T_OK(rc == 0 && lw >= 5 * 2 * iw && lh > 2 * ih + 16, "labelled trajectory strip: %dx%d", lw, lh);
    snprintf(p, sizeof p, "%s/tl/grid.png", d);
    stbi_info(p, &lw, &lh, &tc);
    T_OK(lw >= 2 * 2 * iw && lh > 2 * ih + 20, "labelled grid.png with its title band: %dx%d", lw, lh);
    snprintf(p, sizeof p, "%s/tl/000001.png", d);
    char q[600];
    snprintf(q, sizeof q, "%s/t/000001.png", d);
    T_OK(same_file(p, q), "the single images are the same with and without labels");
    /* step counts */
    /* step counts: what the loop counted (--verbose) and what the summary says */
    long all = 0, per;
    run("sample --ckpt " FIXTURE " -n 2 --sampler ddim --steps 50 -o %s/k --quiet --verbose", d);
    per = counted_evals(g_err, &all);
    T_OK(per == 50 && all == 100 && strstr(g_out, "(ddim, 50 steps,") != NULL,
         "--sampler ddim --steps 50 -n 2: the loop counts 50 network evaluations per image, 100 in all (%ld, %ld): %s", per, all, g_out);
    run("sample --ckpt " FIXTURE " -n 1 --sampler ddpm -o %s/k --quiet --verbose", d);
    per = counted_evals(g_err, NULL);
    T_OK(per == 1000 && strstr(g_out, "(ddpm, 1000 steps,") != NULL, "--sampler ddpm takes T = 1000, counted %ld: %s", per, g_out);
    run("sample --ckpt " FIXTURE " -n 1 --sampler ddim --steps 11 -o %s/k --quiet", d);
    T_OK(counted_evals(g_err, NULL) == -1, "without --verbose there is no count line");

    /* DPM-Solver++(2M) and the spacings */
    const char *dp = "sample --ckpt " FIXTURE " -n 5 --seed 5 --sampler dpm++2m --steps 15 --quiet";
    a = run("%s -o %s/da --batch 5", dp, d);
    b = run("%s -o %s/db --batch 2 --threads 1", dp, d);
    int ndb = near_dirs(d, "da", "db", 5);
    T_OK(a == 0 && b == 0 && ndb >= 0 && ndb <= 1,
         "dpm++2m: --batch 5 and --batch 2 --threads 1, the same images within a grey level (max diff %d)", ndb);
    run("sample --ckpt " FIXTURE " -n 1 --sampler dpm++2m --steps 15 -o %s/k --verbose", d);
    per = counted_evals(g_err, NULL);
    T_OK(per == 15 && strstr(g_out, "(dpm++2m, 15 steps,") != NULL, "--sampler dpm++2m --steps 15 takes 15 evaluations, counted %ld: %s", per, g_out);
    const char *sps[] = {"leading", "trailing", "linspace", "quadratic", "karras", "auto"};
    int all_ok = 1;
    for (int i = 0; i < 6; i++) {
        all_ok &= run("sample --ckpt " FIXTURE " -n 2 --sampler ddim --steps 7 --spacing %s -o %s/sp%d --quiet", sps[i], d, i) == 0;
        all_ok &= run("sample --ckpt " FIXTURE " -n 2 --sampler dpm++2m --steps 7 --spacing %s -o %s/sq%d --quiet", sps[i], d, i) == 0;
    }
    T_OK(all_ok && !same_dirs(d, "sp0", "sp1", 2), "every spacing samples with ddim and dpm++2m; leading and trailing differ");
    rc = run("sample --ckpt " FIXTURE " -n 1 --sampler ddpm --steps 100 -o %s/k --verbose", d);
    per = counted_evals(g_err, NULL);
    T_OK(rc == 0 && per == 100 && strstr(g_out, "(ddpm, 100 steps,") != NULL,
         "--sampler ddpm --steps 100: the ancestral sampler on 100 timesteps, counted %ld: %s", per, g_out);
    rc = run("sample --ckpt " FIXTURE " -n 3 --sampler dpm++2m --steps 1 --spacing trailing -o %s/k --verbose", d);
    per = counted_evals(g_err, &all);
    T_OK(rc == 0 && per == 1 && all == 3 && strstr(g_out, "(dpm++2m, 1 steps,") != NULL,
         "--steps 1 --spacing trailing: one evaluation per image at t = T-1, counted %ld (%ld for 3 images)", per, all);
    expect(run("sample --ckpt " FIXTURE " -n 1 --sampler ddim --steps 1 --spacing leading -o %s/x", d), 2, "--steps 1", "--steps 1 with leading spacing (a single step at t = 0)");
    expect(run("sample --ckpt " FIXTURE " -n 1 --sampler dpm++2m --steps 1001 -o %s/x", d), 2, "--steps 1001", "dpm++2m --steps larger than T");
    expect(run("sample --ckpt " FIXTURE " -n 1 --sampler ddpm --steps 2000 -o %s/x", d), 2, "--steps 2000", "ddpm --steps larger than T");
    expect(run("sample --ckpt " FIXTURE " -n 1 --spacing cubic -o %s/x", d), 2, "--spacing", "unknown spacing");
    expect(run("sample --ckpt " FIXTURE " -n 1 --sampler DPM++2M -o %s/x", d), 2, "dpm++2m", "sampler names are exact (lower case)");
    expect(run("sample --ckpt " FIXTURE " -n 1 --steps 0 -o %s/x", d), 2, "--steps", "--steps 0");

    /* bad input */
    expect(run("sample --ckpt %s/none.safetensors -n 1 -o %s/x", d, d), 1, "none.safetensors", "missing checkpoint");
    snprintf(p, sizeof p, "%s/garbage.safetensors", d);
    write_text(p, "not a checkpoint at all, just text");
    expect(run("sample --ckpt %s -n 1 -o %s/x", p, d), 1, "garbage.safetensors", "corrupt checkpoint");
    expect(run("sample --ckpt " FIXTURE " -n 0 -o %s/x", d), 2, "-n", "-n 0");
    expect(run("sample --ckpt " FIXTURE " -n 1 --sampler ddim --steps 5000 -o %s/x", d), 2, "--steps 5000", "--steps larger than T");
    expect(run("sample --ckpt " FIXTURE " -n 1 --sampler euler -o %s/x", d), 2, "--sampler", "unknown sampler");
    snprintf(p, sizeof p, "%s/ro", d);
    mkdir(p, 0500);
    if (geteuid() == 0) { /* root writes anywhere: use a path under a regular file instead */
        snprintf(p, sizeof p, "%s/garbage.safetensors/out", d);
    }
    expect(run("sample --ckpt " FIXTURE " -n 1 -o %s", p), 1, p, "unwritable output folder");
    expect(run("sample --run %s/norun -n 1", d), 1, "norun", "--run without a checkpoint");
    return t_done();
}
