/* ddpm merge: a checkpoint + LoRA adapters -> a plain checkpoint with W' = W + scale·(alpha/rank)·B·A. */
#include <getopt.h>
#include <math.h>
#include <string.h>

#include "ddpm/cli.h"
#include "ddpm/err.h"
#include "ddpm/fsio.h"
#include "ddpm/lora.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddpm merge --ckpt BASE --lora FILE[:SCALE] [--lora ...] -o OUT.safetensors [options]\n"
            "\n"
            "Adds LoRA adapters into the weights of BASE and writes a plain checkpoint: it samples\n"
            "the images 'ddpm sample --ckpt BASE --lora FILE[:SCALE]' samples, within float\n"
            "rounding, without the adapters' extra work per step. The merged weights are BASE's\n"
            "EMA weights (or its raw ones with --no-ema) plus SCALE·(alpha/rank)·B·A of each adapter.\n"
            "\n"
            "options:\n"
            "  --ckpt FILE         the base checkpoint the adapters were trained on\n"
            "  --lora FILE[:SCALE] an adapter (lora.safetensors) at SCALE (default 1); repeatable\n"
            "  -o, --out FILE      the checkpoint to write\n"
            "  --no-ema            merge into BASE's raw weights instead of its EMA weights\n"
            "  --force             replace FILE if it exists\n"
            "  -h, --help          this help\n");
}

typedef struct {
    const char *ckpt, *out;
    const char *lora[CLI_MAX_LORA];
    int n_lora, no_ema, force;
} Args;

static int on_opt(void *ctx, int o, const char *v) {
    Args *a = ctx;
    switch (o) {
    case 'k': a->ckpt = v; return 0;
    case 'o': a->out = v; return 0;
    case 'E': a->no_ema = 1; return 0;
    case 'f': a->force = 1; return 0;
    case 'A':
        if (a->n_lora == CLI_MAX_LORA) return cli_usage_error("merge", "--lora: at most %d adapters", CLI_MAX_LORA);
        a->lora[a->n_lora++] = v;
        return 0;
    default: return CLI_NOT_MINE;
    }
}

int cmd_merge(int argc, char **argv) {
    static const struct option opts[] = {{"ckpt", required_argument, 0, 'k'}, {"lora", required_argument, 0, 'A'},
                                         {"out", required_argument, 0, 'o'},  {"no-ema", no_argument, 0, 'E'},
                                         {"force", no_argument, 0, 'f'},      {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    Args a = {0};
    int rest, rc = cli_parse("merge", argc, argv, ":o:h", opts, on_opt, &a, usage, &rest);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    if (rest < argc) return cli_usage_error("merge", "unexpected argument '%s'", argv[rest]);
    if (!a.ckpt) return cli_usage_error("merge", "give the base model: --ckpt FILE");
    if (!a.n_lora) return cli_usage_error("merge", "give at least one adapter: --lora FILE[:SCALE]");
    if (!a.out) return cli_usage_error("merge", "give the checkpoint to write: -o OUT.safetensors");
    if (path_exists(a.out) && !a.force) return cli_usage_error("merge", "%s exists; choose another -o or pass --force", a.out);
    StFile f;
    Config c;
    UNet u = {0};
    LoraStack st = {0};
    LoraBase *b = NULL;
    if ((rc = ckpt_open(&f, a.ckpt, &c))) return cli_fail(rc);
    const char *prefix;
    CkptWeights w = ckpt_pick_weights(&f, a.no_ema, &prefix);
    if (w == CKPT_NO_EMA) fprintf(stderr, "ddpm: %s holds no EMA weights; merging into its raw weights\n", a.ckpt);
    if ((rc = unet_init(&u, &c, 1, 0)) || (rc = ckpt_load_params(&f, prefix, &u, u.params))) goto out;
    if (u.n_classes > 0 && (rc = ckpt_load_class_names(&f, &u))) goto out;
    for (int i = 0; i < a.n_lora && !rc; i++) rc = lora_stack_add(&st, a.lora[i]);
    if (rc) goto out;
    b = unet_lora_bases(&u, u.params);
    char hex[65];
    lora_base_sha256(hex, b, u.nP, &c);
    if ((rc = lora_stack_check(&st, b, u.nP, hex))) goto out;
    lora_stack_merge(&st, b, u.nP);
    for (size_t i = 0; i < u.n_floats; i++)
        if (!isfinite(u.params[i])) {
            rc = err_set(DDPM_ERUNTIME, "the merged weights are not finite (an adapter scale too large?); nothing written");
            goto out;
        }
    char source[2200];
    snprintf(source, sizeof source, "ddpm merge of %s", a.ckpt);
    for (int i = 0; i < st.n; i++) {
        size_t l = strlen(source);
        snprintf(source + l, sizeof source - l, " + %s:%g", st.path[i], st.scale[i]);
    }
    if ((rc = ckpt_save_weights(a.out, &u, &c, w == CKPT_RAW || w == CKPT_NO_EMA ? "raw" : "ema", source))) goto out;
    printf("%s: %s with %d adapter%s merged (%s weights)\n", a.out, a.ckpt, st.n, st.n == 1 ? "" : "s",
           w == CKPT_RAW || w == CKPT_NO_EMA ? "raw" : "EMA");
out:
    free(b);
    lora_stack_free(&st);
    unet_free(&u);
    st_free(&f);
    return rc ? cli_fail(rc) : 0;
}
