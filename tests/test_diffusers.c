/* ddpm import / export against diffusers' UNet2DModel format, without the hub:
 *  - the name/shape table of configs/cifar.json equals the 328 tensors of
 *    google/ddpm-cifar10-32 (tests/fixtures/diffusers_cifar10_keys*.txt), in both attention
 *    namings, and google's config.json + scheduler_config.json import to cifar.json's model;
 *  - tests/fixtures/diffusers_tiny (scripts/make_diffusers_fixture.py: a UNet2DModel written
 *    from diffusers' semantics in PyTorch) imports and reproduces its float64 reference
 *    output within float32 tolerance; a swapped pair of tensors would not;
 *  - older attention names import to bitwise the same weights; export then import, and
 *    import then export, give bitwise the same tensors; a ddpm-trained checkpoint samples
 *    the same images after export + import;
 *  - an imported model inpaints, edits and upscales with its weights (the EMA weights under
 *    the raw names, "weights": "ema"), as ddpm sample does;
 *  - every refusal is exit 2 with one line naming the key, and writes nothing. */
#include <cJSON.h>
#include <stb_image.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli_util.h"
#include "ddpm/safetensors.h"
#include "ddpm/config.h"
#include "ddpm/diffusers.h"
#include "ddpm/err.h"
#include "ddpm/image.h"
#include "ddpm/checkpoint.h"
#include "ddpm/unet.h"

#define FIX "tests/fixtures/diffusers_tiny"
#define REF "tests/fixtures/diffusers_tiny_ref.safetensors"
#define WFILE "diffusion_pytorch_model.safetensors"

/* Relative L2 bound of the C float32 forward against the float64 reference. Float32
 * rounding (u = 6e-8) of a dot product of K <= 9 * 48 = 432 terms is ~u sqrt(K) ~ 1.2e-6
 * per layer; about 40 layers lie on the longest path, which is <= 5e-5 even when the
 * errors add up linearly (GroupNorm renormalizes, Winograd adds a small factor). PyTorch's
 * own float32 forward lands at 4.7e-7 (the fixture's metadata). A wrong name map gives
 * an O(1e-2..1) error (checked below by swapping two tensors). */
#define TOL 1e-4

static const char GOOGLE_CONFIG[] =
    "{\"_class_name\": \"UNet2DModel\", \"_diffusers_version\": \"0.0.4\", \"act_fn\": \"silu\", \"attention_head_dim\": null,"
    " \"block_out_channels\": [128, 256, 256, 256], \"center_input_sample\": false,"
    " \"down_block_types\": [\"DownBlock2D\", \"AttnDownBlock2D\", \"DownBlock2D\", \"DownBlock2D\"], \"downsample_padding\": 0,"
    " \"flip_sin_to_cos\": false, \"freq_shift\": 1, \"in_channels\": 3, \"layers_per_block\": 2, \"mid_block_scale_factor\": 1,"
    " \"norm_eps\": 1e-06, \"norm_num_groups\": 32, \"out_channels\": 3, \"sample_size\": 32, \"time_embedding_type\": \"positional\","
    " \"up_block_types\": [\"UpBlock2D\", \"UpBlock2D\", \"AttnUpBlock2D\", \"UpBlock2D\"]}";
static const char GOOGLE_SCHED[] =
    "{\"_class_name\": \"DDPMScheduler\", \"_diffusers_version\": \"0.1.1\", \"beta_end\": 0.02, \"beta_schedule\": \"linear\","
    " \"beta_start\": 0.0001, \"clip_sample\": true, \"num_train_timesteps\": 1000, \"trained_betas\": null, \"variance_type\": \"fixed_large\"}";

static char *read_all(const char *path) {
    char *s = NULL;
    size_t n;
    if (file_read_all(path, &s, &n)) return NULL;
    return s;
}

static void copy_file(const char *from, const char *to) {
    char *s = NULL;
    size_t n = 0;
    if (file_read_all(from, &s, &n) == 0) atomic_write(to, s, n);
    free(s);
}

/* ---- the CIFAR-10 name table ------------------------------------------------------------ */

static int table_matches(const UNet *u, const char *list, int legacy, char *first_diff, size_t n) {
    char *txt = read_all(list);
    if (!txt) {
        snprintf(first_diff, n, "cannot read %s", list);
        return 0;
    }
    DfsTensor *t;
    int nt = dfs_table(u, &t), i = 0, ok = 1;
    char *save = NULL, *line = strtok_r(txt, "\n", &save); /* header line */
    first_diff[0] = 0;
    for (line = strtok_r(NULL, "\n", &save); line && ok; line = strtok_r(NULL, "\n", &save), i++) {
        char mine[300];
        int k = snprintf(mine, sizeof mine, "%s [", legacy && t[i].legacy[0] ? t[i].legacy : t[i].name);
        for (int d = 0; d < t[i].ndim; d++) k += snprintf(mine + k, sizeof mine - k, "%s%lld", d ? ", " : "", (long long)t[i].shape[d]);
        snprintf(mine + k, sizeof mine - k, "]");
        if (i >= nt || strcmp(mine, line)) {
            snprintf(first_diff, n, "line %d: list \"%s\", ddpm \"%s\"", i + 2, line, i < nt ? mine : "(none)");
            ok = 0;
        }
    }
    if (ok && i != nt) snprintf(first_diff, n, "list has %d tensors, ddpm %d", i, nt), ok = 0;
    free(t);
    free(txt);
    return ok;
}

static void test_cifar_names(void) {
    Config c;
    UNet u;
    config_defaults(&c);
    int rc = config_load(&c, "configs/cifar.json");
    if (!rc) rc = unet_plan(&u, &c, 1, 0);
    T_OK(rc == 0, "configs/cifar.json plans: %s", rc ? err_msg() : "ok");
    if (rc) return;
    char diff[600];
    size_t np = 0;
    for (int i = 0; i < u.nP; i++) np += u.P[i].n;
    T_OK(u.nP == 328 && np == 35746307, "cifar.json: %d tensors, %zu parameters (google/ddpm-cifar10-32: 328, 35746307)", u.nP, np);
    T_OK(table_matches(&u, "tests/fixtures/diffusers_cifar10_keys.txt", 0, diff, sizeof diff),
         "cifar.json export names and shapes = google/ddpm-cifar10-32's 328 tensors, in order %s", diff);
    T_OK(table_matches(&u, "tests/fixtures/diffusers_cifar10_keys_legacy.txt", 1, diff, sizeof diff),
         "... and the older attention names (query/key/value/proj_attn) %s", diff);
    /* google's config.json and scheduler_config.json -> cifar.json's model and schedule */
    Config g;
    char note[400];
    rc = dfs_config_from_json(&g, GOOGLE_CONFIG, "google/config.json", GOOGLE_SCHED, "google/scheduler_config.json", note, sizeof note);
    int same = !rc && g.model.ch == c.model.ch && g.model.n_levels == c.model.n_levels && g.model.num_res_blocks == c.model.num_res_blocks &&
               g.model.n_attn == 1 && g.model.attn_res[0] == 16 && g.model.groups == c.model.groups && g.data.image_size == 32 &&
               g.data.channels == 3 && g.diffusion.T == 1000 && !strcmp(g.diffusion.schedule, "linear") &&
               g.diffusion.beta_start == c.diffusion.beta_start && g.diffusion.beta_end == c.diffusion.beta_end &&
               !strcmp(g.diffusion.objective, "eps") && !strcmp(g.sample.var, "large") && g.sample.clip;
    for (int i = 0; same && i < c.model.n_levels; i++) same = g.model.ch_mult[i] == c.model.ch_mult[i];
    T_OK(same, "google/ddpm-cifar10-32's config.json + scheduler_config.json = cifar.json's model, linear 1e-4..0.02, --var large: %s",
         rc ? err_msg() : note);
    unet_free(&u);
}

/* ---- import against the PyTorch reference ----------------------------------------------- */

static float *nchw_to_nhwc(const float *a, int B, int C, int H, int W) {
    float *o = xmalloc(sizeof(float) * B * C * H * W);
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) o[((b * H + y) * W + x) * C + c] = a[((b * C + c) * H + y) * W + x];
    return o;
}

static const float *tensor(const StFile *f, const char *name) {
    const StEntry *e = st_find(f, name);
    return e ? (const float *)(f->data + e->begin) : NULL;
}

/* Load a ddpm checkpoint's raw weights into u (B_max batch). */
static int load_ckpt(const char *path, UNet *u, Config *c, int B, const char *prefix) {
    StFile f;
    int rc = ckpt_open(&f, path, c);
    if (rc) return rc;
    rc = unet_init(u, c, B, 0);
    if (!rc) rc = ckpt_load_params(&f, prefix, u, u->params);
    st_free(&f);
    return rc;
}

static void swap_params(UNet *u, const char *a, const char *b) {
    const Param *pa = unet_param(u, a), *pb = unet_param(u, b);
    for (size_t i = 0; pa && pb && i < pa->n; i++) {
        float t = u->params[pa->off + i];
        u->params[pa->off + i] = u->params[pb->off + i];
        u->params[pb->off + i] = t;
    }
}

static void test_reference(const char *d) {
    int rc = run("import " FIX " -o %s/a.safetensors", d);
    T_OK(rc == 0 && strstr(g_out, "current attention names") && strstr(g_out, "--var large"), "import the fixture folder: exit %d: %s%s", rc,
         g_out, g_err);
    StFile ref;
    if (st_read(&ref, REF)) {
        T_OK(0, "read %s: %s", REF, err_msg());
        return;
    }
    const StEntry *ex = st_find(&ref, "input.x");
    int B = (int)ex->shape[0], C = (int)ex->shape[1], H = (int)ex->shape[2], W = (int)ex->shape[3];
    float *x = nchw_to_nhwc(tensor(&ref, "input.x"), B, C, H, W), *y64 = nchw_to_nhwc(tensor(&ref, "output"), B, C, H, W),
          *y32 = nchw_to_nhwc(tensor(&ref, "output_f32"), B, C, H, W);
    int t[8];
    for (int i = 0; i < B; i++) t[i] = (int)tensor(&ref, "input.t")[i];
    Config c;
    UNet u;
    char p[600];
    snprintf(p, sizeof p, "%s/a.safetensors", d);
    if ((rc = load_ckpt(p, &u, &c, B, ""))) {
        T_OK(0, "load the imported checkpoint: %s", err_msg());
    } else {
        size_t n = (size_t)B * C * H * W;
        float *out = xmalloc(n * sizeof(float));
        unet_forward(&u, out, x, t, B);
        double e64 = t_rel_l2(out, y64, n), e32 = t_rel_l2(out, y32, n);
        T_OK(e64 <= TOL, "imported model = the float64 UNet2DModel reference: relative L2 %.3g (tol %g)", e64, TOL);
        T_OK(e32 <= TOL, "... and = the float32 reference with diffusers' float32 embedding: %.3g", e32);
        /* the test can fail: two tensors of the same shape swapped give a large error */
        const char *pairs[][2] = {{"up.1.attn.2.q.weight", "up.1.attn.2.k.weight"},
                                  {"down.0.res.0.norm1.weight", "down.0.res.1.norm1.weight"},
                                  {"down.2.res.1.conv1.weight", "down.2.res.1.conv2.weight"}};
        for (int k = 0; k < 3; k++) {
            swap_params(&u, pairs[k][0], pairs[k][1]);
            unet_forward(&u, out, x, t, B);
            double e = t_rel_l2(out, y64, n);
            T_OK(e > 10 * TOL, "sensitivity: %s <-> %s swapped gives %.3g (> 10 x tol)", pairs[k][0], pairs[k][1], e);
            swap_params(&u, pairs[k][0], pairs[k][1]);
        }
        free(out);
        T_OK(!strcmp(c.sample.var, "large") && c.diffusion.T == 1000 && !strcmp(c.diffusion.schedule, "linear") && c.sample.clip &&
                 !strcmp(c.sample.sampler, "ddpm"),
             "the checkpoint's config carries the scheduler: T %d, %s, var %s, clip %d, sampler %s", c.diffusion.T, c.diffusion.schedule,
             c.sample.var, c.sample.clip, c.sample.sampler);
        unet_free(&u);
    }
    free(x), free(y64), free(y32);
    st_free(&ref);
    rc = run("sample --ckpt %s/a.safetensors -n 2 --sampler ddim --steps 5 -o %s/a_out --quiet", d, d);
    T_OK(rc == 0 && !g_err[0] && strstr(g_out, "EMA weights"), "ddpm sample uses the imported checkpoint as it is (no EMA warning): exit %d %s%s", rc,
         g_out, g_err);
}

/* inpaint, edit and upscale open an imported model as ddpm sample does: its weights are the
 * EMA weights (metadata "weights": "ema"), used without a "holds no EMA weights" warning and
 * the same as --no-ema (there is one set). Input: an 8x8 RGB image (4x4 for upscale x2). */
static void test_tasks_on_import(const char *d) {
    printf("inpaint, edit and upscale with an imported model\n");
    uint8_t px[8 * 8 * 3];
    for (int i = 0; i < 8 * 8 * 3; i++) px[i] = (uint8_t)(i * 37 % 256);
    char in8[600], in4[600];
    snprintf(in8, sizeof in8, "%s/in8.png", d);
    snprintf(in4, sizeof in4, "%s/in4.png", d);
    image_write_png(in8, px, 8, 8, 3);
    image_write_png(in4, px, 4, 4, 3);
    const struct {
        const char *cmd, *in, *args, *file;
    } t[3] = {{"inpaint", in8, "--mask top --steps 10 --jump 5 --resample 2", "in8_0.png"},
              {"edit", in8, "--strength 0.5 --sampler ddim --steps 10", "in8_0.png"},
              {"upscale", in4, "--factor 2 --sampler ddim --steps 10", "in4_0.png"}};
    for (int k = 0; k < 3; k++) {
        int rc = run("%s %s --ckpt %s/a.safetensors %s -o %s/imp_%s --quiet", t[k].cmd, t[k].in, d, t[k].args, d, t[k].cmd);
        int warned = strstr(g_err, "EMA") != NULL;
        char err[512];
        snprintf(err, sizeof err, "%.500s", g_err);
        int rc2 = run("%s %s --ckpt %s/a.safetensors %s --no-ema -o %s/imp_%s_raw --quiet", t[k].cmd, t[k].in, d, t[k].args, d, t[k].cmd);
        char a[700], b[700];
        snprintf(a, sizeof a, "%s/imp_%s/%s", d, t[k].cmd, t[k].file);
        snprintf(b, sizeof b, "%s/imp_%s_raw/%s", d, t[k].cmd, t[k].file);
        int w = 0, h = 0, c = 0;
        T_OK(rc == 0 && rc2 == 0 && !warned && stbi_info(a, &w, &h, &c) && w == 8 && h == 8 && same_file(a, b),
             "%s on the imported model: exit %d, %dx%d result, its weights (= --no-ema), no EMA warning: %s", t[k].cmd, rc, w, h, err);
    }
}

/* 1 if two ddpm checkpoints hold bitwise the same tensors under prefixes pa / pb */
static int same_weights(const char *a, const char *pa, const char *b, const char *pb, char *why, size_t n) {
    Config ca, cb;
    StFile fa, fb;
    snprintf(why, n, "ok");
    if (ckpt_open(&fa, a, &ca)) return snprintf(why, n, "%s", err_msg()), 0;
    if (ckpt_open(&fb, b, &cb)) return st_free(&fa), snprintf(why, n, "%s", err_msg()), 0;
    UNet u;
    int same = unet_plan(&u, &ca, 1, 0) == 0;
    for (int i = 0; same && i < u.nP; i++) {
        char na[160], nb[160];
        snprintf(na, sizeof na, "%s%s", pa, u.P[i].name);
        snprintf(nb, sizeof nb, "%s%s", pb, u.P[i].name);
        const StEntry *ea = st_find(&fa, na), *eb = st_find(&fb, nb);
        same = ea && eb && ea->end - ea->begin == eb->end - eb->begin && !memcmp(fa.data + ea->begin, fb.data + eb->begin, ea->end - ea->begin);
        if (!same) snprintf(why, n, "%s differs or is missing", u.P[i].name);
    }
    unet_free(&u);
    st_free(&fa);
    st_free(&fb);
    return same;
}

/* Write the fixture's tensors to dir/WFILE with names passed through rename() (NULL: drop). */
static int rewrite_weights(const char *dir, const char *(*rename)(const char *, char *), const char *add, int reshape_first) {
    StFile f;
    if (st_read(&f, FIX "/" WFILE)) return 1;
    StTensorOut *t = xcalloc((size_t)f.n + 1, sizeof *t);
    char (*names)[160] = xcalloc((size_t)f.n + 1, 160);
    int n = 0;
    for (int i = 0; i < f.n; i++) {
        const char *nm = rename ? rename(f.e[i].name, names[n]) : f.e[i].name;
        if (!nm) continue;
        if (nm != names[n]) snprintf(names[n], 160, "%s", nm);
        t[n].name = names[n];
        t[n].ndim = f.e[i].ndim;
        for (int k = 0; k < f.e[i].ndim; k++) t[n].shape[k] = f.e[i].shape[k];
        if (reshape_first && i == 0) t[n].ndim = 2, t[n].shape[1] *= t[n].shape[2] * t[n].shape[3];
        t[n].data = (const float *)(f.data + f.e[i].begin);
        n++;
    }
    if (add) {
        snprintf(names[n], 160, "%s", add);
        t[n] = t[0];
        t[n].name = names[n];
        n++;
    }
    char p[700], q[700];
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/" WFILE, dir);
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    int rc = st_write(p, t, n, mk, mv, 1);
    snprintf(p, sizeof p, "%s/config.json", dir);
    snprintf(q, sizeof q, "%s/config.json", FIX);
    copy_file(q, p);
    snprintf(p, sizeof p, "%s/scheduler_config.json", dir);
    snprintf(q, sizeof q, "%s/scheduler_config.json", FIX);
    copy_file(q, p);
    free(names);
    free(t);
    st_free(&f);
    return rc;
}

static const char *to_legacy(const char *nm, char *buf) {
    const char *map[][2] = {{".to_q.", ".query."}, {".to_k.", ".key."}, {".to_v.", ".value."}, {".to_out.0.", ".proj_attn."}};
    for (int i = 0; i < 4; i++) {
        const char *s = strstr(nm, map[i][0]);
        if (s) {
            snprintf(buf, 160, "%.*s%s%s", (int)(s - nm), nm, map[i][1], s + strlen(map[i][0]));
            return buf;
        }
    }
    return nm;
}

static void test_round_trips(const char *d) {
    char p[600], q[600], why[300];
    /* older attention names -> the same checkpoint */
    snprintf(p, sizeof p, "%s/legacy", d);
    rewrite_weights(p, to_legacy, NULL, 0);
    int rc = run("import %s/legacy -o %s/b.safetensors", d, d);
    snprintf(p, sizeof p, "%s/a.safetensors", d);
    snprintf(q, sizeof q, "%s/b.safetensors", d);
    T_OK(rc == 0 && strstr(g_out, "older attention names") && same_weights(p, "", q, "", why, sizeof why),
         "older attention names (query/key/value/proj_attn) import to bitwise the same weights: exit %d, %s", rc, why);

    /* import -> export: the diffusers tensors come back bitwise */
    rc = run("export --ckpt %s/a.safetensors -o %s/e", d, d);
    T_OK(rc == 0 && strstr(g_out, "EMA (imported)"), "export the imported checkpoint: exit %d %s%s", rc, g_out, g_err);
    StFile f0, f1;
    snprintf(p, sizeof p, "%s/e/" WFILE, d);
    int same = 0, n = 0;
    if (!st_read(&f0, FIX "/" WFILE)) {
        if (!st_read(&f1, p)) {
            same = f0.n == f1.n;
            for (int i = 0; same && i < f0.n; i++, n++) {
                const StEntry *a = &f0.e[i], *b = st_find(&f1, a->name);
                same = b && a->ndim == b->ndim && !memcmp(a->shape, b->shape, sizeof a->shape) && a->end - a->begin == b->end - b->begin &&
                       !memcmp(f0.data + a->begin, f1.data + b->begin, a->end - a->begin);
                if (!same) snprintf(why, sizeof why, "%s", a->name);
            }
            st_free(&f1);
        }
        st_free(&f0);
    }
    T_OK(same, "import then export gives back the fixture's %d tensors bitwise (names, shapes, bytes) %s", n, same ? "" : why);
    rc = run("import %s/e -o %s/c.safetensors", d, d);
    snprintf(q, sizeof q, "%s/c.safetensors", d);
    snprintf(p, sizeof p, "%s/a.safetensors", d);
    T_OK(rc == 0 && same_weights(p, "", q, "", why, sizeof why), "export then import gives bitwise the same weights: exit %d, %s", rc, why);

    /* the exported config spells out what differs from diffusers' defaults */
    snprintf(p, sizeof p, "%s/e/config.json", d);
    char *txt = read_all(p);
    cJSON *o = txt ? cJSON_Parse(txt) : NULL;
    const cJSON *v;
#define HAS(key, cond) ((v = cJSON_GetObjectItemCaseSensitive(o, key)) && (cond))
    T_OK(o && HAS("flip_sin_to_cos", cJSON_IsFalse(v)) && HAS("freq_shift", v->valuedouble == 1) && HAS("norm_eps", v->valuedouble == 1e-6) &&
             HAS("downsample_padding", v->valuedouble == 0) && HAS("attention_head_dim", cJSON_IsNull(v)) &&
             HAS("norm_num_groups", v->valuedouble == 4) && HAS("layers_per_block", v->valuedouble == 2) && HAS("sample_size", v->valuedouble == 8) &&
             HAS("_class_name", !strcmp(v->valuestring, "UNet2DModel")),
         "exported config.json writes flip_sin_to_cos false, freq_shift 1, norm_eps 1e-6, downsample_padding 0, attention_head_dim null, ...");
    cJSON_Delete(o);
    free(txt);
    snprintf(p, sizeof p, "%s/e/scheduler_config.json", d);
    txt = read_all(p);
    o = txt ? cJSON_Parse(txt) : NULL;
    T_OK(o && HAS("_class_name", !strcmp(v->valuestring, "DDPMScheduler")) && HAS("variance_type", !strcmp(v->valuestring, "fixed_large")) &&
             HAS("beta_schedule", !strcmp(v->valuestring, "linear")) && HAS("num_train_timesteps", v->valuedouble == 1000) &&
             HAS("beta_start", v->valuedouble == 0.0001) && HAS("prediction_type", !strcmp(v->valuestring, "epsilon")),
         "exported scheduler_config.json: DDPMScheduler, linear 0.0001..0.02, T 1000, fixed_large, epsilon");
    cJSON_Delete(o);
    free(txt);

    /* a ddpm-trained checkpoint (EMA, cosine schedule, 1 channel): export -> import */
    rc = run("export --ckpt tests/fixtures/tiny_model.safetensors -o %s/t", d);
    int rc2 = run("import %s/t -o %s/t.safetensors", d, d);
    snprintf(q, sizeof q, "%s/t.safetensors", d);
    T_OK(rc == 0 && rc2 == 0 && same_weights("tests/fixtures/tiny_model.safetensors", "ema.", q, "", why, sizeof why),
         "ddpm checkpoint -> export (EMA) -> import: bitwise its EMA weights (exit %d, %d), %s", rc, rc2, why);
    rc = run("export --ckpt tests/fixtures/tiny_model.safetensors --no-ema -o %s/tr", d);
    rc2 = run("import %s/tr -o %s/tr.safetensors", d, d);
    snprintf(q, sizeof q, "%s/tr.safetensors", d);
    T_OK(rc == 0 && rc2 == 0 && same_weights("tests/fixtures/tiny_model.safetensors", "", q, "", why, sizeof why),
         "--no-ema exports the raw weights, bitwise: %s", why);
    Config c0, c1;
    StFile fa, fb;
    snprintf(q, sizeof q, "%s/t.safetensors", d);
    if (!ckpt_open(&fa, "tests/fixtures/tiny_model.safetensors", &c0)) {
        if (!ckpt_open(&fb, q, &c1)) {
            int eq = !memcmp(&c0.model, &c1.model, sizeof c0.model) && c0.diffusion.T == c1.diffusion.T &&
                     !strcmp(c0.diffusion.schedule, c1.diffusion.schedule) && c0.diffusion.cosine_s == c1.diffusion.cosine_s &&
                     c0.diffusion.beta_start == c1.diffusion.beta_start && !strcmp(c0.diffusion.objective, c1.diffusion.objective) &&
                     !strcmp(c0.sample.var, c1.sample.var) && c0.sample.clip == c1.sample.clip && c0.data.image_size == c1.data.image_size &&
                     c0.data.channels == c1.data.channels;
            T_OK(eq, "... and the same model, schedule (cosine = squaredcos_cap_v2) and sampling config");
            st_free(&fb);
        }
        st_free(&fa);
    }
    /* bare grids (captions name the weights) and one spacing (the imported config says "auto") */
    const char *s = "-n 4 --sampler ddim --steps 10 --spacing leading --seed 7 --quiet --no-labels";
    rc = run("sample --ckpt tests/fixtures/tiny_model.safetensors %s -o %s/s0", s, d);
    rc2 = run("sample --ckpt %s/t.safetensors %s -o %s/s1", d, s, d);
    snprintf(p, sizeof p, "%s/s0/grid.png", d);
    snprintf(q, sizeof q, "%s/s1/grid.png", d);
    T_OK(rc == 0 && rc2 == 0 && same_file(p, q), "... which samples byte-identical images");
}

/* The fixture's weights as F16 (bf16 = 0, rounded by the compiler's _Float16) or BF16
 * (rounded to nearest even by hand), written as a safetensors file by hand. */
static int write_half(const char *dir, int bf16) {
    StFile f;
    if (st_read(&f, FIX "/" WFILE)) return 1;
    cJSON *h = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(h, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    size_t total = 0;
    for (int i = 0; i < f.n; i++) total += (f.e[i].end - f.e[i].begin) / 2;
    uint16_t *data = xmalloc(total + 2);
    size_t off = 0;
    for (int i = 0; i < f.n; i++) {
        const StEntry *e = &f.e[i];
        size_t n = (e->end - e->begin) / 4;
        for (size_t k = 0; k < n; k++) {
            float v;
            memcpy(&v, f.data + e->begin + 4 * k, 4);
            uint16_t b;
            if (bf16) {
                uint32_t u;
                memcpy(&u, &v, 4);
                b = (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
            } else {
                _Float16 x = (_Float16)v;
                memcpy(&b, &x, 2);
            }
            data[off / 2 + k] = b;
        }
        cJSON *o = cJSON_AddObjectToObject(h, e->name);
        cJSON_AddStringToObject(o, "dtype", bf16 ? "BF16" : "F16");
        cJSON *sh = cJSON_AddArrayToObject(o, "shape");
        for (int k = 0; k < e->ndim; k++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)e->shape[k]));
        cJSON *of = cJSON_AddArrayToObject(o, "data_offsets");
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + 2 * n)));
        off += 2 * n;
    }
    char *hs = cJSON_PrintUnformatted(h);
    size_t hl = strlen(hs), pad = (8 - hl % 8) % 8;
    uint64_t N = hl + pad;
    char p[700];
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/" WFILE, dir);
    FILE *fp = fopen(p, "wb");
    fwrite(&N, 8, 1, fp);
    fwrite(hs, 1, hl, fp);
    fwrite("        ", 1, pad, fp);
    fwrite(data, 1, off, fp);
    fclose(fp);
    snprintf(p, sizeof p, "%s/config.json", dir);
    copy_file(FIX "/config.json", p);
    free(hs);
    free(data);
    cJSON_Delete(h);
    st_free(&f);
    return 0;
}

/* Relative L2 of the forward of checkpoint ck against the fixture's float64 output. */
static double ref_error(const char *ck) {
    StFile ref;
    if (st_read(&ref, REF)) return -1;
    const StEntry *ex = st_find(&ref, "input.x");
    int B = (int)ex->shape[0], C = (int)ex->shape[1], H = (int)ex->shape[2], W = (int)ex->shape[3], t[8];
    float *x = nchw_to_nhwc(tensor(&ref, "input.x"), B, C, H, W), *y = nchw_to_nhwc(tensor(&ref, "output"), B, C, H, W);
    for (int i = 0; i < B; i++) t[i] = (int)tensor(&ref, "input.t")[i];
    Config c;
    UNet u;
    double e = -1;
    if (!load_ckpt(ck, &u, &c, B, "")) {
        size_t n = (size_t)B * C * H * W;
        float *out = xmalloc(n * sizeof(float));
        unet_forward(&u, out, x, t, B);
        e = t_rel_l2(out, y, n);
        free(out);
        unet_free(&u);
    }
    free(x), free(y);
    st_free(&ref);
    return e;
}

static void test_layouts(const char *d) {
    /* F16 weights: rounding each weight by up to 2^-11 (BF16: 2^-8) relative moves the output
     * by about that times the square root of the ~40 layers in a row: <= 1e-2 (BF16 5e-2) */
    const double bound[2] = {1e-2, 5e-2};
    for (int bf = 0; bf < 2; bf++) {
        char dir[600], ck[600];
        snprintf(dir, sizeof dir, "%s/half%d", d, bf);
        snprintf(ck, sizeof ck, "%s/half%d.safetensors", d, bf);
        write_half(dir, bf);
        int rc = run("import %s -o %s", dir, ck);
        double e = rc ? -1 : ref_error(ck);
        T_OK(rc == 0 && e > TOL && e <= bound[bf], "%s weights import (widened to F32): output relative L2 %.3g (bound %g): %s", bf ? "BF16" : "F16", e,
             bound[bf], rc ? g_err : "ok");
        if (!bf) T_OK(rc == 0 && strstr(g_out, "DDPMScheduler defaults") && strstr(g_out, "--var small"),
                      "no scheduler_config.json: DDPMScheduler's defaults (fixed_small), said so: %s", g_out);
    }
    /* a pipeline folder: DIR/unet/ and DIR/scheduler/ */
    char p[700], q[700];
    snprintf(p, sizeof p, "%s/pipe", d);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/pipe/scheduler", d);
    mkdir(p, 0755);
    snprintf(p, sizeof p, "%s/pipe/unet", d);
    rewrite_weights(p, NULL, NULL, 0);
    snprintf(p, sizeof p, "%s/pipe/unet/scheduler_config.json", d);
    snprintf(q, sizeof q, "%s/pipe/scheduler/scheduler_config.json", d);
    rename(p, q);
    int rc = run("import %s/pipe -o %s/pipe.safetensors", d, d);
    snprintf(p, sizeof p, "%s/a.safetensors", d);
    snprintf(q, sizeof q, "%s/pipe.safetensors", d);
    char why[300];
    T_OK(rc == 0 && strstr(g_out, "--var large") && same_weights(p, "", q, "", why, sizeof why),
         "a pipeline folder (unet/, scheduler/) imports the same: exit %d %s", rc, rc ? g_err : why);
    /* a corrupt weights file is a runtime error, one line */
    snprintf(p, sizeof p, "%s/trunc", d);
    rewrite_weights(p, NULL, NULL, 0);
    snprintf(p, sizeof p, "%s/trunc/" WFILE, d);
    truncate(p, 5000);
    snprintf(q, sizeof q, "%s/trunc.safetensors", d);
    rc = run("import %s/trunc -o %s", d, q);
    T_OK(rc == 1 && n_lines(g_err) == 1 && strstr(g_err, WFILE) && !path_exists(q), "a truncated weights file: exit %d, %s", rc, g_err);
}

/* ---- refusals --------------------------------------------------------------------------- */

static int g_case;

/* Import `dir`; expect exit `want`, one stderr line containing `needle`, and no output. */
static void expect_refusal(const char *d, const char *dir, int want, const char *needle, const char *what) {
    char out[600];
    snprintf(out, sizeof out, "%s/refused_%d.safetensors", d, g_case++);
    int rc = run("import %s -o %s", dir, out);
    T_OK(rc == want && n_lines(g_err) == 1 && strstr(g_err, needle) && !path_exists(out), "%s: exit %d, %s", what, rc,
         g_err[0] ? g_err : "(no stderr)\n");
}

/* A copy of the fixture with one key of config.json (sched = 0) or scheduler_config.json
 * (sched = 1) set to the JSON value `val` (NULL: removed). */
static void make_variant(const char *dir, int sched, const char *key, const char *val) {
    char p[700], q[700];
    mkdir(dir, 0755);
    const char *files[3] = {"config.json", "scheduler_config.json", WFILE};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", FIX, files[i]);
        snprintf(q, sizeof q, "%s/%s", dir, files[i]);
        if (i != sched) {
            copy_file(p, q);
        } else {
            char *txt = read_all(p);
            cJSON *o = cJSON_Parse(txt);
            cJSON_DeleteItemFromObjectCaseSensitive(o, key);
            if (val) cJSON_AddItemToObject(o, key, cJSON_Parse(val));
            char *s = cJSON_Print(o);
            atomic_write(q, s, strlen(s));
            free(s);
            cJSON_Delete(o);
            free(txt);
        }
    }
}

static void refuse_key(const char *d, int sched, const char *key, const char *val, const char *needle) {
    char dir[600];
    snprintf(dir, sizeof dir, "%s/bad_%d", d, g_case);
    make_variant(dir, sched, key, val);
    char what[300];
    snprintf(what, sizeof what, "%s \"%s\" %s%s refused naming it", sched ? "scheduler" : "config", key, val ? "= " : "removed", val ? val : "");
    expect_refusal(d, dir, 2, needle ? needle : key, what);
}

static const char *drop_one(const char *nm, char *buf) {
    (void)buf;
    return strcmp(nm, "up_blocks.1.attentions.2.to_k.bias") ? nm : NULL;
}

/* a class-conditional model is refused by export with one line (diffusers' class_embedding is
 * not written yet), instead of failing on its class_emb.weight */
static void test_export_class_cond(void) {
    Config c;
    config_defaults(&c);
    c.model.class_cond = true, c.model.num_classes = 10;
    int rc = dfs_exportable(&c);
    T_OK(rc == DDPM_EUSAGE && strstr(err_msg(), "class-conditional"), "export of a class-conditional model refused (exit 2): %s",
         err_msg());
}

static void test_refusals(const char *d) {
    static const struct {
        const char *key, *val, *needle;
    } unet[] = {
        {"down_block_types", "[\"DownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"]", NULL},
        {"down_block_types", "[\"DownBlock2D\", \"AttnDownBlock2D\"]", NULL},
        {"up_block_types", "[\"UpBlock2D\", \"UpBlock2D\", \"UpBlock2D\"]", NULL},
        {"up_block_types", "[\"UpBlock2D\", \"AttnUpBlock2D\", \"SkipUpBlock2D\"]", NULL},
        {"attention_head_dim", "8", NULL},
        {"attention_head_dim", NULL, NULL}, /* diffusers' default 8: two heads of 8 at 16 channels */
        {"flip_sin_to_cos", "true", NULL},
        {"flip_sin_to_cos", NULL, NULL},
        {"freq_shift", "0", NULL},
        {"freq_shift", NULL, NULL},
        {"norm_eps", "1e-5", NULL},
        {"norm_eps", NULL, NULL},
        {"downsample_padding", "1", NULL},
        {"downsample_padding", NULL, NULL},
        {"num_class_embeds", "10", NULL},
        {"class_embed_type", "\"timestep\"", NULL},
        {"time_embedding_type", "\"fourier\"", NULL},
        {"time_embedding_dim", "64", NULL},
        {"center_input_sample", "true", NULL},
        {"resnet_time_scale_shift", "\"scale_shift\"", NULL},
        {"add_attention", "false", NULL},
        {"mid_block_type", "null", NULL},
        {"upsample_type", "\"resnet\"", NULL},
        {"downsample_type", "\"resnet\"", NULL},
        {"act_fn", "\"gelu\"", NULL},
        {"out_channels", "6", NULL},
        {"block_out_channels", "[8, 12, 24]", NULL},
        {"mid_block_scale_factor", "1.4142", NULL},
        {"attn_norm_num_groups", "2", NULL},
        {"layers_per_block", "0", NULL},
        {"sample_size", NULL, NULL},
        {"sample_size", "[8, 16]", NULL},
        {"norm_num_groups", "3", NULL}, /* 8 channels in 3 groups */
        {"sample_size", "6", NULL}, /* three levels halve it twice */
        {"sample_size", "8.5", NULL},
        {"sample_size", "4096", "\"data.image_size\" = 4096 is out of range"}, /* the ddpm schema's check */
        {"_class_name", "\"UNet2DConditionModel\"", NULL},
        {"cross_attention_dim", "768", NULL},
    };
    for (size_t i = 0; i < sizeof unet / sizeof unet[0]; i++)
        refuse_key(d, 0, unet[i].key, unet[i].val, unet[i].needle);
    static const struct {
        const char *key, *val;
    } sch[] = {
        {"beta_schedule", "\"scaled_linear\""}, {"variance_type", "\"learned_range\""}, {"trained_betas", "[0.1, 0.2]"},
        {"thresholding", "true"},               {"prediction_type", "\"x\""},           {"rescale_betas_zero_snr", "true"},
        {"clip_sample_range", "2.0"},           {"num_train_timesteps", "1.5"},         {"use_karras_sigmas", "true"}, {"timestep_values", "[1, 2]"}, {"predict_epsilon", "false"},
    };
    for (size_t i = 0; i < sizeof sch / sizeof sch[0]; i++) refuse_key(d, 1, sch[i].key, sch[i].val, NULL);

    /* keys diffusers 0.1 renamed (image_size, resnet_eps, ...) are ignored by diffusers and by ddpm */
    char dir[600];
    snprintf(dir, sizeof dir, "%s/oldnames", d);
    make_variant(dir, 0, "resnet_num_groups", "4");
    int rc0 = run("import %s -o %s/oldnames.safetensors", dir, d);
    T_OK(rc0 == 0, "an old key name diffusers ignores (resnet_num_groups) is ignored: exit %d %s", rc0, g_err);

    /* tensors */
    snprintf(dir, sizeof dir, "%s/w_missing", d);
    rewrite_weights(dir, drop_one, NULL, 0);
    expect_refusal(d, dir, 2, "\"up_blocks.1.attentions.2.to_k.bias\" (or \"up_blocks.1.attentions.2.key.bias\") is missing",
                   "a missing tensor is refused naming it");
    snprintf(dir, sizeof dir, "%s/w_extra", d);
    rewrite_weights(dir, NULL, "class_embedding.weight", 0);
    expect_refusal(d, dir, 2, "\"class_embedding.weight\" is not part of", "an extra tensor is refused naming it");
    snprintf(dir, sizeof dir, "%s/w_both", d);
    rewrite_weights(dir, NULL, "mid_block.attentions.0.query.weight", 0);
    expect_refusal(d, dir, 2, "\"mid_block.attentions.0.query.weight\" is not part of", "both attention namings at once: the second is extra");
    snprintf(dir, sizeof dir, "%s/w_shape", d);
    rewrite_weights(dir, NULL, NULL, 1);
    expect_refusal(d, dir, 2, "\"conv_in.weight\" has shape [8, 27], but", "a tensor of another shape is refused naming it");
    /* a non-float dtype: the same header with "F32" of the first tensor patched to "I32" */
    snprintf(dir, sizeof dir, "%s/w_dtype", d);
    rewrite_weights(dir, NULL, NULL, 0);
    char p[700];
    snprintf(p, sizeof p, "%s/" WFILE, dir);
    char *b = NULL;
    size_t n = 0;
    if (!file_read_all(p, &b, &n)) {
        char *s = strstr(b + 8, "\"F32\"");
        if (s) memcpy(s, "\"I32\"", 5);
        atomic_write(p, b, n);
        free(b);
    }
    expect_refusal(d, dir, 2, "is I32; ddpm imports F32, F16 or BF16", "an integer tensor is refused naming it");

    /* folders */
    expect_refusal(d, "/nonexistent/ddpm-cifar10-32", 2, "no such folder", "a folder that does not exist");
    expect_refusal(d, "tests/fixtures/diffusers_cifar10_keys.txt", 2, "not a folder", "a file instead of a folder");
    expect_refusal(d, "tests", 2, "no config.json", "a folder without config.json");
    snprintf(dir, sizeof dir, "%s/binonly", d);
    mkdir(dir, 0755);
    snprintf(p, sizeof p, "%s/config.json", dir);
    copy_file(FIX "/config.json", p);
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.bin", dir);
    write_text(p, "pickle");
    expect_refusal(d, dir, 2, "diffusion_pytorch_model.bin (a PyTorch pickle", "only the .bin weights: says to fetch the safetensors");
    snprintf(dir, sizeof dir, "%s/badjson", d);
    rewrite_weights(dir, NULL, NULL, 0);
    snprintf(p, sizeof p, "%s/config.json", dir);
    write_text(p, "{\"sample_size\": 8,");
    expect_refusal(d, dir, 2, "config.json: not a JSON object", "a truncated config.json");
    /* an existing output is kept unless --force */
    snprintf(p, sizeof p, "%s/keep.safetensors", d);
    write_text(p, "precious");
    int rc = run("import " FIX " -o %s", p);
    char buf[64] = "";
    slurp(p, buf, sizeof buf);
    T_OK(rc == 2 && n_lines(g_err) == 1 && strstr(g_err, "--force") && !strcmp(buf, "precious"), "an existing -o file is kept without --force: exit %d %s",
         rc, g_err);
    rc = run("import " FIX " -o %s --force", p);
    T_OK(rc == 0, "... and replaced with --force: exit %d", rc);

    /* export refusals */
    rc = run("export --ckpt %s/a.safetensors -o %s/e", d, d);
    T_OK(rc == 2 && n_lines(g_err) == 1 && strstr(g_err, "--force"), "export into a folder holding an export needs --force: exit %d %s", rc, g_err);
    Config c;
    UNet u;
    config_defaults(&c);
    config_parse(&c, "{\"data\": {\"image_size\": 8}, \"model\": {\"ch\": 8, \"ch_mult\": [1, 2], \"num_res_blocks\": 1, "
                     "\"attn_resolutions\": [4], \"groups\": 4}, \"diffusion\": {\"schedule\": \"cosine\", \"cosine_s\": 0.01}}", "test");
    snprintf(p, sizeof p, "%s/cos.safetensors", d);
    if (!unet_init(&u, &c, 1, 0)) {
        unet_init_params(&u, 1);
        ckpt_save(p, &u, NULL, &c, NULL);
        unet_free(&u);
    }
    rc = run("export --ckpt %s -o %s/cos", p, d);
    snprintf(p, sizeof p, "%s/cos/config.json", d);
    T_OK(rc == 2 && n_lines(g_err) == 1 && strstr(g_err, "cosine_s") && !path_exists(p), "a cosine schedule with s = 0.01 is refused with the reason: exit %d %s",
         rc, g_err);
    rc = run("export -o %s/x", d);
    T_OK(rc == 2 && strstr(g_err, "--ckpt"), "export without a model: exit %d", rc);
    rc = run("import");
    T_OK(rc == 2 && strstr(g_err, "folder"), "import without a folder: exit %d", rc);
    T_OK(run("import --help") == 0 && strstr(g_out, "google/ddpm-cifar10-32") && run("export --help") == 0, "--help on both");
}

int main(void) {
    test_export_class_cond();
    const char *d = t_tmpdir();
    test_cifar_names();
    test_reference(d);
    test_tasks_on_import(d);
    test_round_trips(d);
    test_layouts(d);
    test_refusals(d);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", d);
    if (system(cmd)) printf("  (could not remove %s)\n", d);
    return t_done();
}
