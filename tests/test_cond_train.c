/* Class conditioning as a user trains and samples it: bad labels (missing file, a label out
 * of range, a count mismatch) are one line before anything is trained or written; `sample
 * --class` records each file's class in DIR/classes.csv; train.cond_drop draws the same
 * labels when a run is resumed (bitwise-identical checkpoints); an unconditional checkpoint
 * made before class conditioning existed still loads as unconditional and samples the same
 * bytes with or without the guidance options. (1 vs 2 MPI ranks: tests/test_mpi.c.) */
#include <sys/stat.h>
#include <unistd.h>

#include "cli_util.h"
#include "ddpm/safetensors.h"
#include "ddpm/checkpoint.h"

#define OLD "tests/fixtures/tiny_model.safetensors" /* committed 2026-11-26, before class_cond */

static const char *TINY =
    "{\"data\": {\"format\": \"idx\", \"path\": \"%s\", \"image_size\": 16, \"channels\": 1, \"limit\": 16, \"hflip\": true},"
    " \"model\": {\"ch\": 16, \"ch_mult\": [1, 2], \"num_res_blocks\": 1, \"attn_resolutions\": [8], \"dropout\": 0.1, \"groups\": 4,"
    "            \"class_cond\": true},"
    " \"diffusion\": {\"T\": 1000, \"schedule\": \"linear\"},"
    " \"train\": {\"batch_size\": 8, \"steps\": 8, \"lr\": 0.002, \"warmup\": 2, \"log_every\": 2, \"sample_every\": 0,"
    "           \"ckpt_every\": 4, \"keep\": 0, \"seed\": 3, \"cond_drop\": 0.5}}";

static void expect(int rc, int lo, int hi, const char *needle, const char *what) {
    T_OK(rc >= lo && rc <= hi && strstr(g_err, needle) && n_lines(g_err) == 1, "%s: exit %d, one line: %s", what, rc,
         g_err[0] ? g_err : "(no stderr)\n");
}

/* An IDX file: big-endian magic 0x0803 (images, n x 16 x 16) or 0x0801 (labels, n). */
static void write_idx(const char *path, int labels, int n, const unsigned char *data) {
    FILE *f = fopen(path, "wb");
    unsigned char hdr[16] = {0, 0, 8, (unsigned char)(labels ? 1 : 3)};
    int nd = labels ? 1 : 3, dims[3] = {n, 16, 16};
    for (int k = 0; k < nd; k++)
        for (int b = 0; b < 4; b++) hdr[4 + 4 * k + b] = (unsigned char)(dims[k] >> (24 - 8 * b));
    fwrite(hdr, 1, 4 + 4 * nd, f);
    fwrite(data, 1, labels ? (size_t)n : (size_t)n * 256, f);
    fclose(f);
}

static void test_bad_labels(const char *d) {
    printf("labels\n");
    enum { N = 8 };
    unsigned char pix[N * 256], lab[N] = {0, 9, 2, 3, 4, 5, 6, 7};
    for (int i = 0; i < N * 256; i++) pix[i] = (unsigned char)(i * 37);
    char dir[600], p[800], cfg[700], js[2048], out[700];
    const char *cases[3] = {"nolabels", "range", "count"};
    for (int k = 0; k < 3; k++) {
        snprintf(dir, sizeof dir, "%s/%s", d, cases[k]);
        mkdir(dir, 0755);
        snprintf(p, sizeof p, "%s/train-images-idx3-ubyte", dir);
        write_idx(p, 0, N, pix);
        snprintf(p, sizeof p, "%s/train-labels-idx1-ubyte", dir);
        if (k == 1) write_idx(p, 1, N, lab);
        if (k == 2) write_idx(p, 1, N - 1, lab);
        snprintf(cfg, sizeof cfg, "%s/%s.json", d, cases[k]);
        snprintf(js, sizeof js, TINY, dir);
        write_text(cfg, js);
    }
    /* each case: an extra --set, the exit codes allowed, what the line says */
    const struct {
        const char *set;
        int lo, hi;
        const char *needle, *what;
    } bad[3] = {{"", 2, 2, "no labels file", "class_cond without a labels file"},
                {"--set model.num_classes=5", 2, 2, "has label 9, outside 0..4", "label 9 with model.num_classes = 5"},
                {"", 1, 2, "has 7 labels but", "7 labels for 8 images"}};
    for (int k = 0; k < 3; k++) {
        snprintf(out, sizeof out, "%s/run_%s", d, cases[k]);
        snprintf(cfg, sizeof cfg, "%s/%s.json", d, cases[k]);
        expect(run("train --config %s --set train.out_dir=%s %s --quiet", cfg, out, bad[k].set), bad[k].lo, bad[k].hi, bad[k].needle,
               bad[k].what);
        T_OK(empty_dir(out), "nothing written");
    }
    /* the same folder with matching labels trains (so the errors above are about the labels) */
    snprintf(out, sizeof out, "%s/run_ok", d);
    snprintf(cfg, sizeof cfg, "%s/range.json", d);
    int rc = run("train --config %s --set train.out_dir=%s --set train.steps=2 --quiet", cfg, out);
    snprintf(p, sizeof p, "%s/latest.safetensors", out);
    T_OK(rc == 0 && access(p, F_OK) == 0, "with 8 labels in range the same data trains%s", rc ? g_err : "");
}

/* DIR/classes.csv: "NNNNNN.png,class" per image, in file order. */
static void test_classes_csv(const char *d, const char *run_dir) {
    printf("classes.csv\n");
    char p[700], got[4096], want[4096];
    int rc = run("sample --run %s --class all -n 2 --sampler ddim --steps 3 -o %s/all --quiet", run_dir, d);
    snprintf(p, sizeof p, "%s/all/classes.csv", d);
    slurp(p, got, sizeof got);
    want[0] = 0;
    for (int i = 0; i < 20; i++) snprintf(want + strlen(want), sizeof want - strlen(want), "%06d.png,%d\n", i, i / 2);
    T_OK(rc == 0 && !strcmp(got, want), "--class all -n 2: 20 rows, image i of class i / 2 (%d lines)%s", n_lines(got), rc ? g_err : "");
    snprintf(p, sizeof p, "%s/all/000019.png", d);
    T_OK(access(p, F_OK) == 0 && strstr(g_out, "T-shirt/top, Trouser"), "20 images written, rows named in order: %.120s", g_out);
    rc = run("sample --run %s --class bag,0,ANKLE\\ BOOT -n 1 --sampler ddim --steps 3 -o %s/list --quiet", run_dir, d);
    snprintf(p, sizeof p, "%s/list/classes.csv", d);
    slurp(p, got, sizeof got);
    T_OK(rc == 0 && !strcmp(got, "000000.png,8\n000001.png,0\n000002.png,9\n"), "--class bag,0,ANKLE BOOT: %s", got);
    rc = run("sample --run %s -n 3 --sampler ddim --steps 3 -o %s/list --quiet", run_dir, d);
    T_OK(rc == 0 && access(p, F_OK) != 0, "sampling again without --class removes the stale classes.csv");
}

static void test_resume(const char *d, const char *cfg) {
    printf("cond_drop across resume\n");
    int a = run("train --config %s --set train.out_dir=%s/straight --quiet", cfg, d);
    int b1 = run("train --config %s --set train.out_dir=%s/split --set train.steps=4 --quiet", cfg, d);
    int b2 = run("train --resume %s/split --set train.steps=8 --quiet", d);
    int c = run("train --config %s --set train.out_dir=%s/nodrop --set train.cond_drop=0 --quiet", cfg, d);
    char pa[700], pb[700], pc[700];
    snprintf(pa, sizeof pa, "%s/straight/latest.safetensors", d);
    snprintf(pb, sizeof pb, "%s/split/latest.safetensors", d);
    snprintf(pc, sizeof pc, "%s/nodrop/latest.safetensors", d);
    double mr, mn;
    int same = same_tensors(pa, pb, &mr);
    T_OK(a == 0 && b1 == 0 && b2 == 0 && same && mr == 0,
         "cond_drop 0.5: 8 steps straight = 4 + --resume to 8: weights, EMA and Adam moments bitwise (max rel diff %.3g)", mr);
    T_OK(c == 0 && same_tensors(pa, pc, &mn) && mn > 1e-3, "and cond_drop 0 trains other weights (max rel diff %.3g: the drop is in effect)", mn);
}

static void test_old_checkpoint(const char *d) {
    printf("checkpoints from before class conditioning\n");
    StFile f;
    Config c;
    int rc = ckpt_open(&f, OLD, &c);
    const char *cfg = rc ? NULL : st_meta(&f, "config");
    T_OK(rc == 0 && !c.model.class_cond && !st_find(&f, "class_emb.weight") && !st_find(&f, "ema.class_emb.weight") && cfg &&
             !strstr(cfg, "class_cond"),
         "%s (no class_cond key, no class_emb tensor) opens as an unconditional model", OLD);
    if (!rc) st_free(&f);
    /* tests/test_sample.c samples it to its stored grid (tiny_model_grid.png); the guidance
     * options leave an unconditional model alone */
    int r1 = run("sample --ckpt " OLD " -n 3 --sampler ddim --steps 5 --seed 2 -o %s/old1 --quiet", d);
    int r2 = run("sample --ckpt " OLD " -n 3 --sampler ddim --steps 5 --seed 2 --guidance 5 --guidance-rescale 0.5 -o %s/old2 --quiet", d);
    int same = r1 == 0 && r2 == 0;
    const char *files[] = {"000000.png", "000002.png", "grid.png"};
    for (int i = 0; i < 3; i++) {
        char a[700], b[700];
        snprintf(a, sizeof a, "%s/old1/%s", d, files[i]);
        snprintf(b, sizeof b, "%s/old2/%s", d, files[i]);
        same &= same_file(a, b);
    }
    T_OK(same, "--guidance 5 --guidance-rescale 0.5 on it: byte-identical files");
}

int main(void) {
    const char *d = t_tmpdir();
    char cfg[600], js[2048], run_dir[700];
    test_bad_labels(d);
    snprintf(cfg, sizeof cfg, "%s/fm.json", d);
    snprintf(js, sizeof js, TINY, "/usr/share/datasets/fashion-mnist");
    write_text(cfg, js);
    test_resume(d, cfg);
    snprintf(run_dir, sizeof run_dir, "%s/straight", d);
    test_classes_csv(d, run_dir);
    test_old_checkpoint(d);
    return t_done();
}
