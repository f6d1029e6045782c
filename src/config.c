/* config: the schema table below is the single source of truth for every key: its type,
 * where it lives in Config, its allowed range or values, its default and its help text.
 * Loading, --set, validation, serialization and the docs all walk this table. */
#include "ddpm/config.h"

#include <cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "ddpm/err.h"
#include "ddpm/fsio.h"

/* K_FLAGS: a list of names from `choices`, stored as an unsigned mask (bit i = choice i). */
/* K_STRS: a list of strings of at most hi bytes, stored as char[cap][CFG_CAPTION] + count. */
/* K_DEGRADE: a degradation list (ddpm/degrade.h), stored as a DegradeSpec. */
typedef enum { K_INT, K_FLOAT, K_BOOL, K_STR, K_INTS, K_FLAGS, K_DEGRADE, K_STRS } KeyType;

typedef struct {
    const char *key;      /* "section.name" */
    KeyType type;
    size_t off;           /* offset in Config */
    size_t count_off;     /* K_INTS, K_STRS: offset of the element count */
    double lo, hi;        /* numeric range (inclusive); K_STR: max length via hi */
    const char *choices;  /* K_STR: "a|b|c" or NULL for free text */
    const char *def;      /* default, as JSON text */
    const char *help;
    int cap;              /* K_INTS, K_STRS: most elements (0 = CFG_MAX_LEVELS) */
} Key;

#define OFF(f) offsetof(Config, f)
#define CNT(f) offsetof(Config, f)
/* Only data.classes and data.held_out set `cap`; every other entry leaves it out (zero). */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
static const Key KEYS[] = {
    {"data.format", K_STR, OFF(data.format), 0, 0, 15, "idx|cifar10|folder|captions|scenes", "\"idx\"",
     "dataset format (idx: MNIST-style, cifar10: binary batches, folder: PNG/JPEG tree, captions: image folder with a "
     "metadata.jsonl, scenes: captioned scenes built from Fashion-MNIST at data.path)"},
    {"data.caption_column", K_STR, OFF(data.caption_column), 0, 0, 63, NULL, "\"text\"",
     "captions: the metadata.jsonl column holding each image's caption (a string or a list of strings)"},
    {"data.paraphrase", K_BOOL, OFF(data.paraphrase), 0, 0, 1, NULL, "true",
     "scenes: add paraphrased captions (word order, synonyms) beside the canonical one"},
    {"data.held_out", K_STRS, OFF(data.held_out), CNT(data.n_held_out), 0, CFG_CAPTION - 1, NULL,
     "[\"a small bright trouser in the bottom right\", \"a large faint bag\", \"a small faint sneaker in the center\"]",
     "scenes: captions never trained on (any phrasing of the scene), so composition can be measured; [] = none",
     CFG_MAX_HELD_OUT},
    {"data.path", K_STR, OFF(data.path), 0, 0, CFG_STR - 1, NULL, "\"/usr/share/datasets/fashion-mnist\"",
     "dataset file or folder (see data/README.md)"},
    {"data.image_size", K_INT, OFF(data.image_size), 0, 1, 1024, NULL, "28",
     "images are center-cropped and resized to this square size"},
    {"data.channels", K_INT, OFF(data.channels), 0, 1, 3, NULL, "1", "1 (grey) or 3 (RGB)"},
    {"data.hflip", K_BOOL, OFF(data.hflip), 0, 0, 1, NULL, "false", "random horizontal flip"},
    {"data.limit", K_INT, OFF(data.limit), 0, 0, 1e9, NULL, "0",
     "use only the first N images (0 = all); with data.classes, the first N of the classes kept"},
    {"data.classes", K_INTS, OFF(data.classes), CNT(data.n_classes), 0, 65535, NULL, "[]",
     "keep only the images of these class labels (numbers as 'ddpm info' lists them; [] = all); labels keep their numbers",
     CFG_MAX_CLASSES},

    {"model.ch", K_INT, OFF(model.ch), 0, 1, 4096, NULL, "64", "base channel width"},
    {"model.ch_mult", K_INTS, OFF(model.ch_mult), CNT(model.n_levels), 1, 64, NULL, "[1, 2, 2]",
     "width multiplier per resolution level"},
    {"model.num_res_blocks", K_INT, OFF(model.num_res_blocks), 0, 1, 16, NULL, "2",
     "residual blocks per level"},
    {"model.attn_resolutions", K_INTS, OFF(model.attn_res), CNT(model.n_attn), 1, 1024, NULL, "[14]",
     "resolutions that get self-attention"},
    {"model.dropout", K_FLOAT, OFF(model.dropout), 0, 0, 0.99, NULL, "0.1", "dropout in residual blocks"},
    {"model.groups", K_INT, OFF(model.groups), 0, 1, 1024, NULL, "32", "GroupNorm groups"},
    {"model.class_cond", K_BOOL, OFF(model.class_cond), 0, 0, 1, NULL, "false",
     "class-conditional: a class embedding (num_classes + 1 rows, the last = no class) added to the timestep embedding"},
    {"model.num_classes", K_INT, OFF(model.num_classes), 0, 0, 100000, NULL, "0",
     "classes of a class_cond model (0 = the dataset's count, set by ddpm train)"},
    {"model.cond_image", K_BOOL, OFF(model.cond_image), 0, 0, 1, NULL, "false",
     "image-conditioned restoration (SR3/Palette): conv_in sees concat(x_t, y[, mask]), y degraded by train.degrade"},
    {"model.heads", K_INT, OFF(model.heads), 0, 1, 1024, NULL, "4",
     "attention heads of the Transformer2D blocks of a text-conditioned model"},
    {"model.text.max_len", K_INT, OFF(model.text.max_len), 0, 0, 1024, NULL, "0",
     "text conditioning: tokens per caption, start token included (0 = no text); needs data.format captions or scenes"},
    {"model.text.d", K_INT, OFF(model.text.d), 0, 1, 4096, NULL, "64", "text encoder width"},
    {"model.text.layers", K_INT, OFF(model.text.layers), 0, 0, 64, NULL, "2", "text encoder transformer layers"},
    {"model.text.heads", K_INT, OFF(model.text.heads), 0, 1, 1024, NULL, "2", "text encoder attention heads"},
    {"model.text.vocab", K_INT, OFF(model.text.vocab), 0, 0, 65536, NULL, "0",
     "vocabulary size, specials included (0 = from the training captions, set by ddpm train)"},

    {"diffusion.T", K_INT, OFF(diffusion.T), 0, 2, 100000, NULL, "1000", "number of diffusion steps"},
    {"diffusion.schedule", K_STR, OFF(diffusion.schedule), 0, 0, 15, "linear|cosine|sigmoid", "\"linear\"",
     "beta schedule"},
    {"diffusion.beta_start", K_FLOAT, OFF(diffusion.beta_start), 0, 1e-8, 0.5, NULL, "0.0001",
     "first beta (linear, sigmoid)"},
    {"diffusion.beta_end", K_FLOAT, OFF(diffusion.beta_end), 0, 1e-8, 0.999, NULL, "0.02",
     "last beta (linear, sigmoid)"},
    {"diffusion.cosine_s", K_FLOAT, OFF(diffusion.cosine_s), 0, 0, 1, NULL, "0.008", "cosine schedule offset s"},
    {"diffusion.objective", K_STR, OFF(diffusion.objective), 0, 0, 7, "eps|x0|v", "\"eps\"",
     "what the network predicts"},
    {"diffusion.min_snr_gamma", K_FLOAT, OFF(diffusion.min_snr_gamma), 0, 0, 1e6, NULL, "0",
     "min-SNR-gamma loss weighting (0 = off; 5 is the paper's value)"},

    {"train.out_dir", K_STR, OFF(train.out_dir), 0, 0, CFG_STR - 1, NULL, "\"runs/default\"", "run folder"},
    {"train.batch_size", K_INT, OFF(train.batch_size), 0, 1, 1 << 16, NULL, "64", "global batch size"},
    {"train.steps", K_INT, OFF(train.steps), 0, 1, 1e9, NULL, "10000", "training steps"},
    {"train.max_minutes", K_FLOAT, OFF(train.max_minutes), 0, 0, 1e7, NULL, "0",
     "stop and save after this many minutes (0 = no limit)"},
    {"train.optimizer", K_STR, OFF(train.optimizer), 0, 0, 7, "adam|adamw", "\"adam\"", "optimizer"},
    {"train.lr", K_FLOAT, OFF(train.lr), 0, 0, 1e12, NULL, "0.0002", "peak learning rate"},
    {"train.beta1", K_FLOAT, OFF(train.beta1), 0, 0, 0.999999, NULL, "0.9", "Adam beta1"},
    {"train.beta2", K_FLOAT, OFF(train.beta2), 0, 0, 0.999999, NULL, "0.999", "Adam beta2"},
    {"train.eps", K_FLOAT, OFF(train.eps), 0, 1e-12, 1, NULL, "1e-8", "Adam epsilon"},
    {"train.weight_decay", K_FLOAT, OFF(train.weight_decay), 0, 0, 1, NULL, "0",
     "weight decay (decoupled with adamw, L2 with adam)"},
    {"train.warmup", K_INT, OFF(train.warmup), 0, 0, 1e9, NULL, "5000", "linear LR warmup steps"},
    {"train.lr_decay", K_STR, OFF(train.lr_decay), 0, 0, 7, "none|cosine", "\"none\"",
     "LR decay after warmup"},
    {"train.min_lr", K_FLOAT, OFF(train.min_lr), 0, 0, 10, NULL, "0", "final LR of cosine decay"},
    {"train.grad_clip", K_FLOAT, OFF(train.grad_clip), 0, 0, 1e9, NULL, "1.0",
     "clip gradients to this global norm (0 = off)"},
    {"train.ema_decay", K_FLOAT, OFF(train.ema_decay), 0, 0, 1, NULL, "0.9999", "EMA decay"},
    {"train.ema_warmup", K_BOOL, OFF(train.ema_warmup), 0, 0, 1, NULL, "false",
     "EMA decay min(ema_decay, (1+step)/(10+step))"},
    {"train.seed", K_INT, OFF(train.seed), 0, 0, 2147483647, NULL, "0", "seed for init, data and noise"},
    {"train.log_every", K_INT, OFF(train.log_every), 0, 1, 1e9, NULL, "50",
     "log.csv / plain progress line every N steps"},
    {"train.sample_every", K_INT, OFF(train.sample_every), 0, 0, 1e9, NULL, "1000",
     "preview grid every N steps (0 = off)"},
    {"train.ckpt_every", K_INT, OFF(train.ckpt_every), 0, 1, 1e9, NULL, "1000",
     "checkpoint every N steps"},
    {"train.keep", K_INT, OFF(train.keep), 0, 0, 1e6, NULL, "3", "milestone checkpoints kept (0 = none)"},
    {"train.sample_n", K_INT, OFF(train.sample_n), 0, 1, 1024, NULL, "36", "images in the preview grid"},
    {"train.cond_drop", K_FLOAT, OFF(train.cond_drop), 0, 0, 1, NULL, "0.1",
     "class_cond / cond_image: probability that an image's condition is dropped (label -> \"no class\", degraded image -> y = 0, mask 0), for guidance"},
    {"train.degrade", K_DEGRADE, OFF(train.degrade), 0, 0, 0, NULL, "[]",
     "model.cond_image: degradations drawn per example, e.g. [{\"type\": \"downscale\", \"factor\": 4}, {\"type\": \"noise\", \"sigma\": [0.1, 0.5]}] (docs/restoration.md)"},
    {"train.sample_steps", K_INT, OFF(train.sample_steps), 0, 1, 100000, NULL, "20",
     "DDIM steps for the preview grid"},
    {"train.init_from", K_STR, OFF(train.init_from), 0, 0, CFG_STR - 1, NULL, "\"\"",
     "start from the weights of this checkpoint (fresh optimizer, step 0; \"\" = random init)"},
    {"train.lora.rank", K_INT, OFF(train.lora.rank), 0, 0, 1024, NULL, "0",
     "LoRA: freeze the model and train rank-r adapters on train.lora.targets (0 = off: train every weight)"},
    {"train.lora.alpha", K_FLOAT, OFF(train.lora.alpha), 0, 0, 1e6, NULL, "0",
     "LoRA: adapters add (alpha/rank) B A x to their layer (0 = alpha equal to the rank)"},
    {"train.lora.targets", K_FLAGS, OFF(train.lora.targets), 0, 0, 0, "attn|conv|temb|conv_up", "[\"attn\"]",
     "LoRA layer groups: attn (attention q, k, v, proj_out), conv (ResBlock 3x3 convs), temb (ResBlock temb_proj), "
     "conv_up (the 3x3 convs of the middle and up-path ResBlocks only)"},

    {"sample.sampler", K_STR, OFF(sample.sampler), 0, 0, 7, "ddpm|ddim|dpm++2m", "\"ddpm\"",
     "sampler: ddpm (ancestral, all T steps), ddim, dpm++2m (DPM-Solver++(2M))"},
    {"sample.steps", K_INT, OFF(sample.steps), 0, 1, 100000, NULL, "50", "network evaluations of ddim and dpm++2m"},
    {"sample.eta", K_FLOAT, OFF(sample.eta), 0, 0, 1, NULL, "0", "DDIM eta (0 = deterministic)"},
    {"sample.var", K_STR, OFF(sample.var), 0, 0, 7, "small|large", "\"small\"",
     "DDPM variance: posterior (small) or beta (large)"},
    {"sample.spacing", K_STR, OFF(sample.spacing), 0, 0, 11, "auto|leading|trailing|linspace|quadratic|karras|uniform",
     "\"auto\"", "timestep spacing (auto: the measured best, linspace; uniform = leading)"},
    {"sample.clip", K_BOOL, OFF(sample.clip), 0, 0, 1, NULL, "true", "clip predicted x0 to [-1,1]"},
    {"sample.batch", K_INT, OFF(sample.batch), 0, 1, 4096, NULL, "16", "images per forward pass"},
    {"sample.seed", K_INT, OFF(sample.seed), 0, 0, 2147483647, NULL, "0", "sampling seed"},
    {"sample.guidance", K_FLOAT, OFF(sample.guidance), 0, 0, 100, NULL, "3",
     "classifier-free guidance scale S: pred = uncond + S (cond - uncond); 1 = plain conditional, 0 = unconditional"},
    {"sample.guidance_rescale", K_FLOAT, OFF(sample.guidance_rescale), 0, 0, 1, NULL, "0",
     "blend phi of the guided prediction rescaled to the conditional one's per-image std (Lin et al. 2023)"},
};
#pragma GCC diagnostic pop
#define N_KEYS (int)(sizeof KEYS / sizeof KEYS[0])
static const char *SECTIONS[] = {"data", "model", "diffusion", "train", "sample"};
#define N_SECTIONS 5

static const Key *find_key(const char *path) {
    for (int i = 0; i < N_KEYS; i++)
        if (!strcmp(KEYS[i].key, path)) return &KEYS[i];
    return NULL;
}

/* Similarity of two names: 2 * LCS / (len a + len b), as difflib's ratio, in [0, 1]. */
static double similarity(const char *a, const char *b) {
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 63 || lb > 63) return 0;
    int d[64][64];
    for (int i = 0; i <= la; i++)
        for (int j = 0; j <= lb; j++)
            d[i][j] = !i || !j ? 0 : a[i - 1] == b[j - 1] ? d[i - 1][j - 1] + 1
                   : d[i - 1][j] > d[i][j - 1] ? d[i - 1][j] : d[i][j - 1];
    return la + lb ? 2.0 * d[la][lb] / (la + lb) : 0;
}

/* Nearest valid key (or section) for a suggestion; NULL when nothing is close. */
static const char *nearest(const char *path, int sections_only) {
    const char *best = NULL;
    double bs = 0;
    int n = sections_only ? N_SECTIONS : N_KEYS;
    for (int i = 0; i < n; i++) {
        const char *cand = sections_only ? SECTIONS[i] : KEYS[i].key;
        double sc = similarity(path, cand);
        if (sc > bs) bs = sc, best = cand;
    }
    return bs >= 0.6 ? best : NULL;
}

static int unknown_key(const char *label, const char *path, int sections_only) {
    const char *s = nearest(path, sections_only);
    if (s) return err_set(DDPM_EUSAGE, "%s: unknown key \"%s\" (did you mean \"%s\"?)", label, path, s);
    return err_set(DDPM_EUSAGE, "%s: unknown key \"%s\" (run 'ddpm info --keys' for the list)", label, path);
}

static const char *type_name(const Key *k) {
    switch (k->type) {
    case K_INT: return "an integer";
    case K_FLOAT: return "a number";
    case K_BOOL: return "true or false";
    case K_STR: return "a string";
    case K_INTS: return "a list of integers";
    case K_FLAGS: return "a list of names";
    case K_DEGRADE: return "a list of degradations";
    case K_STRS: return "a list of strings";
    }
    return "?";
}

static int ints_cap(const Key *k) { return k->cap ? k->cap : CFG_MAX_LEVELS; }

static int range_error(const char *label, const Key *k, const char *got) {
    if (k->type == K_STRS)
        return err_set(DDPM_EUSAGE, "%s: \"%s\" = %s is out of range: at most %d strings of at most %g bytes", label, k->key,
                       got, ints_cap(k), k->hi);
    if (k->type == K_INTS)
        return err_set(DDPM_EUSAGE, "%s: \"%s\" = %s is out of range: each element must be in [%g, %g] (%s to %d elements)",
                       label, k->key, got, k->lo, k->hi, k->cap ? "0" : "1", ints_cap(k));
    return err_set(DDPM_EUSAGE, "%s: \"%s\" = %s is out of range: allowed [%g, %g]", label, k->key, got, k->lo, k->hi);
}

static int is_integer(double v) { return isfinite(v) && v == floor(v) && fabs(v) < 9e15; }

/* Store JSON value v into c for key k, type- and range-checked. */
static int set_value(Config *c, const Key *k, const cJSON *v, const char *label) {
    char *p = (char *)c + k->off;
    char got[96] = "";
    if (cJSON_IsString(v)) snprintf(got, sizeof got, "\"%.80s\"", v->valuestring);
    else if (cJSON_IsNumber(v)) snprintf(got, sizeof got, "%.10g", v->valuedouble);
    else if (cJSON_IsBool(v)) snprintf(got, sizeof got, "%s", cJSON_IsTrue(v) ? "true" : "false");
    else if (cJSON_IsNull(v)) snprintf(got, sizeof got, "null");
    else if (cJSON_IsArray(v)) snprintf(got, sizeof got, "a list");
    else snprintf(got, sizeof got, "an object");
    switch (k->type) {
    case K_INT:
        if (!cJSON_IsNumber(v) || !is_integer(v->valuedouble))
            return err_set(DDPM_EUSAGE, "%s: \"%s\" must be %s, got %s", label, k->key, type_name(k), got);
        if (v->valuedouble < k->lo || v->valuedouble > k->hi) return range_error(label, k, got);
        *(int *)p = (int)v->valuedouble;
        return DDPM_OK;
    case K_FLOAT:
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
            return err_set(DDPM_EUSAGE, "%s: \"%s\" must be %s, got %s", label, k->key, type_name(k), got);
        if (v->valuedouble < k->lo || v->valuedouble > k->hi) return range_error(label, k, got);
        *(float *)p = (float)v->valuedouble;
        return DDPM_OK;
    case K_BOOL:
        if (!cJSON_IsBool(v))
            return err_set(DDPM_EUSAGE, "%s: \"%s\" must be %s, got %s", label, k->key, type_name(k), got);
        *(bool *)p = cJSON_IsTrue(v);
        return DDPM_OK;
    case K_STR: {
        if (!cJSON_IsString(v))
            return err_set(DDPM_EUSAGE, "%s: \"%s\" must be %s, got %s", label, k->key, type_name(k), got);
        const char *s = v->valuestring;
        if (strlen(s) > (size_t)k->hi)
            return err_set(DDPM_EUSAGE, "%s: \"%s\" is too long (at most %d characters)", label, k->key, (int)k->hi);
        if (k->choices) {
            int ok = 0;
            const char *q = k->choices;
            size_t n = strlen(s);
            while (*q) {
                const char *bar = strchr(q, '|');
                size_t m = bar ? (size_t)(bar - q) : strlen(q);
                if (m == n && !strncmp(q, s, n)) ok = 1;
                q += m + (bar ? 1 : 0);
            }
            if (!ok)
                return err_set(DDPM_EUSAGE, "%s: \"%s\" = %s is not allowed: use one of %s", label, k->key, got,
                               k->choices);
        }
        strcpy(p, s);
        return DDPM_OK;
    }
    case K_INTS: {
        if (!cJSON_IsArray(v))
            return err_set(DDPM_EUSAGE, "%s: \"%s\" must be %s, got %s", label, k->key, type_name(k), got);
        int n = cJSON_GetArraySize(v);
        if (n > ints_cap(k)) return range_error(label, k, got);
        int tmp[CFG_MAX_CLASSES > CFG_MAX_LEVELS ? CFG_MAX_CLASSES : CFG_MAX_LEVELS];
        for (int i = 0; i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(v, i);
            if (!cJSON_IsNumber(e) || !is_integer(e->valuedouble))
                return err_set(DDPM_EUSAGE, "%s: \"%s\"[%d] must be an integer", label, k->key, i);
            if (e->valuedouble < k->lo || e->valuedouble > k->hi) {
                snprintf(got, sizeof got, "%.10g (element %d)", e->valuedouble, i);
                return range_error(label, k, got);
            }
            tmp[i] = (int)e->valuedouble;
        }
        memcpy(p, tmp, sizeof(int) * n);
        *(int *)((char *)c + k->count_off) = n;
        return DDPM_OK;
    }
    case K_STRS: {
        if (!cJSON_IsArray(v))
            return err_set(DDPM_EUSAGE, "%s: \"%s\" must be %s, got %s", label, k->key, type_name(k), got);
        int n = cJSON_GetArraySize(v);
        if (n > ints_cap(k)) return range_error(label, k, got);
        for (int i = 0; i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(v, i);
            if (!cJSON_IsString(e))
                return err_set(DDPM_EUSAGE, "%s: \"%s\"[%d] must be a string", label, k->key, i);
            if (strlen(e->valuestring) > (size_t)k->hi) {
                snprintf(got, sizeof got, "\"%.40s...\" (element %d)", e->valuestring, i);
                return range_error(label, k, got);
            }
        }
        memset(p, 0, (size_t)ints_cap(k) * CFG_CAPTION); /* unused slots zero: equal lists, equal bytes */
        for (int i = 0; i < n; i++) strcpy(p + (size_t)i * CFG_CAPTION, cJSON_GetArrayItem(v, i)->valuestring);
        *(int *)((char *)c + k->count_off) = n;
        return DDPM_OK;
    }
    case K_DEGRADE:
        if (!cJSON_IsArray(v))
            return err_set(DDPM_EUSAGE, "%s: \"%s\" must be %s, got %s", label, k->key, type_name(k), got);
        return degrade_spec_parse((DegradeSpec *)p, v, label);
    case K_FLAGS: {
        /* a list of choices; a single name is a list of one */
        if (!cJSON_IsArray(v) && !cJSON_IsString(v))
            return err_set(DDPM_EUSAGE, "%s: \"%s\" must be %s from %s, got %s", label, k->key, type_name(k), k->choices, got);
        unsigned mask = 0;
        const cJSON *e = cJSON_IsArray(v) ? v->child : v;
        for (int i = 0; e; e = cJSON_IsArray(v) ? e->next : NULL, i++) {
            int bit = -1, j = 0;
            for (const char *q = k->choices; cJSON_IsString(e) && *q; j++) {
                const char *bar = strchr(q, '|');
                size_t m = bar ? (size_t)(bar - q) : strlen(q);
                if (strlen(e->valuestring) == m && !strncmp(q, e->valuestring, m)) bit = j;
                q += m + (bar ? 1 : 0);
            }
            if (bit < 0) {
                if (cJSON_IsString(e)) snprintf(got, sizeof got, "\"%.80s\"", e->valuestring);
                return err_set(DDPM_EUSAGE, "%s: \"%s\"[%d] = %s is not allowed: use names from %s", label, k->key, i,
                               cJSON_IsString(e) ? got : "not a string", k->choices);
            }
            mask |= 1u << bit;
        }
        *(unsigned *)p = mask;
        return DDPM_OK;
    }
    }
    return DDPM_OK;
}

/* "section.group" with keys "section.group.*" (e.g. train.lora): 1 if path names such a group. */
static int is_group(const char *path) {
    size_t n = strlen(path);
    for (int i = 0; i < N_KEYS; i++)
        if (!strncmp(KEYS[i].key, path, n) && KEYS[i].key[n] == '.') return 1;
    return 0;
}

/* Store v at path: a key, or a group whose object members are its keys. */
static int set_path(Config *c, const char *path, const cJSON *v, const char *label) {
    const Key *k = find_key(path);
    if (k) return set_value(c, k, v, label);
    if (!is_group(path)) return unknown_key(label, path, 0);
    if (!cJSON_IsObject(v))
        return err_set(DDPM_EUSAGE, "%s: \"%s\" must be an object of keys (see 'ddpm info --keys' for %s.*)", label, path, path);
    for (const cJSON *kv = v->child; kv; kv = kv->next) {
        char sub[160];
        snprintf(sub, sizeof sub, "%s.%s", path, kv->string);
        int rc = set_path(c, sub, kv, label);
        if (rc) return rc;
    }
    return DDPM_OK;
}

void config_defaults(Config *c) {
    memset(c, 0, sizeof *c);
    for (int i = 0; i < N_KEYS; i++) {
        cJSON *v = cJSON_Parse(KEYS[i].def);
        int rc = set_value(c, &KEYS[i], v, "defaults");
        CHECK(rc == 0, "bad default for %s: %s", KEYS[i].key, err_msg());
        cJSON_Delete(v);
    }
}

/* Line and column of byte offset `pos` in text. */
static void line_col(const char *text, size_t pos, int *line, int *col) {
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < pos && text[i]; i++) {
        if (text[i] == '\n') (*line)++, *col = 1;
        else (*col)++;
    }
}

int config_parse(Config *c, const char *json, const char *label) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json, &end, 1);
    if (!root) {
        int line, col;
        size_t pos = end ? (size_t)(end - json) : 0;
        const char *e = cJSON_GetErrorPtr();
        if (e && e >= json && e <= json + strlen(json)) pos = (size_t)(e - json);
        line_col(json, pos, &line, &col);
        return err_set(DDPM_EUSAGE, "%s:%d:%d: malformed JSON (check for a missing comma, quote or brace near here)",
                       label, line, col);
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return err_set(DDPM_EUSAGE, "%s: the config must be a JSON object with sections data, model, diffusion, train, sample", label);
    }
    int rc = DDPM_OK;
    for (cJSON *sec = root->child; sec && !rc; sec = sec->next) {
        int known = 0;
        for (int i = 0; i < N_SECTIONS; i++) known |= !strcmp(sec->string, SECTIONS[i]);
        if (!known) {
            rc = unknown_key(label, sec->string, 1);
            break;
        }
        if (!cJSON_IsObject(sec)) {
            rc = err_set(DDPM_EUSAGE, "%s: \"%s\" must be an object of keys", label, sec->string);
            break;
        }
        for (cJSON *kv = sec->child; kv && !rc; kv = kv->next) {
            char path[160];
            snprintf(path, sizeof path, "%s.%s", sec->string, kv->string);
            rc = set_path(c, path, kv, label);
        }
    }
    cJSON_Delete(root);
    return rc;
}

int config_load(Config *c, const char *path) {
    char *text;
    size_t n;
    if (file_read_all(path, &text, &n))
        return err_set(DDPM_EUSAGE, "%s: cannot read config: %s (check the path)", path,
                       path_exists(path) ? "not a readable file" : "no such file");
    int rc = config_parse(c, text, path);
    free(text);
    return rc ? rc : config_validate(c);
}

int config_set(Config *c, const char *assignment) {
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment)
        return err_set(DDPM_EUSAGE, "--set %s: expected section.key=value, e.g. --set train.lr=1e-4", assignment);
    char path[160];
    size_t n = (size_t)(eq - assignment);
    if (n >= sizeof path) n = sizeof path - 1;
    memcpy(path, assignment, n);
    path[n] = 0;
    const Key *k = find_key(path);
    if (!k && !is_group(path)) return unknown_key("--set", path, 0);
    const char *val = eq + 1;
    /* the whole value must be JSON (cJSON_Parse alone would take "1e-4x" as 1e-4) */
    cJSON *v = cJSON_ParseWithOpts(val, NULL, 1);
    if (k && (!v || (k->type == K_STR && !cJSON_IsString(v)))) {
        cJSON_Delete(v);
        v = cJSON_CreateString(val); /* bare words are strings: --set data.format=cifar10 */
    }
    if (!v) v = cJSON_CreateString(val);
    int rc = set_path(c, path, v, "--set");
    cJSON_Delete(v);
    return rc;
}

int config_validate(const Config *c) {
    const char *L = "config";
    if (c->model.n_levels < 1) return err_set(DDPM_EUSAGE, "%s: \"model.ch_mult\" needs at least one level", L);
    int div = 1 << (c->model.n_levels - 1);
    if (c->data.image_size % div)
        return err_set(DDPM_EUSAGE,
                       "%s: \"data.image_size\" = %d must be divisible by 2^(levels-1) = %d for %d levels (\"model.ch_mult\")",
                       L, c->data.image_size, div, c->model.n_levels);
    for (int i = 0; i < c->model.n_levels; i++) {
        int w = c->model.ch * c->model.ch_mult[i];
        if (w % c->model.groups)
            return err_set(DDPM_EUSAGE, "%s: width %d (model.ch * model.ch_mult[%d]) is not divisible by \"model.groups\" = %d",
                           L, w, i, c->model.groups);
    }
    if (c->model.ch % c->model.groups)
        return err_set(DDPM_EUSAGE, "%s: \"model.ch\" = %d is not divisible by \"model.groups\" = %d", L, c->model.ch,
                       c->model.groups);
    if (c->model.ch % 2 || c->model.ch < 4)
        return err_set(DDPM_EUSAGE, "%s: \"model.ch\" = %d must be even and >= 4 (timestep embedding)", L, c->model.ch);
    for (int a = 0; a < c->model.n_attn; a++) {
        int found = 0, res = c->data.image_size;
        for (int i = 0; i < c->model.n_levels; i++, res /= 2) found |= res == c->model.attn_res[a];
        if (!found) {
            char lv[128] = "";
            res = c->data.image_size;
            for (int i = 0; i < c->model.n_levels; i++, res /= 2)
                snprintf(lv + strlen(lv), sizeof lv - strlen(lv), "%s%d", i ? ", " : "", res);
            return err_set(DDPM_EUSAGE, "%s: \"model.attn_resolutions\" has %d, which is not a resolution of this model (%s)",
                           L, c->model.attn_res[a], lv);
        }
    }
    if (!strcmp(c->diffusion.schedule, "linear") && c->diffusion.beta_end < c->diffusion.beta_start)
        return err_set(DDPM_EUSAGE, "%s: \"diffusion.beta_end\" must be >= \"diffusion.beta_start\"", L);
    for (int i = 0; i < c->data.n_classes; i++)
        for (int j = 0; j < i; j++)
            if (c->data.classes[i] == c->data.classes[j])
                return err_set(DDPM_EUSAGE, "%s: \"data.classes\" lists %d twice (elements %d and %d); list each label once", L,
                               c->data.classes[i], j, i);
    if (c->model.text.max_len > 0) {
        if (c->model.class_cond)
            return err_set(DDPM_EUSAGE, "%s: \"model.class_cond\" and \"model.text\" exclude each other: set model.class_cond = false "
                           "or model.text.max_len = 0", L);
        if (c->model.cond_image)
            return err_set(DDPM_EUSAGE, "%s: \"model.cond_image\" on a text-conditioned model (model.text.max_len > 0) is not "
                           "supported yet: restoration models take a class or no condition; set one of them off", L);
        if (c->train.lora.rank > 0)
            return err_set(DDPM_EUSAGE, "%s: \"train.lora.rank\" > 0 on a text-conditioned model (model.text.max_len > 0): LoRA "
                           "adapters cover the U-Net's own blocks only; set train.lora.rank = 0", L);
        if (c->model.text.d % c->model.text.heads)
            return err_set(DDPM_EUSAGE, "%s: \"model.text.d\" (%d) must be a multiple of \"model.text.heads\" (%d)", L,
                           c->model.text.d, c->model.text.heads);
        for (int i = 0; i < c->model.n_levels; i++)
            if ((c->model.ch * c->model.ch_mult[i]) % c->model.heads)
                return err_set(DDPM_EUSAGE, "%s: level %d's width %d is not a multiple of \"model.heads\" (%d)", L, i,
                               c->model.ch * c->model.ch_mult[i], c->model.heads);
    }
    if (c->train.lora.rank > 0 && !c->train.lora.targets)
        return err_set(DDPM_EUSAGE, "%s: \"train.lora.targets\" is empty: name at least one group of attn, conv, temb "
                       "(or set \"train.lora.rank\" = 0 to train every weight)", L);
    if (c->model.cond_image && c->train.degrade.n == 0)
        return err_set(DDPM_EUSAGE, "%s: \"model.cond_image\" is true but \"train.degrade\" is empty: list the degradations "
                       "the model learns to undo (docs/restoration.md)", L);
    if (!c->model.cond_image && c->train.degrade.n > 0)
        return err_set(DDPM_EUSAGE, "%s: \"train.degrade\" is set but \"model.cond_image\" is false: set it to true to "
                       "train a restoration model", L);
    if (c->model.cond_image) {
        int rc = degrade_spec_check(&c->train.degrade, c->data.image_size, c->data.image_size, L);
        if (rc) return rc;
    }
    return DDPM_OK;
}

char *config_to_json(const Config *c) {
    cJSON *root = cJSON_CreateObject();
    for (int s = 0; s < N_SECTIONS; s++) {
        cJSON *top = cJSON_AddObjectToObject(root, SECTIONS[s]);
        size_t sl = strlen(SECTIONS[s]);
        for (int i = 0; i < N_KEYS; i++) {
            const Key *k = &KEYS[i];
            if (strncmp(k->key, SECTIONS[s], sl) || k->key[sl] != '.') continue;
            const char *name = k->key + sl + 1;
            const char *p = (const char *)c + k->off;
            cJSON *sec = top; /* the object the key goes in: "train.lora.rank" in "lora" of "train" */
            for (const char *dot; (dot = strchr(name, '.')); name = dot + 1) {
                char grp[64];
                snprintf(grp, sizeof grp, "%.*s", (int)(dot - name), name);
                cJSON *g = cJSON_GetObjectItemCaseSensitive(sec, grp);
                sec = g ? g : cJSON_AddObjectToObject(sec, grp);
            }
            switch (k->type) {
            case K_INT: cJSON_AddNumberToObject(sec, name, *(const int *)p); break;
            case K_FLOAT: {
                /* shortest decimal that reads back as the same float */
                char buf[32];
                float f = *(const float *)p;
                for (int prec = 6; prec <= 9; prec++) {
                    snprintf(buf, sizeof buf, "%.*g", prec, f);
                    if (strtof(buf, NULL) == f) break;
                }
                cJSON_AddItemToObject(sec, name, cJSON_CreateRaw(buf));
                break;
            }
            case K_BOOL: cJSON_AddBoolToObject(sec, name, *(const bool *)p); break;
            case K_STR: cJSON_AddStringToObject(sec, name, p); break;
            case K_INTS: {
                int n = *(const int *)((const char *)c + k->count_off);
                cJSON_AddItemToObject(sec, name, cJSON_CreateIntArray((const int *)p, n));
                break;
            }
            case K_DEGRADE: cJSON_AddItemToObject(sec, name, degrade_spec_to_json((const DegradeSpec *)p)); break;
            case K_STRS: {
                cJSON *a = cJSON_AddArrayToObject(sec, name);
                int n = *(const int *)((const char *)c + k->count_off);
                for (int j = 0; j < n; j++) cJSON_AddItemToArray(a, cJSON_CreateString(p + (size_t)j * CFG_CAPTION));
                break;
            }
            case K_FLAGS: {
                cJSON *a = cJSON_AddArrayToObject(sec, name);
                unsigned mask = *(const unsigned *)p;
                int j = 0;
                for (const char *q = k->choices; *q; j++) {
                    const char *bar = strchr(q, '|');
                    size_t m = bar ? (size_t)(bar - q) : strlen(q);
                    char nm[32];
                    snprintf(nm, sizeof nm, "%.*s", (int)m, q);
                    if (mask & (1u << j)) cJSON_AddItemToArray(a, cJSON_CreateString(nm));
                    q += m + (bar ? 1 : 0);
                }
                break;
            }
            }
        }
    }
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    return out;
}

void config_print_keys(FILE *f) {
    fprintf(f, "| key | type | default | meaning |\n|---|---|---|---|\n");
    for (int i = 0; i < N_KEYS; i++) {
        const Key *k = &KEYS[i];
        char range[96] = "";
        if ((k->type == K_STR || k->type == K_FLAGS) && k->choices) {
            snprintf(range, sizeof range, " (%s)", k->choices);
            for (char *q = range; *q; q++)
                if (*q == '|') *q = '/'; /* a bar would split the markdown cell */
        }
        else if (k->type == K_INT || k->type == K_FLOAT || k->type == K_INTS)
            snprintf(range, sizeof range, " [%.10g, %.10g]", k->lo, k->hi); /* exact: 2147483647, not 2.14748e+09 */
        static const char *tn[] = {"int", "float", "bool", "string", "int list", "name list", "degradation list",
                                 "string list"};
        fprintf(f, "| `%s` | %s%s | `%s` | %s |\n", k->key, tn[k->type], range, k->def, k->help);
    }
}
