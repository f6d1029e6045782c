/* Shared helpers of the subcommands: option parsing and error printing. */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/cli.h"
#include "ddpm/dist.h"
#include "ddpm/err.h"

int cli_fail(int rc) {
    /* Under MPI a usage error is the same on every rank: rank 0 says it. A runtime error
     * may be one rank's own (its disk, its file), so that rank says it, with its number. */
    if (!rc) return rc;
    if (dist_size() == 1) fprintf(stderr, "ddpm: %s\n", err_msg());
    else if (rc != DDPM_EUSAGE || dist_rank() == 0) fprintf(stderr, "ddpm (rank %d): %s\n", dist_rank(), err_msg());
    return rc;
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ddpm %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (try 'ddpm %s --help')\n", cmd);
    return DDPM_EUSAGE;
}

int cli_int(const char *cmd, const char *opt, const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return cli_usage_error(cmd, "%s '%s': expected an integer from %ld to %ld", opt, s, lo, hi);
    *out = (int)v;
    return 0;
}

int cli_float(const char *cmd, const char *opt, const char *s, double lo, double hi, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return cli_usage_error(cmd, "%s '%s': expected a number from %g to %g", opt, s, lo, hi);
    *out = (float)v;
    return 0;
}

int cli_add_set(const char *cmd, char **sets, int *n_sets) {
    if (*n_sets == CLI_MAX_SETS) return cli_usage_error(cmd, "too many --set options (at most %d)", CLI_MAX_SETS);
    sets[(*n_sets)++] = optarg;
    return 0;
}

int cli_config(Config *c, const char *path, char **sets, int n_sets) {
    config_defaults(c);
    int rc = path ? config_load(c, path) : 0;
    for (int i = 0; !rc && i < n_sets; i++) rc = config_set(c, sets[i]);
    if (!rc) rc = config_validate(c);
    return rc;
}
