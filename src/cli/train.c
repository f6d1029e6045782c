/* ddpm train: options -> config -> train_main. */
#include <getopt.h>
#include <string.h>

#include "ddpm/cli.h"
#include "ddpm/dist.h"
#include "ddpm/err.h"
#include "ddpm/checkpoint.h"
#include "ddpm/gemm.h"
#include "ddpm/train.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddpm train --config FILE [options]\n"
            "       ddpm train --resume RUN_DIR [options]\n"
            "\n"
            "Trains the U-Net to predict the noise (or x0, or v) added by the forward process.\n"
            "The run folder (train.out_dir) receives config.json, log.csv, loss.png,\n"
            "samples/step_NNNNNNN.png previews, latest.safetensors and milestone checkpoints.\n"
            "Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves, and says how to resume.\n"
            "\n"
            "options:\n"
            "  -c, --config FILE   JSON config (see configs/ and configs/README.md)\n"
            "  --set KEY=VALUE     override a config key, e.g. --set train.steps=2000 (repeatable);\n"
            "                      with --resume only train.* keys take effect\n"
            "  --resume RUN_DIR    continue the run in RUN_DIR from its latest.safetensors\n"
            "  --force             start over in a run folder that already holds a run\n"
            "  --init-from FILE    start from this checkpoint's weights (train.init_from): fine-tuning,\n"
            "                      or the base of a LoRA run (train.lora, docs/finetuning.md)\n"
            "  --no-ema            with --init-from: its raw weights instead of its EMA weights\n"
            "  --threads N         threads for GEMM and the other loops (default: all cores)\n"
            "  -q, --quiet         no progress output\n"
            "  --no-labels         bare pictures: no caption on the previews, no text on loss.png\n"
            "  -h, --help          this help\n");
}

typedef struct {
    CliConfigArgs cfg;
    int threads;
    const char *init_from; /* --init-from */
    TrainOpts to;
} Args;

static int on_opt(void *ctx, int o, const char *v) {
    Args *a = ctx;
    switch (o) {
    case 'r': a->to.resume = v; return 0;
    case 'f': a->to.force = 1; return 0;
    case 'j': return cli_int("train", "--threads", v, 1, 1024, &a->threads);
    case 'q': a->to.quiet = 1; return 0;
    case 'L': a->to.no_labels = 1; return 0;
    case 'I': a->init_from = v; return 0;
    case 'E': a->to.init_raw = 1; return 0;
    default: return cli_config_opt("train", &a->cfg, o, v);
    }
}

int cmd_train(int argc, char **argv) {
    static const struct option opts[] = {CLI_CONFIG_OPTIONS,
                                         {"resume", required_argument, 0, 'r'}, {"force", no_argument, 0, 'f'},
                                         {"threads", required_argument, 0, 'j'}, {"quiet", no_argument, 0, 'q'},
                                         {"no-labels", no_argument, 0, 'L'}, {"init-from", required_argument, 0, 'I'},
                                         {"no-ema", no_argument, 0, 'E'},
                                         {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    Args a = {0};
    int rest, rc = cli_parse("train", argc, argv, ":c:qh", opts, on_opt, &a, usage, &rest);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    if (rest < argc) return cli_usage_error("train", "unexpected argument '%s'", argv[rest]);
    const char *cfg_path = a.cfg.path;
    TrainOpts to = a.to;
    if (!cfg_path && !to.resume) return cli_usage_error("train", "give --config FILE or --resume RUN_DIR");
    if (cfg_path && to.resume) return cli_usage_error("train", "--resume takes the config from the checkpoint; drop --config");
    Config c;
    if (to.resume) {
        /* start from the run's own config, then apply --set */
        char p[1024];
        StFile f;
        snprintf(p, sizeof p, "%s/latest.safetensors", to.resume);
        if ((rc = ckpt_open(&f, p, &c))) return cli_fail(rc);
        st_free(&f);
        for (int i = 0; !rc && i < a.cfg.n_sets; i++) rc = config_set(&c, a.cfg.sets[i]);
        if (!rc) rc = config_validate(&c);
    } else {
        rc = cli_config(&c, cfg_path, a.cfg.sets, a.cfg.n_sets);
        if (!rc && a.init_from) {
            if (strlen(a.init_from) >= sizeof c.train.init_from)
                return cli_usage_error("train", "--init-from: path longer than %zu characters", sizeof c.train.init_from - 1);
            snprintf(c.train.init_from, sizeof c.train.init_from, "%s", a.init_from);
        }
    }
    if (rc) return cli_fail(rc);
    threads_set(a.threads);
    rc = train_main(&c, &to);
    return cli_fail(rc);
}
