/* Pictures with words: the draw module writes valid PNGs of the stated size; text really
 * appears (pixels differ from the unlabelled picture inside the caption band, and the images
 * themselves are untouched); --no-labels gives the bare layout; missing fonts (fontconfig
 * pointed at an empty config) give unlabelled pictures with one warning and never fail
 * training; `ddpm plot` reads its CSV format and refuses bad input with one line. */
#include <stb_image.h>
#include <unistd.h>

#include "cli_util.h"
#include "ddpm/draw.h"
#include "ddpm/err.h"
#include "ddpm/image.h"

/* Pixels darker than 160 (of 255, any channel) in rows y0..y1-1, columns x0..x1-1 of an RGB image. */
static int dark_in(const uint8_t *p, int W, int x0, int y0, int x1, int y1) {
    int n = 0;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) {
            const uint8_t *q = p + ((size_t)y * W + x) * 3;
            n += q[0] < 160 || q[1] < 160 || q[2] < 160;
        }
    return n;
}

/* Pixels that differ between two same-size RGB images inside a box. */
static int diff_in(const uint8_t *a, const uint8_t *b, int W, int x0, int y0, int x1, int y1) {
    int n = 0;
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) n += memcmp(a + ((size_t)y * W + x) * 3, b + ((size_t)y * W + x) * 3, 3) != 0;
    return n;
}

static uint8_t *load(const char *p, int *w, int *h, int *c, int want) {
    *w = *h = *c = 0;
    return stbi_load(p, w, h, c, want);
}

static const char *tp(const char *name) {
    static char buf[8][600];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", t_tmpdir(), name);
    return buf[k];
}

static void test_plot(void) {
    printf("plot\n");
    double x[50], y1[50], y2[50];
    for (int i = 0; i < 50; i++) x[i] = 20 * (i + 1), y1[i] = 0.5 * exp(-i / 10.0) + 0.03, y2[i] = 0.6 * exp(-i / 12.0) + 0.04;
    DrawSeries s[2] = {{.name = "raw", .x = x, .y = y1, .n = 50, .color = 0, .faint = 1},
                       {.name = "smoothed", .x = x, .y = y2, .n = 50, .color = 1}};
    DrawPlot p = draw_plot_defaults();
    p.title = "a title", p.xlabel = "step", p.ylabel = "loss", p.logy = 1;
    T_OK(draw_plot_png(tp("plot.png"), &p, s, 2) == 0, "draw_plot_png writes");
    int w, h, c;
    uint8_t *lab = load(tp("plot.png"), &w, &h, &c, 3);
    T_OK(lab && w == 800 && h == 500, "default plot is 800x500 (got %dx%d)", w, h);
    p.w = 640, p.h = 360;
    T_OK(draw_plot_png(tp("plot_small.png"), &p, s, 2) == 0 && stbi_info(tp("plot_small.png"), &w, &h, &c) && w == 640 && h == 360,
         "a 640x360 plot is 640x360 (got %dx%d)", w, h);
    /* the same plot without text: the title band and the tick-label margins are blank */
    p.w = p.h = 0, p.bare = 1;
    T_OK(draw_plot_png(tp("plot_bare.png"), &p, s, 2) == 0, "unlabelled plot writes");
    p.bare = 0;
    uint8_t *bare = load(tp("plot_bare.png"), &w, &h, &c, 3);
    T_OK(bare && w == 800 && h == 500, "unlabelled plot is 800x500 too");
    if (lab && bare) {
        int t_lab = dark_in(lab, 800, 0, 0, 800, 14), t_bare = dark_in(bare, 800, 0, 0, 800, 14);
        T_OK(t_lab > 50 && t_bare == 0, "title band: %d dark pixels with labels, %d without", t_lab, t_bare);
        int l_lab = dark_in(lab, 800, 0, 40, 14, 460), b_lab = dark_in(lab, 800, 60, 486, 800, 500);
        T_OK(l_lab > 20 && b_lab > 20, "the y axis name and the x axis name are drawn (%d, %d dark pixels)", l_lab, b_lab);
    }
    if (lab) stbi_image_free(lab);
    if (bare) stbi_image_free(bare);
    /* odd input draws without failing: one point, a flat line, NaNs, non-positive on a log axis */
    double one = 5, flat[3] = {2, 2, 2}, xs[3] = {1, 2, 3}, bad[3] = {NAN, -1, 0};
    DrawSeries odd[3] = {{.x = &one, .y = &one, .n = 1, .markers = 1}, {.x = xs, .y = flat, .n = 3}, {.x = xs, .y = bad, .n = 3}};
    T_OK(draw_plot_png(tp("odd.png"), &p, odd, 3) == 0, "a single point, a flat line and unusable values still draw");
    T_OK(draw_plot_png(tp("empty.png"), &p, NULL, 0) == 0, "no series at all draws empty axes");
    T_OK(draw_plot_png("/nonexistent_dir/x.png", &p, s, 2) == 1 && strstr(err_msg(), "/nonexistent_dir/x.png"),
         "an unwritable path is a runtime error naming it: %s", err_msg());
}

static void test_grid(void) {
    printf("grid\n");
    enum { N = 6, S = 28 };
    float *imgs = malloc(sizeof(float) * N * S * S);
    for (int i = 0; i < N * S * S; i++) imgs[i] = (float)((i * 37 % 255) / 127.5 - 1);
    /* bare (no captions, as --no-labels): the layout of image_grid_u8, grey stays grey */
    const char *cells[N] = {"t = 0", "t = 200", "t = 400", "t = 600", "t = 800", "t = 999"};
    DrawCaptions cap = {.title = "step 100 | ddim", .cell = cells};
    T_OK(draw_grid_png(tp("bare.png"), imgs, N, S, S, 1, 3, 2, NULL) == 0, "bare grid writes");
    int w, h, c;
    T_OK(stbi_info(tp("bare.png"), &w, &h, &c) && w == 3 * (S + 2) + 2 && h == 2 * (S + 2) + 2 && c == 1,
         "--no-labels grid of 6 in 3 columns: %dx%d, %d channel (want %dx%d, 1)", w, h, c, 3 * (S + 2) + 2, 2 * (S + 2) + 2);
    T_OK(draw_grid_png(tp("bare_strip.png"), imgs, N, S, S, 1, N, 0, NULL) == 0 && stbi_info(tp("bare_strip.png"), &w, &h, &c) &&
             w == N * S && h == S,
         "--no-labels strip of 6 is exactly 6 frames wide: %dx%d", w, h);
    /* labelled: the same layout with captions, and with empty captions (no text) */
    T_OK(draw_grid_png(tp("lab.png"), imgs, N, S, S, 1, 3, 2, &cap) == 0, "captioned grid writes");
    const char *blank[N] = {"", "", "", "", "", ""};
    DrawCaptions nocap = {.title = "", .cell = blank};
    T_OK(draw_grid_png(tp("nolab.png"), imgs, N, S, S, 1, 3, 2, &nocap) == 0, "same grid with empty captions writes");
    int w2, h2;
    uint8_t *a = load(tp("lab.png"), &w, &h, &c, 3), *b = load(tp("nolab.png"), &w2, &h2, &c, 3);
    T_OK(a && b && w == w2 && h == h2 && w >= 3 * 3 * S && h > 2 * 3 * S, "captioned grid %dx%d holds 3x2 images scaled x3 (%dx%d without text)",
         w, h, w2, h2);
    if (a && b && w == w2 && h == h2) {
        /* find the first image: its top-left pixel is imgs[0] */
        int x0 = -1, y0 = -1, sc = 3;
        for (int y = 0; y < h && x0 < 0; y++)
            for (int x = 0; x < w; x++)
                if (b[((size_t)y * w + x) * 3] != 255) {
                    x0 = x, y0 = y;
                    break;
                }
        int exact = x0 >= 0;
        for (int i = 0; exact && i < 3; i++) /* images 0..2 in row 0, pixels nearest-neighbour x3 */
            for (int y = 0; exact && y < S * sc; y++)
                for (int x = 0; exact && x < S * sc; x++) {
                    int X = x0 + i * (S * sc + 6) + x, Y = y0 + y;
                    uint8_t want = image_to_u8(imgs[(size_t)i * S * S + (y / sc) * S + x / sc]);
                    exact = X < w && a[((size_t)Y * w + X) * 3] == want && b[((size_t)Y * w + X) * 3] == want;
                }
        T_OK(exact, "the images are drawn untouched (every pixel scaled x3 exactly, first at %d,%d)", x0, y0);
        int title = diff_in(a, b, w, 0, 0, w, y0), capband = diff_in(a, b, w, 0, y0 + S * sc, w, y0 + S * sc + 16);
        int images = diff_in(a, b, w, x0, y0, x0 + S * sc, y0 + S * sc);
        T_OK(title > 30 && capband > 60 && images == 0,
             "text appears: %d pixels differ in the title band, %d in the caption band under row 0, %d inside an image", title, capband,
             images);
    }
    if (a) stbi_image_free(a);
    if (b) stbi_image_free(b);
    /* row labels (classes) widen the grid on the left */
    const char *rows[2] = {"T-shirt/top", "Ankle boot"};
    DrawCaptions rcap = {.title = "classes", .row = rows};
    T_OK(draw_grid_png(tp("rows.png"), imgs, N, S, S, 1, 3, 2, &rcap) == 0 && stbi_info(tp("rows.png"), &w2, &h2, &c) && w2 > w + 40,
         "row labels widen the grid (%d vs %d pixels)", w2, w);
    /* column heads (original | masked | result strips) add a band above the first row */
    const char *heads[3] = {"original", "masked", "result"};
    DrawCaptions ccap = {.col = heads};
    T_OK(draw_grid_png(tp("cols.png"), imgs, N, S, S, 1, 3, 2, &ccap) == 0 && stbi_info(tp("cols.png"), &w2, &h2, &c) && h2 > 2 * (3 * S + 6) + 6 + 12,
         "column heads add a band above the grid (%dx%d)", w2, h2);
    /* RGB and large images are not scaled */
    float *big = calloc((size_t)2 * 80 * 80 * 3, sizeof(float));
    T_OK(draw_grid_png(tp("big.png"), big, 2, 80, 80, 3, 2, 2, &cap) == 0 && stbi_info(tp("big.png"), &w, &h, &c) && w >= 160 && w < 200,
         "80-pixel RGB images keep their size (%dx%d)", w, h);
    free(big);
    free(imgs);
}

static int count(const char *s, const char *needle) {
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p++) n++;
    return n;
}

static void test_no_fonts(void) {
    printf("no fonts\n");
    const char *d = t_tmpdir();
    write_text(tp("empty-fonts.conf"), "<?xml version=\"1.0\"?>\n<!DOCTYPE fontconfig SYSTEM \"fonts.dtd\">\n<fontconfig></fontconfig>\n");
    uint8_t img[20 * 20 * 3];
    for (int i = 0; i < 20 * 20 * 3; i++) img[i] = (uint8_t)(i * 7);
    image_write_png(tp("im.png"), img, 20, 20, 3);
    /* fontconfig pointed at an empty config: no fonts at all */
    char args[2048];
    snprintf(args, sizeof args, "noise %s -o %s/nf_strip.png --plot %s/nf_plot.png", tp("im.png"), d, d);
    setenv("FONTCONFIG_FILE", tp("empty-fonts.conf"), 1);
    int rc = run("%s", args);
    unsetenv("FONTCONFIG_FILE");
    int w, h, c;
    T_OK(rc == 0 && count(g_err, "warning") == 1 && strstr(g_err, "fonts-dejavu-core"), "noise without fonts: exit %d, one warning: %s", rc,
         g_err);
    T_OK(stbi_info(tp("nf_strip.png"), &w, &h, &c) && w == 200 && h == 20, "the strip is bare: %dx%d (want 200x20)", w, h);
    uint8_t *p = load(tp("nf_plot.png"), &w, &h, &c, 3);
    T_OK(p && w == 800 && h == 500 && dark_in(p, 800, 0, 0, 800, 12) == 0, "the plot is drawn, without text (%dx%d)", w, h);
    if (p) stbi_image_free(p);
    /* training: a few steps with previews and checkpoints, no fonts -> runs to the end, one warning */
    char cfg[600];
    snprintf(cfg, sizeof cfg, "%s/tiny.json", d);
    write_text(cfg,
               "{\"data\": {\"format\": \"idx\", \"path\": \"/usr/share/datasets/fashion-mnist\", \"image_size\": 16, \"channels\": 1,"
               " \"limit\": 8}, \"model\": {\"ch\": 8, \"ch_mult\": [1, 2], \"num_res_blocks\": 1, \"attn_resolutions\": [], \"groups\": 4},"
               " \"train\": {\"batch_size\": 4, \"steps\": 6, \"log_every\": 1, \"sample_every\": 3, \"ckpt_every\": 2, \"sample_n\": 4,"
               " \"sample_steps\": 2}}");
    snprintf(args, sizeof args, "train --config %s --set train.out_dir=%s/nf_run --quiet --threads 1", cfg, d);
    setenv("FONTCONFIG_FILE", tp("empty-fonts.conf"), 1);
    rc = run("%s", args);
    unsetenv("FONTCONFIG_FILE");
    T_OK(rc == 0 && count(g_err, "warning") == 1, "training without fonts: exit %d, %d warning(s): %s", rc, count(g_err, "warning"), g_err);
    T_OK(stbi_info(tp("nf_run/loss.png"), &w, &h, &c) && w == 800, "loss.png is drawn (%dx%d)", w, h);
    T_OK(stbi_info(tp("nf_run/samples/step_0000006.png"), &w, &h, &c) && w == 2 * (16 + 2) + 2,
         "the preview grid is bare (%dx%d)", w, h);
    /* with fonts the same run labels its preview */
    snprintf(args, sizeof args, "train --config %s --set train.out_dir=%s/f_run --quiet --threads 1", cfg, d);
    rc = run("%s", args);
    T_OK(rc == 0 && !strstr(g_err, "warning") && stbi_info(tp("f_run/samples/step_0000006.png"), &w, &h, &c) && w > 2 * 16 * 4,
         "with fonts the preview is captioned and scaled (%dx%d)", w, h);
}

static void test_plot_cmd(void) {
    printf("ddpm plot\n");
    const char *d = t_tmpdir();
    write_text(tp("fd.csv"), "# FD of 64 samples\nsteps,ddpm,\"ddim\",dpm++\n10,,80.5,61.2\n20,,62.0,50.1\n50,,51.3,48.0\n1000,47.5,,\n");
    int rc = run("plot %s --x steps --logx --title 'FD vs steps' --ylabel FD -o %s/fd.png", tp("fd.csv"), d);
    int w, h, c;
    T_OK(rc == 0 && stbi_info(tp("fd.png"), &w, &h, &c) && w == 800 && h == 500, "plot a CSV with gaps on a log x axis: exit %d, %dx%d %s", rc,
         w, h, g_err);
    rc = run("plot %s --y ddim --size 400x300", tp("fd.csv"));
    T_OK(rc == 0 && stbi_info(tp("fd.png"), &w, &h, &c) && w == 400 && h == 300, "default output CSV.png, --size 400x300: %dx%d", w, h);
    write_text(tp("bad.csv"), "a,b\n1,2\n2,x3\n");
    rc = run("plot %s", tp("bad.csv"));
    T_OK(rc == 1 && n_lines(g_err) == 1 && strstr(g_err, "bad.csv:3") && strstr(g_err, "\"b\""), "a bad cell: exit %d, %s", rc, g_err);
    write_text(tp("ragged.csv"), "a,b\n1,2,3\n");
    rc = run("plot %s", tp("ragged.csv"));
    T_OK(rc == 1 && n_lines(g_err) == 1 && strstr(g_err, "ragged.csv:2"), "a ragged row: exit %d, %s", rc, g_err);
    rc = run("plot %s --x nope", tp("fd.csv"));
    T_OK(rc == 2 && strstr(g_err, "nope") && strstr(g_err, "dpm++"), "an unknown column: exit %d, %s", rc, g_err);
    rc = run("plot %s/none.csv", d);
    T_OK(rc == 1 && n_lines(g_err) == 1 && strstr(g_err, "none.csv"), "a missing CSV: exit %d, %s", rc, g_err);
    rc = run("plot %s --size big", tp("fd.csv"));
    T_OK(rc == 2 && strstr(g_err, "--size"), "a bad --size: exit %d", rc);
    /* a long table: one series per sampler, text columns that are not drawn are fine */
    write_text(tp("long.csv"), "sampler,spacing,evals,fd\nddim,leading,10,80\ndpm++2m,karras,10,61\nddim,leading,25,62\nddpm,,1000,47\n");
    rc = run("plot %s --x evals --y fd --by sampler --logx -o %s/long.png", tp("long.csv"), d);
    T_OK(rc == 0 && stbi_info(tp("long.png"), &w, &h, &c) && w == 800, "--by sampler draws a long table: exit %d %s", rc, g_err);
    rc = run("plot %s --x evals --y spacing -o %s/x.png", tp("long.csv"), d);
    T_OK(rc == 1 && strstr(g_err, "long.csv:2") && strstr(g_err, "spacing"), "drawing a text column: exit %d, %s", rc, g_err);
    rc = run("plot %s --x evals --by sampler -o %s/x.png", tp("long.csv"), d);
    T_OK(rc == 0, "--by with one numeric column left needs no --y: exit %d %s", rc, g_err);
    write_text(tp("long2.csv"), "sampler,evals,fd,seconds\nddim,10,80,1.5\nddpm,1000,47,90\n");
    rc = run("plot %s --x evals --by sampler -o %s/x.png", tp("long2.csv"), d);
    T_OK(rc == 2 && strstr(g_err, "--y"), "--by with two numeric columns asks for --y: exit %d", rc);
    rc = run("plot --help");
    T_OK(rc == 0 && strstr(g_out, "CSV format") && strstr(g_out, "--logy"), "--help documents the CSV format");
}

static void test_traj_captions(void) {
    printf("trajectory captions\n");
    char **c = draw_trajectory_captions(5, 8), **d = draw_trajectory_captions(4, 50);
    T_OK(!strcmp(c[0], "noise") && !strcmp(c[1], "step 2/8") && !strcmp(c[2], "step 4/8") && !strcmp(c[4], "step 8/8"),
         "5 frames over 8 steps: %s | %s | %s | %s | %s", c[0], c[1], c[2], c[3], c[4]);
    T_OK(!strcmp(d[1], "step 17/50") && !strcmp(d[2], "step 34/50") && !strcmp(d[3], "step 50/50"),
         "4 frames over 50 steps: %s | %s | %s | %s (frame f after step ceil(f*K/(frames-1)))", d[0], d[1], d[2], d[3]);
    free(c);
    free(d);
}

int main(void) {
    test_plot();
    test_traj_captions();
    test_grid();
    test_no_fonts();
    test_plot_cmd();
    return t_done();
}
