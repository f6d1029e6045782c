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

typedef struct {
    const char *ckpt, *run, *out;
    int no_ema, force;
} Args;

static int on_opt(void *ctx, int o, const char *v) {
    Args *a = ctx;
    switch (o) {
    case 'k': a->ckpt = v; return 0;
    case 'r': a->run = v; return 0;
    case 'o': a->out = v; return 0;
    case 'E': a->no_ema = 1; return 0;
    case 'f': a->force = 1; return 0;
    default: return CLI_NOT_MINE;
    }
}

int cmd_export(int argc, char **argv) {
    static const struct option opts[] = {{"ckpt", required_argument, 0, 'k'}, {"run", required_argument, 0, 'r'},
                                         {"out", required_argument, 0, 'o'},  {"no-ema", no_argument, 0, 'E'},
                                         {"force", no_argument, 0, 'f'},      {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    Args a = {0};
    int rest, rc = cli_parse("export", argc, argv, ":o:h", opts, on_opt, &a, usage, &rest);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    if (rest < argc) return cli_usage_error("export", "unexpected argument '%s'", argv[rest]);
    const char *ckpt = a.ckpt, *run = a.run, *out = a.out;
    if (ckpt && run) return cli_usage_error("export", "give --ckpt or --run, not both");
    if (!ckpt && !run) return cli_usage_error("export", "give the model: --ckpt FILE or --run RUN_DIR");
    if (!out) return cli_usage_error("export", "give the folder to write: -o DIR");
    char path[1100];
    if (ckpt) snprintf(path, sizeof path, "%s", ckpt);
    else snprintf(path, sizeof path, "%s/latest.safetensors", run);
    char summary[3000];
    rc = dfs_export(path, out, a.no_ema, a.force, summary, sizeof summary);
    if (rc) return cli_fail(rc);
    printf("%s\n", summary);
    return 0;
}
