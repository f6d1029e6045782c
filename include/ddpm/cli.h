/* cli: one function per subcommand (src/cli/<name>.c). Each returns the process exit
 * code: 0 success, 1 runtime failure, 2 usage or config error; errors are printed by
 * cli_fail() as one line on stderr. */
#ifndef DDPM_CLI_H
#define DDPM_CLI_H

#include <getopt.h>
#include <stdio.h>

#include "ddpm/safetensors.h"
#include "ddpm/config.h"
#include "ddpm/diffusion.h"
#include "ddpm/lora.h"
#include "ddpm/checkpoint.h"
#include "ddpm/sampler.h"
#include "ddpm/unet.h"

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
int cmd_restore(int argc, char **argv);
int cmd_merge(int argc, char **argv);

/* A command's options, parsed as every command parses them: getopt_long over argv with
 * `shortopts` and `opts`; each option's code and value (NULL for a flag) go to
 * on_opt(ctx, code, value), which returns 0, an exit code, or CLI_HELP to stop with success
 * (e.g. after printing what was asked). -h/--help (code 'h') prints usage on stdout and
 * returns CLI_HELP; a missing value or an unknown option is a usage error that names it.
 * Returns 0 with *rest = the index of the first argument that is not an option. A command
 * does `if ((rc = cli_parse(...))) return rc == CLI_HELP ? 0 : rc;`. */
enum { CLI_HELP = -1 };
typedef int (*CliOptFn)(void *ctx, int code, const char *value);
int cli_parse(const char *cmd, int argc, char **argv, const char *shortopts, const struct option *opts, CliOptFn on_opt, void *ctx,
              void (*usage)(FILE *), int *rest);

/* Print "ddpm: <err_msg()>" and return rc (for `return cli_fail(rc);`). */
int cli_fail(int rc);
/* Usage error: print "ddpm <cmd>: <msg>" and "Try 'ddpm <cmd> --help'." Returns 2. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Parse an int / float option value strictly (whole string, range). 0 ok, 2 on error
 * (message printed). */
int cli_int(const char *cmd, const char *opt, const char *s, long lo, long hi, int *out);
int cli_float(const char *cmd, const char *opt, const char *s, double lo, double hi, float *out);
/* -c/--config FILE and --set KEY=VALUE (repeatable), as info, train and bench take them. */
#define CLI_CONFIG_OPTIONS {"config", required_argument, 0, 'c'}, {"set", required_argument, 0, 'S'}
#define CLI_MAX_SETS 64
typedef struct {
    const char *path;                 /* --config (NULL: none) */
    const char *sets[CLI_MAX_SETS];   /* the --set assignments, in order */
    int n_sets;
} CliConfigArgs;
/* 'c' or 'S' into a: 0, or 2 with a message (too many --set); CLI_NOT_MINE for another code. */
int cli_config_opt(const char *cmd, CliConfigArgs *a, int code, const char *value);
/* Load the config from `path` (NULL = defaults) and apply the --set assignments. */
int cli_config(Config *c, const char *path, const char *const *sets, int n_sets);

/* Check --sampler/--spacing/--var names (NULL = not given); 0 or 2 with a message. */
int cli_check_sampler(const char *cmd, const char *sampler, const char *spacing, const char *var);
/* Apply the sampling options given on the command line (NULL / negative = not given) to the
 * config's sample section and derive the SampleOpts; 2 with a message when --steps exceeds T
 * or is a degenerate single step. */
int cli_sample_opts(const char *cmd, SampleOpts *so, Config *c, const char *sampler, int steps, float eta, const char *spacing,
                    const char *var, int seed, int batch, int no_clip);

/* Class-conditional models: --class, --guidance and --guidance-rescale, the same options and
 * the same parsing for ddpm sample, inpaint, edit and upscale. */
enum { CLI_OPT_CLASS = 0x100, CLI_OPT_GUIDANCE, CLI_OPT_GRESCALE, CLI_OPT_LORA, CLI_OPT_PROMPT, CLI_OPT_PROMPTS, CLI_OPT_NEGATIVE };
#define CLI_COND_OPTIONS                                                                                   \
    {"class", required_argument, 0, CLI_OPT_CLASS}, {"guidance", required_argument, 0, CLI_OPT_GUIDANCE}, \
        {"guidance-rescale", required_argument, 0, CLI_OPT_GRESCALE},                                     \
        {"prompt", required_argument, 0, CLI_OPT_PROMPT}, {"prompts", required_argument, 0, CLI_OPT_PROMPTS}, \
        {"negative-prompt", required_argument, 0, CLI_OPT_NEGATIVE}
/* The --prompt, --prompts and --negative-prompt lines of --help. */
extern const char *CLI_PROMPT_HELP;
#define CLI_MAX_PROMPTS 1024
/* The --guidance and --guidance-rescale lines of --help. */
extern const char *CLI_GUIDANCE_HELP;
typedef struct {
    const char *arg;         /* --class (NULL: none) */
    float guidance, rescale; /* < 0: the checkpoint's sample.guidance / sample.guidance_rescale */
    const char *prompt[CLI_MAX_PROMPTS]; /* --prompt, in the order given */
    int n_prompt;
    const char *prompts_file; /* --prompts FILE: one prompt a line (NULL: none) */
    const char *negative;     /* --negative-prompt (NULL: the empty caption) */
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

/* ---- what ddpm sample, inpaint, edit and upscale share: their options and the model ---- */

#define CLI_MAX_LORA 16
/* The options of the sampling commands, as parsed (NULL / negative: not given, the
 * checkpoint's sample.* value is used). */
typedef struct {
    const char *ckpt, *run;               /* --ckpt FILE, --run DIR (DIR/latest.safetensors) */
    int no_ema;                           /* --no-ema: the raw weights */
    const char *out;                      /* -o DIR */
    int n, n_max;                         /* -n: images (per class, per input), at most n_max */
    const char *sampler, *spacing, *var;  /* --sampler, --spacing, --var */
    int steps, seed, batch;               /* --steps, --seed, --batch */
    float eta;                            /* --eta */
    int no_clip;                          /* --no-clip */
    int threads, traj;                    /* --threads, --trajectory K frames (0: none) */
    int quiet, verbose, no_labels;        /* --quiet, --verbose, --no-labels */
    CliCond cond;                         /* --class, --guidance, --guidance-rescale */
    const char *lora[CLI_MAX_LORA];       /* --lora FILE[:SCALE], in the order given */
    int n_lora;
} CliSampleArgs;
/* Defaults: out, n (at most n_max) and seed (-1: the checkpoint's); everything else not given. */
void cli_sample_args_init(CliSampleArgs *a, const char *out, int n, int n_max, int seed);
/* The options every sampling command takes (codes handled by cli_sample_opt; ddpm sample
 * also lists CLI_SAMPLE_ONLY_OPTIONS). */
#define CLI_SAMPLE_OPTIONS                                                                                       \
    {"ckpt", required_argument, 0, 'k'}, {"run", required_argument, 0, 'r'}, {"no-ema", no_argument, 0, 'E'},    \
        {"out", required_argument, 0, 'o'}, {"sampler", required_argument, 0, 's'},                              \
        {"steps", required_argument, 0, 'K'}, {"eta", required_argument, 0, 'e'},                                \
        {"spacing", required_argument, 0, 'p'}, {"seed", required_argument, 0, 'S'},                             \
        {"batch", required_argument, 0, 'b'}, {"threads", required_argument, 0, 'j'},                            \
        {"trajectory", required_argument, 0, 'T'}, {"quiet", no_argument, 0, 'q'},                               \
        {"verbose", no_argument, 0, 'V'}, {"no-labels", no_argument, 0, 'L'}, {"help", no_argument, 0, 'h'},     \
        CLI_COND_OPTIONS, {"lora", required_argument, 0, CLI_OPT_LORA}
#define CLI_SAMPLE_ONLY_OPTIONS {"var", required_argument, 0, 'v'}, {"no-clip", no_argument, 0, 'C'}
#define CLI_SAMPLE_SHORTOPTS ":n:o:qh"
/* The --verbose line of --help. */
extern const char *CLI_VERBOSE_HELP;
/* The --lora lines of --help. */
extern const char *CLI_LORA_HELP;
/* One of those options (or -n) into a: 0, 2 with a message, or CLI_NOT_MINE for a code of
 * the command's own options. */
enum { CLI_NOT_MINE = -2 };
int cli_sample_opt(const char *cmd, CliSampleArgs *a, int code, const char *value);

/* A model opened for sampling. */
typedef struct {
    char path[1100];      /* the checkpoint */
    Config c;             /* its config, the command line's sampling options applied */
    Schedule s;
    UNet u;               /* batches of B images (2B network rows when guided) */
    SampleOpts so;        /* the sampler; so.classes is set per call (see cls) */
    CliClasses cl;        /* --class: the classes asked for and the model's names */
    int *cls;             /* class of image g (total), NULL without --class */
    char **prompts;       /* text models: the prompts asked for (--prompt, then --prompts FILE's lines) */
    int n_prompts;
    int *tok;             /* (total, max_len) the encoded prompt of image g; NULL without prompts */
    uint8_t *keep;        /* its padding mask */
    int *neg_tok;         /* (max_len) --negative-prompt encoded (NULL: the empty caption) */
    uint8_t *neg_keep;
    int total, B;         /* images to make; images per forward */
    CkptWeights weights;  /* which weights were loaded */
    LoraStack lora;       /* --lora adapters, attached to u */
    int stage;            /* what is allocated, for cli_model_close */
} CliModel;
/* Open a model for sampling, as every sampling command does: resolve the checkpoint
 * (--ckpt, --run DIR; with neither, for synthesis, the most recently modified
 * runs/x/latest.safetensors), set the threads, read its config and apply the sampling
 * options, apply --guidance and parse --class, build the schedule, pick the EMA weights (an
 * imported model's "weights": "ema" metadata counts) or the raw ones, size the U-Net and load
 * them, then load the --lora adapters, check them against the weights (another shape: exit
 * 2; another base hash: a warning naming both) and attach them.
 *   n_inputs = 0: synthesis (ddpm sample): a->n images, or a->n of each class asked for
 *     (--class all allowed);
 *   n_inputs > 0: that many input images (inpaint, edit, upscale), a->n results each; --class
 *     names one class for all or one per input.
 * 0, or the exit code with the message printed; cli_model_close in both cases. */
int cli_model_open(CliModel *m, const char *cmd, const CliSampleArgs *a, int n_inputs);
/* The per-call conditioning of images first.. into so (classes or encoded prompts). */
void cli_model_call(const CliModel *m, SampleOpts *so, int first);
void cli_model_close(CliModel *m);
/* Create the output folder and check that a file can be written in it (before minutes of
 * sampling). 0 or the exit code (message printed). */
int cli_out_dir(const char *dir);

#endif
