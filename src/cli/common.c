/* Shared helpers of the subcommands: option parsing and error printing. */
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ddpm/cli.h"
#include "ddpm/dist.h"
#include "ddpm/err.h"
#include "ddpm/guidance.h"
#include "ddpm/model_io.h"
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

const char *CLI_GUIDANCE_HELP =
    "  --guidance S        classifier-free guidance: uncond + S (cond - uncond); 1 = plain\n"
    "                      conditional, 0 = unconditional (default sample.guidance)\n"
    "  --guidance-rescale PHI  rescale the guided prediction to the conditional one's std,\n"
    "                      blended by PHI in [0,1] (Lin et al. 2023; default sample.guidance_rescale)\n";

void cli_cond_init(CliCond *cc) { cc->arg = NULL, cc->guidance = cc->rescale = -1; }

int cli_cond_opt(const char *cmd, CliCond *cc, int o, const char *v) {
    if (o == CLI_OPT_CLASS) cc->arg = v;
    else if (o == CLI_OPT_GUIDANCE) return cli_float(cmd, "--guidance", v, 0, 100, &cc->guidance);
    else if (o == CLI_OPT_GRESCALE) return cli_float(cmd, "--guidance-rescale", v, 0, 1, &cc->rescale);
    return 0;
}

/* "all", or a comma list of names / indices -> class indices (malloc'd). */
static int parse_classes(const UNet *u, const char *arg, int allow_all, int **out, int *n_out) {
    int cap = u->n_classes > 0 ? u->n_classes : 1, n = 0, rc;
    int *v = xmalloc(sizeof(int) * (strlen(arg) + (size_t)cap + 1));
    if (!strcasecmp(arg, "all")) {
        if (!allow_all) {
            free(v);
            return err_set(DDPM_EUSAGE, "--class all: give one class for every input, or a comma list of one class per input");
        }
        for (int i = 0; i < u->n_classes; i++) v[n++] = i;
    } else {
        char *copy = xmalloc(strlen(arg) + 1), *save = NULL;
        strcpy(copy, arg);
        for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            while (*tok == ' ') tok++;
            char *e = tok + strlen(tok);
            while (e > tok && e[-1] == ' ') *--e = 0;
            if ((rc = unet_class_lookup(u, tok, &v[n]))) {
                free(copy), free(v);
                return rc;
            }
            n++;
        }
        free(copy);
        if (!n) {
            free(v);
            return err_set(DDPM_EUSAGE, "--class '%s': no class given (a name, an index or a comma list%s)", arg,
                           allow_all ? ", or all" : "");
        }
    }
    *out = v, *n_out = n;
    return DDPM_OK;
}

int cli_classes(const char *path, const StFile *f, Config *c, const CliCond *cc, int allow_all, CliClasses *out) {
    memset(out, 0, sizeof *out);
    if (cc->guidance >= 0) c->sample.guidance = cc->guidance;
    if (cc->rescale >= 0) c->sample.guidance_rescale = cc->rescale;
    if (!cc->arg) return 0;
    if (!c->model.class_cond) {
        err_set(DDPM_EUSAGE, "--class: %s is an unconditional model (model.class_cond = false); train a class-conditional one "
                             "or drop --class", path);
        return cli_fail(DDPM_EUSAGE);
    }
    UNet probe; /* only for the class names */
    int rc = unet_plan(&probe, c, 1, 0);
    if (!rc) rc = ckpt_load_class_names(f, &probe);
    if (!rc) rc = parse_classes(&probe, cc->arg, allow_all, &out->want, &out->n_want);
    if (!rc) out->names = probe.class_names, out->n_names = probe.n_classes, probe.class_names = NULL;
    unet_free(&probe);
    return cli_fail(rc);
}

void cli_classes_free(CliClasses *cl) {
    for (int i = 0; cl->names && i < cl->n_names; i++) free(cl->names[i]);
    free(cl->names), free(cl->want);
    memset(cl, 0, sizeof *cl);
}

int cli_guided(const Config *c, const CliClasses *cl) {
    return c->model.class_cond && cl->want && guidance_needs_both(c->sample.guidance, c->sample.guidance_rescale);
}
