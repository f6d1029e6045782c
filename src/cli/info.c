/* ddpm info: the resolved config, the dataset summary and the model summary. */
#include <getopt.h>
#include <string.h>

#include "ddpm/cli.h"
#include "ddpm/data.h"
#include "ddpm/err.h"
#include "ddpm/lora.h"
#include "ddpm/checkpoint.h"
#include "ddpm/text.h"
#include "ddpm/train.h"
#include "ddpm/unet.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddpm info [--config FILE | --ckpt FILE] [options]\n"
            "\n"
            "With --ckpt: what a checkpoint holds (its step, config and model summary), or for a\n"
            "LoRA adapter file (lora.safetensors) its rank, alpha, targets, pairs and base hash.\n"
            "Prints the resolved config (defaults + FILE + --set), the dataset summary and the\n"
            "model summary: parameters per block, forward GFLOP per image, training memory, and\n"
            "what the model restores (model.cond_image).\n"
            "\n"
            "options:\n"
            "  -c, --config FILE   JSON config (default: built-in defaults)\n"
            "  --ckpt FILE         the config of a checkpoint (.safetensors) instead; implies --no-data\n"
            "  --set KEY=VALUE     override a config key, e.g. --set model.ch=32 (repeatable)\n"
            "  --batch B           batch size for the memory estimate (default train.batch_size)\n"
            "  --no-data           skip loading the dataset\n"
            "  --keys              list every config key with its type, range and default\n"
            "  -h, --help          this help\n");
}

typedef struct {
    CliConfigArgs cfg;
    const char *ckpt;
    int batch, no_data;
} Args;

static int on_opt(void *ctx, int o, const char *v) {
    Args *a = ctx;
    switch (o) {
    case 'b': return cli_int("info", "--batch", v, 1, 1 << 16, &a->batch);
    case 'n': a->no_data = 1; return 0;
    case 'K': a->ckpt = v; return 0;
    case 'k': config_print_keys(stdout); return CLI_HELP;
    default: return cli_config_opt("info", &a->cfg, o, v);
    }
}

/* --ckpt FILE that is a LoRA adapter file: described, *done set. */
static int describe_adapter(const char *path, int *done) {
    StFile f;
    int rc = st_read(&f, path);
    if (rc) return cli_fail(rc);
    const char *fmt = st_meta(&f, "format");
    *done = fmt && !strcmp(fmt, LORA_FORMAT);
    st_free(&f);
    if (!*done) return 0;
    LoraSet s;
    if ((rc = lora_load(&s, path))) return cli_fail(rc);
    lora_describe(stdout, &s, path);
    lora_set_free(&s);
    return 0;
}

/* The first lines of --ckpt FILE for a checkpoint: its step, weights and origin. */
static void describe_ckpt(const StFile *f, const char *path) {
    const char *step = st_meta(f, "step"), *w = st_meta(f, "weights"), *src = st_meta(f, "source"),
               *h = st_meta(f, "lora_base_sha256");
    printf("%s: ddpm checkpoint, step %s%s%s%s%s\n", path, step ? step : "?",
           st_find(f, "ema.conv_in.weight") ? ", raw and EMA weights" : "", w ? ", weights: " : "", w ? w : "",
           h ? ", a LoRA run (adapters under lora.*)" : "");
    if (src) printf("  source: %s\n", src);
    if (h) printf("  LoRA base sha256 %s\n", h);
}

int cmd_info(int argc, char **argv) {
    static const struct option opts[] = {CLI_CONFIG_OPTIONS,
                                         {"batch", required_argument, 0, 'b'},  {"no-data", no_argument, 0, 'n'},
                                         {"keys", no_argument, 0, 'k'},         {"help", no_argument, 0, 'h'},
                                         {"ckpt", required_argument, 0, 'K'},
                                         {0, 0, 0, 0}};
    Args a = {0};
    int rest, rc = cli_parse("info", argc, argv, ":c:h", opts, on_opt, &a, usage, &rest);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    if (rest < argc) return cli_usage_error("info", "unexpected argument '%s'", argv[rest]);
    const char *cfg_path = a.cfg.path;
    int batch = a.batch;
    Config c;
    if (a.ckpt && cfg_path) return cli_usage_error("info", "give --config or --ckpt, not both");
    if (a.ckpt) {
        int adapter = 0;
        if ((rc = describe_adapter(a.ckpt, &adapter)) || adapter) return rc;
        StFile f;
        if ((rc = ckpt_open(&f, a.ckpt, &c))) return cli_fail(rc);
        describe_ckpt(&f, a.ckpt);
        st_free(&f);
        for (int i = 0; i < a.cfg.n_sets; i++)
            if ((rc = config_set(&c, a.cfg.sets[i]))) return cli_fail(rc);
        a.no_data = 1;
        cfg_path = a.ckpt;
    } else if ((rc = cli_config(&c, cfg_path, a.cfg.sets, a.cfg.n_sets))) return cli_fail(rc);
    char *json = config_to_json(&c);
    printf("config%s%s\n%s\n\n", cfg_path ? " " : " (defaults)", cfg_path ? cfg_path : "", json);
    free(json);
    if (c.model.cond_image) {
        char what[512];
        degrade_spec_describe(what, sizeof what, &c.train.degrade);
        printf("restores (model.cond_image, ddpm restore): %s; input concat(x_t, y%s) = %d channels\n\n", what,
               c.train.degrade.has_mask ? ", mask" : "", c.data.channels + degrade_cond_channels(&c.train.degrade, c.data.channels));
    } else if (a.ckpt)
        printf("restores: nothing (no model.cond_image; ddpm upscale/edit/inpaint steer it from outside)\n\n");

    int capfmt = !strcmp(c.data.format, "captions") || !strcmp(c.data.format, "scenes");
    if (!a.no_data && capfmt) {
        CapData cap;
        Vocab v;
        if ((rc = train_load_captions(&cap, &v, &c))) return cli_fail(rc);
        int nc = 0;
        for (int i = 0; i < cap.img.n; i++) nc += capdata_n_captions(&cap, i);
        printf("dataset\n  %s: %s\n  %d images, %dx%dx%d, %d captions (%d distinct), vocabulary %d words (specials included)\n",
               c.data.format, c.data.path, cap.img.n, cap.img.size, cap.img.size, cap.img.c, nc, cap.n_text, v.n);
        for (int i = 0; i < 3 && i < cap.img.n; i++) printf("  example %d: \"%s\"\n", i, capdata_caption(&cap, i, 0));
        printf("\n");
        capdata_free(&cap), text_vocab_free(&v);
    } else if (!a.no_data) {
        Dataset ds;
        if ((rc = dataset_load(&ds, &c))) return cli_fail(rc);
        double mean[3], sd[3];
        dataset_stats(&ds, mean, sd);
        printf("dataset\n  %s: %s\n  %d images, %dx%dx%d, %d classes\n", c.data.format, c.data.path, ds.n, ds.size, ds.size,
               ds.c, ds.n_classes);
        printf("  per-channel mean/std (pixels in [0,1]):");
        for (int i = 0; i < ds.c; i++) printf(" %.4f/%.4f", mean[i], sd[i]);
        printf("\n");
        if (!ds.has_labels) {
            printf("  no labels file: every image has class 0%s\n", c.model.class_cond ? " (model.class_cond needs labels)" : "");
        } else {
            long *cnt = xcalloc((size_t)ds.n_classes + 1, sizeof(long));
            for (int i = 0; i < ds.n; i++) cnt[ds.labels[i] >= 0 && ds.labels[i] < ds.n_classes ? ds.labels[i] : ds.n_classes]++;
            printf("  classes (index, name, images):\n");
            for (int k = 0; k < ds.n_classes; k++)
                printf("    %3d  %-24s %8ld\n", k, ds.class_names ? ds.class_names[k] : "?", cnt[k]);
            free(cnt);
        }
        printf("\n");
        if (c.model.class_cond && c.model.num_classes == 0) c.model.num_classes = ds.n_classes;
        dataset_free(&ds);
    }

    if (c.model.text.max_len > 0 && c.model.text.vocab == 0) {
        c.model.text.vocab = 64; /* --no-data: the vocabulary is unknown; its rows are a small part */
        printf("(model.text.vocab unknown without the data: the summary assumes 64 words)\n");
    }
    if (!batch) batch = c.train.batch_size;
    UNet u;
    if ((rc = unet_plan(&u, &c, batch, 1))) return cli_fail(rc);
    unet_print_summary(&u, stdout);
    double pbytes = u.n_floats * 4.0;
    printf("  training memory at batch %d: activations %.1f MB + parameters, gradients, Adam moments, EMA %.1f MB\n", batch,
           u.act_bytes / 1e6, 5 * pbytes / 1e6);
    unet_free(&u);
    return 0;
}
