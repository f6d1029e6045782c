/* ddpm restore: restoration by a model trained for it (SR3, Saharia et al. 2021; Palette,
 * Saharia et al. 2022). The model (model.cond_image) learned eps given concat(x_t, y[, mask]),
 * y degraded from the training images by train.degrade; here y is the user's degraded
 * input brought to the model's size as training built it (degrade_prepare_input), and the
 * one reverse loop runs with y as the denoiser's condition (SampleTask.cond). */
#include <math.h>
#include <string.h>

#include "ddpm/degrade.h"
#include "ddpm/dist.h"
#include "ddpm/err.h"
#include "ddpm/image.h"
#include "task.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ddpm restore IMG... --ckpt FILE [-o DIR] [-n N] [--mask MASK.png] [options]\n"
            "\n"
            "Restores each degraded image (low-resolution, blurred, noisy, JPEG-damaged or, with\n"
            "--mask, with a hole) with a model trained for it (model.cond_image; see\n"
            "docs/restoration.md): the U-Net sees the input next to x_t at every step. Inputs of\n"
            "any size: a non-square one is centre-cropped; the model's size is used as is; an integer\n"
            "fraction of it (7x7 or 14x14 for a 28 px model) is upsampled as training did; an integer\n"
            "multiple is box-averaged down; any other size is resampled (said so). A grey model refuses\n"
            "colour inputs. `ddpm info --ckpt FILE` says what a checkpoint restores.\n"
            "Writes DIR/<name>_strip.png (input | result 1..n, captioned) and DIR/<name>_<k>.png.\n"
            "\n"
            "restore options:\n"
            "  --mask M            the region to fill: WHITE = FILL, BLACK = KEEP (grey thresholded at\n"
            "                      0.5), the input's size; for models trained with a \"mask\" degradation\n"
            "  --steps K           network evaluations (default: the checkpoint's sample.steps)\n"
            "  --guidance S        guidance on the condition (and class): the checkpoint's\n"
            "                      sample.guidance by default; 1 = plain conditional, 0 = condition dropped\n"
            "\n");
    task_help(f);
}

typedef struct {
    const char *mask; /* --mask FILE */
    float *cond;      /* (n_files, res, res, Cc): y and the mask channel of each input */
    float *lead;      /* (n_files, res, res, C): y as shown in the strip */
    char note[256];   /* what was done to the first input */
} Restore;

static int on_opt(void *ctx, int o, const char *v) {
    Restore *r = ctx;
    if (o == 'M') r->mask = v;
    else return CLI_NOT_MINE;
    return 0;
}

/* Load path with its own pixels as floats (h,w,C) in [-1,1]; a colour image for a grey
 * model is refused (its colours would be lost, not restored). */
static int load_input(const char *path, int C, float **out, int *h, int *w) {
    Image im;
    if (image_load(&im, path, 3)) return err_set(DDPM_EUSAGE, "restore: %s", err_msg());
    if (C == 1)
        for (size_t p = 0; p < (size_t)im.w * im.h; p++) {
            const uint8_t *q = im.pix + p * 3;
            if (abs(q[0] - q[1]) > 2 || abs(q[1] - q[2]) > 2) {
                image_free(&im);
                return err_set(DDPM_EUSAGE,
                               "restore: %s is a colour image and the model restores grey ones (data.channels = 1): convert it "
                               "to grey first (e.g. magick %s -colorspace Gray grey.png)", path, path);
            }
        }
    *h = im.h, *w = im.w;
    *out = xmalloc(sizeof(float) * (size_t)im.w * im.h * C);
    for (size_t p = 0; p < (size_t)im.w * im.h; p++)
        for (int c = 0; c < C; c++) (*out)[p * C + c] = image_to_float(im.pix[p * 3 + (C == 1 ? 0 : c)]);
    image_free(&im);
    return DDPM_OK;
}

/* After the model is open, before anything is written: refuse a model that restores nothing
 * and inputs that do not fit, and build every input's condition. */
static int prepare(TaskModel *m, void *ctx) {
    Restore *r = ctx;
    const Config *c = &m->cm.c;
    if (!c->model.cond_image) {
        err_set(DDPM_EUSAGE, "restore: %s restores nothing: it was not trained with model.cond_image (train one with "
                "configs/restore.json, or use ddpm upscale/edit/inpaint with this model)", m->cm.path);
        return cli_fail(DDPM_EUSAGE);
    }
    const DegradeSpec *spec = &c->train.degrade;
    if (r->mask && !spec->has_mask) {
        err_set(DDPM_EUSAGE, "restore: --mask: %s was not trained with a \"mask\" degradation (train.degrade), so it cannot fill "
                "holes: drop --mask, or use ddpm inpaint", m->cm.path);
        return cli_fail(DDPM_EUSAGE);
    }
    int res = m->res, C = m->C, Cc = m->cm.u.C_in - C, rc = 0;
    size_t npix = (size_t)res * res, D = m->D;
    float *y = xmalloc(sizeof(float) * D), *mk = xmalloc(sizeof(float) * npix), *regen = xmalloc(sizeof(float) * npix);
    r->cond = xmalloc(sizeof(float) * m->n_files * npix * Cc);
    r->lead = xmalloc(sizeof(float) * m->n_files * D);
    for (int i = 0; i < m->n_files && !rc; i++) {
        float *in = NULL;
        int h = 0, w = 0;
        if ((rc = load_input(m->files[i], C, &in, &h, &w))) break;
        char note[200];
        degrade_prepare_input(y, in, h, w, C, res, degrade_spec_up(spec), note, sizeof note);
        free(in);
        if (dist_rank() == 0 && (h != res || w != res)) fprintf(stderr, "ddpm restore: %s: %s\n", m->files[i], note);
        if (i == 0) snprintf(r->note, sizeof r->note, "%s", note);
        for (size_t p = 0; p < npix; p++) mk[p] = 1; /* everything known */
        if (r->mask) {
            float *mf = NULL;
            int mh, mw;
            Image im;
            if (image_load(&im, r->mask, 1)) {
                rc = err_set(DDPM_EUSAGE, "restore: --mask: %s", err_msg());
                break;
            }
            if (im.w != w || im.h != h) {
                rc = err_set(DDPM_EUSAGE, "restore: --mask %s is %dx%d but %s is %dx%d: give a mask of the input's size", r->mask,
                             im.w, im.h, m->files[i], w, h);
                image_free(&im);
                break;
            }
            mh = im.h, mw = im.w;
            mf = xmalloc(sizeof(float) * (size_t)mh * mw);
            for (size_t p = 0; p < (size_t)mh * mw; p++) mf[p] = im.pix[p] / 255.0f;
            image_free(&im);
            degrade_prepare_input(regen, mf, mh, mw, 1, res, DEGRADE_UP_NEAREST, NULL, 0);
            free(mf);
            degrade_mask_input(y, mk, regen, res, res, C);
        }
        memcpy(r->lead + i * D, y, sizeof(float) * D);
        float *cd = r->cond + (size_t)i * npix * Cc;
        for (size_t p = 0; p < npix; p++) {
            memcpy(cd + p * Cc, y + p * C, sizeof(float) * C);
            if (Cc > C) cd[p * Cc + C] = mk[p];
        }
    }
    free(y), free(mk), free(regen);
    return rc ? cli_fail(rc) : 0;
}

int cmd_restore(int argc, char **argv) {
    static const struct option opts[] = {TASK_OPTIONS, {"mask", required_argument, 0, 'M'}, {0, 0, 0, 0}};
    TaskArgs a;
    Restore r = {0};
    int rc = task_parse(&a, "restore", argc, argv, opts, on_opt, &r, usage);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    a.prepare = prepare, a.prepare_ctx = &r;
    TaskModel m;
    if ((rc = task_open(&a, &m))) goto done;
    size_t D = m.D;
    int n = m.n_files * a.opt.n;
    float *out = xmalloc(sizeof(float) * n * D), *traj = a.opt.traj ? xmalloc(sizeof(float) * n * a.opt.traj * D) : NULL;
    int *lv = xmalloc(sizeof(int) * (m.cm.s.T + 2));
    int nl = sample_levels(lv, &m.cm.so, &m.cm.s, m.cm.s.T);
    SampleTask task = sample_task_plain(lv, nl);
    task.cond = r.cond, task.per_ref = a.opt.n;
    char what[200];
    degrade_spec_describe(what, sizeof what, &m.cm.c.train.degrade);
    if (dist_rank() == 0)
        fprintf(stderr, "ddpm restore: a model trained on %s; %d network evaluations per image (%s)\n", what, levels_evals(lv, nl),
                sampler_name(m.cm.so.kind));
    task_run(&a, &m, &task, out, traj);
    static const char *const lead_cap[] = {"input"};
    char title[200];
    snprintf(title, sizeof title, "restore: %s %d steps", sampler_name(m.cm.so.kind), levels_evals(lv, nl));
    if (!m.cm.cls && m.cm.c.sample.guidance != 1) {
        size_t L = strlen(title);
        snprintf(title + L, sizeof title - L, ", guidance %g", m.cm.c.sample.guidance);
    }
    rc = task_write(&a, &m, r.lead, 1, lead_cap, out, traj, title, "input | results");
    free(lv), free(out), free(traj);
done:
    free(r.cond), free(r.lead);
    task_close(&m);
    return rc;
}
