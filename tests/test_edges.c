/* The config schema's edges, walked as a user would reach them: every key of
 * `ddpm info --keys` at its minimum and maximum (and just outside), every choice, levels
 * 1-8 of ch_mult with attention at every resolution, num_res_blocks up to its maximum, odd
 * and tiny image sizes, groups that do not divide the width. Each goes through
 * `ddpm info --no-data`; where the model is tiny also a 2-step train and a sample (2 DDIM
 * steps, or every one of the T = 20 DDPM steps, alternately; 20 of them when T > 1000). The contract: exit 0, or exit 2 with one line naming the key (a 2-step train may
 * also stop with exit 1 on a NaN loss, e.g. at train.lr = 1e12). Never a crash.
 * DDPM_EDGES_QUICK=1 (make check) trains only the structural edges, not every key value. */
#include <ctype.h>

#include "cli_util.h"
#include "ddpm/platform.h"

static const char *BASE =
    "{\"data\": {\"image_size\": 8, \"channels\": 1, \"limit\": 8},"
    " \"model\": {\"ch\": 8, \"ch_mult\": [1, 2], \"num_res_blocks\": 1, \"attn_resolutions\": [4], \"dropout\": 0.1, \"groups\": 4},"
    " \"diffusion\": {\"T\": 20},"
    " \"train\": {\"batch_size\": 4, \"steps\": 2, \"warmup\": 1, \"log_every\": 1, \"sample_every\": 0, \"ckpt_every\": 1,"
    "           \"keep\": 1, \"sample_n\": 2, \"sample_steps\": 2},"
    " \"sample\": {\"steps\": 2, \"batch\": 2}}";

static char base_cfg[600], run_dir[600];
static int n_info, n_trained, quick;

typedef struct {
    char key[64], type[16], choices[128];
    double lo, hi;
} KeyInfo;
static KeyInfo keys[128];
static int n_keys;

static int names_a_key(const char *msg) {
    for (int i = 0; i < n_keys; i++)
        if (strstr(msg, keys[i].key)) return 1;
    return 0;
}

/* Why a result breaks the contract, or NULL. key: what an exit-2 message must name. */
static const char *judge(int rc, const char *key, int nan_ok) {
    if (rc == 0) return NULL;
    /* exit 2 names the key, or the other key it conflicts with (e.g. an image size whose
     * resolutions no longer hold model.attn_resolutions) */
    if (rc == 2 && key && (strstr(g_err, key) || names_a_key(g_err)) && n_lines(g_err) == 1) return NULL;
    if (rc == 2 && !key && n_lines(g_err) == 1) return NULL;
    if (rc == 1 && nan_ok && (strstr(g_err, "NaN") || strstr(g_err, "infinite")) && n_lines(g_err) == 1) return NULL;
    return rc == 2 ? "exit 2 without one line naming the key" : "unexpected exit code";
}

/* info, and with train != 0 a 2-step train + 2-step sample, of BASE plus `sets`. Returns
 * the info exit code. */
static int edge(const char *sets, const char *key, int train, const char *what) {
    int rc = run("info --no-data --config %s %s", base_cfg, sets);
    n_info++;
    const char *bad = judge(rc, key, 0);
    if (bad) {
        T_OK(0, "%s: info %s -> exit %d: %s (%s)", what, sets, rc, bad, g_err);
        return rc;
    }
    if (!train || rc) {
        t_pass++; /* counted, printed only when it fails: there are hundreds */
        return rc;
    }
    int rt = run("train --config %s %s --set train.out_dir=%s --force --quiet", base_cfg, sets, run_dir);
    n_trained++;
    if ((bad = judge(rt, key, 1))) {
        T_OK(0, "%s: train %s -> exit %d: %s (%s)", what, sets, rt, bad, g_err);
        return rc;
    }
    if (rt == 0) {
        /* alternately DDIM (2 steps) and ancestral DDPM over all T steps (T = 20 in BASE).
         * At a larger T (diffusion.T = 100000, its maximum) the DDPM step runs on a 20-step
         * subsequence of the same schedule: all 100000 took minutes, more under ASan. */
        const char *ts = strstr(sets, "diffusion.T=");
        long T = ts ? strtol(ts + 12, NULL, 10) : 20;
        int rs = n_trained % 2 ? run("sample --run %s -n 2 --sampler ddim --steps 2 -o %s/out --quiet", run_dir, run_dir)
                               : run("sample --run %s -n 2 --sampler ddpm%s -o %s/out --quiet", run_dir,
                                     T > 1000 ? " --steps 20" : "", run_dir);
        if ((bad = judge(rs, key, 0))) {
            T_OK(0, "%s: sample after train %s -> exit %d: %s (%s)", what, sets, rs, bad, g_err);
            return rc;
        }
    }
    t_pass++;
    return rc;
}

/* Parse `ddpm info --keys`: "| `key` | int [lo, hi] | `def` | help |". */
static int read_keys(KeyInfo *k, int max) {
    run("info --keys");
    int n = 0;
    for (char *l = g_out; l && *l && n < max; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, "| `", 3)) continue;
        KeyInfo *e = &k[n];
        memset(e, 0, sizeof *e);
        if (sscanf(l, "| `%63[^`]` | %15[a-z ]", e->key, e->type) != 2) continue;
        char *end = strchr(l, '\n'), *br = strchr(l + 3 + strlen(e->key), '[');
        char *pa = strchr(l + 3 + strlen(e->key), '(');
        size_t tl = strlen(e->type);
        while (tl && e->type[tl - 1] == ' ') e->type[--tl] = 0;
        if (br && (!end || br < end)) sscanf(br, "[%lf, %lf]", &e->lo, &e->hi);
        if (pa && (!end || pa < end) && pa < strstr(l + 3, "| `")) sscanf(pa, "(%127[^)])", e->choices);
        n++;
    }
    return n;
}

static void fmt_num(char *b, size_t n, double v, int integer) {
    if (integer) snprintf(b, n, "%.0f", v);
    else snprintf(b, n, "%.17g", v);
}

static void walk_keys(void) {
    KeyInfo *k = keys;
    int n = n_keys = read_keys(k, 128);
    T_OK(n >= 40, "info --keys lists %d keys", n);
    for (int i = 0; i < n; i++) {
        char sets[512], v[64];
        const char *key = k[i].key;
        int is_int = !strcmp(k[i].type, "int"), is_float = !strcmp(k[i].type, "float");
        /* data.path / format are the dataset's: info --no-data ignores them, train needs a real one */
        int trainable = !quick && strncmp(key, "data.format", 11) && strncmp(key, "data.path", 9);
        if (is_int || is_float) {
            double ends[2] = {k[i].lo, k[i].hi};
            for (int e = 0; e < 2; e++) {
                fmt_num(v, sizeof v, ends[e], is_int);
                snprintf(sets, sizeof sets, "--set %.63s=%.60s", key, v);
                /* heavy at the maximum: huge images, widths or batches (info only) */
                int heavy = e == 1 && (strstr(key, "image_size") || !strcmp(key, "model.ch") || strstr(key, "batch") ||
                                       strstr(key, "sample_n") || !strcmp(key, "train.steps") || strstr(key, "sample_steps") ||
                                       !strcmp(key, "model.groups") || !strcmp(key, "sample.steps"));
                if (!strcmp(key, "train.steps") && e == 1) trainable = 0;
                edge(sets, key, trainable && !heavy, "key at its end");
                /* just outside the range: exit 2 naming the key */
                double out = e == 0 ? (is_int ? k[i].lo - 1 : k[i].lo - (k[i].lo ? fabs(k[i].lo) * 0.5 : 1e-3))
                                    : (is_int ? k[i].hi + 1 : k[i].hi * 1.5 + 1e-3);
                fmt_num(v, sizeof v, out, is_int);
                snprintf(sets, sizeof sets, "--set %.63s=%.60s", key, v);
                int rc = edge(sets, key, 0, "key outside its range");
                if (rc != 2) T_OK(0, "%s = %s outside [%g, %g] accepted", key, v, k[i].lo, k[i].hi);
            }
        } else if (!strcmp(k[i].type, "bool")) {
            for (int e = 0; e < 2; e++) {
                snprintf(sets, sizeof sets, "--set %.63s=%s", key, e ? "true" : "false");
                edge(sets, key, trainable, "bool key");
            }
        } else if (!strcmp(k[i].type, "string") && k[i].choices[0]) {
            char ch[128];
            snprintf(ch, sizeof ch, "%s", k[i].choices);
            for (char *c = strtok(ch, "/"); c; c = strtok(NULL, "/")) {
                snprintf(sets, sizeof sets, "--set %.63s=%.60s", key, c);
                edge(sets, key, trainable, "choice");
            }
            snprintf(sets, sizeof sets, "--set %.63s=bogus", key);
            if (edge(sets, key, 0, "not a choice") != 2) T_OK(0, "%s = bogus accepted", key);
        } else if (!strcmp(k[i].type, "string")) {
            char longs[300];
            memset(longs, 'a', 255), longs[255] = 0;
            snprintf(sets, sizeof sets, "--set %.63s=/tmp/%.250s", key, longs);
            edge(sets, key, 0, "longest string");
            memset(longs, 'a', 299), longs[299] = 0;
            snprintf(sets, sizeof sets, "--set %.63s=%.299s", key, longs);
            if (edge(sets, key, 0, "string too long") != 2) T_OK(0, "%s: a 299-character value accepted", key);
        }
    }
}

static void walk_structure(void) {
    char sets[512], mult[64], attn[96];
    /* levels 1..8, each at its smallest image size (2^(L-1)) and at 3 * 2^(L-1) (odd at the
     * last level), with attention at every resolution of the model */
    for (int L = 1; L <= 8; L++)
        for (int odd = 0; odd < 2; odd++) {
            int size = (odd ? 3 : 1) << (L - 1);
            mult[0] = attn[0] = 0;
            for (int i = 0, r = size; i < L; i++, r /= 2) {
                snprintf(mult + strlen(mult), sizeof mult - strlen(mult), "%s1", i ? "," : "");
                snprintf(attn + strlen(attn), sizeof attn - strlen(attn), "%s%d", i ? "," : "", r);
            }
            snprintf(sets, sizeof sets, "--set 'model.ch_mult=[%s]' --set 'model.attn_resolutions=[%s]' --set data.image_size=%d",
                     mult, attn, size);
            int rc = edge(sets, NULL, size <= 24, "levels");
            T_OK(rc == 0, "%d levels, image %d, attention at every resolution [%s]: info exit %d %s", L, size, attn, rc, rc ? g_err : "");
        }
    /* 8 levels at the widest multipliers (info only: 4096 x 64 wide is only planned) */
    edge("--set 'model.ch_mult=[64,64,64,64,64,64,64,64]' --set data.image_size=128 --set model.ch=4096 --set model.groups=1024",
         NULL, 0, "widest");
    /* num_res_blocks 1..16 on 4 levels; trained at 1, 8 and 16 on 2 levels */
    for (int nrb = 1; nrb <= 16; nrb++) {
        snprintf(sets, sizeof sets, "--set model.num_res_blocks=%d --set 'model.ch_mult=[1,2,2,2]'", nrb);
        int rc = edge(sets, NULL, 0, "num_res_blocks");
        if (rc) T_OK(0, "num_res_blocks %d on 4 levels: exit %d %s", nrb, rc, g_err);
        if (nrb == 1 || nrb == 8 || nrb == 16) {
            snprintf(sets, sizeof sets, "--set model.num_res_blocks=%d", nrb);
            edge(sets, NULL, 1, "num_res_blocks trained");
        }
    }
    int rc = run("info --no-data --config configs/cifar.json --set model.num_res_blocks=16 --set 'model.ch_mult=[1,2,2,2]'");
    n_info++;
    T_OK(rc == 0, "the issue's command: cifar.json, 16 res blocks on 4 levels -> exit %d %s", rc, rc ? g_err : "");
    /* tiny and odd image sizes on one level, grey and RGB */
    for (int size = 1; size <= 9; size += (size < 3 ? 1 : 2))
        for (int c = 1; c <= 3; c += 2) {
            snprintf(sets, sizeof sets, "--set data.image_size=%d --set data.channels=%d --set 'model.ch_mult=[2]' --set "
                     "'model.attn_resolutions=[%d]'", size, c, size);
            rc = edge(sets, NULL, 1, "tiny size");
            T_OK(rc == 0, "image %dx%dx%d on one level with attention: exit %d %s", size, size, c, rc, rc ? g_err : "");
        }
    /* valid, but more memory than any machine here has: attention at 256x256 is 65536^2
     * scores per image. An error naming what to reduce (exit 1), not a crash in malloc. */
    rc = run("train --config %s --set data.image_size=256 --set 'model.ch_mult=[1]' --set 'model.attn_resolutions=[256]' "
             "--set train.out_dir=%s --force --quiet", base_cfg, run_dir);
    n_info++;
    T_OK(rc == 1 && strstr(g_err, "this machine has") && strstr(g_err, "model.attn_resolutions") && n_lines(g_err) == 1,
         "attention at 256x256: train exit %d: %s", rc, g_err);
    /* the smallest width the timestep embedding allows, with one group */
    edge("--set model.ch=4 --set model.groups=1", NULL, 1, "narrowest");
    /* groups that do not divide a width, the schema says no (naming model.groups) */
    int gs[][2] = {{8, 3}, {12, 8}, {8, 16}, {6, 4}};
    for (int i = 0; i < 4; i++) {
        snprintf(sets, sizeof sets, "--set model.ch=%d --set model.groups=%d", gs[i][0], gs[i][1]);
        rc = edge(sets, "model.groups", 0, "groups");
        T_OK(rc == 2, "ch %d, groups %d: exit %d: %s", gs[i][0], gs[i][1], rc, g_err);
    }
    /* level counts the image size cannot halve to, attention at a resolution not in the model */
    rc = edge("--set data.image_size=12 --set 'model.ch_mult=[1,1,1,1]'", "data.image_size", 0, "levels vs size");
    T_OK(rc == 2, "image 12 on 4 levels: exit %d: %s", rc, g_err);
    rc = edge("--set 'model.attn_resolutions=[3]'", "model.attn_resolutions", 0, "attention resolution");
    T_OK(rc == 2, "attention at 3 in an 8/4 model: exit %d: %s", rc, g_err);
    rc = edge("--set 'model.ch_mult=[1,1,1,1,1,1,1,1,1]' --set data.image_size=256", "model.ch_mult", 0, "9 levels");
    T_OK(rc == 2, "9 levels: exit %d: %s", rc, g_err);
    rc = edge("--set 'model.ch_mult=[]'", "model.ch_mult", 0, "no level");
    T_OK(rc == 2, "no level: exit %d: %s", rc, g_err);
}

int main(void) {
    const char *d = t_tmpdir();
    quick = getenv("DDPM_EDGES_QUICK") && atoi(getenv("DDPM_EDGES_QUICK"));
    snprintf(base_cfg, sizeof base_cfg, "%s/base.json", d);
    snprintf(run_dir, sizeof run_dir, "%s/run", d);
    write_text(base_cfg, BASE);
    double t0 = now_s();
    printf("every key at its ends%s\n", quick ? " (info only: DDPM_EDGES_QUICK)" : "");
    walk_keys();
    printf("levels, res blocks, sizes, groups, attention\n");
    walk_structure();
    printf("  edge configs tried: %d through info --no-data, %d of them also trained 2 steps and sampled (%.0f s)\n", n_info,
           n_trained, now_s() - t0);
    return t_done();
}
