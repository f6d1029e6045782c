/* ddpm sample: images from a checkpoint, DDPM, DDIM or DPM-Solver++(2M), per-image seeds. */
#include <dirent.h>
#include <getopt.h>
#include <string.h>
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
            "                      (default sample.spacing; auto = trailing, measured best)\n"
            "  --var V             DDPM variance: small (posterior) | large (beta_t)\n"
            "  --no-clip           do not clip the predicted x0 to [-1, 1]\n"
            "  --seed N            seed; image i always gets the same noise (default sample.seed)\n"
            "  --batch B           images per forward pass (default sample.batch)\n"
            "  --trajectory K      also write DIR/NNNNNN_traj.png: K frames from noise to image\n"
            "  --threads N         threads (default: all cores)\n"
            "  --no-labels         bare grid.png and trajectory strips (no captions, no scaling)\n"
            "  -q, --quiet         no progress bar\n"
            "  -h, --help          this help\n");
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

static void on_progress(void *ctx, long done, long total) { progress_bar(ctx, "sample", done, total, "img-steps", NULL); }

int cmd_sample(int argc, char **argv) {
    static const struct option opts[] = {
        {"ckpt", required_argument, 0, 'k'},    {"run", required_argument, 0, 'r'},     {"no-ema", no_argument, 0, 'E'},
        {"out", required_argument, 0, 'o'},     {"sampler", required_argument, 0, 's'}, {"steps", required_argument, 0, 'K'},
        {"eta", required_argument, 0, 'e'},     {"spacing", required_argument, 0, 'p'}, {"var", required_argument, 0, 'v'},
        {"no-clip", no_argument, 0, 'C'},       {"seed", required_argument, 0, 'S'},    {"batch", required_argument, 0, 'b'},
        {"trajectory", required_argument, 0, 'T'}, {"threads", required_argument, 0, 'j'}, {"quiet", no_argument, 0, 'q'},
        {"no-labels", no_argument, 0, 'L'},     {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
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
    SampleOpts so;
    if ((rc = cli_sample_opts("sample", &so, &c, sampler, steps, eta, spacing, var, seed, batch, no_clip))) {
        st_free(&f);
        return rc;
    }
    Schedule s;
    UNet u;
    int B = c.sample.batch < n ? c.sample.batch : n;
    if ((rc = schedule_init(&s, (ScheduleKind)schedule_kind(c.diffusion.schedule), c.diffusion.T, c.diffusion.beta_start,
                            c.diffusion.beta_end, c.diffusion.cosine_s))) {
        st_free(&f);
        return cli_fail(rc);
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
    if ((rc = unet_init(&u, &c, B, 0)) || (rc = ckpt_load_params(&f, no_ema ? "" : prefix, &u, u.params))) {
        st_free(&f);
        schedule_free(&s);
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
    int per = (n + R - 1) / R, first = rank * per, cnt = first >= n ? 0 : (n - first < per ? n - first : per);
    size_t D = (size_t)u.res * u.res * u.C_img;
    float *imgs = xcalloc((size_t)n * D, sizeof(float));
    float *tr = traj ? xmalloc(sizeof(float) * (size_t)(cnt ? cnt : 1) * traj * D) : NULL;
    Progress pr;
    progress_init(&pr, quiet || rank != 0, 0);
    double t0 = now_s();
    if (cnt) sample_images(&u, &s, &so, cnt, first, B, imgs + (size_t)first * D, traj, tr, on_progress, &pr);
    progress_end(&pr);
    char title[128], **fcap = traj ? draw_trajectory_captions(traj, sample_n_steps(&so, &s)) : NULL;
    snprintf(title, sizeof title, "%s, %d steps, seed %d, %s weights", c.sample.sampler, sample_n_steps(&so, &s), c.sample.seed,
             no_ema ? "raw" : "EMA");
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
    dist_allreduce_f32(imgs, (size_t)n * D); /* every image is zero except on its rank */
    if (!rc && rank == 0) {
        char p[1200];
        snprintf(p, sizeof p, "%s/grid.png", out);
        DrawCaptions cap = {.title = title}; /* .row: a class name per row once classes exist */
        rc = draw_grid_png(p, imgs, n, u.res, u.res, u.C_img, 0, 2, &cap);
        if (!rc)
            printf("%d images (%s, %d steps, %s weights, seed %d) in %.1f s: %s/000000.png .. %s/%06d.png, grid %s\n", n,
                   sampler_name(so.kind), sample_n_steps(&so, &s), no_ema ? "raw" : "EMA", c.sample.seed, now_s() - t0, out, out, n - 1, p);
    }
    free(imgs);
    free(tr);
    free(fcap);
done:
    unet_free(&u);
    schedule_free(&s);
    return cli_fail(rc);
}
