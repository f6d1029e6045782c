/* Shared helpers of the subcommands: option parsing and error printing. */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/cli.h"
#include "ddpm/dist.h"
#include "ddpm/err.h"
#include "ddpm/sampler.h"

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

int cli_check_sampler(const char *cmd, const char *sampler, const char *spacing, const char *var) {
    if (sampler && sampler_kind(sampler) < 0) return cli_usage_error(cmd, "--sampler '%s': use ddpm, ddim or dpm++2m", sampler);
    if (spacing && (spacing_kind(spacing) < 0 || !strcmp(spacing, "uniform")) && strcmp(spacing, "auto"))
        return cli_usage_error(cmd, "--spacing '%s': use leading, trailing, linspace, quadratic, karras or auto", spacing);
    if (var && strcmp(var, "small") && strcmp(var, "large")) return cli_usage_error(cmd, "--var '%s': use small or large", var);
    return 0;
}

int cli_sample_opts(const char *cmd, SampleOpts *so, Config *c, const char *sampler, int steps, float eta, const char *spacing,
                    const char *var, int seed, int batch, int no_clip) {
    if (sampler) snprintf(c->sample.sampler, sizeof c->sample.sampler, "%s", sampler);
    if (spacing) snprintf(c->sample.spacing, sizeof c->sample.spacing, "%s", spacing);
    if (var) snprintf(c->sample.var, sizeof c->sample.var, "%s", var);
    if (steps > 0) c->sample.steps = steps;
    if (eta >= 0) c->sample.eta = eta;
    if (seed >= 0) c->sample.seed = seed;
    if (batch > 0) c->sample.batch = batch;
    if (no_clip) c->sample.clip = false;
    sample_opts_from_config(so, c);
    if (steps > 0) so->steps = steps; /* ddpm too, when asked: the ancestral sampler on a subsequence */
    if (so->steps > c->diffusion.T)
        return cli_usage_error(cmd, "--steps %d is larger than the model's T = %d", so->steps, c->diffusion.T);
    if (so->steps == 1 && (so->spacing == SPACING_LEADING || so->spacing == SPACING_QUADRATIC))
        return cli_usage_error(cmd, "--steps 1 with --spacing %s is a single step at t = 0, which returns the noise; use --spacing trailing",
                               spacing_name(so->spacing));
    return 0;
}
