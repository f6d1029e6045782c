/* captions: captioned image datasets for text-conditioned training.
 *
 *  - An image folder with a metadata.jsonl (the Hugging Face "imagefolder" convention that
 *    diffusers' train_text_to_image.py reads): one JSON object a line,
 *      {"file_name": "0001.png", "text": "a red bag"}
 *    file_name is a path relative to the folder (subfolders allowed, never outside it); the
 *    caption column (default "text") holds a string or a non-empty list of strings; other
 *    columns are ignored; blank lines are skipped. Every image file under the folder
 *    (.png/.jpg/.jpeg, recursive, hidden entries skipped) must have a line, and every line an
 *    image. Examples come in line order.
 *  - "scenes": a built-in captioned dataset made from Fashion-MNIST (below).
 *
 * Either way the result is a CapData: the images as a Dataset (so the Batcher and everything
 * downstream work unchanged) plus, per example, a list of captions. Each training step uses
 * one caption of each example, picked by captions_pick from (seed, step, example index), so
 * a resumed run and every MPI rank pick the same one. */
#ifndef DDPM_CAPTIONS_H
#define DDPM_CAPTIONS_H

#include <stddef.h>
#include <stdint.h>

#include "ddpm/data.h"
#include "ddpm/rng.h"


/* Per-example attributes of a scene (also what a prompt asks for, see scenes_parse). */
enum { SCENE_SMALL = 0, SCENE_LARGE = 1 };
enum { SCENE_TOP_LEFT, SCENE_TOP_RIGHT, SCENE_BOTTOM_LEFT, SCENE_BOTTOM_RIGHT, SCENE_CENTER, SCENE_N_POS };
enum { SCENE_BRIGHT = 0, SCENE_FAINT = 1 };
#define SCENE_N_CLASSES 10
#define SCENE_SIDE 28            /* canvas side; a small item is SCENE_SIDE/2 */
#define SCENE_MAX_CAPTIONS 4     /* captions one example can have */

typedef struct {
    int cls;    /* Fashion-MNIST class 0..9 (t-shirt .. ankle boot) */
    int size;   /* SCENE_SMALL | SCENE_LARGE */
    int pos;    /* SCENE_TOP_LEFT .. SCENE_CENTER for small items; -1 for large ones */
    int tone;   /* SCENE_BRIGHT | SCENE_FAINT */
    int src;    /* index of the Fashion-MNIST image it was made from */
} SceneAttr;

typedef struct {
    Dataset img;        /* images (n, size, size, c); labels = class (scenes) or 0 (folder) */
    int n_text;         /* distinct caption strings */
    char **text;        /* n_text captions, as written (UTF-8, checked by text_check_caption) */
    int *cap_start;     /* n+1: example i has captions cap[cap_start[i] .. cap_start[i+1]-1] */
    int *cap;           /* indices into text */
    SceneAttr *attr;    /* scenes: n attributes; NULL otherwise */
} CapData;

void capdata_free(CapData *d);
/* Number of captions of example i (>= 1). */
int capdata_n_captions(const CapData *d, int i);
/* Caption j (0 <= j < capdata_n_captions) of example i. */
const char *capdata_caption(const CapData *d, int i, int j);

/* Which of k >= 1 captions example `index` uses at training step `step`:
 * floor(rng_u32(seed, RNG_STREAM(RNG_CAPTION, step), index) * k / 2^32); 0 when k == 1. */
int captions_pick(uint64_t seed, uint64_t step, uint64_t index, int k);
/* The caption example i uses at `step` (captions_pick over its list). */
const char *capdata_pick(const CapData *d, int i, uint64_t seed, uint64_t step);
/* Dataset index of item k (0 <= k < B) of the global batch the last batcher_next(b, ..., B,
 * ...) call returned (its images and labels are in this order). */
int captions_batch_index(const Batcher *b, int B, int k);

/* ------------------------------------------------------------------------------------------ */
/* metadata.jsonl */

typedef struct {
    char *file_name;    /* as written in the line */
    int line;           /* 1-based line number */
    int n_caps;
    char **caps;        /* n_caps >= 1 captions */
} JsonlEntry;

typedef struct {
    int n;
    JsonlEntry *e;
} JsonlTable;

/* Parse metadata.jsonl text buf[0..n) (any bytes). label names the file in messages, column
 * the caption column. Every error is DDPM_EUSAGE "<label>:<line>: <what> (<how to fix>)":
 * a line that is not valid UTF-8, not a JSON object, without a string file_name, with a
 * file_name that is absolute, has a ".." component or an empty one, or repeats an earlier
 * line's; a missing or null caption column, one that is not a string or a non-empty list of
 * strings, a caption that fails text_check_caption. No lines at all is an error too. */
int jsonl_parse(JsonlTable *t, const char *buf, size_t n, const char *label, const char *column);
void jsonl_free(JsonlTable *t);

/* Load a captioned folder: dir/metadata.jsonl parsed as above, then checked against the
 * folder before any image is decoded: a line whose file_name does not exist or is not a
 * .png/.jpg/.jpeg file, an image file without a line. Errors are DDPM_EUSAGE naming the file
 * (and line); unreadable images are DDPM_ERUNTIME naming the image (as dataset_load_folder).
 * Images are converted to `channels` and center-cropped/resized to `size`. limit > 0 keeps the
 * first `limit` lines' examples (every line is still checked). */
int captions_load_folder(CapData *d, const char *dir, const char *column, int size, int channels, int limit);

/* ------------------------------------------------------------------------------------------ */
/* scenes
 *
 * Example i is made from Fashion-MNIST image src = i mod n_src (class c) on a 28x28 black
 * canvas. Its layout and tone are one of 12 configurations, (small at one of 5 positions |
 * large) x (bright | faint), drawn uniformly from those not held out for class c:
 *   config = allowed_c[floor(rng_u32(seed, RNG_STREAM(RNG_SCENE, 0), i) * n_allowed_c / 2^32)],
 * config k = 2 * layout + tone with layout 0..4 = the small positions, 5 = large. A class
 * whose 12 configurations are all held out is an error.
 *  - large: the item as it is;
 *  - small: 2x box-downscaled to 14x14, each pixel (a+b+c+d+2)/4 (integer division), placed
 *    with its top-left corner at (row, col) top left (0,0), top right (0,14), bottom left
 *    (14,0), bottom right (14,14), center (7,7);
 *  - bright: as it is; faint: every pixel v -> round(0.4 v) = (2v + 2) / 5.
 * Captions, canonical first: "a {small|large} {bright|faint} {class}" + " in the {position}"
 * for small items, with class in t-shirt, trouser, pullover, dress, coat, sandal, shirt,
 * sneaker, bag, ankle boot and position in top left, top right, bottom left, bottom right,
 * center. With paraphrases on, also (each once, duplicates left out):
 *   - tone before size:   "a faint small sneaker in the top left";
 *   - synonyms:           "a small faint sneaker in the upper left", "a large bright handbag",
 *                         (trouser -> trousers, pullover -> sweater, coat -> jacket,
 *                          bag -> handbag, ankle boot -> boot; center -> middle,
 *                          top/bottom -> upper/lower), only when one of them has a synonym;
 *   - position first:     "in the top left, a small faint sneaker" (small items).
 * A held-out caption (any of these phrasings, compared by text_normalize) removes its
 * configuration for its class: no example of it is ever made, in any phrasing. */

typedef struct {
    const char *path;        /* Fashion-MNIST folder or images file (NULL = SCENES_DEFAULT_PATH) */
    int n;                   /* examples (0 = one per source image) */
    uint64_t seed;           /* the draw of layouts and tones */
    const char *const *held_out;
    int n_held_out;
    int paraphrase;          /* 1 = add the paraphrases above */
    int size, channels;      /* output images: SCENE_SIDE and 1 give the scenes as defined;
                              * anything else is resized (image_crop_resize) / grey replicated */
} ScenesOpts;

#define SCENES_DEFAULT_PATH "/usr/share/datasets/fashion-mnist"
extern const char *const scene_class_names[SCENE_N_CLASSES];
extern const char *const scene_pos_names[SCENE_N_POS];

/* Load Fashion-MNIST (dataset_load_idx at 28x28, 1 channel; it must have 10 classes) and
 * build the scenes from it. */
int scenes_load(CapData *d, const ScenesOpts *o);
/* Build the scenes from n_src source images src (n_src, 28, 28) uint8 with labels 0..9.
 * DDPM_EUSAGE for a held-out caption that is not a scenes caption (naming it, with the
 * canonical form of an example), or one that holds out every configuration of a class. */
int scenes_build(CapData *d, const uint8_t *src, const int *labels, int n_src, const ScenesOpts *o);

/* Render one scene: out (28, 28) from the item src (28, 28) with a's size, pos and tone. */
void scenes_render(uint8_t *out, const uint8_t *src, const SceneAttr *a);
/* The captions of a (canonical first) into caps (malloc'd strings); returns how many
 * (1..SCENE_MAX_CAPTIONS; 1 when paraphrase is 0). */
int scenes_captions(const SceneAttr *a, int paraphrase, char *caps[SCENE_MAX_CAPTIONS]);
/* Attributes a caption asks for: 1 and *a filled (src = -1) when the caption, normalized,
 * is any phrasing above of some scene; 0 otherwise. */
int scenes_parse(const char *caption, SceneAttr *a);

#endif
