/* cli: one function per subcommand (src/cli/<name>.c). Each returns the process exit
 * code: 0 success, 1 runtime failure, 2 usage or config error; errors are printed by
 * cli_fail() as one line on stderr. */
#ifndef DDPM_CLI_H
#define DDPM_CLI_H

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

#endif
