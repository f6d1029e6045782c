/* ddpm train: options -> config -> train_main. */
#include <getopt.h>
#include <string.h>

#include "ddpm/cli.h"
#include "ddpm/dist.h"
#include "ddpm/draw.h"
#include "ddpm/err.h"
#include "ddpm/model_io.h"
#include "ddpm/tensor.h"
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
            "  --threads N         threads for GEMM and the other loops (default: all cores)\n"
            "  -q, --quiet         no progress output\n"
            "  --no-labels         bare pictures: no caption on the previews, no text on loss.png\n"
            "  -h, --help          this help\n");
}

int cmd_train(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, 0, 'c'}, {"set", required_argument, 0, 'S'},
                                         {"resume", required_argument, 0, 'r'}, {"force", no_argument, 0, 'f'},
                                         {"threads", required_argument, 0, 'j'}, {"quiet", no_argument, 0, 'q'},
                                         {"no-labels", no_argument, 0, 'L'},
                                         {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    const char *cfg_path = NULL;
    char *sets[CLI_MAX_SETS];
    int n_sets = 0, threads = 0, rc, o;
    TrainOpts to = {0};
    optind = 1;
    opterr = 0;
    while ((o = getopt_long(argc, argv, ":c:qh", opts, NULL)) != -1) {
        switch (o) {
        case 'c': cfg_path = optarg; break;
        case 'S': if ((rc = cli_add_set("train", sets, &n_sets))) return rc; break;
        case 'r': to.resume = optarg; break;
        case 'f': to.force = 1; break;
        case 'j': if ((rc = cli_int("train", "--threads", optarg, 1, 1024, &threads))) return rc; break;
        case 'q': to.quiet = 1; break;
        case 'L': draw_set_labels(0); break;
        case 'h': usage(stdout); return 0;
        case ':': return cli_usage_error("train", "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("train", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return cli_usage_error("train", "unexpected argument '%s'", argv[optind]);
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
        for (int i = 0; !rc && i < n_sets; i++) rc = config_set(&c, sets[i]);
        if (!rc) rc = config_validate(&c);
    } else {
        rc = cli_config(&c, cfg_path, sets, n_sets);
    }
    if (rc) return cli_fail(rc);
    threads_set(threads);
    rc = train_main(&c, &to);
    return cli_fail(rc);
}
