/* ddpm: denoising diffusion models on the CPU. `ddpm <command> [options]`. */
#include <stdio.h>
#include <string.h>

#include "ddpm/cli.h"
#include "ddpm/dist.h"
#include "ddpm/err.h"
#include "ddpm/gemm.h"
#include "ddpm/platform.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} COMMANDS[] = {
    {"noise", cmd_noise, "show the forward process: an image dissolving into noise"},
    {"info", cmd_info, "print the resolved config, the dataset and the model summary"},
    {"train", cmd_train, "train the U-Net (or --resume a run)"},
    {"sample", cmd_sample, "generate images from a trained checkpoint"},
    {"inpaint", cmd_inpaint, "fill a masked region of images so that it fits (RePaint)"},
    {"edit", cmd_edit, "turn a noisy or rough image into one the model would make (SDEdit)"},
    {"upscale", cmd_upscale, "a full-resolution image from a low-resolution one (ILVR)"},
    {"restore", cmd_restore, "restore degraded images with a model trained for it (SR3/Palette)"},
    {"import", cmd_import, "read a diffusers UNet2DModel folder into a ddpm checkpoint"},
    {"export", cmd_export, "write a checkpoint as a diffusers UNet2DModel folder"},
    {"merge", cmd_merge, "add LoRA adapters into a checkpoint's weights"},
    {"bench", cmd_bench, "time a training step and a forward pass"},
    {"plot", cmd_plot, "draw a CSV's columns as a labelled line plot (PNG)"},
};
#define N_COMMANDS (int)(sizeof COMMANDS / sizeof COMMANDS[0])

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddpm <command> [options]\n"
            "\n"
            "Denoising diffusion probabilistic models (Ho et al. 2020) on the CPU.\n"
            "\n"
            "commands:\n");
    for (int i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-8s %s\n", COMMANDS[i].name, COMMANDS[i].help);
    fprintf(f,
            "\n"
            "options:\n"
            "  -h, --help     this help\n"
            "  --version      print the version\n"
            "\n"
            "Run 'ddpm <command> --help' for a command's options.\n");
}

int main(int argc, char **argv) {
    /* OpenBLAS first: its kernel family is chosen before it initialises (src/gemm.c) */
    if (blas_init()) {
        fprintf(stderr, "ddpm: %s\n", err_msg());
        return 1;
    }
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
        printf("ddpm %s\nOpenBLAS core %s (%s); ddpm kernels %s; CPU %s\n", DDPM_VERSION, blas_core_name(),
               blas_core_source(), kernel_isa(), cpu_model_name());
        return 0;
    }
    for (int i = 0; i < N_COMMANDS; i++)
        if (!strcmp(cmd, COMMANDS[i].name)) {
            dist_init(&argc, &argv);
            int rc = COMMANDS[i].fn(argc - 1, argv + 1);
            if (rc) dist_abort(rc); /* one failing rank stops the others instead of leaving them waiting */
            dist_finalize();
            return rc;
        }
    fprintf(stderr, "ddpm: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
