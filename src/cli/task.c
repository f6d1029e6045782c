/* What ddpm inpaint, edit and upscale share: their options, the model, the input images, one
 * run of the reverse loop split across MPI ranks, and the output strips. Each command (its own
 * file) only builds the timestep list and the constraint. */
#include "task.h"

#include <dirent.h>
#include <getopt.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ddpm/dist.h"
#include "ddpm/draw.h"
#include "ddpm/err.h"
#include "ddpm/fsio.h"
#include "ddpm/image.h"
#include "ddpm/checkpoint.h"
#include "ddpm/progress.h"


static const char *TASK_COMMON_HELP =
    "model (EMA weights unless --no-ema):\n"
    "  --ckpt FILE         a checkpoint (.safetensors)\n"
    "  --run DIR           DIR/latest.safetensors\n"
    "  --no-ema            use the raw weights\n"
    "\n"
    "common options:\n"
    "  IMG...              PNG/JPEG files or folders of them; each is converted to the model's\n"
    "                      channels and centre-cropped/resized to its resolution\n"
    "  -o, --out DIR       output folder (default out/<command>)\n"
    "  -n N                results per input (default 1)\n"
    "  --sampler S         ddpm | ddim | dpm++2m (default: the checkpoint's sample.sampler)\n"
    "  --steps K           network evaluations of a full reverse process (see above)\n"
    "  --eta E             DDIM eta\n"
    "  --spacing S         leading | trailing | linspace | quadratic | karras\n"
    "  --seed N            seed; the same command gives byte-identical files (default 0)\n"
    "  --batch B           images per forward pass (default sample.batch)\n"
    "  --threads N         threads (default: all cores)\n"
    "  --trajectory K      also write <name>_<k>_traj.png: K frames from start to result\n"
    "  --no-labels         bare strips (no captions, no scaling); result PNGs are always bare\n"
    "  -q, --quiet         no progress bar\n"
    "%s"
    "  -h, --help          this help\n"
    "\n"
    "class-conditional models (model.class_cond), parsed as by ddpm sample:\n"
    "  --class C           a class name (case-insensitive, e.g. sneaker) or an index, for every\n"
    "                      input; or a comma list of one class per input (sneaker,bag)\n";

void task_help(FILE *f) {
    fprintf(f, TASK_COMMON_HELP, CLI_VERBOSE_HELP);
    fputs(CLI_GUIDANCE_HELP, f);
    fputs(CLI_PROMPT_HELP, f);
    fputs("\nadapters:\n", f);
    fputs(CLI_LORA_HELP, f);
}

/* The command's options after the shared ones. */
typedef struct {
    TaskArgs *a;
    CliOptFn on_opt;
    void *ctx;
} Parse;

static int on_any(void *ctx, int o, const char *v) {
    Parse *p = ctx;
    int rc = cli_sample_opt(p->a->cmd, &p->a->opt, o, v);
    return rc == CLI_NOT_MINE ? p->on_opt(p->ctx, o, v) : rc;
}

int task_parse(TaskArgs *a, const char *cmd, int argc, char **argv, const struct option *opts, CliOptFn on_opt, void *ctx,
               void (*usage)(FILE *)) {
    memset(a, 0, sizeof *a);
    a->cmd = cmd;
    snprintf(a->out_default, sizeof a->out_default, "out/%s", cmd);
    cli_sample_args_init(&a->opt, a->out_default, 1, 1000, 0);
    Parse p = {a, on_opt, ctx};
    int rest, rc = cli_parse(cmd, argc, argv, CLI_SAMPLE_SHORTOPTS, opts, on_any, &p, usage, &rest);
    if (rc) return rc;
    if (a->opt.ckpt && a->opt.run) return cli_usage_error(cmd, "give --ckpt or --run, not both");
    if ((rc = cli_check_sampler(cmd, a->opt.sampler, a->opt.spacing, NULL))) return rc;
    a->inputs = argv + rest, a->n_inputs = argc - rest;
    if (a->n_inputs == 0) return cli_usage_error(cmd, "no input image given");
    return 0;
}

/* Input files: the arguments, folders expanded to their PNG/JPEG files in name order. */
static int cmpstr(const void *x, const void *y) { return strcmp(*(char *const *)x, *(char *const *)y); }

static int list_inputs(TaskArgs *a, char ***files, int *nf) {
    int cap = 16, n = 0;
    char **f = xmalloc(sizeof(char *) * cap);
    for (int i = 0; i < a->n_inputs; i++) {
        struct stat st;
        if (stat(a->inputs[i], &st) != 0) {
            for (int k = 0; k < n; k++) free(f[k]);
            free(f);
            return cli_usage_error(a->cmd, "%s: no such file or folder", a->inputs[i]);
        }
        if (!S_ISDIR(st.st_mode)) {
            if (n == cap) f = realloc(f, sizeof(char *) * (cap *= 2));
            f[n++] = xstrdup(a->inputs[i]);
            continue;
        }
        DIR *d = opendir(a->inputs[i]);
        struct dirent *e;
        int first = n;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.' || !image_has_ext(e->d_name)) continue;
            if (n == cap) f = realloc(f, sizeof(char *) * (cap *= 2));
            size_t L = strlen(a->inputs[i]) + strlen(e->d_name) + 2;
            f[n] = xmalloc(L);
            snprintf(f[n++], L, "%s/%s", a->inputs[i], e->d_name);
        }
        if (d) closedir(d);
        qsort(f + first, n - first, sizeof(char *), cmpstr);
        if (n == first) {
            for (int k = 0; k < n; k++) free(f[k]);
            free(f);
            return cli_usage_error(a->cmd, "%s: no PNG or JPEG files in this folder", a->inputs[i]);
        }
    }
    *files = f, *nf = n;
    return 0;
}

int task_load_image(TaskArgs *a, const char *path, int size, int C, float *out, int *noted) {
    Image im;
    if (image_load(&im, path, C)) {
        /* an input the user named: a usage error, with the loader's reason */
        err_set(DDPM_EUSAGE, "%s: %s", a->cmd, err_msg());
        return DDPM_EUSAGE;
    }
    uint8_t *px = xmalloc((size_t)size * size * C);
    if ((im.w != size || im.h != size) && noted && !*noted) {
        fprintf(stderr, "ddpm %s: %s is %dx%d: inputs are centre-cropped and resized to %dx%d\n", a->cmd, path, im.w, im.h, size,
                size);
        *noted = 1;
    }
    image_crop_resize(px, im.pix, im.w, im.h, C, size);
    for (size_t j = 0; j < (size_t)size * size * C; j++) out[j] = image_to_float(px[j]);
    free(px);
    image_free(&im);
    return 0;
}

static void on_progress(void *ctx, long done, long total) { progress_bar(ctx, "run", done, total, "img-evals", NULL); }

int task_open(TaskArgs *a, TaskModel *m) {
    memset(m, 0, sizeof *m);
    int rc = list_inputs(a, &m->files, &m->n_files);
    if (rc || (rc = cli_model_open(&m->cm, a->cmd, &a->opt, m->n_files))) return rc;
    m->res = m->cm.u.res, m->C = m->cm.u.C_img, m->D = (size_t)m->res * m->res * m->C;
    if (a->prepare && (rc = a->prepare(m, a->prepare_ctx))) return rc;
    return cli_out_dir(a->opt.out);
}

void task_close(TaskModel *m) {
    cli_model_close(&m->cm);
    for (int i = 0; i < m->n_files; i++) free(m->files[i]);
    free(m->files);
    memset(m, 0, sizeof *m);
}

void task_run(TaskArgs *a, TaskModel *m, const SampleTask *task, float *out, float *traj) {
    CliModel *cm = &m->cm;
    int n = cm->total, K = a->opt.traj, first, cnt;
    dist_share(n, &first, &cnt);
    Progress pr;
    progress_init(&pr, a->opt.quiet || dist_rank() != 0, 0);
    memset(out, 0, sizeof(float) * n * m->D);
    if (traj) memset(traj, 0, sizeof(float) * n * K * m->D);
    SampleOpts so = cm->so;
    cli_model_call(cm, &so, first);
    m->n_trans = task->n_levels - 1;
    double evals = 0;
    if (cnt)
        evals = (double)sample_run(&cm->u, &cm->s, &so, task, cnt, first, cm->B, out + (size_t)first * m->D, traj ? K : 0,
                                   traj ? traj + (size_t)first * K * m->D : NULL, on_progress, &pr);
    progress_end(&pr);
    dist_allreduce_f64(&evals, 1);
    if (a->opt.verbose && dist_rank() == 0)
        fprintf(stderr, "ddpm %s: network evaluations (counted): %.0f in all, %.0f per image\n", a->cmd, evals, evals / n);
    dist_allreduce_f32(out, (size_t)n * m->D); /* each image is zero except on its rank */
    if (traj) dist_allreduce_f32(traj, (size_t)n * K * m->D);
}

/* "dir/name.png" -> "name" */
static void stem(char *out, size_t n, const char *path) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    snprintf(out, n, "%s", b);
    char *d = strrchr(out, '.');
    if (d && d != out) *d = 0;
}

int task_write(TaskArgs *a, TaskModel *m, const float *lead, int n_lead, const char *const *lead_cap, const float *out,
               const float *traj, const char *title, const char *what) {
    if (dist_rank() != 0) return 0;
    int res = m->res, C = m->C, k = a->opt.n, K = a->opt.traj, nf = n_lead + k, rc = 0;
    size_t D = m->D;
    float *frames = xmalloc(sizeof(float) * nf * D);
    /* captions: the lead frames', then "result 1".."result n"; the trajectory's steps */
    char **cells = xmalloc(sizeof(char *) * nf), *rcap = xmalloc((size_t)k * 24);
    for (int f = 0; f < nf; f++) cells[f] = f < n_lead ? (char *)lead_cap[f] : rcap + (size_t)(f - n_lead) * 24;
    for (int r = 0; r < k; r++) snprintf(rcap + (size_t)r * 24, 24, k == 1 ? "result" : "result %d", r + 1);
    char **tcap = traj && m->n_trans > 0 ? draw_trajectory_captions(K, m->n_trans) : NULL;
    if (tcap && m->traj_start) snprintf(tcap[0], 32, "%s", m->traj_start);
    DrawCaptions tc = {.cell = (const char *const *)tcap};
    for (int i = 0; i < m->n_files && !rc; i++) {
        char base[512], p[1200], ttl[512];
        stem(base, sizeof base, m->files[i]);
        for (int j = 0; j < i; j++) { /* two inputs with the same name: keep both */
            char o[512];
            stem(o, sizeof o, m->files[j]);
            if (!strcmp(o, base)) {
                size_t L = strlen(base);
                snprintf(base + L, sizeof base - L, "_%d", i);
                break;
            }
        }
        /* strip: the lead frames (original, masked, ...) then the results, captioned */
        memcpy(frames, lead + (size_t)i * n_lead * D, sizeof(float) * n_lead * D);
        memcpy(frames + (size_t)n_lead * D, out + (size_t)i * k * D, sizeof(float) * k * D);
        size_t L = (size_t)snprintf(ttl, sizeof ttl, "%s", title);
        if (m->cm.cls)
            L += (size_t)snprintf(ttl + L, sizeof ttl - L, " | %s, guidance %g", m->cm.cl.names[m->cm.cls[i * k]], m->cm.c.sample.guidance);
        snprintf(ttl + L, sizeof ttl - L, " | seed %d", (int)m->cm.so.seed);
        DrawCaptions cap = {.title = ttl, .cell = (const char *const *)cells};
        snprintf(p, sizeof p, "%s/%s_strip.png", a->opt.out, base);
        rc = draw_grid_png(p, frames, nf, res, res, C, nf, 0, a->opt.no_labels ? NULL : &cap);
        for (int r = 0; r < k && !rc; r++) {
            uint8_t *one = xmalloc(D);
            const float *im = out + ((size_t)i * k + r) * D;
            for (size_t j = 0; j < D; j++) one[j] = image_to_u8(im[j]);
            snprintf(p, sizeof p, "%s/%s_%d.png", a->opt.out, base, r);
            rc = image_write_png(p, one, res, res, C);
            free(one);
            if (!rc && traj) {
                snprintf(p, sizeof p, "%s/%s_%d_traj.png", a->opt.out, base, r);
                rc = draw_grid_png(p, traj + ((size_t)i * k + r) * K * D, K, res, res, C, K, 0, a->opt.no_labels ? NULL : &tc);
            }
        }
    }
    free(frames), free(cells), free(rcap), free(tcap);
    if (!rc)
        printf("%d input%s x %d result%s (%s) in %s/: <name>_strip.png (%s), <name>_<k>.png\n", m->n_files, m->n_files == 1 ? "" : "s", k,
               k == 1 ? "" : "s", sampler_name(m->cm.so.kind), a->opt.out, what);
    return rc ? cli_fail(rc) : 0;
}
