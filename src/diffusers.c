/* diffusers: import and export of UNet2DModel folders; the name map is in
 * include/ddpm/diffusers.h. Facts used (diffusers' UNet2DModel and DDPMScheduler):
 * defaults of every config key, attention heads = channels / attention_head_dim (null:
 * one head), downsample_padding 0 pads right/bottom by one, up_blocks.0 is the deepest
 * level, a missing config key takes the diffusers default. */
#include "ddpm/diffusers.h"

#include <cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "ddpm/safetensors.h"
#include "ddpm/err.h"
#include "ddpm/fsio.h"
#include "ddpm/checkpoint.h"

#define WEIGHTS_FILE "diffusion_pytorch_model.safetensors"
#define DIFFUSERS_VERSION "0.30.0"

/* ---- names ---------------------------------------------------------------------------- */

/* suffix maps: ddpm -> diffusers (current, legacy) */
static const char *const RES_MAP[][2] = {{"norm1.", "norm1."}, {"conv1.", "conv1."}, {"temb_proj.", "time_emb_proj."},
                                         {"norm2.", "norm2."}, {"conv2.", "conv2."}, {"nin_shortcut.", "conv_shortcut."}};
static const char *const ATT_MAP[][3] = {{"norm.", "group_norm.", "group_norm."},
                                         {"q.", "to_q.", "query."},
                                         {"k.", "to_k.", "key."},
                                         {"v.", "to_v.", "value."},
                                         {"proj_out.", "to_out.0.", "proj_attn."}};

static int starts(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* Map one ddpm parameter name; legacy gets "" when it is the same name. */
static void map_name(const char *p, int n_levels, char *cur, char *leg, size_t n) {
    int L, i, k = 0;
    char head[64] = "";
    leg[0] = 0;
    if (starts(p, "temb.dense0.")) snprintf(cur, n, "time_embedding.linear_1.%s", p + 12);
    else if (starts(p, "temb.dense1.")) snprintf(cur, n, "time_embedding.linear_2.%s", p + 12);
    else if (starts(p, "conv_in.") || starts(p, "conv_out.")) snprintf(cur, n, "%s", p);
    else if (starts(p, "norm_out.")) snprintf(cur, n, "conv_norm_out.%s", p + 9);
    else {
        const char *rest = NULL;
        if (sscanf(p, "down.%d.downsample.%n", &L, &k) == 1 && k)
            snprintf(cur, n, "down_blocks.%d.downsamplers.0.%s", L, p + k);
        else if (sscanf(p, "up.%d.upsample.%n", &L, &k) == 1 && k)
            snprintf(cur, n, "up_blocks.%d.upsamplers.0.%s", n_levels - 1 - L, p + k);
        else {
            const char *kind = NULL;
            if (sscanf(p, "down.%d.res.%d.%n", &L, &i, &k) == 2 && k) snprintf(head, sizeof head, "down_blocks.%d.resnets.%d.", L, i), kind = "res";
            else if (sscanf(p, "down.%d.attn.%d.%n", &L, &i, &k) == 2 && k) snprintf(head, sizeof head, "down_blocks.%d.attentions.%d.", L, i), kind = "attn";
            else if (sscanf(p, "up.%d.res.%d.%n", &L, &i, &k) == 2 && k) snprintf(head, sizeof head, "up_blocks.%d.resnets.%d.", n_levels - 1 - L, i), kind = "res";
            else if (sscanf(p, "up.%d.attn.%d.%n", &L, &i, &k) == 2 && k) snprintf(head, sizeof head, "up_blocks.%d.attentions.%d.", n_levels - 1 - L, i), kind = "attn";
            else if (sscanf(p, "mid.res.%d.%n", &i, &k) == 1 && k) snprintf(head, sizeof head, "mid_block.resnets.%d.", i), kind = "res";
            else if (sscanf(p, "mid.attn.%d.%n", &i, &k) == 1 && k) snprintf(head, sizeof head, "mid_block.attentions.%d.", i), kind = "attn";
            CHECK(kind, "no diffusers name for ddpm parameter %s", p);
            rest = p + k;
            int done = 0;
            if (!strcmp(kind, "res")) {
                for (size_t j = 0; j < sizeof RES_MAP / sizeof RES_MAP[0] && !done; j++)
                    if (starts(rest, RES_MAP[j][0])) snprintf(cur, n, "%s%s%s", head, RES_MAP[j][1], rest + strlen(RES_MAP[j][0])), done = 1;
            } else {
                for (size_t j = 0; j < sizeof ATT_MAP / sizeof ATT_MAP[0] && !done; j++)
                    if (starts(rest, ATT_MAP[j][0])) {
                        const char *tail = rest + strlen(ATT_MAP[j][0]);
                        snprintf(cur, n, "%s%s%s", head, ATT_MAP[j][1], tail);
                        if (strcmp(ATT_MAP[j][1], ATT_MAP[j][2])) snprintf(leg, n, "%s%s%s", head, ATT_MAP[j][2], tail);
                        done = 1;
                    }
            }
            CHECK(done, "no diffusers name for ddpm parameter %s", p);
        }
    }
}

int dfs_table(const UNet *u, DfsTensor **out) {
    DfsTensor *t = xcalloc((size_t)u->nP, sizeof *t);
    int n = 0;
    /* diffusers' order starts with conv_in, then the time embedding; the rest is ddpm's */
    for (int pass = 0; pass < 3; pass++)
        for (int i = 0; i < u->nP; i++) {
            const Param *p = &u->P[i];
            int is_in = starts(p->name, "conv_in."), is_t = starts(p->name, "temb.");
            if ((pass == 0 && !is_in) || (pass == 1 && !is_t) || (pass == 2 && (is_in || is_t))) continue;
            DfsTensor *d = &t[n++];
            map_name(p->name, u->n_levels, d->name, d->legacy, sizeof d->name);
            d->param = i;
            d->ndim = p->ndim;
            d->conv = p->ndim == 4;
            if (d->conv) {
                d->shape[0] = p->shape[0], d->shape[1] = p->shape[3], d->shape[2] = p->shape[1], d->shape[3] = p->shape[2];
            } else {
                for (int k = 0; k < p->ndim; k++) d->shape[k] = p->shape[k];
            }
        }
    *out = t;
    return n;
}

/* ddpm (OC,KH,KW,C) -> PyTorch (OC,C,KH,KW), and back */
static void to_torch(float *dst, const float *src, const int *s) {
    int OC = s[0], KH = s[1], KW = s[2], C = s[3];
    for (int o = 0; o < OC; o++)
        for (int y = 0; y < KH; y++)
            for (int x = 0; x < KW; x++)
                for (int c = 0; c < C; c++) dst[(((size_t)o * C + c) * KH + y) * KW + x] = src[(((size_t)o * KH + y) * KW + x) * C + c];
}

static void from_torch(float *dst, const float *src, const int *s) {
    int OC = s[0], KH = s[1], KW = s[2], C = s[3];
    for (int o = 0; o < OC; o++)
        for (int y = 0; y < KH; y++)
            for (int x = 0; x < KW; x++)
                for (int c = 0; c < C; c++) dst[(((size_t)o * KH + y) * KW + x) * C + c] = src[(((size_t)o * C + c) * KH + y) * KW + x];
}

/* ---- config.json / scheduler_config.json -> Config ------------------------------------- */

/* UNet2DModel's keyword arguments and their defaults (what a missing key means). */
static const char UNET_DEFAULTS[] =
    "{\"sample_size\": null, \"in_channels\": 3, \"out_channels\": 3, \"center_input_sample\": false,"
    " \"time_embedding_type\": \"positional\", \"time_embedding_dim\": null, \"freq_shift\": 0, \"flip_sin_to_cos\": true,"
    " \"down_block_types\": [\"DownBlock2D\", \"AttnDownBlock2D\", \"AttnDownBlock2D\", \"AttnDownBlock2D\"],"
    " \"mid_block_type\": \"UNetMidBlock2D\","
    " \"up_block_types\": [\"AttnUpBlock2D\", \"AttnUpBlock2D\", \"AttnUpBlock2D\", \"UpBlock2D\"],"
    " \"block_out_channels\": [224, 448, 672, 896], \"layers_per_block\": 2, \"mid_block_scale_factor\": 1,"
    " \"downsample_padding\": 1, \"downsample_type\": \"conv\", \"upsample_type\": \"conv\", \"dropout\": 0.0,"
    " \"act_fn\": \"silu\", \"attention_head_dim\": 8, \"norm_num_groups\": 32, \"attn_norm_num_groups\": null,"
    " \"norm_eps\": 1e-5, \"resnet_time_scale_shift\": \"default\", \"add_attention\": true, \"class_embed_type\": null,"
    " \"num_class_embeds\": null, \"num_train_timesteps\": null}";

/* DDPMScheduler's (and DDIMScheduler's) keyword arguments and defaults. */
static const char SCHED_DEFAULTS[] =
    "{\"num_train_timesteps\": 1000, \"beta_start\": 0.0001, \"beta_end\": 0.02, \"beta_schedule\": \"linear\","
    " \"trained_betas\": null, \"variance_type\": \"fixed_small\", \"clip_sample\": true, \"prediction_type\": \"epsilon\","
    " \"thresholding\": false, \"dynamic_thresholding_ratio\": 0.995, \"clip_sample_range\": 1.0, \"sample_max_value\": 1.0,"
    " \"timestep_spacing\": \"leading\", \"steps_offset\": 0, \"rescale_betas_zero_snr\": false, \"set_alpha_to_one\": true,"
    " \"skip_prk_steps\": false, \"tensor_format\": \"pt\", \"timestep_values\": null, \"predict_epsilon\": true}";

/* Names of UNet2DModel arguments before diffusers 0.1 renamed them (its
 * change_naming_configs_and_checkpoints.py); today's diffusers ignores them, and so do we. */
static const char *const UNET_OLD_NAMES[] = {"image_size", "num_res_blocks", "block_channels", "down_blocks", "up_blocks",
                                             "downscale_freq_shift", "resnet_num_groups", "resnet_act_fn", "resnet_eps",
                                             "num_head_channels"};

typedef struct {
    const char *label;
    cJSON *user, *defs;
} Json;

/* The value of key: the file's, else diffusers' default. */
static const cJSON *jget(const Json *j, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j->user, key);
    return v ? v : cJSON_GetObjectItemCaseSensitive(j->defs, key);
}

/* "= <value>" or "is absent (diffusers' default <value>)" */
static const char *jdesc(const Json *j, const char *key, char *buf, size_t n) {
    const cJSON *v = jget(j, key);
    char *s = cJSON_PrintUnformatted(v);
    int absent = !cJSON_GetObjectItemCaseSensitive(j->user, key);
    snprintf(buf, n, absent ? "is absent (diffusers' default %.60s)" : "= %.60s", s ? s : "?");
    free(s);
    return buf;
}

static int jbad(const Json *j, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int jbad(const Json *j, const char *key, const char *fmt, ...) {
    char why[512], d[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return err_set(DDPM_EUSAGE, "%s: \"%s\" %s: %s", j->label, key, jdesc(j, key, d, sizeof d), why);
}

static int jstr_is(const Json *j, const char *key, const char *want) {
    const cJSON *v = jget(j, key);
    return cJSON_IsString(v) && !strcmp(v->valuestring, want);
}

static int jint(const Json *j, const char *key, int lo, int *out) {
    const cJSON *v = jget(j, key);
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo || v->valuedouble > 1e9)
        return jbad(j, key, "expected an integer >= %d", lo);
    *out = (int)v->valuedouble;
    return 0;
}

static int jnum(const Json *j, const char *key, double *out) {
    const cJSON *v = jget(j, key);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return jbad(j, key, "expected a number");
    *out = v->valuedouble;
    return 0;
}

static int jbool(const Json *j, const char *key, int *out) {
    const cJSON *v = jget(j, key);
    if (!cJSON_IsBool(v)) return jbad(j, key, "expected true or false");
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Parse text and check every key is one the class takes; keys starting with '_'
 * (_class_name, _diffusers_version, ...) are bookkeeping. */
static int json_open(Json *j, const char *text, const char *label, const char *defaults) {
    j->label = label;
    j->defs = cJSON_Parse(defaults);
    CHECK(j->defs, "defaults do not parse");
    j->user = text ? cJSON_Parse(text) : cJSON_CreateObject();
    if (!j->user || !cJSON_IsObject(j->user)) {
        cJSON_Delete(j->user), cJSON_Delete(j->defs);
        j->user = j->defs = NULL;
        return err_set(DDPM_EUSAGE, "%s: not a JSON object (malformed or truncated file?)", label);
    }
    for (const cJSON *k = j->user->child; k; k = k->next) {
        int old = 0;
        for (size_t i = 0; defaults == UNET_DEFAULTS && i < sizeof UNET_OLD_NAMES / sizeof UNET_OLD_NAMES[0]; i++) old |= !strcmp(k->string, UNET_OLD_NAMES[i]);
        if (!old && k->string[0] != '_' && !cJSON_GetObjectItemCaseSensitive(j->defs, k->string)) {
            char *s = cJSON_PrintUnformatted(k);
            int rc = err_set(DDPM_EUSAGE, "%s: unknown key \"%s\" = %.60s: ddpm does not know what it changes, so it refuses the folder",
                             label, k->string, s ? s : "?");
            free(s);
            cJSON_Delete(j->user), cJSON_Delete(j->defs);
            j->user = j->defs = NULL;
            return rc;
        }
    }
    return DDPM_OK;
}

static void json_close(Json *j) {
    cJSON_Delete(j->user);
    cJSON_Delete(j->defs);
}

/* Shortest decimal that reads back as the same float (0.1f -> 0.1, not 0.100000001). */
static double fnice(float v) {
    char b[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(b, sizeof b, "%.*g", p, (double)v);
        if ((float)strtod(b, NULL) == v) break;
    }
    return strtod(b, NULL);
}

typedef struct {
    int n, boc[CFG_MAX_LEVELS], attn[CFG_MAX_LEVELS];
    int size, chan, lpb, groups;
    double dropout;
} UnetCfg;

static int parse_unet(const Json *j, UnetCfg *m) {
    const cJSON *v;
    int rc, b = 0;
    memset(m, 0, sizeof *m);
    v = cJSON_GetObjectItemCaseSensitive(j->user, "_class_name");
    if (v && !(cJSON_IsString(v) && !strcmp(v->valuestring, "UNet2DModel")))
        return jbad(j, "_class_name", "ddpm imports UNet2DModel folders only");
    /* levels */
    const cJSON *bo = jget(j, "block_out_channels"), *dt = jget(j, "down_block_types"), *ut = jget(j, "up_block_types");
    if (!cJSON_IsArray(bo) || cJSON_GetArraySize(bo) < 1 || cJSON_GetArraySize(bo) > CFG_MAX_LEVELS)
        return jbad(j, "block_out_channels", "expected a list of 1 to %d widths", CFG_MAX_LEVELS);
    m->n = cJSON_GetArraySize(bo);
    for (int i = 0; i < m->n; i++) {
        v = cJSON_GetArrayItem(bo, i);
        if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 1 || v->valuedouble > 1e6)
            return jbad(j, "block_out_channels", "element %d is not a positive integer", i);
        m->boc[i] = (int)v->valuedouble;
        if (m->boc[i] % m->boc[0])
            return jbad(j, "block_out_channels", "%d is not a multiple of the first width %d: ddpm's widths are model.ch x model.ch_mult",
                        m->boc[i], m->boc[0]);
    }
    if (!cJSON_IsArray(dt) || cJSON_GetArraySize(dt) != m->n)
        return jbad(j, "down_block_types", "expected a list of %d block types, one per block_out_channels entry", m->n);
    if (!cJSON_IsArray(ut) || cJSON_GetArraySize(ut) != m->n)
        return jbad(j, "up_block_types", "expected a list of %d block types, one per block_out_channels entry", m->n);
    for (int i = 0; i < m->n; i++) {
        v = cJSON_GetArrayItem(dt, i);
        int a = cJSON_IsString(v) && !strcmp(v->valuestring, "AttnDownBlock2D");
        if (!a && !(cJSON_IsString(v) && !strcmp(v->valuestring, "DownBlock2D")))
            return jbad(j, "down_block_types", "element %d is not DownBlock2D or AttnDownBlock2D, the only down blocks ddpm builds", i);
        m->attn[i] = a;
    }
    for (int i = 0; i < m->n; i++) {
        v = cJSON_GetArrayItem(ut, i);
        int a = cJSON_IsString(v) && !strcmp(v->valuestring, "AttnUpBlock2D");
        if (!a && !(cJSON_IsString(v) && !strcmp(v->valuestring, "UpBlock2D")))
            return jbad(j, "up_block_types", "element %d is not UpBlock2D or AttnUpBlock2D, the only up blocks ddpm builds", i);
        if (a != m->attn[m->n - 1 - i])
            return jbad(j, "up_block_types", "element %d (the level of down_block_types element %d) %s attention while the down block %s; "
                        "ddpm has attention at the same resolutions on the way down and up", i, m->n - 1 - i, a ? "has" : "has no",
                        a ? "has none" : "has");
    }
    if (!jstr_is(j, "mid_block_type", "UNetMidBlock2D"))
        return jbad(j, "mid_block_type", "ddpm's middle is UNetMidBlock2D (ResBlock, attention, ResBlock)");
    if ((rc = jbool(j, "add_attention", &b))) return rc;
    if (!b) return jbad(j, "add_attention", "ddpm's middle block always has attention");
    if ((rc = jint(j, "layers_per_block", 1, &m->lpb))) return rc;
    /* image */
    int out_ch;
    if ((rc = jint(j, "in_channels", 1, &m->chan)) || (rc = jint(j, "out_channels", 1, &out_ch))) return rc;
    if (out_ch != m->chan)
        return jbad(j, "out_channels", "differs from in_channels = %d; ddpm's network predicts one value per input channel (no learned variance)", m->chan);
    v = jget(j, "sample_size");
    if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 2 && cJSON_IsNumber(cJSON_GetArrayItem(v, 0)) &&
        cJSON_GetArrayItem(v, 0)->valuedouble == cJSON_GetArrayItem(v, 1)->valuedouble)
        m->size = (int)cJSON_GetArrayItem(v, 0)->valuedouble;
    else if (cJSON_IsNumber(v))
        m->size = (int)v->valuedouble;
    else
        return jbad(j, "sample_size", "ddpm needs the (square) image size the model was trained at");
    if (cJSON_IsArray(v)) v = cJSON_GetArrayItem(v, 0);
    if (v->valuedouble != m->size) return jbad(j, "sample_size", "expected a whole number of pixels");
    if (m->size < 1 || m->size % (1 << (m->n - 1)))
        return jbad(j, "sample_size", "the %d levels halve it %d times: it must be a positive multiple of %d", m->n, m->n - 1, 1 << (m->n - 1));
    /* time embedding */
    if ((rc = jbool(j, "center_input_sample", &b))) return rc;
    if (b) return jbad(j, "center_input_sample", "ddpm feeds x_t in [-1, 1] as it is");
    if (!jstr_is(j, "time_embedding_type", "positional"))
        return jbad(j, "time_embedding_type", "ddpm's timestep embedding is the sinusoidal (\"positional\") one");
    v = jget(j, "time_embedding_dim");
    if (!cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 4.0 * m->boc[0]))
        return jbad(j, "time_embedding_dim", "ddpm's timestep MLP is 4 x block_out_channels[0] = %d wide", 4 * m->boc[0]);
    double x;
    if ((rc = jnum(j, "freq_shift", &x))) return rc;
    if (x != 1) return jbad(j, "freq_shift", "ddpm's frequencies are exp(-ln(10000) i / (half - 1)), i.e. freq_shift 1");
    if ((rc = jbool(j, "flip_sin_to_cos", &b))) return rc;
    if (b) return jbad(j, "flip_sin_to_cos", "ddpm's embedding is [sin, cos] (flip_sin_to_cos false)");
    /* blocks */
    if ((rc = jnum(j, "mid_block_scale_factor", &x))) return rc;
    if (x != 1) return jbad(j, "mid_block_scale_factor", "ddpm's residual sums are not rescaled (1)");
    if (m->n > 1) {
        if ((rc = jnum(j, "downsample_padding", &x))) return rc;
        if (x != 0) return jbad(j, "downsample_padding", "ddpm downsamples with one zero row/column at the bottom/right (TF \"SAME\", downsample_padding 0)");
    }
    if (!jstr_is(j, "downsample_type", "conv")) return jbad(j, "downsample_type", "ddpm downsamples with a stride-2 3x3 conv (\"conv\")");
    if (!jstr_is(j, "upsample_type", "conv")) return jbad(j, "upsample_type", "ddpm upsamples with nearest x2 and a 3x3 conv (\"conv\")");
    if (!jstr_is(j, "act_fn", "silu") && !jstr_is(j, "act_fn", "swish")) return jbad(j, "act_fn", "ddpm's activation is SiLU");
    if (!jstr_is(j, "resnet_time_scale_shift", "default"))
        return jbad(j, "resnet_time_scale_shift", "ddpm adds the timestep projection (\"default\"), it does not scale and shift");
    if ((rc = jnum(j, "dropout", &m->dropout))) return rc;
    if (m->dropout < 0 || m->dropout >= 1) return jbad(j, "dropout", "expected a probability in [0, 1)");
    /* attention: one head everywhere */
    v = jget(j, "attention_head_dim");
    if (!cJSON_IsNull(v)) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 1) return jbad(j, "attention_head_dim", "expected null or a positive integer");
        int hd = (int)v->valuedouble;
        for (int i = 0; i <= m->n; i++) {
            int C = i < m->n ? m->boc[i] : m->boc[m->n - 1];
            if (i < m->n && !m->attn[i]) continue;
            char where[32];
            if (i < m->n) snprintf(where, sizeof where, "down_blocks.%d", i);
            else snprintf(where, sizeof where, "mid_block");
            if (hd != C)
                return jbad(j, "attention_head_dim", "gives %d head(s) of %d channels in %s (%d channels); ddpm's attention has one head (use null)",
                            C / hd, hd, where, C);
        }
    }
    if ((rc = jint(j, "norm_num_groups", 1, &m->groups))) return rc;
    for (int i = 0; i < m->n; i++)
        if (m->boc[i] % m->groups) return jbad(j, "norm_num_groups", "does not divide the width %d of block_out_channels[%d]", m->boc[i], i);
    v = jget(j, "attn_norm_num_groups");
    if (!cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == m->groups))
        return jbad(j, "attn_norm_num_groups", "ddpm's attention GroupNorm has norm_num_groups = %d groups", m->groups);
    if ((rc = jnum(j, "norm_eps", &x))) return rc;
    if (fabs(x - 1e-6) > 1e-12) return jbad(j, "norm_eps", "ddpm's GroupNorm epsilon is 1e-6");
    /* conditioning */
    if (!cJSON_IsNull(jget(j, "class_embed_type")))
        return jbad(j, "class_embed_type", "ddpm has no class embedding yet; only unconditional models are imported");
    if (!cJSON_IsNull(jget(j, "num_class_embeds")))
        return jbad(j, "num_class_embeds", "ddpm has no class embedding yet; only unconditional models are imported");
    return DDPM_OK;
}

typedef struct {
    int T, clip, ddim;
    double b0, b1;
    const char *schedule, *var, *objective;
    char vt_name[32];
} SchedCfg;

static int parse_sched(const Json *j, SchedCfg *s) {
    int rc, b = 0;
    double x = 0;
    memset(s, 0, sizeof *s);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j->user, "_class_name");
    s->ddim = cJSON_IsString(v) && !strcmp(v->valuestring, "DDIMScheduler");
    if (!cJSON_IsNull(jget(j, "trained_betas"))) return jbad(j, "trained_betas", "ddpm computes its betas from a named schedule");
    if (!cJSON_IsNull(jget(j, "timestep_values"))) return jbad(j, "timestep_values", "ddpm's timesteps are 0 .. num_train_timesteps-1");
    if (!cJSON_IsTrue(jget(j, "predict_epsilon")))
        return jbad(j, "predict_epsilon", "this old key is ambiguous next to prediction_type; remove it and set prediction_type");
    if ((rc = jint(j, "num_train_timesteps", 2, &s->T)) || (rc = jnum(j, "beta_start", &s->b0)) || (rc = jnum(j, "beta_end", &s->b1)))
        return rc;
    if (jstr_is(j, "beta_schedule", "linear")) s->schedule = "linear";
    else if (jstr_is(j, "beta_schedule", "squaredcos_cap_v2")) s->schedule = "cosine";
    else if (jstr_is(j, "beta_schedule", "sigmoid")) s->schedule = "sigmoid";
    else return jbad(j, "beta_schedule", "ddpm has linear, squaredcos_cap_v2 (its cosine) and sigmoid");
    v = jget(j, "variance_type");
    if (!s->ddim) {
        if (jstr_is(j, "variance_type", "fixed_small") || jstr_is(j, "variance_type", "fixed_small_log")) s->var = "small";
        else if (jstr_is(j, "variance_type", "fixed_large") || jstr_is(j, "variance_type", "fixed_large_log")) s->var = "large";
        else return jbad(j, "variance_type", "ddpm's reverse variances are fixed: fixed_small (--var small) or fixed_large (--var large)");
        snprintf(s->vt_name, sizeof s->vt_name, "%s", v->valuestring);
    } else {
        s->var = "small";
        snprintf(s->vt_name, sizeof s->vt_name, "fixed_small");
    }
    if ((rc = jbool(j, "clip_sample", &s->clip))) return rc;
    if (s->clip) {
        if ((rc = jnum(j, "clip_sample_range", &x))) return rc;
        if (x != 1) return jbad(j, "clip_sample_range", "ddpm clips the predicted x0 to [-1, 1]");
    }
    if (jstr_is(j, "prediction_type", "epsilon")) s->objective = "eps";
    else if (jstr_is(j, "prediction_type", "sample")) s->objective = "x0";
    else if (jstr_is(j, "prediction_type", "v_prediction")) s->objective = "v";
    else return jbad(j, "prediction_type", "ddpm's objectives are epsilon, sample and v_prediction");
    if ((rc = jbool(j, "thresholding", &b))) return rc;
    if (b) return jbad(j, "thresholding", "ddpm clips x0 to [-1, 1]; dynamic thresholding is not implemented");
    if ((rc = jbool(j, "rescale_betas_zero_snr", &b))) return rc;
    if (b) return jbad(j, "rescale_betas_zero_snr", "ddpm's schedules are not rescaled to zero terminal SNR");
    return DDPM_OK;
}

int dfs_config_from_json(Config *c, const char *unet_json, const char *unet_label, const char *sched_json,
                         const char *sched_label, char *note, size_t note_n) {
    Json ju, js;
    UnetCfg m;
    SchedCfg s;
    int rc = json_open(&ju, unet_json, unet_label, UNET_DEFAULTS);
    if (rc) return rc;
    rc = parse_unet(&ju, &m);
    json_close(&ju);
    if (rc) return rc;
    if ((rc = json_open(&js, sched_json, sched_label ? sched_label : "scheduler defaults", SCHED_DEFAULTS))) return rc;
    rc = parse_sched(&js, &s);
    json_close(&js);
    if (rc) return rc;

    /* the same as a ddpm config, so the schema checks ranges and cross-key rules */
    cJSON *root = cJSON_CreateObject(), *data = cJSON_AddObjectToObject(root, "data"), *model = cJSON_AddObjectToObject(root, "model"),
          *diff = cJSON_AddObjectToObject(root, "diffusion"), *smp = cJSON_AddObjectToObject(root, "sample");
    cJSON_AddNumberToObject(data, "image_size", m.size);
    cJSON_AddNumberToObject(data, "channels", m.chan);
    if (m.chan == 3 && m.size == 32) {
        cJSON_AddStringToObject(data, "format", "cifar10");
        cJSON_AddStringToObject(data, "path", "data/cifar-10-batches-bin");
    }
    cJSON_AddNumberToObject(model, "ch", m.boc[0]);
    int mult[CFG_MAX_LEVELS], ares[CFG_MAX_LEVELS], na = 0;
    for (int i = 0, r = m.size; i < m.n; i++, r /= 2) {
        mult[i] = m.boc[i] / m.boc[0];
        if (m.attn[i]) ares[na++] = r;
    }
    cJSON_AddItemToObject(model, "ch_mult", cJSON_CreateIntArray(mult, m.n));
    cJSON_AddNumberToObject(model, "num_res_blocks", m.lpb);
    cJSON_AddItemToObject(model, "attn_resolutions", cJSON_CreateIntArray(ares, na));
    cJSON_AddNumberToObject(model, "dropout", m.dropout);
    cJSON_AddNumberToObject(model, "groups", m.groups);
    cJSON_AddNumberToObject(diff, "T", s.T);
    cJSON_AddStringToObject(diff, "schedule", s.schedule);
    cJSON_AddNumberToObject(diff, "beta_start", s.b0);
    cJSON_AddNumberToObject(diff, "beta_end", s.b1);
    cJSON_AddNumberToObject(diff, "cosine_s", 0.008);
    cJSON_AddStringToObject(diff, "objective", s.objective);
    cJSON_AddStringToObject(smp, "sampler", s.ddim ? "ddim" : "ddpm");
    cJSON_AddStringToObject(smp, "var", s.var);
    cJSON_AddBoolToObject(smp, "clip", s.clip);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    char label[700];
    snprintf(label, sizeof label, "%s (as a ddpm config)", unet_label);
    config_defaults(c);
    rc = config_parse(c, text, label);
    free(text);
    if (!rc && (rc = config_validate(c))) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", err_msg());
        rc = err_set(DDPM_EUSAGE, "%s: this model does not fit ddpm: %s", unet_label, msg);
    }
    if (!rc && note)
        snprintf(note, note_n, "%s betas %g..%g, T %d, %s (--var %s), clip_sample %s, %s", s.schedule, s.b0, s.b1, s.T, s.vt_name, s.var,
                 s.clip ? "true" : "false", s.objective);
    return rc;
}

/* ---- Config -> config.json / scheduler_config.json -------------------------------------- */

int dfs_exportable(const Config *c) {
    if (!strcmp(c->diffusion.schedule, "cosine") && fabs(c->diffusion.cosine_s - 0.008) > 1e-9)
        return err_set(DDPM_EUSAGE, "diffusers cannot express this model: \"diffusion.cosine_s\" = %g, but diffusers' cosine "
                       "schedule (squaredcos_cap_v2) has s = 0.008 built in", fnice(c->diffusion.cosine_s));
    if (c->data.image_size % (1 << (c->model.n_levels - 1)))
        return err_set(DDPM_EUSAGE, "diffusers cannot express this model: image size %d is not divisible by 2^(levels-1)", c->data.image_size);
    if (c->model.text.max_len > 0)
        return err_set(DDPM_EUSAGE, "ddpm does not export text-conditioned models (model.text): only unconditional UNet2DModel "
                       "folders are written; see docs/diffusers.md");
    if (c->model.class_cond)
        return err_set(DDPM_EUSAGE, "ddpm does not export class-conditional models yet (model.class_cond): only unconditional "
                       "UNet2DModel folders are written; see docs/diffusers.md");
    return DDPM_OK;
}

static int level_has_attn(const Config *c, int L) {
    int r = c->data.image_size >> L;
    for (int i = 0; i < c->model.n_attn; i++)
        if (c->model.attn_res[i] == r) return 1;
    return 0;
}

char *dfs_unet_json(const Config *c) {
    int n = c->model.n_levels, boc[CFG_MAX_LEVELS];
    const char *down[CFG_MAX_LEVELS], *up[CFG_MAX_LEVELS];
    for (int L = 0; L < n; L++) {
        boc[L] = c->model.ch * c->model.ch_mult[L];
        down[L] = level_has_attn(c, L) ? "AttnDownBlock2D" : "DownBlock2D";
        up[n - 1 - L] = level_has_attn(c, L) ? "AttnUpBlock2D" : "UpBlock2D";
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "_class_name", "UNet2DModel");
    cJSON_AddStringToObject(o, "_diffusers_version", DIFFUSERS_VERSION);
    cJSON_AddNumberToObject(o, "sample_size", c->data.image_size);
    cJSON_AddNumberToObject(o, "in_channels", c->data.channels);
    cJSON_AddNumberToObject(o, "out_channels", c->data.channels);
    cJSON_AddFalseToObject(o, "center_input_sample");
    cJSON_AddStringToObject(o, "time_embedding_type", "positional");
    cJSON_AddNullToObject(o, "time_embedding_dim");
    cJSON_AddNumberToObject(o, "freq_shift", 1);
    cJSON_AddFalseToObject(o, "flip_sin_to_cos");
    cJSON_AddItemToObject(o, "down_block_types", cJSON_CreateStringArray(down, n));
    cJSON_AddStringToObject(o, "mid_block_type", "UNetMidBlock2D");
    cJSON_AddItemToObject(o, "up_block_types", cJSON_CreateStringArray(up, n));
    cJSON_AddItemToObject(o, "block_out_channels", cJSON_CreateIntArray(boc, n));
    cJSON_AddNumberToObject(o, "layers_per_block", c->model.num_res_blocks);
    cJSON_AddNumberToObject(o, "mid_block_scale_factor", 1);
    cJSON_AddNumberToObject(o, "downsample_padding", 0);
    cJSON_AddStringToObject(o, "downsample_type", "conv");
    cJSON_AddStringToObject(o, "upsample_type", "conv");
    cJSON_AddNumberToObject(o, "dropout", fnice(c->model.dropout));
    cJSON_AddStringToObject(o, "act_fn", "silu");
    cJSON_AddNullToObject(o, "attention_head_dim"); /* null: one head of all the channels, in every block */
    cJSON_AddNumberToObject(o, "norm_num_groups", c->model.groups);
    cJSON_AddNullToObject(o, "attn_norm_num_groups");
    cJSON_AddNumberToObject(o, "norm_eps", 1e-6);
    cJSON_AddStringToObject(o, "resnet_time_scale_shift", "default");
    cJSON_AddTrueToObject(o, "add_attention");
    cJSON_AddNullToObject(o, "class_embed_type");
    cJSON_AddNullToObject(o, "num_class_embeds");
    cJSON_AddNullToObject(o, "num_train_timesteps");
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

char *dfs_scheduler_json(const Config *c) {
    const char *sched = !strcmp(c->diffusion.schedule, "cosine") ? "squaredcos_cap_v2" : c->diffusion.schedule;
    const char *obj = c->diffusion.objective;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "_class_name", "DDPMScheduler");
    cJSON_AddStringToObject(o, "_diffusers_version", DIFFUSERS_VERSION);
    cJSON_AddNumberToObject(o, "num_train_timesteps", c->diffusion.T);
    cJSON_AddNumberToObject(o, "beta_start", fnice(c->diffusion.beta_start));
    cJSON_AddNumberToObject(o, "beta_end", fnice(c->diffusion.beta_end));
    cJSON_AddStringToObject(o, "beta_schedule", sched);
    cJSON_AddNullToObject(o, "trained_betas");
    cJSON_AddStringToObject(o, "variance_type", !strcmp(c->sample.var, "large") ? "fixed_large" : "fixed_small");
    cJSON_AddBoolToObject(o, "clip_sample", c->sample.clip);
    cJSON_AddNumberToObject(o, "clip_sample_range", 1.0);
    cJSON_AddStringToObject(o, "prediction_type", !strcmp(obj, "eps") ? "epsilon" : !strcmp(obj, "x0") ? "sample" : "v_prediction");
    cJSON_AddFalseToObject(o, "thresholding");
    cJSON_AddFalseToObject(o, "rescale_betas_zero_snr");
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

/* ---- import ---------------------------------------------------------------------------- */

static float half_to_float(uint16_t h) {
    uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31, m = h & 1023, bits;
    if (e == 0) {
        if (!m) bits = s;
        else { /* subnormal: normalize */
            int k = -1;
            do k++, m <<= 1; while (!(m & 1024));
            bits = s | (uint32_t)(127 - 15 - k) << 23 | (m & 1023) << 13;
        }
    } else if (e == 31) bits = s | 0x7f800000u | m << 13;
    else bits = s | (e + 127 - 15) << 23 | m << 13;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Tensor e of f as float32 in PyTorch layout into dst (numel n). */
static void read_tensor(const StFile *f, const StEntry *e, float *dst, size_t n) {
    const uint8_t *p = f->data + e->begin;
    if (!strcmp(e->dtype, "F32")) memcpy(dst, p, n * 4);
    else
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            if (!strcmp(e->dtype, "F16")) dst[i] = half_to_float(h);
            else {
                uint32_t b = (uint32_t)h << 16;
                memcpy(&dst[i], &b, 4);
            }
        }
}

/* Copy the tensors of f into u->params; every expected tensor present (either naming) with
 * its shape and a float dtype, nothing else in the file. *legacy counts old names. */
static int load_weights(const StFile *f, UNet *u, const char *cfg_label, int *legacy) {
    DfsTensor *t;
    int n = dfs_table(u, &t), rc = DDPM_OK;
    char *used = xcalloc((size_t)f->n + 1, 1);
    float *tmp = NULL;
    *legacy = 0;
    for (int i = 0; i < n && !rc; i++) {
        const Param *p = &u->P[t[i].param];
        const StEntry *e = st_find(f, t[i].name);
        if (!e && t[i].legacy[0] && (e = st_find(f, t[i].legacy))) ++*legacy;
        char want[96], have[96];
        st_shape_str(want, sizeof want, t[i].ndim, t[i].shape);
        if (!e) {
            rc = err_set(DDPM_EUSAGE, "%s: tensor \"%s\"%s%s%s is missing (a %s the model of %s needs, ddpm's %s)", f->path, t[i].name,
                         t[i].legacy[0] ? " (or \"" : "", t[i].legacy, t[i].legacy[0] ? "\")" : "", want, cfg_label, p->name);
            break;
        }
        used[e - f->e] = 1;
        if (strcmp(e->dtype, "F32") && strcmp(e->dtype, "F16") && strcmp(e->dtype, "BF16")) {
            rc = err_set(DDPM_EUSAGE, "%s: tensor \"%s\" is %s; ddpm imports F32, F16 or BF16 weights", f->path, e->name, e->dtype);
            break;
        }
        int same = e->ndim == t[i].ndim;
        for (int k = 0; same && k < e->ndim; k++) same = e->shape[k] == t[i].shape[k];
        if (!same) {
            st_shape_str(have, sizeof have, e->ndim, e->shape);
            rc = err_set(DDPM_EUSAGE, "%s: tensor \"%s\" has shape %s, but the model of %s needs %s", f->path, e->name, have, cfg_label, want);
            break;
        }
        float *dst = u->params + p->off;
        if (t[i].conv) {
            tmp = realloc(tmp, p->n * sizeof(float));
            CHECK(tmp, "out of memory");
            read_tensor(f, e, tmp, p->n);
            from_torch(dst, tmp, p->shape);
        } else {
            read_tensor(f, e, dst, p->n);
        }
    }
    for (int i = 0; i < f->n && !rc; i++)
        if (!used[i])
            rc = err_set(DDPM_EUSAGE, "%s: tensor \"%s\" is not part of the UNet2DModel that %s describes (a different model, or "
                         "a layer ddpm does not have)", f->path, f->e[i].name, cfg_label);
    free(tmp);
    free(used);
    free(t);
    return rc;
}

static int read_text(const char *path, char **out) {
    size_t n;
    int rc = file_read_all(path, out, &n);
    if (!rc && strlen(*out) != n) {
        free(*out), *out = NULL;
        return err_set(DDPM_EUSAGE, "%s: contains a NUL byte; not a JSON file", path);
    }
    return rc;
}

int dfs_import(const char *dir, const char *out, int force, char *summary, size_t summary_n) {
    char m[1100], p[1200], cfg_path[1200], w_path[1200], s_path[1200] = "";
    if (!path_exists(dir)) return err_set(DDPM_EUSAGE, "%s: no such folder (give the downloaded diffusers model folder)", dir);
    if (!is_dir(dir)) return err_set(DDPM_EUSAGE, "%s: not a folder (give the diffusers folder holding config.json and %s)", dir, WEIGHTS_FILE);
    snprintf(m, sizeof m, "%s", dir);
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (!path_exists(p)) {
        snprintf(p, sizeof p, "%s/unet/config.json", dir);
        if (!path_exists(p))
            return err_set(DDPM_EUSAGE, "%s: no config.json (nor unet/config.json): not a diffusers UNet2DModel folder (see docs/diffusers.md)", dir);
        snprintf(m, sizeof m, "%s/unet", dir);
    }
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", m);
    snprintf(w_path, sizeof w_path, "%s/" WEIGHTS_FILE, m);
    if (!path_exists(w_path)) {
        snprintf(p, sizeof p, "%s/diffusion_pytorch_model.fp16.safetensors", m);
        if (path_exists(p)) snprintf(w_path, sizeof w_path, "%s", p);
        else {
            snprintf(p, sizeof p, "%s/" WEIGHTS_FILE ".index.json", m);
            if (path_exists(p)) return err_set(DDPM_EUSAGE, "%s: sharded weights (%s) are not supported; ddpm reads one %s", m, p, WEIGHTS_FILE);
            snprintf(p, sizeof p, "%s/diffusion_pytorch_model.bin", m);
            if (path_exists(p))
                return err_set(DDPM_EUSAGE, "%s: only diffusion_pytorch_model.bin (a PyTorch pickle, which ddpm does not read); download %s "
                               "from the same repository", m, WEIGHTS_FILE);
            return err_set(DDPM_EUSAGE, "%s: no %s next to config.json", m, WEIGHTS_FILE);
        }
    }
    const char *cand[3] = {"%s/scheduler_config.json", "%s/scheduler_config.json", "%s/scheduler/scheduler_config.json"};
    for (int i = 0; i < 3 && !s_path[0]; i++) {
        snprintf(p, sizeof p, cand[i], i == 0 ? m : dir);
        if (path_exists(p)) snprintf(s_path, sizeof s_path, "%s", p);
    }
    if (!force && path_exists(out)) return err_set(DDPM_EUSAGE, "%s already exists; pass --force to replace it", out);

    char *cj = NULL, *sj = NULL, note[400] = "";
    Config c;
    int rc = read_text(cfg_path, &cj);
    if (!rc && s_path[0]) rc = read_text(s_path, &sj);
    if (!rc) rc = dfs_config_from_json(&c, cj, cfg_path, sj, s_path[0] ? s_path : NULL, note, sizeof note);
    free(cj);
    free(sj);
    if (rc) return rc;

    StFile f;
    UNet u;
    if ((rc = st_read(&f, w_path))) return rc;
    if ((rc = unet_plan(&u, &c, 1, 0))) {
        st_free(&f);
        return rc;
    }
    u.params = aligned_alloc(64, u.n_floats * sizeof(float));
    CHECK(u.params, "out of memory for %zu parameters", u.n_floats);
    memset(u.params, 0, u.n_floats * sizeof(float));
    int legacy = 0, ntensor = f.n;
    rc = load_weights(&f, &u, cfg_path, &legacy);
    st_free(&f);
    if (!rc) {
        char src[1300];
        snprintf(src, sizeof src, "diffusers %s", dir);
        rc = ckpt_save_weights(out, &u, &c, "ema", src);
    }
    if (!rc) {
        size_t np = 0;
        for (int i = 0; i < u.nP; i++) np += u.P[i].n;
        snprintf(summary, summary_n, "imported %s: UNet2DModel, %zu parameters in %d tensors (%s attention names); %s: %s -> %s", dir, np,
                 ntensor, legacy ? "older" : "current", s_path[0] ? s_path : "no scheduler_config.json, DDPMScheduler defaults", note, out);
    }
    unet_free(&u);
    return rc;
}

/* ---- export ---------------------------------------------------------------------------- */

static int write_text_file(const char *path, const char *text) {
    size_t n = strlen(text);
    char *b = xmalloc(n + 2);
    memcpy(b, text, n);
    b[n] = '\n';
    int rc = atomic_write(path, b, n + 1);
    free(b);
    return rc;
}

int dfs_export(const char *ckpt, const char *dir, int no_ema, int force, char *summary, size_t summary_n) {
    Config c;
    StFile f;
    UNet u;
    char p[1200];
    int rc = ckpt_open(&f, ckpt, &c);
    if (rc) return rc;
    if ((rc = dfs_exportable(&c))) {
        st_free(&f);
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", err_msg());
        return err_set(DDPM_EUSAGE, "%s: %s", ckpt, msg);
    }
    const char *prefix;
    CkptWeights kind = ckpt_pick_weights(&f, no_ema, &prefix);
    const char *which = kind == CKPT_EMA ? "EMA" : kind == CKPT_EMA_IMPORTED ? "EMA (imported)" : "raw";
    if (kind == CKPT_NO_EMA) fprintf(stderr, "ddpm: %s holds no EMA weights; exporting its raw weights\n", ckpt);
    if ((rc = unet_plan(&u, &c, 1, 0))) {
        st_free(&f);
        return rc;
    }
    u.params = aligned_alloc(64, u.n_floats * sizeof(float));
    CHECK(u.params, "out of memory for %zu parameters", u.n_floats);
    rc = ckpt_load_params(&f, prefix, &u, u.params);
    st_free(&f);
    DfsTensor *t = NULL;
    StTensorOut *to = NULL;
    float *buf = NULL;
    int n = 0;
    if (rc) goto done;
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (!force && (path_exists(p) || (snprintf(p, sizeof p, "%s/" WEIGHTS_FILE, dir), path_exists(p)))) {
        rc = err_set(DDPM_EUSAGE, "%s already holds a diffusers model (%s); pass --force to replace it", dir, p);
        goto done;
    }
    if ((rc = mkdir_p(dir))) goto done;
    n = dfs_table(&u, &t);
    to = xcalloc((size_t)n, sizeof *to);
    buf = xmalloc(u.n_floats * sizeof(float));
    for (int i = 0; i < n; i++) {
        const Param *q = &u.P[t[i].param];
        float *dst = buf + q->off;
        if (t[i].conv) to_torch(dst, u.params + q->off, q->shape);
        else memcpy(dst, u.params + q->off, q->n * sizeof(float));
        to[i].name = t[i].name;
        to[i].ndim = t[i].ndim;
        for (int k = 0; k < t[i].ndim; k++) to[i].shape[k] = t[i].shape[k];
        to[i].data = dst;
    }
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    snprintf(p, sizeof p, "%s/" WEIGHTS_FILE, dir);
    if ((rc = st_write(p, to, n, mk, mv, 1))) goto done;
    /* config.json last: a folder with one is complete */
    char *sj = dfs_scheduler_json(&c), *uj = dfs_unet_json(&c);
    snprintf(p, sizeof p, "%s/scheduler_config.json", dir);
    rc = write_text_file(p, sj);
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (!rc) rc = write_text_file(p, uj);
    free(sj);
    free(uj);
    if (!rc) {
        size_t np = 0;
        for (int i = 0; i < u.nP; i++) np += u.P[i].n;
        snprintf(summary, summary_n, "exported %s weights of %s (%zu parameters, %d tensors) to %s/: config.json, %s, scheduler_config.json",
                 which, ckpt, np, n, dir, WEIGHTS_FILE);
    }
done:
    free(t);
    free(to);
    free(buf);
    unet_free(&u);
    return rc;
}
