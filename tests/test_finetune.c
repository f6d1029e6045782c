/* Fine-tuning as a user runs it: a tiny base model without one class, then
 *  - train.init_from with a model section of other shapes: one line naming the tensor, exit
 *    2, no run folder;
 *  - a LoRA run on the left-out class: the frozen base weights never change (the run's
 *    checkpoint holds the base's EMA weights bit for bit), lora.safetensors is written, and
 *    10 steps + resume + 10 steps repeat 20 straight steps bit for bit (adapters, their EMA
 *    and Adam moments, the log);
 *  - ddpm sample --lora FILE:0 writes the base model's images byte for byte;
 *  - ddpm merge at a scale samples what the runtime adapter at that scale samples, byte for
 *    byte (sampling runs every adapter as its layer's merged weight, merged as ddpm merge
 *    merges it);
 *  - an adapter for a model of other shapes (sample, merge): one line, exit 2, nothing
 *    written; a truncated adapter file: one line, exit 1, nothing written. */
#include <unistd.h>

#include "cli_util.h"
#include "ddpm/safetensors.h"
#include "ddpm/image.h"

static const char *BASE =
    "{\"data\": {\"format\": \"idx\", \"path\": \"/usr/share/datasets/fashion-mnist\", \"image_size\": 16, \"channels\": 1,"
    "            \"limit\": 64, \"classes\": [0, 1, 2, 3, 4, 5, 6, 7, 9]},"
    " \"model\": {\"ch\": 8, \"ch_mult\": [1, 2], \"num_res_blocks\": 1, \"attn_resolutions\": [8], \"dropout\": 0, \"groups\": 4},"
    " \"diffusion\": {\"T\": 1000, \"schedule\": \"linear\"},"
    " \"train\": {\"batch_size\": 8, \"steps\": 30, \"lr\": 0.002, \"warmup\": 5, \"grad_clip\": 1.0, \"ema_decay\": 0.9,"
    "           \"log_every\": 5, \"sample_every\": 0, \"ckpt_every\": 10, \"keep\": 1, \"seed\": 3},"
    " \"sample\": {\"sampler\": \"ddim\", \"steps\": 8}}";

static char cfg[512];

/* 1 if every tensor X of run checkpoint `a` (not lora.*) has the bits of "ema.X" in `b` */
static int frozen_same(const char *a, const char *b, int *n_cmp) {
    StFile fa, fb;
    *n_cmp = 0;
    if (st_read(&fa, a)) return 0;
    if (st_read(&fb, b)) {
        st_free(&fa);
        return 0;
    }
    int ok = 1;
    for (int i = 0; ok && i < fa.n; i++) {
        if (!strncmp(fa.e[i].name, "lora.", 5)) continue;
        char nm[300];
        snprintf(nm, sizeof nm, "ema.%s", fa.e[i].name);
        const StEntry *eb = st_find(&fb, nm);
        size_t len = fa.e[i].end - fa.e[i].begin;
        ok = eb && eb->end - eb->begin == len && !memcmp(fa.data + fa.e[i].begin, fb.data + eb->begin, len);
        (*n_cmp)++;
    }
    st_free(&fa);
    st_free(&fb);
    return ok && *n_cmp > 0;
}

/* largest |pixel difference| over the images 000000.png.. of two folders; -1 if unreadable */
static int max_pixel_diff(const char *da, const char *db, int n) {
    int m = 0;
    for (int i = 0; i < n; i++) {
        char pa[700], pb[700];
        snprintf(pa, sizeof pa, "%s/%06d.png", da, i);
        snprintf(pb, sizeof pb, "%s/%06d.png", db, i);
        Image a, b;
        if (image_load(&a, pa, 1)) return -1;
        if (image_load(&b, pb, 1)) {
            free(a.pix);
            return -1;
        }
        for (int j = 0; j < a.w * a.h * a.c && a.w == b.w && a.h == b.h; j++) {
            int d = abs((int)a.pix[j] - (int)b.pix[j]);
            if (d > m) m = d;
        }
        free(a.pix), free(b.pix);
    }
    return m;
}

int main(void) {
    if (access("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz", R_OK)) {
        printf("skipped: Fashion-MNIST not in /usr/share/datasets/fashion-mnist (scripts/install-deps.sh)\n");
        return 77;
    }
    const char *d = t_tmpdir();
    char p[700], q[700];
    snprintf(cfg, sizeof cfg, "%s/base.json", d);
    write_text(cfg, BASE);
    int rc = run("train --config %s --set train.out_dir=%s/base --quiet", cfg, d);
    T_OK(rc == 0, "tiny base model without bags trains (%s)", g_err);
    if (rc) return t_done();

    /* init_from with other shapes */
    rc = run("train --config %s --set train.out_dir=%s/wrong --set model.ch=16 --init-from %s/base/latest.safetensors --quiet", cfg, d, d);
    snprintf(p, sizeof p, "%s/wrong", d);
    T_OK(rc == 2 && n_lines(g_err) == 1 && strstr(g_err, "temb.dense0.weight") && access(p, F_OK) != 0,
         "init_from with model.ch 16 against a ch 8 checkpoint: exit 2, one line naming the tensor, no run folder: %s", g_err);

    /* LoRA on 64 bags: 20 straight, and 10 + resume + 10 */
    const char *lora = "--set 'data.classes=[8]' --set train.lora.rank=2 --set 'train.lora.targets=[\"attn\",\"conv\",\"temb\"]' "
                       "--set train.steps=20";
    int a = run("train --config %s %s --set train.out_dir=%s/lora --init-from %s/base/latest.safetensors --quiet", cfg, lora, d, d);
    int b1 = run("train --config %s %s --set train.out_dir=%s/split --set train.steps=10 --init-from %s/base/latest.safetensors --quiet",
                 cfg, lora, d, d);
    int b2 = run("train --resume %s/split --set train.steps=20 --quiet", d);
    T_OK(a == 0 && b1 == 0 && b2 == 0, "LoRA runs: straight, split and resumed (%s)", g_err);
    snprintf(p, sizeof p, "%s/lora/latest.safetensors", d);
    snprintf(q, sizeof q, "%s/base/latest.safetensors", d);
    int ncmp;
    T_OK(frozen_same(p, q, &ncmp), "after 20 LoRA steps the run's %d base tensors are the base's EMA weights bit for bit", ncmp);
    double mr;
    snprintf(q, sizeof q, "%s/split/latest.safetensors", d);
    T_OK(same_tensors(p, q, &mr) && mr == 0, "20 straight = 10 + resume + 10: adapters, EMA, Adam moments bitwise (max rel %.3g)", mr);
    snprintf(p, sizeof p, "%s/lora/lora.safetensors", d);
    snprintf(q, sizeof q, "%s/split/lora.safetensors", d);
    T_OK(same_tensors(p, q, &mr) && mr == 0, "and the same lora.safetensors (max rel %.3g)", mr);
    char ra[4096], rb[4096], la[700], lb[700];
    double l[8];
    snprintf(la, sizeof la, "%s/lora", d);
    snprintf(lb, sizeof lb, "%s/split", d);
    int na = read_log(la, l, 8, ra, sizeof ra), nb = read_log(lb, l, 8, rb, sizeof rb);
    T_OK(na == 4 && nb == 4 && !strcmp(ra, rb), "and the same log rows (%d, %d)", na, nb);
    rc = run("info --ckpt %s/lora/lora.safetensors", d);
    T_OK(rc == 0 && strstr(g_out, "rank 2") && strstr(g_out, "attn|conv|temb"), "ddpm info describes the adapter: %s", g_out);

    /* sampling with the adapter */
    const char *smp = "-n 4 --steps 8 --quiet --no-labels";
    int s0 = run("sample --ckpt %s/base/latest.safetensors %s -o %s/s_base", d, smp, d);
    int s1 = run("sample --ckpt %s/base/latest.safetensors %s -o %s/s_zero --lora %s/lora/lora.safetensors:0", d, smp, d, d);
    int same = 1;
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/s_base/%06d.png", d, i);
        snprintf(q, sizeof q, "%s/s_zero/%06d.png", d, i);
        same &= same_file(p, q);
    }
    T_OK(s0 == 0 && s1 == 0 && same, "--lora FILE:0 gives the base model's images byte for byte");
    int s2 = run("sample --ckpt %s/base/latest.safetensors %s -o %s/s_rt --lora %s/lora/lora.safetensors:4", d, smp, d, d);
    int m1 = run("merge --ckpt %s/base/latest.safetensors --lora %s/lora/lora.safetensors:4 -o %s/merged.safetensors", d, d, d);
    int s3 = run("sample --ckpt %s/merged.safetensors %s -o %s/s_merged", d, smp, d);
    snprintf(p, sizeof p, "%s/s_rt", d);
    snprintf(q, sizeof q, "%s/s_merged", d);
    int md = max_pixel_diff(p, q, 4);
    snprintf(la, sizeof la, "%s/s_base", d);
    int moved = max_pixel_diff(p, la, 4), bytes = 1;
    for (int i = 0; i < 4; i++) {
        char a1[700], a2[700];
        snprintf(a1, sizeof a1, "%s/s_rt/%06d.png", d, i);
        snprintf(a2, sizeof a2, "%s/s_merged/%06d.png", d, i);
        bytes &= same_file(a1, a2);
    }
    T_OK(s2 == 0 && m1 == 0 && s3 == 0 && md == 0 && bytes && moved > 0,
         "merged at scale 4 against the runtime adapter at scale 4: the same images byte for byte (the adapter moves pixels by up to %d)",
         moved);

    /* adapters that do not fit */
    rc = run("train --config %s --set train.out_dir=%s/other --set model.ch=16 --set train.steps=1 --quiet", cfg, d);
    rc = run("sample --ckpt %s/other/latest.safetensors %s -o %s/s_other --lora %s/lora/lora.safetensors", d, smp, d, d);
    snprintf(p, sizeof p, "%s/s_other", d);
    T_OK(rc == 2 && n_lines(g_err) == 1 && strstr(g_err, "does not fit") && access(p, F_OK) != 0,
         "an adapter for another shape: exit 2, one line, nothing written: %s", g_err);
    rc = run("merge --ckpt %s/other/latest.safetensors --lora %s/lora/lora.safetensors -o %s/bad_merge.safetensors", d, d, d);
    snprintf(p, sizeof p, "%s/bad_merge.safetensors", d);
    T_OK(rc == 2 && n_lines(g_err) == 1 && access(p, F_OK) != 0, "merge refuses it too: exit 2, one line, no file: %s", g_err);
    /* a truncated adapter file */
    snprintf(p, sizeof p, "%s/lora/lora.safetensors", d);
    snprintf(q, sizeof q, "%s/trunc.safetensors", d);
    {
        FILE *fi = fopen(p, "rb"), *fo = fopen(q, "wb");
        char buf[1 << 16];
        size_t got = fi ? fread(buf, 1, sizeof buf, fi) : 0;
        if (fo) fwrite(buf, 1, got / 2, fo);
        if (fi) fclose(fi);
        if (fo) fclose(fo);
    }
    rc = run("sample --ckpt %s/base/latest.safetensors %s -o %s/s_trunc --lora %s", d, smp, d, q);
    snprintf(p, sizeof p, "%s/s_trunc", d);
    T_OK(rc == 1 && n_lines(g_err) == 1 && access(p, F_OK) != 0, "a truncated adapter: exit 1, one line, nothing written: %s", g_err);
    return t_done();
}
