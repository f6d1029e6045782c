#include "ddpm/cli.h"
#include <stdio.h>
int cmd_bench(int argc, char **argv) { fprintf(stderr, "ddpm: bench: not implemented yet\n"); return 1; }
