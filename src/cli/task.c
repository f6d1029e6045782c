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
#include "ddpm/model_io.h"
#include "ddpm/progress.h"
#include "ddpm/tensor.h"

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
    "  -h, --help          this help\n"
    "\n"
    "class-conditional models (model.class_cond), parsed as by ddpm sample:\n"
    "  --class C           a class name (case-insensitive, e.g. sneaker) or an index, for every\n"
    "                      input; or a comma list of one class per input (sneaker,bag)\n";

void task_help(FILE *f) {
    fputs(TASK_COMMON_HELP, f);
    fputs(CLI_GUIDANCE_HELP, f);
}

int task_parse(TaskArgs *a, const char *cmd, int argc, char **argv, const struct option *extra, int n_extra,
               int (*on_extra)(TaskArgs *, int, const char *), void (*usage)(FILE *)) {
    static const struct option common[] = {
        {"ckpt", required_argument, 0, 'k'},    {"run", required_argument, 0, 'r'},     {"no-ema", no_argument, 0, 'E'},
        {"out", required_argument, 0, 'o'},     {"sampler", required_argument, 0, 's'}, {"steps", required_argument, 0, 'K'},
        {"eta", required_argument, 0, 'e'},     {"spacing", required_argument, 0, 'p'}, {"seed", required_argument, 0, 'S'},
        {"batch", required_argument, 0, 'b'},   {"threads", required_argument, 0, 'j'}, {"trajectory", required_argument, 0, 'T'},
        {"quiet", no_argument, 0, 'q'},         {"help", no_argument, 0, 'h'},          {"no-labels", no_argument, 0, 'L'},
        CLI_COND_OPTIONS};
    enum { NC = sizeof common / sizeof common[0] };
    struct option all[NC + 16];
    memcpy(all, common, sizeof common);
    memcpy(all + NC, extra, sizeof(struct option) * n_extra);
    memset(&all[NC + n_extra], 0, sizeof all[0]);
    memset(a, 0, sizeof *a);
    a->cmd = cmd, a->n = 1, a->steps = -1, a->seed = 0, a->batch = -1, a->eta = -1;
    static char out[64];
    snprintf(out, sizeof out, "out/%s", cmd);
    a->out = out;
    cli_cond_init(&a->cond);
    int rc, o;
    optind = 1;
    opterr = 0;
    while ((o = getopt_long(argc, argv, ":n:o:qh", all, NULL)) != -1) {
        switch (o) {
        case 'k': a->ckpt = optarg; break;
        case 'r': a->run = optarg; break;
        case 'E': a->no_ema = 1; break;
        case 'o': a->out = optarg; break;
        case 's': a->sampler = optarg; break;
        case 'p': a->spacing = optarg; break;
        case 'q': a->quiet = 1; break;
        case 'L': draw_set_labels(0); break;
        case CLI_OPT_CLASS: case CLI_OPT_GUIDANCE: case CLI_OPT_GRESCALE:
            if ((rc = cli_cond_opt(cmd, &a->cond, o, optarg))) return rc;
            break;
        case 'n': if ((rc = cli_int(cmd, "-n", optarg, 1, 1000, &a->n))) return rc; break;
        case 'K': if ((rc = cli_int(cmd, "--steps", optarg, 1, 100000, &a->steps))) return rc; break;
        case 'e': if ((rc = cli_float(cmd, "--eta", optarg, 0, 1, &a->eta))) return rc; break;
        case 'S': if ((rc = cli_int(cmd, "--seed", optarg, 0, 2147483647, &a->seed))) return rc; break;
        case 'b': if ((rc = cli_int(cmd, "--batch", optarg, 1, 4096, &a->batch))) return rc; break;
        case 'j': if ((rc = cli_int(cmd, "--threads", optarg, 1, 1024, &a->threads))) return rc; break;
        case 'T': if ((rc = cli_int(cmd, "--trajectory", optarg, 2, 1000, &a->traj))) return rc; break;
        case 'h': usage(stdout); return -1;
        case ':': return cli_usage_error(cmd, "option '%s' needs a value", argv[optind - 1]);
        case '?': return cli_usage_error(cmd, "unknown option '%s'", argv[optind - 1]);
        default: if ((rc = on_extra(a, o, optarg))) return rc;
        }
    }
    if (a->ckpt && a->run) return cli_usage_error(cmd, "give --ckpt or --run, not both");
    if ((rc = cli_check_sampler(cmd, a->sampler, a->spacing, NULL))) return rc;
    a->inputs = argv + optind, a->n_inputs = argc - optind;
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
    char path[1100];
    if (a->ckpt) snprintf(path, sizeof path, "%s", a->ckpt);
    else if (a->run) snprintf(path, sizeof path, "%s/latest.safetensors", a->run);
    else return cli_usage_error(a->cmd, "no model given: pass --ckpt FILE or --run DIR");
    threads_set(a->threads);
    int rc = list_inputs(a, &m->files, &m->n_files);
    if (rc) return rc;
    StFile f;
    if ((rc = ckpt_open(&f, path, &m->c))) return cli_fail(rc);
    if ((rc = cli_classes(path, &f, &m->c, &a->cond, 0, &m->cl))) {
        st_free(&f);
        return rc;
    }
    if (m->cl.want && m->cl.n_want != 1 && m->cl.n_want != m->n_files) {
        st_free(&f);
        return cli_usage_error(a->cmd, "--class '%s' names %d classes for %d input%s: give one class for all, or one per input",
                               a->cond.arg, m->cl.n_want, m->n_files, m->n_files == 1 ? "" : "s");
    }
    if ((rc = cli_sample_opts(a->cmd, &m->so, &m->c, a->sampler, a->steps, a->eta, a->spacing, NULL, a->seed, a->batch, 0))) {
        st_free(&f);
        return rc;
    }
    Config *c = &m->c;
    if ((rc = schedule_init(&m->s, (ScheduleKind)schedule_kind(c->diffusion.schedule), c->diffusion.T, c->diffusion.beta_start,
                            c->diffusion.beta_end, c->diffusion.cosine_s))) {
        st_free(&f);
        return cli_fail(rc);
    }
    int no_ema = a->no_ema;
    if (!no_ema && !st_find(&f, "ema.conv_in.weight")) {
        fprintf(stderr, "ddpm: %s holds no EMA weights; using its raw weights\n", path);
        no_ema = 1;
    }
    int total = m->n_files * a->n;
    if (m->cl.want) {
        m->cls = xmalloc(sizeof(int) * total);
        for (int g = 0; g < total; g++) m->cls[g] = m->cl.want[m->cl.n_want == 1 ? 0 : g / a->n];
    }
    m->B = c->sample.batch < total ? c->sample.batch : total;
    if ((rc = unet_init(&m->u, c, cli_guided(c, &m->cl) ? 2 * m->B : m->B, 0)) || (rc = ckpt_load_params(&f, no_ema ? "" : "ema.", &m->u, m->u.params))) {
        st_free(&f);
        schedule_free(&m->s);
        return cli_fail(rc);
    }
    st_free(&f);
    m->res = m->u.res, m->C = m->u.C_img, m->D = (size_t)m->res * m->res * m->C;
    m->inited = 1;
    if ((rc = mkdir_p(a->out))) return cli_fail(rc);
    char probe[1100];
    snprintf(probe, sizeof probe, "%s/.ddpm_write_test", a->out);
    if ((rc = atomic_write(probe, "", 0))) return cli_fail(rc);
    unlink(probe);
    return 0;
}

void task_close(TaskModel *m) {
    if (m->inited) unet_free(&m->u), schedule_free(&m->s);
    for (int i = 0; i < m->n_files; i++) free(m->files[i]);
    free(m->files);
    free(m->cls);
    cli_classes_free(&m->cl);
    memset(m, 0, sizeof *m);
}

void task_run(TaskArgs *a, TaskModel *m, const SampleTask *task, float *out, float *traj) {
    int n = m->n_files * a->n, R = dist_size(), rank = dist_rank();
    int per = (n + R - 1) / R, first = rank * per, cnt = first >= n ? 0 : (n - first < per ? n - first : per);
    Progress pr;
    progress_init(&pr, a->quiet || rank != 0, 0);
    memset(out, 0, sizeof(float) * n * m->D);
    if (traj) memset(traj, 0, sizeof(float) * n * a->traj * m->D);
    SampleOpts so = m->so;
    so.classes = m->cls ? m->cls + first : NULL;
    m->n_trans = task->n_levels - 1;
    if (cnt)
        sample_run(&m->u, &m->s, &so, task, cnt, first, m->B, out + (size_t)first * m->D, traj ? a->traj : 0,
                   traj ? traj + (size_t)first * a->traj * m->D : NULL, on_progress, &pr);
    progress_end(&pr);
    dist_allreduce_f32(out, (size_t)n * m->D); /* each image is zero except on its rank */
    if (traj) dist_allreduce_f32(traj, (size_t)n * a->traj * m->D);
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
    int res = m->res, C = m->C, k = a->n, nf = n_lead + k, rc = 0;
    size_t D = m->D;
    float *frames = xmalloc(sizeof(float) * nf * D);
    /* captions: the lead frames', then "result 1".."result n"; the trajectory's steps */
    char **cells = xmalloc(sizeof(char *) * nf), *rcap = xmalloc((size_t)k * 24);
    for (int f = 0; f < nf; f++) cells[f] = f < n_lead ? (char *)lead_cap[f] : rcap + (size_t)(f - n_lead) * 24;
    for (int r = 0; r < k; r++) snprintf(rcap + (size_t)r * 24, 24, k == 1 ? "result" : "result %d", r + 1);
    char **tcap = traj && m->n_trans > 0 ? draw_trajectory_captions(a->traj, m->n_trans) : NULL;
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
        if (m->cls)
            L += (size_t)snprintf(ttl + L, sizeof ttl - L, " | %s, guidance %g", m->cl.names[m->cls[i * k]], m->c.sample.guidance);
        snprintf(ttl + L, sizeof ttl - L, " | seed %d", (int)m->so.seed);
        DrawCaptions cap = {.title = ttl, .cell = (const char *const *)cells};
        snprintf(p, sizeof p, "%s/%s_strip.png", a->out, base);
        rc = draw_grid_png(p, frames, nf, res, res, C, nf, 0, &cap);
        for (int r = 0; r < k && !rc; r++) {
            uint8_t *one = xmalloc(D);
            const float *im = out + ((size_t)i * k + r) * D;
            for (size_t j = 0; j < D; j++) one[j] = image_to_u8(im[j]);
            snprintf(p, sizeof p, "%s/%s_%d.png", a->out, base, r);
            rc = image_write_png(p, one, res, res, C);
            free(one);
            if (!rc && traj) {
                snprintf(p, sizeof p, "%s/%s_%d_traj.png", a->out, base, r);
                rc = draw_grid_png(p, traj + ((size_t)i * k + r) * a->traj * D, a->traj, res, res, C, a->traj, 0, &tc);
            }
        }
    }
    free(frames), free(cells), free(rcap), free(tcap);
    if (!rc)
        printf("%d input%s x %d result%s (%s) in %s/: <name>_strip.png (%s), <name>_<k>.png\n", m->n_files, m->n_files == 1 ? "" : "s", k,
               k == 1 ? "" : "s", sampler_name(m->so.kind), a->out, what);
    return rc ? cli_fail(rc) : 0;
}
