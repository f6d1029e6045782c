/* cli: one function per subcommand (src/cli/<name>.c). Each returns the process exit
 * code: 0 success, 1 runtime failure, 2 usage or config error; errors are printed by
 * cli_fail() as one line on stderr. */
#ifndef DDPM_CLI_H
#define DDPM_CLI_H

#include <getopt.h>

#include "ddpm/checkpoint.h"
#include "ddpm/config.h"
#include "ddpm/sampler.h"

int cmd_noise(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_import(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_plot(int argc, char **argv);
int cmd_inpaint(int argc, char **argv);
int cmd_edit(int argc, char **argv);
int cmd_upscale(int argc, char **argv);

/* Print "ddpm: <err_msg()>" and return rc (for `return cli_fail(rc);`). */
int cli_fail(int rc);
/* Usage error: print "ddpm <cmd>: <msg>" and "Try 'ddpm <cmd> --help'." Returns 2. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parse an int / float option value strictly (whole string, range). 0 ok, 2 on error
 * (message printed). */
int cli_int(const char *cmd, const char *opt, const char *s, long lo, long hi, int *out);
int cli_float(const char *cmd, const char *opt, const char *s, double lo, double hi, float *out);
/* Collect a --set KEY=VALUE (optarg) into sets (CLI_MAX_SETS); 2 with a message when full. */
#define CLI_MAX_SETS 64
int cli_add_set(const char *cmd, char **sets, int *n_sets);
/* Load the config from `path` (NULL = defaults) and apply the --set assignments. */
int cli_config(Config *c, const char *path, char **sets, int n_sets);

/* Check --sampler/--spacing/--var names (NULL = not given); 0 or 2 with a message. */
int cli_check_sampler(const char *cmd, const char *sampler, const char *spacing, const char *var);
/* Apply the sampling options given on the command line (NULL / negative = not given) to the
 * config's sample section and derive the SampleOpts; 2 with a message when --steps exceeds T
 * or is a degenerate single step. */
int cli_sample_opts(const char *cmd, SampleOpts *so, Config *c, const char *sampler, int steps, float eta, const char *spacing,
                    const char *var, int seed, int batch, int no_clip);

/* Class-conditional models: --class, --guidance and --guidance-rescale, the same options and
 * the same parsing for ddpm sample, inpaint, edit and upscale. */
enum { CLI_OPT_CLASS = 0x100, CLI_OPT_GUIDANCE, CLI_OPT_GRESCALE };
#define CLI_COND_OPTIONS                                                                                   \
    {"class", required_argument, 0, CLI_OPT_CLASS}, {"guidance", required_argument, 0, CLI_OPT_GUIDANCE}, \
        {"guidance-rescale", required_argument, 0, CLI_OPT_GRESCALE}
/* The --guidance and --guidance-rescale lines of --help. */
extern const char *CLI_GUIDANCE_HELP;
typedef struct {
    const char *arg;         /* --class (NULL: none) */
    float guidance, rescale; /* < 0: the checkpoint's sample.guidance / sample.guidance_rescale */
} CliCond;
void cli_cond_init(CliCond *cc);
/* One of the CLI_OPT_* codes with its value into cc; 0, or 2 with a message. */
int cli_cond_opt(const char *cmd, CliCond *cc, int o, const char *v);

typedef struct {
    int *want, n_want; /* the classes asked for, in the order given (NULL, 0: no --class) */
    char **names;      /* the model's class names (n_names; NULL without --class) */
    int n_names;
} CliClasses;
/* Apply --guidance/--guidance-rescale to the checkpoint's config c, and with --class: refuse an
 * unconditional model (one line naming `path`), read the class names from f and parse the
 * argument: names (case-insensitive, "did you mean"), indices, a comma list, and "all" (every
 * class) when allow_all. 0, or the exit code with the message printed. */
int cli_classes(const char *path, const StFile *f, Config *c, const CliCond *cc, int allow_all, CliClasses *out);
void cli_classes_free(CliClasses *cl);
/* 1 when sampling these classes needs the conditional and unconditional halves in one
 * forward (the U-Net then needs twice the batch rows); see sample_guided. */
int cli_guided(const Config *c, const CliClasses *cl);

#endif
