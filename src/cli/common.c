/* Shared helpers of the subcommands: option parsing, error printing, and the model of the
 * sampling commands. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ddpm/cli.h"
#include "ddpm/dist.h"
#include "ddpm/err.h"
#include "ddpm/fsio.h"
#include "ddpm/guidance.h"
#include "ddpm/checkpoint.h"
#include "ddpm/sampler.h"
#include "ddpm/gemm.h"

int cli_parse(const char *cmd, int argc, char **argv, const char *shortopts, const struct option *opts, CliOptFn on_opt, void *ctx,
              void (*usage)(FILE *), int *rest) {
    int o, rc;
    optind = 1;
    opterr = 0;
    while ((o = getopt_long(argc, argv, shortopts, opts, NULL)) != -1) {
        if (o == 'h') {
            usage(stdout);
            return CLI_HELP;
        }
        if (o == ':') return cli_usage_error(cmd, "option '%s' needs a value", argv[optind - 1]);
        if (o == '?' || (rc = on_opt(ctx, o, optarg)) == CLI_NOT_MINE) return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
        if (rc) return rc;
    }
    *rest = optind;
    return 0;
}

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

int cli_config_opt(const char *cmd, CliConfigArgs *a, int o, const char *v) {
    if (o == 'c') a->path = v;
    else if (o != 'S') return CLI_NOT_MINE;
    else if (a->n_sets == CLI_MAX_SETS) return cli_usage_error(cmd, "too many --set options (at most %d)", CLI_MAX_SETS);
    else a->sets[a->n_sets++] = v;
    return 0;
}

int cli_config(Config *c, const char *path, const char *const *sets, int n_sets) {
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

const char *CLI_PROMPT_HELP =
    "text-conditioned models (model.text):\n"
    "  --prompt TEXT       what to draw, e.g. \"a small faint sneaker in the top left\"; repeatable:\n"
    "                      -n images of each prompt, one grid row each, captioned with it\n"
    "  --prompts FILE      prompts from FILE, one a line (blank lines skipped)\n"
    "  --negative-prompt TEXT  the unconditional half of guidance (default: the empty caption)\n";

void cli_cond_init(CliCond *cc) {
    memset(cc, 0, sizeof *cc);
    cc->guidance = cc->rescale = -1;
}

int cli_cond_opt(const char *cmd, CliCond *cc, int o, const char *v) {
    if (o == CLI_OPT_CLASS) cc->arg = v;
    else if (o == CLI_OPT_PROMPT) {
        if (cc->n_prompt == CLI_MAX_PROMPTS) return cli_usage_error(cmd, "more than %d --prompt options; use --prompts FILE", CLI_MAX_PROMPTS);
        cc->prompt[cc->n_prompt++] = v;
    } else if (o == CLI_OPT_PROMPTS) cc->prompts_file = v;
    else if (o == CLI_OPT_NEGATIVE) cc->negative = v;
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
    int text = c->model.text.max_len > 0, asks_text = cc->n_prompt || cc->prompts_file || cc->negative;
    if (asks_text && !text) {
        err_set(DDPM_EUSAGE, "--prompt: %s has no text encoder (model.text.max_len = 0); train a text-conditioned model "
                             "(configs/text.json) or drop --prompt/--prompts/--negative-prompt", path);
        return cli_fail(DDPM_EUSAGE);
    }
    if (cc->arg && text) {
        err_set(DDPM_EUSAGE, "--class: %s is a text-conditioned model; describe the image with --prompt \"...\" instead", path);
        return cli_fail(DDPM_EUSAGE);
    }
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
    return ((c->model.class_cond && cl->want) || c->model.cond_image) && guidance_needs_both(c->sample.guidance, c->sample.guidance_rescale);
}

/* --prompt then the lines of --prompts FILE into m->prompts. */
static int read_prompts(CliModel *m, const char *cmd, const CliCond *cc) {
    int cap = cc->n_prompt + 16;
    m->prompts = xcalloc((size_t)cap, sizeof(char *));
    for (int i = 0; i < cc->n_prompt; i++) m->prompts[m->n_prompts++] = xstrdup(cc->prompt[i]);
    if (!cc->prompts_file) return 0;
    size_t len;
    char *buf;
    int rc = file_read_all(cc->prompts_file, &buf, &len);
    if (rc) return cli_fail(rc);
    int line = 0;
    for (char *p = buf, *e; p < buf + len; p = e + 1) {
        e = memchr(p, '\n', (size_t)(buf + len - p));
        if (!e) e = buf + len;
        *e = 0;
        line++;
        if (e > p && e[-1] == '\r') e[-1] = 0;
        char *q = p;
        while (*q == ' ' || *q == '\t') q++;
        if (!*q) continue;
        if (m->n_prompts == CLI_MAX_PROMPTS) {
            free(buf);
            return cli_usage_error(cmd, "%s:%d: more than %d prompts", cc->prompts_file, line, CLI_MAX_PROMPTS);
        }
        if (m->n_prompts == cap) {
            cap *= 2;
            m->prompts = realloc(m->prompts, sizeof(char *) * cap);
            CHECK(m->prompts, "out of memory");
        }
        m->prompts[m->n_prompts++] = xstrdup(q);
    }
    free(buf);
    if (!m->n_prompts) return cli_usage_error(cmd, "%s: no prompt in it (one prompt a line)", cc->prompts_file);
    return 0;
}

/* Encode one prompt strictly (an unknown word is one line with a suggestion, exit 2). */
static int encode_prompt(const UNet *u, const char *what, const char *prompt, int *tok, uint8_t *keep) {
    int L = u->text_L, nt;
    float *mask = xmalloc(sizeof(float) * L);
    char *dropped = NULL;
    int rc = text_encode(&u->vocab, prompt, L, tok, mask, &nt, &dropped, 1);
    if (rc) {
        free(mask);
        char msg[512];
        snprintf(msg, sizeof msg, "%s", err_msg());
        err_set(rc, "%s \"%s\": %s", what, prompt, msg);
        return cli_fail(rc);
    }
    for (int j = 0; j < L; j++) keep[j] = mask[j] > 0;
    if (dropped) fprintf(stderr, "ddpm: warning: %s \"%s\" is longer than model.text.max_len = %d tokens: \"%s\" dropped\n", what, prompt, L, dropped);
    free(dropped), free(mask);
    return 0;
}

void cli_model_call(const CliModel *m, SampleOpts *so, int first) {
    so->classes = m->cls ? m->cls + first : NULL;
    so->text_tok = m->tok ? m->tok + (size_t)first * m->u.text_L : NULL;
    so->text_keep = m->keep ? m->keep + (size_t)first * m->u.text_L : NULL;
    so->neg_tok = m->neg_tok, so->neg_keep = m->neg_keep;
}

/* ---- the sampling commands ---- */

const char *CLI_VERBOSE_HELP = "  --verbose           also print the network evaluations the reverse loop ran, counted\n";
const char *CLI_LORA_HELP = "  --lora FILE[:SCALE] apply a LoRA adapter (lora.safetensors of a LoRA run) at SCALE (default\n"
                            "                      1; 0 = the base model's images); repeatable, adapters add up\n";

void cli_sample_args_init(CliSampleArgs *a, const char *out, int n, int n_max, int seed) {
    memset(a, 0, sizeof *a);
    a->out = out, a->n = n, a->n_max = n_max, a->seed = seed;
    a->steps = a->batch = -1, a->eta = -1;
    cli_cond_init(&a->cond);
}

int cli_sample_opt(const char *cmd, CliSampleArgs *a, int o, const char *v) {
    switch (o) {
    case 'k': a->ckpt = v; return 0;
    case 'r': a->run = v; return 0;
    case 'E': a->no_ema = 1; return 0;
    case 'o': a->out = v; return 0;
    case 's': a->sampler = v; return 0;
    case 'p': a->spacing = v; return 0;
    case 'v': a->var = v; return 0;
    case 'C': a->no_clip = 1; return 0;
    case 'q': a->quiet = 1; return 0;
    case 'V': a->verbose = 1; return 0;
    case 'L': a->no_labels = 1; return 0;
    case 'n': return cli_int(cmd, "-n", v, 1, a->n_max, &a->n);
    case 'K': return cli_int(cmd, "--steps", v, 1, 100000, &a->steps);
    case 'e': return cli_float(cmd, "--eta", v, 0, 1, &a->eta);
    case 'S': return cli_int(cmd, "--seed", v, 0, 2147483647, &a->seed);
    case 'b': return cli_int(cmd, "--batch", v, 1, 4096, &a->batch);
    case 'T': return cli_int(cmd, "--trajectory", v, 2, 1000, &a->traj);
    case 'j': return cli_int(cmd, "--threads", v, 1, 1024, &a->threads);
    case CLI_OPT_CLASS: case CLI_OPT_GUIDANCE: case CLI_OPT_GRESCALE: case CLI_OPT_PROMPT: case CLI_OPT_PROMPTS:
    case CLI_OPT_NEGATIVE: return cli_cond_opt(cmd, &a->cond, o, v);
    case CLI_OPT_LORA:
        if (a->n_lora == CLI_MAX_LORA) return cli_usage_error(cmd, "--lora: at most %d adapters", CLI_MAX_LORA);
        a->lora[a->n_lora++] = v;
        return 0;
    default: return CLI_NOT_MINE;
    }
}

/* Most recently modified runs/<x>/latest.safetensors. */
static int find_latest_run(char *out, size_t n) {
    DIR *d = opendir("runs");
    if (!d) return 0;
    struct dirent *e;
    time_t best = 0;
    int found = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[1024];
        struct stat st;
        snprintf(p, sizeof p, "runs/%s/latest.safetensors", e->d_name);
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode) && (!found || st.st_mtime > best)) {
            best = st.st_mtime, found = 1;
            snprintf(out, n, "%s", p);
        }
    }
    closedir(d);
    return found;
}

enum { STAGE_CLASSES = 1, STAGE_SCHEDULE, STAGE_UNET };

int cli_model_open(CliModel *m, const char *cmd, const CliSampleArgs *a, int n_inputs) {
    memset(m, 0, sizeof *m);
    if (a->ckpt) snprintf(m->path, sizeof m->path, "%s", a->ckpt);
    else if (a->run) snprintf(m->path, sizeof m->path, "%s/latest.safetensors", a->run);
    else if (n_inputs > 0) return cli_usage_error(cmd, "no model given: pass --ckpt FILE or --run DIR");
    else if (!find_latest_run(m->path, sizeof m->path)) {
        err_set(DDPM_EUSAGE, "no model given and no runs/*/latest.safetensors here; train one (make demo) or pass --ckpt FILE");
        return cli_fail(DDPM_EUSAGE);
    }
    threads_set(a->threads);
    StFile f;
    Config *c = &m->c;
    int rc = ckpt_open(&f, m->path, c);
    if (rc) return cli_fail(rc);
    /* the classes asked for: with --class, a->n images of each (synthesis) or one class for
     * all inputs or one per input */
    if ((rc = cli_classes(m->path, &f, c, &a->cond, n_inputs == 0, &m->cl))) goto fail;
    m->stage = STAGE_CLASSES;
    if ((a->cond.n_prompt || a->cond.prompts_file) && (rc = read_prompts(m, cmd, &a->cond))) goto fail;
    int n_want = m->cl.want ? m->cl.n_want : m->n_prompts ? m->n_prompts : 1;
    if (n_inputs > 0 && m->n_prompts > 1 && m->n_prompts != n_inputs) {
        rc = cli_usage_error(cmd, "%d prompts for %d input%s: give one prompt for all, or one per input", m->n_prompts, n_inputs,
                             n_inputs == 1 ? "" : "s");
        goto fail;
    }
    if (n_inputs > 0 && m->cl.want && n_want != 1 && n_want != n_inputs) {
        rc = cli_usage_error(cmd, "--class '%s' names %d classes for %d input%s: give one class for all, or one per input", a->cond.arg,
                             n_want, n_inputs, n_inputs == 1 ? "" : "s");
        goto fail;
    }
    if ((rc = cli_sample_opts(cmd, &m->so, c, a->sampler, a->steps, a->eta, a->spacing, a->var, a->seed, a->batch, a->no_clip)))
        goto fail;
    if (n_inputs == 0 && (long)a->n * n_want > 100000) {
        rc = cli_usage_error(cmd, "-n %d x %d classes is more than 100000 images", a->n, n_want);
        goto fail;
    }
    m->total = a->n * (n_inputs > 0 ? n_inputs : n_want);
    if (m->cl.want) { /* image g: result g % n of input (or class row) g / n */
        m->cls = xmalloc(sizeof(int) * m->total);
        for (int g = 0; g < m->total; g++) m->cls[g] = m->cl.want[n_want == 1 ? 0 : g / a->n];
    }
    if ((rc = schedule_init(&m->s, (ScheduleKind)schedule_kind(c->diffusion.schedule), c->diffusion.T, c->diffusion.beta_start,
                            c->diffusion.beta_end, c->diffusion.cosine_s))) {
        rc = cli_fail(rc);
        goto fail;
    }
    m->stage = STAGE_SCHEDULE;
    const char *prefix;
    m->weights = ckpt_pick_weights(&f, a->no_ema, &prefix);
    if (m->weights == CKPT_NO_EMA) fprintf(stderr, "ddpm: %s holds no EMA weights; using its raw weights\n", m->path);
    m->B = c->sample.batch < m->total ? c->sample.batch : m->total;
    int guided = cli_guided(c, &m->cl) ||
                 (m->n_prompts && guidance_needs_both(c->sample.guidance, c->sample.guidance_rescale));
    if ((rc = unet_init(&m->u, c, guided ? 2 * m->B : m->B, 0))) {
        rc = cli_fail(rc);
        goto fail;
    }
    m->stage = STAGE_UNET;
    if ((rc = ckpt_load_params(&f, prefix, &m->u, m->u.params)) || (rc = ckpt_load_vocab(&f, &m->u))) {
        rc = cli_fail(rc);
        goto fail;
    }
    if (!a->n_lora && st_meta(&f, "lora_base_sha256") && !a->quiet)
        fprintf(stderr, "ddpm: note: %s is the checkpoint of a LoRA run: these are its frozen base weights; add --lora with the "
                        "run's lora.safetensors for the adapted model\n", m->path);
    if (a->n_lora) {
        for (int i = 0; i < a->n_lora && !rc; i++) rc = lora_stack_add(&m->lora, a->lora[i]);
        if (!rc) {
            LoraBase *b = unet_lora_bases(&m->u, m->u.params);
            char hex[65];
            lora_base_sha256(hex, b, m->u.nP, c);
            rc = lora_stack_check(&m->lora, b, m->u.nP, hex);
            free(b);
        }
        if (!rc) rc = unet_lora_attach_stack(&m->u, &m->lora);
        if (rc) rc = cli_fail(rc);
        if (rc) goto fail;
    }
    unet_fix_weights(&m->u, 1); /* loaded: from here on only forwards */
    if (m->n_prompts) { /* image g: prompt g / n (synthesis rows), or of input g / n */
        int L = m->u.text_L, np = m->n_prompts;
        int *pt = xmalloc(sizeof(int) * np * L);
        uint8_t *pk = xmalloc((size_t)np * L);
        for (int k = 0; k < np && !rc; k++) rc = encode_prompt(&m->u, "--prompt", m->prompts[k], pt + (size_t)k * L, pk + (size_t)k * L);
        if (!rc) {
            m->tok = xmalloc(sizeof(int) * (size_t)m->total * L);
            m->keep = xmalloc((size_t)m->total * L);
            for (int g = 0; g < m->total; g++) {
                int k = np == 1 ? 0 : g / a->n;
                memcpy(m->tok + (size_t)g * L, pt + (size_t)k * L, sizeof(int) * L);
                memcpy(m->keep + (size_t)g * L, pk + (size_t)k * L, (size_t)L);
            }
        }
        free(pt), free(pk);
        if (rc) goto fail;
    }
    if (a->cond.negative) {
        m->neg_tok = xmalloc(sizeof(int) * m->u.text_L);
        m->neg_keep = xmalloc((size_t)m->u.text_L);
        if ((rc = encode_prompt(&m->u, "--negative-prompt", a->cond.negative, m->neg_tok, m->neg_keep))) goto fail;
    }
fail:
    st_free(&f);
    return rc;
}

void cli_model_close(CliModel *m) {
    if (m->stage >= STAGE_UNET) unet_free(&m->u);
    lora_stack_free(&m->lora);
    if (m->stage >= STAGE_SCHEDULE) schedule_free(&m->s);
    cli_classes_free(&m->cl);
    free(m->cls);
    for (int i = 0; i < m->n_prompts; i++) free(m->prompts[i]);
    free(m->prompts), free(m->tok), free(m->keep), free(m->neg_tok), free(m->neg_keep);
    memset(m, 0, sizeof *m);
}

int cli_out_dir(const char *dir) {
    int rc = mkdir_p(dir);
    if (rc) return cli_fail(rc);
    char probe[1100];
    snprintf(probe, sizeof probe, "%s/.ddpm_write_test", dir);
    if ((rc = atomic_write(probe, "", 0))) return cli_fail(rc);
    unlink(probe);
    return 0;
}
