#include "ddpm/cli.h"
#include <stdio.h>
int cmd_train(int argc, char **argv) { fprintf(stderr, "ddpm: train: not implemented yet\n"); return 1; }
int cmd_sample(int argc, char **argv) { fprintf(stderr, "ddpm: sample: not implemented yet\n"); return 1; }
int cmd_bench(int argc, char **argv) { fprintf(stderr, "ddpm: bench: not implemented yet\n"); return 1; }
