/* ddpm sample: images from a checkpoint, DDPM, DDIM or DPM-Solver++(2M), per-image seeds. */
#include <dirent.h>
#include <getopt.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ddpm/cli.h"
#include "ddpm/dist.h"
#include "ddpm/draw.h"
#include "ddpm/err.h"
#include "ddpm/fsio.h"
#include "ddpm/image.h"
#include "ddpm/model_io.h"
#include "ddpm/progress.h"
#include "ddpm/sampler.h"
#include "ddpm/tensor.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddpm sample [-n N] [-o DIR] [options]\n"
            "\n"
            "Generates images by reversing the diffusion from pure noise with a trained model.\n"
            "Writes DIR/000000.png ... and DIR/grid.png. The model's config comes from the checkpoint.\n"
            "\n"
            "which model (EMA weights unless --no-ema):\n"
            "  --ckpt FILE         a checkpoint (.safetensors)\n"
            "  --run DIR           DIR/latest.safetensors\n"
            "                      (neither: the most recently modified runs/*/latest.safetensors)\n"
            "  --no-ema            use the raw weights instead of the EMA\n"
            "\n"
            "options:\n"
            "  -n N                number of images (default 16)\n"
            "  -o, --out DIR       output folder (default out/)\n"
            "  --sampler S         ddpm (ancestral, all T steps) | ddim | dpm++2m (DPM-Solver++(2M), fewest\n"
            "                      evaluations for the quality) (default: the config's sample.sampler)\n"
            "  --steps K           network evaluations per image (default sample.steps; ddpm: T)\n"
            "  --eta E             DDIM eta, 0 = deterministic (default sample.eta)\n"
            "  --spacing S         timesteps: leading | trailing | linspace | quadratic | karras\n"
            "                      (default sample.spacing; auto = linspace, measured best)\n"
            "  --var V             DDPM variance: small (posterior) | large (beta_t)\n"
            "  --no-clip           do not clip the predicted x0 to [-1, 1]\n"
            "  --seed N            seed; image i always gets the same noise (default sample.seed)\n"
            "  --batch B           images per forward pass (default sample.batch)\n"
            "  --trajectory K      also write DIR/NNNNNN_traj.png: K frames from noise to image\n"
            "\n"
            "class-conditional models (model.class_cond):\n"
            "  --class C           a class name (case-insensitive, e.g. sneaker), an index, a comma list\n"
            "                      (sneaker,bag) or all: -n images of each, one grid row per class;\n"
            "                      DIR/classes.csv records each file's class. Without --class: no class\n"
            "%s"
            "\n"
            "  --threads N         threads (default: all cores)\n"
            "  --no-labels         bare grid.png and trajectory strips (no captions, no scaling)\n"
            "  -q, --quiet         no progress bar\n"
            "  -h, --help          this help\n",
            CLI_GUIDANCE_HELP);
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

/* DIR/classes.csv: "NNNNNN.png,class_index" per image, atomically. */
static int write_classes_csv(const char *path, const int *cls, int n) {
    size_t cap = (size_t)n * 24 + 1, len = 0;
    char *buf = xmalloc(cap);
    for (int i = 0; i < n; i++) len += (size_t)snprintf(buf + len, cap - len, "%06d.png,%d\n", i, cls[i]);
    int rc = atomic_write(path, buf, len);
    free(buf);
    return rc;
}

static void on_progress(void *ctx, long done, long total) { progress_bar(ctx, "sample", done, total, "img-steps", NULL); }

int cmd_sample(int argc, char **argv) {
    static const struct option opts[] = {
        {"ckpt", required_argument, 0, 'k'},    {"run", required_argument, 0, 'r'},     {"no-ema", no_argument, 0, 'E'},
        {"out", required_argument, 0, 'o'},     {"sampler", required_argument, 0, 's'}, {"steps", required_argument, 0, 'K'},
        {"eta", required_argument, 0, 'e'},     {"spacing", required_argument, 0, 'p'}, {"var", required_argument, 0, 'v'},
        {"no-clip", no_argument, 0, 'C'},       {"seed", required_argument, 0, 'S'},    {"batch", required_argument, 0, 'b'},
        {"trajectory", required_argument, 0, 'T'}, {"threads", required_argument, 0, 'j'}, {"quiet", no_argument, 0, 'q'},
        CLI_COND_OPTIONS,
        {"no-labels", no_argument, 0, 'L'},     {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    CliCond cc;
    cli_cond_init(&cc);
    const char *ckpt = NULL, *run = NULL, *out = "out", *sampler = NULL, *spacing = NULL, *var = NULL;
    int n = 16, steps = -1, seed = -1, batch = -1, traj = 0, threads = 0, no_ema = 0, no_clip = 0, quiet = 0, rc, o;
    float eta = -1;
    optind = 1;
    opterr = 0;
    while ((o = getopt_long(argc, argv, ":n:o:qh", opts, NULL)) != -1) {
        switch (o) {
        case 'k': ckpt = optarg; break;
        case 'r': run = optarg; break;
        case 'E': no_ema = 1; break;
        case 'o': out = optarg; break;
        case 's': sampler = optarg; break;
        case 'p': spacing = optarg; break;
        case 'v': var = optarg; break;
        case 'C': no_clip = 1; break;
        case 'q': quiet = 1; break;
        case 'L': draw_set_labels(0); break;
        case 'n': if ((rc = cli_int("sample", "-n", optarg, 1, 100000, &n))) return rc; break;
        case 'K': if ((rc = cli_int("sample", "--steps", optarg, 1, 100000, &steps))) return rc; break;
        case 'e': if ((rc = cli_float("sample", "--eta", optarg, 0, 1, &eta))) return rc; break;
        case 'S': if ((rc = cli_int("sample", "--seed", optarg, 0, 2147483647, &seed))) return rc; break;
        case 'b': if ((rc = cli_int("sample", "--batch", optarg, 1, 4096, &batch))) return rc; break;
        case 'T': if ((rc = cli_int("sample", "--trajectory", optarg, 2, 1000, &traj))) return rc; break;
        case 'j': if ((rc = cli_int("sample", "--threads", optarg, 1, 1024, &threads))) return rc; break;
        case CLI_OPT_CLASS: case CLI_OPT_GUIDANCE: case CLI_OPT_GRESCALE:
            if ((rc = cli_cond_opt("sample", &cc, o, optarg))) return rc;
            break;
        case 'h': usage(stdout); return 0;
        case ':': return cli_usage_error("sample", "option '%s' needs a value", argv[optind - 1]);
        default: return cli_usage_error("sample", "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return cli_usage_error("sample", "unexpected argument '%s'", argv[optind]);
    if (ckpt && run) return cli_usage_error("sample", "give --ckpt or --run, not both");
    if ((rc = cli_check_sampler("sample", sampler, spacing, var))) return rc;
    char path[1100];
    if (ckpt) snprintf(path, sizeof path, "%s", ckpt);
    else if (run) snprintf(path, sizeof path, "%s/latest.safetensors", run);
    else if (!find_latest_run(path, sizeof path)) {
        err_set(DDPM_EUSAGE, "no model given and no runs/*/latest.safetensors here; train one (make demo) or pass --ckpt FILE");
        return cli_fail(DDPM_EUSAGE);
    }
    threads_set(threads);

    Config c;
    StFile f;
    if ((rc = ckpt_open(&f, path, &c))) return cli_fail(rc);
    /* the classes asked for: -n images of each, one grid row per class */
    CliClasses cl;
    if ((rc = cli_classes(path, &f, &c, &cc, 1, &cl))) {
        st_free(&f);
        return rc;
    }
    int *want = cl.want, n_want = cl.n_want, total = n;
    char **class_names = cl.names;
    SampleOpts so;
    if ((rc = cli_sample_opts("sample", &so, &c, sampler, steps, eta, spacing, var, seed, batch, no_clip))) goto early;
    if (want && (long)n * n_want > 100000) {
        rc = cli_usage_error("sample", "-n %d x %d classes is more than 100000 images", n, n_want);
        goto early;
    }
    if (want) total = n * n_want;
    Schedule s;
    UNet u;
    int B = c.sample.batch < total ? c.sample.batch : total;
    int *img_cls = NULL;
    if (want) {
        img_cls = xmalloc(sizeof(int) * total);
        for (int i = 0; i < total; i++) img_cls[i] = want[i / n];
        so.classes = img_cls;
    }
    if ((rc = schedule_init(&s, (ScheduleKind)schedule_kind(c.diffusion.schedule), c.diffusion.T, c.diffusion.beta_start,
                            c.diffusion.beta_end, c.diffusion.cosine_s))) {
        rc = cli_fail(rc);
        free(img_cls);
        goto early;
    }
    /* an imported model holds its EMA weights under the raw names (metadata "weights": "ema") */
    const char *wmeta = st_meta(&f, "weights"), *prefix = "ema.";
    if (!no_ema && !st_find(&f, "ema.conv_in.weight")) {
        if (wmeta && !strcmp(wmeta, "ema")) {
            prefix = "";
        } else {
            fprintf(stderr, "ddpm: %s holds no EMA weights; sampling with its raw weights\n", path);
            no_ema = 1;
        }
    }
    int guided = cli_guided(&c, &cl);
    int built = 0;
    if ((rc = unet_init(&u, &c, guided ? 2 * B : B, 0)) || (built = 1, rc = ckpt_load_params(&f, no_ema ? "" : prefix, &u, u.params))) {
        if (built) unet_free(&u);
        st_free(&f);
        schedule_free(&s);
        free(img_cls);
        cli_classes_free(&cl);
        return cli_fail(rc);
    }
    st_free(&f);
    if ((rc = mkdir_p(out))) goto done;
    {
        /* probe that the folder is writable before spending minutes sampling */
        char probe[1100];
        snprintf(probe, sizeof probe, "%s/.ddpm_write_test", out);
        if ((rc = atomic_write(probe, "", 0))) goto done;
        unlink(probe);
    }
    /* ranks take contiguous shares of the images; rank r writes its own files */
    int R = dist_size(), rank = dist_rank();
    int per = (total + R - 1) / R, first = rank * per, cnt = first >= total ? 0 : (total - first < per ? total - first : per);
    if (img_cls) so.classes = img_cls + first;
    size_t D = (size_t)u.res * u.res * u.C_img;
    float *imgs = xcalloc((size_t)total * D, sizeof(float));
    float *tr = traj ? xmalloc(sizeof(float) * (size_t)(cnt ? cnt : 1) * traj * D) : NULL;
    Progress pr;
    progress_init(&pr, quiet || rank != 0, 0);
    double t0 = now_s();
    if (cnt) sample_images(&u, &s, &so, cnt, first, B, imgs + (size_t)first * D, traj, tr, on_progress, &pr);
    progress_end(&pr);
    char gd[96] = ""; /* class-conditional: the guidance, and the class when there is one */
    if (want) snprintf(gd, sizeof gd, ", guidance %g%s", c.sample.guidance, c.sample.guidance_rescale > 0 ? " rescaled" : "");
    if (want && c.sample.guidance_rescale > 0) snprintf(gd + strlen(gd), sizeof gd - strlen(gd), " %g", c.sample.guidance_rescale);
    char title[256], **fcap = traj ? draw_trajectory_captions(traj, sample_n_steps(&so, &s)) : NULL;
    snprintf(title, sizeof title, "%s, %d steps, seed %d, %s weights%s%s%s", c.sample.sampler, sample_n_steps(&so, &s),
             c.sample.seed, no_ema ? "raw" : "EMA", gd, want && n_want == 1 ? ", class " : "",
             want && n_want == 1 ? class_names[want[0]] : "");
    DrawCaptions tcap = {.cell = (const char *const *)fcap};
    for (int i = 0; i < cnt && !rc; i++) {
        char p[1200];
        uint8_t *px = xmalloc(D);
        for (size_t j = 0; j < D; j++) px[j] = image_to_u8(imgs[(size_t)(first + i) * D + j]);
        snprintf(p, sizeof p, "%s/%06d.png", out, first + i);
        rc = image_write_png(p, px, u.res, u.res, u.C_img);
        if (!rc && traj) {
            snprintf(p, sizeof p, "%s/%06d_traj.png", out, first + i);
            rc = draw_grid_png(p, tr + (size_t)i * traj * D, traj, u.res, u.res, u.C_img, traj, 0, &tcap);
        }
        free(px);
    }
    double rcd = rc;
    dist_allreduce_f64(&rcd, 1);
    if (!rc && rcd) rc = err_set(DDPM_ERUNTIME, "another MPI rank failed to write its images");
    dist_allreduce_f32(imgs, (size_t)total * D); /* every image is zero except on its rank */
    if (!rc && rank == 0) {
        char p[1200];
        snprintf(p, sizeof p, "%s/classes.csv", out);
        if (want) rc = write_classes_csv(p, img_cls, total);
        else unlink(p); /* a stale one would mislabel these images */
        snprintf(p, sizeof p, "%s/grid.png", out);
        const char **rows = NULL; /* one grid row per class asked for, named */
        if (want && n_want > 1) {
            rows = xmalloc(sizeof(char *) * n_want);
            for (int k = 0; k < n_want; k++) rows[k] = class_names[want[k]];
        }
        DrawCaptions cap = {.title = title, .row = (const char *const *)rows};
        if (!rc) rc = draw_grid_png(p, imgs, total, u.res, u.res, u.C_img, n_want > 1 ? n : 0, 2, &cap);
        free(rows);
        if (!rc) {
            printf("%d images (%s, %d steps, %s weights, seed %d%s) in %.1f s: %s/000000.png .. %s/%06d.png, grid %s\n", total,
                   sampler_name(so.kind), sample_n_steps(&so, &s), no_ema ? "raw" : "EMA", c.sample.seed, gd, now_s() - t0, out, out,
                   total - 1, p);
            if (want) {
                printf("%s %s/classes.csv; %s:", n_want > 1 ? "grid rows (top to bottom), classes in" : "class in", out,
                       n_want > 1 ? "rows" : "class");
                for (int k = 0; k < n_want; k++) printf("%s %s", k ? "," : "", class_names[want[k]]);
                printf("\n");
            } else if (c.model.class_cond) {
                printf("no --class: unconditional samples (the \"no class\" embedding)\n");
            }
        }
    }
    free(imgs);
    free(tr);
    free(fcap);
done:
    free(img_cls);
    cli_classes_free(&cl);
    unet_free(&u);
    schedule_free(&s);
    return cli_fail(rc);
early:
    st_free(&f);
    cli_classes_free(&cl);
    return rc;
}
