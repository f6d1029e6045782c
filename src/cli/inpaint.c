/* ddpm inpaint: RePaint (Lugmayr et al. 2022) on the one reverse loop: the timestep list of
 * diffusers' RePaintScheduler and the inpainting constraint. */
#include <string.h>

#include "ddpm/dist.h"
#include "ddpm/err.h"
#include "ddpm/image.h"
#include "task.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddpm inpaint IMG... (--mask MASK.png | --mask top|bottom|left|right|center | --mask-box X,Y,W,H)\n"
            "                   [-o DIR] [-n N] [options]\n"
            "\n"
            "Regenerates the masked region of each image so that it fits the rest (RePaint): at every\n"
            "reverse step the kept region is the input noised to that step, the rest is the model's\n"
            "sample; every J steps the sample goes back J steps by the forward process and is denoised\n"
            "again, R times. Mask: WHITE = REGENERATE, BLACK = KEEP (grey thresholded at 0.5), as in\n"
            "image editors and Stable Diffusion; resized to the model's resolution when it differs.\n"
            "Writes DIR/<name>_strip.png (original | masked | result 1..n, captioned) and DIR/<name>_<k>.png.\n"
            "Kept pixels equal the input's.\n"
            "\n"
            "inpaint options:\n"
            "  --mask M            a mask image, or a built-in: top | bottom | left | right (that half)\n"
            "                      or center (the middle half-size square)\n"
            "  --mask-box X,Y,W,H  regenerate this rectangle (pixels of the model's resolution)\n"
            "  --steps K           RePaint steps (default 250: every T/K-th timestep)\n"
            "  --jump J            jump length (default 10)\n"
            "  --resample R        times each jump is done (default 10; 1 = plain replacement)\n"
            "                      (defaults: 4,570 transitions, 2,410 network evaluations per image)\n"
            "  --sampler S         step rule (default ddpm, the ancestral step of RePaint)\n"
            "\n");
    task_help(f);
}

/* inpaint's own options. */
typedef struct {
    const char *mask;  /* --mask: a file or a built-in region */
    int box[4], has_box; /* --mask-box X,Y,W,H */
    int jump, resample;
} Inpaint;

static int on_opt(void *ctx, int o, const char *v) {
    Inpaint *p = ctx;
    int *box = p->box;
    if (o == 'M') p->mask = v;
    else if (o == 'B') {
        char tail;
        if (sscanf(v, "%d,%d,%d,%d%c", &box[0], &box[1], &box[2], &box[3], &tail) != 4 || box[2] < 1 || box[3] < 1 || box[0] < 0 ||
            box[1] < 0)
            return cli_usage_error("inpaint", "--mask-box '%s': expected X,Y,W,H with X,Y >= 0 and W,H >= 1", v);
        p->has_box = 1;
    } else if (o == 'J') return cli_int("inpaint", "--jump", v, 1, 100000, &p->jump);
    else if (o == 'R') return cli_int("inpaint", "--resample", v, 1, 1000, &p->resample);
    else return CLI_NOT_MINE;
    return 0;
}

/* The mask as D floats (1 = regenerate). */
static int make_mask(const Inpaint *p, TaskModel *m, float *mask) {
    const char *mask_arg = p->mask;
    const int *box = p->box;
    int res = m->res, C = m->C;
    float *g = xcalloc((size_t)res * res, sizeof(float));
    static const char *builtin[] = {"top", "bottom", "left", "right", "center"};
    int b = -1;
    for (int i = 0; i < 5 && mask_arg; i++)
        if (!strcmp(mask_arg, builtin[i])) b = i;
    if (p->has_box) {
        if (box[0] >= res || box[1] >= res) {
            free(g);
            return cli_usage_error("inpaint", "--mask-box %d,%d,%d,%d: starts outside the %dx%d image", box[0], box[1], box[2], box[3], res, res);
        }
        for (int y = box[1]; y < box[1] + box[3] && y < res; y++)
            for (int x = box[0]; x < box[0] + box[2] && x < res; x++) g[y * res + x] = 1;
    } else if (b >= 0) {
        for (int y = 0; y < res; y++)
            for (int x = 0; x < res; x++) {
                int in = b == 0 ? y < res / 2 : b == 1 ? y >= res / 2 : b == 2 ? x < res / 2 : b == 3 ? x >= res / 2
                       : (x >= res / 4 && x < res - res / 4 && y >= res / 4 && y < res - res / 4);
                g[y * res + x] = (float)in;
            }
    } else {
        Image im;
        if (image_load(&im, mask_arg, 1)) {
            free(g);
            err_set(DDPM_EUSAGE, "inpaint: --mask: %s", err_msg());
            return cli_fail(DDPM_EUSAGE);
        }
        uint8_t *px = xmalloc((size_t)res * res);
        if (im.w != res || im.h != res)
            fprintf(stderr, "ddpm inpaint: the mask %s is %dx%d: centre-cropped and resized to %dx%d\n", mask_arg, im.w, im.h, res, res);
        image_crop_resize(px, im.pix, im.w, im.h, 1, res);
        for (int j = 0; j < res * res; j++) g[j] = px[j] >= 128; /* grey thresholded at 0.5 */
        free(px);
        image_free(&im);
    }
    for (int j = 0; j < res * res; j++)
        for (int c = 0; c < C; c++) mask[(size_t)j * C + c] = g[j];
    free(g);
    return 0;
}

int cmd_inpaint(int argc, char **argv) {
    static const struct option opts[] = {TASK_OPTIONS,
                                         {"mask", required_argument, 0, 'M'},
                                         {"mask-box", required_argument, 0, 'B'},
                                         {"jump", required_argument, 0, 'J'},
                                         {"resample", required_argument, 0, 'R'},
                                         {0, 0, 0, 0}};
    TaskArgs a;
    Inpaint p = {.jump = 10, .resample = 10};
    int rc = task_parse(&a, "inpaint", argc, argv, opts, on_opt, &p, usage);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    int jump = p.jump, resample = p.resample;
    if (!p.mask && !p.has_box) return cli_usage_error("inpaint", "no mask: give --mask FILE, --mask top|bottom|left|right|center or --mask-box X,Y,W,H");
    if (p.mask && p.has_box) return cli_usage_error("inpaint", "give --mask or --mask-box, not both");
    int K = a.opt.steps > 0 ? a.opt.steps : 250;
    if (!a.opt.sampler) a.opt.sampler = "ddpm";
    a.opt.steps = -1; /* K is RePaint's, not the sampler's */
    TaskModel m;
    if ((rc = task_open(&a, &m))) goto done;
    if (K > m.cm.s.T) {
        rc = cli_usage_error("inpaint", "--steps %d is larger than the model's T = %d", K, m.cm.s.T);
        goto done;
    }
    size_t D = m.D;
    int nf = m.n_files, n = nf * a.opt.n, noted = 0;
    float *mask = xmalloc(sizeof(float) * D), *ref = xmalloc(sizeof(float) * nf * D), *lead = xmalloc(sizeof(float) * 2 * nf * D);
    float *out = xmalloc(sizeof(float) * n * D), *traj = a.opt.traj ? xmalloc(sizeof(float) * n * a.opt.traj * D) : NULL;
    if ((rc = make_mask(&p, &m, mask))) goto free_all;
    for (int i = 0; i < nf && !rc; i++) rc = task_load_image(&a, m.files[i], m.res, m.C, ref + i * D, &noted);
    if (rc) {
        rc = cli_fail(rc);
        goto free_all;
    }
    double regen = 0;
    for (size_t j = 0; j < D; j++) regen += mask[j];
    for (int i = 0; i < nf; i++)
        for (size_t j = 0; j < D; j++) {
            lead[(2 * i) * D + j] = ref[i * D + j];
            lead[(2 * i + 1) * D + j] = mask[j] > 0.5f ? 0.0f : ref[i * D + j]; /* the region to fill in grey */
        }
    if (regen == 0) {
        fprintf(stderr, "ddpm inpaint: the mask is all black (keep everything): nothing to regenerate, the inputs are returned\n");
        for (int g = 0; g < n; g++) memcpy(out + g * D, ref + (g / a.opt.n) * D, sizeof(float) * D);
        for (int g = 0; g < n && traj; g++)
            for (int q = 0; q < a.opt.traj; q++) memcpy(traj + ((size_t)g * a.opt.traj + q) * D, ref + (g / a.opt.n) * D, sizeof(float) * D);
    } else {
        int nl;
        int *lv = repaint_levels(K, jump, resample, m.cm.s.T, &nl);
        SampleTask task = sample_task_plain(lv, nl);
        task.ref = ref, task.per_ref = a.opt.n, task.constraint = CONSTRAINT_INPAINT, task.mask = mask;
        if (dist_rank() == 0)
            fprintf(stderr, "ddpm inpaint: RePaint %d steps, jump %d, resample %d: %d transitions, %d network evaluations per image\n", K,
                    jump, resample, nl - 1, levels_evals(lv, nl));
        task_run(&a, &m, &task, out, traj);
        free(lv);
    }
    static const char *const lead_cap[] = {"original", "masked"};
    char title[160];
    snprintf(title, sizeof title, "inpaint: RePaint %d steps, jump %d, resample %d", K, jump, resample);
    rc = task_write(&a, &m, lead, 2, lead_cap, out, traj, title, "original | masked | results");
free_all:
    free(mask), free(ref), free(lead), free(out), free(traj);
done:
    task_close(&m);
    return rc;
}
