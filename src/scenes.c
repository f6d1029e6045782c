/* scenes: the built-in captioned dataset made from Fashion-MNIST (one item on a 28x28 black
 * canvas, large or small at one of five positions, bright or faint), its captions and
 * paraphrases, held-out captions, and the parser from a caption back to attributes. The
 * exact definition is in include/ddpm/captions.h. */
#include "ddpm/captions.h"

#include <stdlib.h>
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/image.h"
#include "ddpm/rng.h"
#include "ddpm/text.h"

#define HALF (SCENE_SIDE / 2)
#define N_LAYOUT (SCENE_N_POS + 1)  /* the 5 small positions, then large */
#define N_CONFIG (2 * N_LAYOUT)     /* x (bright, faint) */

const char *const scene_class_names[SCENE_N_CLASSES] = {"t-shirt", "trouser", "pullover", "dress", "coat",
                                                        "sandal",  "shirt",   "sneaker",  "bag",   "ankle boot"};
const char *const scene_pos_names[SCENE_N_POS] = {"top left", "top right", "bottom left", "bottom right", "center"};

/* Paraphrase synonyms (NULL: none). */
static const char *const CLASS_SYN[SCENE_N_CLASSES] = {NULL,   "trousers", "sweater", NULL,   "jacket",
                                                       NULL,   NULL,       NULL,      "handbag", "boot"};
static const char *const POS_SYN[SCENE_N_POS] = {"upper left", "upper right", "lower left", "lower right", "middle"};
static const char *const SIZE_NAME[2] = {"small", "large"};
static const char *const TONE_NAME[2] = {"bright", "faint"};
/* Top-left corner (row, col) of a small item. */
static const int POS_RC[SCENE_N_POS][2] = {{0, 0}, {0, HALF}, {HALF, 0}, {HALF, HALF}, {HALF / 2, HALF / 2}};

static SceneAttr attr_of(int cls, int config) {
    int layout = config / 2;
    SceneAttr a = {.cls = cls, .size = layout == SCENE_N_POS ? SCENE_LARGE : SCENE_SMALL,
                   .pos = layout == SCENE_N_POS ? -1 : layout, .tone = config % 2, .src = -1};
    return a;
}

static int config_of(const SceneAttr *a) {
    return 2 * (a->size == SCENE_LARGE ? SCENE_N_POS : a->pos) + a->tone;
}

static uint8_t tone(uint8_t v, int t) { return t == SCENE_FAINT ? (uint8_t)((2 * v + 2) / 5) : v; }

// out is (28,28), src is (28,28)
void scenes_render(uint8_t *out, const uint8_t *src, const SceneAttr *a) {
    const int S = SCENE_SIDE;
    if (a->size == SCENE_LARGE) {
        for (int i = 0; i < S * S; i++) out[i] = tone(src[i], a->tone);
        return;
    }
    CHECK(a->pos >= 0 && a->pos < SCENE_N_POS, "scenes_render: position %d", a->pos);
    memset(out, 0, (size_t)S * S);
    const int r0 = POS_RC[a->pos][0], c0 = POS_RC[a->pos][1];
    for (int y = 0; y < HALF; y++)
        for (int x = 0; x < HALF; x++) {
            const uint8_t *p = src + (2 * y) * S + 2 * x;
            int v = (p[0] + p[1] + p[S] + p[S + 1] + 2) / 4;
            out[(r0 + y) * S + c0 + x] = tone((uint8_t)v, a->tone);
        }
}

static char *fmt(const char *f, const char *a, const char *b, const char *c, const char *d) {
    char buf[160];
    snprintf(buf, sizeof buf, f, a, b, c, d);
    size_t n = strlen(buf) + 1;
    char *s = xmalloc(n);
    memcpy(s, buf, n);
    return s;
}

int scenes_captions(const SceneAttr *a, int paraphrase, char *caps[SCENE_MAX_CAPTIONS]) {
    CHECK(a->cls >= 0 && a->cls < SCENE_N_CLASSES && (a->size == SCENE_LARGE || (a->pos >= 0 && a->pos < SCENE_N_POS)) &&
              (a->tone == SCENE_BRIGHT || a->tone == SCENE_FAINT),
          "scenes_captions: bad attributes");
    const char *cls = scene_class_names[a->cls], *sz = SIZE_NAME[a->size], *tn = TONE_NAME[a->tone];
    const int small = a->size == SCENE_SMALL;
    const char *pos = small ? scene_pos_names[a->pos] : "";
    int n = 0;
    caps[n++] = fmt(small ? "a %s %s %s in the %s" : "a %s %s %s%s", sz, tn, cls, pos);
    if (!paraphrase) return n;
    caps[n++] = fmt(small ? "a %s %s %s in the %s" : "a %s %s %s%s", tn, sz, cls, pos);
    const char *csyn = CLASS_SYN[a->cls] ? CLASS_SYN[a->cls] : cls;
    if (small) caps[n++] = fmt("a %s %s %s in the %s", sz, tn, csyn, POS_SYN[a->pos]);
    else if (CLASS_SYN[a->cls]) caps[n++] = fmt("a %s %s %s%s", sz, tn, csyn, "");
    if (small) caps[n++] = fmt("in the %s, a %s %s %s", pos, sz, tn, cls);
    return n;
}

int scenes_parse(const char *caption, SceneAttr *out) {
    char *want = text_normalize(caption);
    int found = 0;
    for (int cls = 0; cls < SCENE_N_CLASSES && !found; cls++)
        for (int k = 0; k < N_CONFIG && !found; k++) {
            SceneAttr a = attr_of(cls, k);
            char *caps[SCENE_MAX_CAPTIONS];
            int n = scenes_captions(&a, 1, caps);
            for (int j = 0; j < n; j++) {
                char *norm = text_normalize(caps[j]);
                if (!found && !strcmp(norm, want)) {
                    found = 1;
                    *out = a;
                }
                free(norm);
                free(caps[j]);
            }
        }
    free(want);
    return found;
}

int scenes_build(CapData *out, const uint8_t *src, const int *labels, int n_src, const ScenesOpts *o) {
    memset(out, 0, sizeof *out);
    if (o->size <= 0 || o->size > 65536)
        return err_set(DDPM_EUSAGE, "scenes: image_size %d out of range (use 1..65536; 28 is the scenes' own)", o->size);
    if (o->channels != 1 && o->channels != 3)
        return err_set(DDPM_EUSAGE, "scenes: channels %d not supported (use 1 or 3)", o->channels);
    if (n_src < 1) return err_set(DDPM_ERUNTIME, "scenes: no source images");
    if (o->n < 0) return err_set(DDPM_EUSAGE, "scenes: %d examples asked for", o->n);
    for (int i = 0; i < n_src; i++)
        if (labels[i] < 0 || labels[i] >= SCENE_N_CLASSES)
            return err_set(DDPM_ERUNTIME, "scenes: source image %d has label %d, expected 0..9 (Fashion-MNIST)", i,
                           labels[i]);

    /* held-out configurations per class */
    unsigned char held[SCENE_N_CLASSES][N_CONFIG] = {{0}};
    for (int h = 0; h < o->n_held_out; h++) {
        SceneAttr a;
        if (!scenes_parse(o->held_out[h], &a))
            return err_set(DDPM_EUSAGE,
                           "held-out caption \"%.100s\" is not a scenes caption (write it like \"a small faint sneaker "
                           "in the center\" or \"a large bright bag\")",
                           o->held_out[h]);
        held[a.cls][config_of(&a)] = 1;
    }
    int allowed[SCENE_N_CLASSES][N_CONFIG], n_allowed[SCENE_N_CLASSES];
    for (int c = 0; c < SCENE_N_CLASSES; c++) {
        n_allowed[c] = 0;
        for (int k = 0; k < N_CONFIG; k++)
            if (!held[c][k]) allowed[c][n_allowed[c]++] = k;
        if (!n_allowed[c])
            return err_set(DDPM_EUSAGE, "held-out captions leave no scene of class %s (hold out fewer)",
                           scene_class_names[c]);
    }

    /* caption pool: every phrasing of every allowed (class, configuration), in that order;
     * the same whatever n, so a vocabulary built from it is too */
    CapData d = {0};
    int pool_start[SCENE_N_CLASSES][N_CONFIG] = {{0}}, pool_n[SCENE_N_CLASSES][N_CONFIG] = {{0}};
    d.text = xmalloc(sizeof *d.text * SCENE_N_CLASSES * N_CONFIG * SCENE_MAX_CAPTIONS);
    for (int c = 0; c < SCENE_N_CLASSES; c++)
        for (int k = 0; k < N_CONFIG; k++) {
            if (held[c][k]) continue;
            SceneAttr a = attr_of(c, k);
            pool_start[c][k] = d.n_text;
            pool_n[c][k] = scenes_captions(&a, o->paraphrase, d.text + d.n_text);
            d.n_text += pool_n[c][k];
        }

    const int n = o->n > 0 ? o->n : n_src, S = SCENE_SIDE, size = o->size, ch = o->channels;
    size_t img_sz = (size_t)size * size * ch;
    d.img.pix = malloc((size_t)n * img_sz);
    d.img.labels = malloc(sizeof(int) * (size_t)n);
    d.attr = malloc(sizeof *d.attr * (size_t)n);
    d.cap_start = malloc(sizeof(int) * ((size_t)n + 1));
    if (!d.img.pix || !d.img.labels || !d.attr || !d.cap_start) {
        capdata_free(&d);
        return err_set(DDPM_ERUNTIME, "scenes: out of memory for %d images of %dx%dx%d (set data.limit)", n, size, size, ch);
    }
    d.img.n = n, d.img.size = size, d.img.c = ch;
    d.img.n_classes = SCENE_N_CLASSES;
    d.img.has_labels = 1;
    d.img.class_names = xcalloc(SCENE_N_CLASSES, sizeof(char *));
    for (int c = 0; c < SCENE_N_CLASSES; c++) {
        size_t l = strlen(scene_class_names[c]) + 1;
        d.img.class_names[c] = xmalloc(l);
        memcpy(d.img.class_names[c], scene_class_names[c], l);
    }

    const uint64_t stream = RNG_STREAM(RNG_SCENE, 0);
    int total = 0;
    for (int i = 0; i < n; i++) {
        int s = i % n_src, c = labels[s];
        uint32_t r = rng_u32(o->seed, stream, (uint64_t)i);
        int k = allowed[c][((uint64_t)r * (uint64_t)n_allowed[c]) >> 32];
        d.attr[i] = attr_of(c, k);
        d.attr[i].src = s;
        d.img.labels[i] = c;
        d.cap_start[i] = total;
        total += pool_n[c][k];
    }
    d.cap_start[n] = total;
    d.cap = malloc(sizeof(int) * (size_t)(total ? total : 1));
    if (!d.cap) {
        capdata_free(&d);
        return err_set(DDPM_ERUNTIME, "scenes: out of memory for the captions of %d images", n);
    }
    for (int i = 0; i < n; i++) {
        int k = config_of(&d.attr[i]), c = d.attr[i].cls;
        for (int j = 0; j < pool_n[c][k]; j++) d.cap[d.cap_start[i] + j] = pool_start[c][k] + j;
    }

#pragma omp parallel
    {
        uint8_t canvas[SCENE_SIDE * SCENE_SIDE], rgb[SCENE_SIDE * SCENE_SIDE * 3];
#pragma omp for schedule(static)
        for (int i = 0; i < n; i++) {
            uint8_t *dst = d.img.pix + (size_t)i * img_sz;
            const uint8_t *item = src + (size_t)d.attr[i].src * S * S;
            if (size == S && ch == 1) {
                scenes_render(dst, item, &d.attr[i]);
                continue;
            }
            scenes_render(canvas, item, &d.attr[i]);
            const uint8_t *from = canvas;
            if (ch == 3) {
                for (int p = 0; p < S * S; p++) rgb[3 * p] = rgb[3 * p + 1] = rgb[3 * p + 2] = canvas[p];
                from = rgb;
            }
            image_crop_resize(dst, from, S, S, ch, size);
        }
    }
    *out = d;
    return DDPM_OK;
}

int scenes_load(CapData *out, const ScenesOpts *o) {
    memset(out, 0, sizeof *out);
    const char *path = o->path && *o->path ? o->path : SCENES_DEFAULT_PATH;
    Dataset fm;
    /* example i uses source i mod n_src: with n at most the set's size only the first n are read */
    int rc = dataset_load_idx(&fm, path, SCENE_SIDE, 1, o->n);
    if (rc) return rc;
    if (!fm.has_labels || fm.n_classes != SCENE_N_CLASSES) {
        int k = fm.n_classes, has = fm.has_labels;
        dataset_free(&fm);
        return err_set(DDPM_EUSAGE, "%s: scenes are made from Fashion-MNIST with its labels (10 classes, found %d%s)", path,
                       k, has ? "" : ", no labels file");
    }
    rc = scenes_build(out, fm.pix, fm.labels, fm.n, o);
    dataset_free(&fm);
    return rc;
}
