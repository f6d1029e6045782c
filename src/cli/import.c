/* ddpm import: a diffusers UNet2DModel folder -> a ddpm checkpoint (src/diffusers.c). */
#include <getopt.h>
#include <libgen.h>
#include <string.h>

#include "ddpm/cli.h"
#include "ddpm/diffusers.h"
#include "ddpm/err.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddpm import DIR [-o FILE.safetensors] [--force]\n"
            "\n"
            "Reads a Hugging Face diffusers UNet2DModel folder (config.json,\n"
            "diffusion_pytorch_model.safetensors and, when present, scheduler_config.json; or\n"
            "the same under DIR/unet and DIR/scheduler) and writes a ddpm checkpoint (weights and\n"
            "config with the schedule, no optimizer state) for 'ddpm sample --ckpt FILE'.\n"
            "Both attention namings (to_q/to_k/to_v/to_out.0 and query/key/value/proj_attn) are\n"
            "read; F16/BF16 weights are widened to F32. Anything ddpm cannot run exactly (another\n"
            "block type, several attention heads, flip_sin_to_cos true, freq_shift != 1,\n"
            "norm_eps != 1e-6, a missing, extra or misshapen tensor, ...) is refused (exit 2).\n"
            "\n"
            "  google/ddpm-cifar10-32 (Ho et al.'s CIFAR-10 model):\n"
            "    ddpm import ddpm-cifar10-32 -o cifar10.safetensors\n"
            "    ddpm sample --ckpt cifar10.safetensors -n 64 --sampler ddim --steps 50\n"
            "\n"
            "options:\n"
            "  -o, --out FILE      checkpoint to write (default: <DIR's name>.safetensors)\n"
            "  --force             replace FILE if it exists\n"
            "  -h, --help          this help\n");
}

typedef struct {
    const char *out;
    int force;
} Args;

static int on_opt(void *ctx, int o, const char *v) {
    Args *a = ctx;
    if (o == 'o') a->out = v;
    else if (o == 'f') a->force = 1;
    else return CLI_NOT_MINE;
    return 0;
}

int cmd_import(int argc, char **argv) {
    static const struct option opts[] = {
        {"out", required_argument, 0, 'o'}, {"force", no_argument, 0, 'f'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    Args a = {0};
    int rest, rc = cli_parse("import", argc, argv, ":o:h", opts, on_opt, &a, usage, &rest);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    if (rest >= argc) return cli_usage_error("import", "give the diffusers model folder");
    const char *out = a.out, *dir = argv[rest++];
    if (rest < argc) return cli_usage_error("import", "unexpected argument '%s'", argv[rest]);
    char def[1100];
    if (!out) {
        char tmp[1024];
        snprintf(tmp, sizeof tmp, "%s", dir);
        size_t n = strlen(tmp);
        while (n > 1 && tmp[n - 1] == '/') tmp[--n] = 0;
        snprintf(def, sizeof def, "%s.safetensors", basename(tmp));
        out = def;
    }
    char summary[3000];
    rc = dfs_import(dir, out, a.force, summary, sizeof summary);
    if (rc) return cli_fail(rc);
    printf("%s\nsample with: ddpm sample --ckpt %s\n", summary, out);
    return 0;
}
