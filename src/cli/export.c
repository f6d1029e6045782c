/* ddpm export: a ddpm checkpoint -> a diffusers UNet2DModel folder (src/diffusers.c). */
#include <getopt.h>
#include <string.h>

#include "ddpm/cli.h"
#include "ddpm/diffusers.h"
#include "ddpm/err.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddpm export (--ckpt FILE | --run RUN_DIR) -o DIR [--no-ema] [--force]\n"
            "\n"
            "Writes a ddpm model as a Hugging Face diffusers folder: DIR/config.json (UNet2DModel,\n"
            "every architecture key spelled out), DIR/diffusion_pytorch_model.safetensors and\n"
            "DIR/scheduler_config.json (DDPMScheduler). In Python:\n"
            "    unet = UNet2DModel.from_pretrained(DIR); sched = DDPMScheduler.from_pretrained(DIR)\n"
            "Models diffusers cannot express are refused with the reason (exit 2).\n"
            "\n"
            "options:\n"
            "  --ckpt FILE         the checkpoint\n"
            "  --run DIR           RUN_DIR/latest.safetensors\n"
            "  -o, --out DIR       the folder to write (created if needed)\n"
            "  --no-ema            export the raw weights instead of the EMA\n"
            "  --force             replace an export already in DIR\n"
            "  -h, --help          this help\n");
}

int cmd_export(int argc, char **argv) {
    static const struct option opts[] = {{"ckpt", required_argument, 0, 'k'}, {"run", required_argument, 0, 'r'},
                                         {"out", required_argument, 0, 'o'},  {"no-ema", no_argument, 0, 'E'},
                                         {"force", no_argument, 0, 'f'},      {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *ckpt = NULL, *run = NULL, *out = NULL;
    int no_ema = 0, force = 0, o;
    optind = 1;
    opterr = 0;
    while ((o = getopt_long(argc, argv, ":o:h", opts, NULL)) != -1) {
        switch (o) {
        case 'k': ckpt = optarg; break;
        case 'r': run = optarg; break;
        case 'o': out = optarg; break;
        case 'E': no_ema = 1; break;
        case 'f': force = 1; break;
        case 'h': usage(stdout); return 0;
        case ':': return cli_usage_error("export", "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("export", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return cli_usage_error("export", "unexpected argument '%s'", argv[optind]);
    if (ckpt && run) return cli_usage_error("export", "give --ckpt or --run, not both");
    if (!ckpt && !run) return cli_usage_error("export", "give the model: --ckpt FILE or --run RUN_DIR");
    if (!out) return cli_usage_error("export", "give the folder to write: -o DIR");
    char path[1100];
    if (ckpt) snprintf(path, sizeof path, "%s", ckpt);
    else snprintf(path, sizeof path, "%s/latest.safetensors", run);
    char summary[3000];
    int rc = dfs_export(path, out, no_ema, force, summary, sizeof summary);
    if (rc) return cli_fail(rc);
    printf("%s\n", summary);
    return 0;
}
