/* libFuzzer: the LoRA adapter reader (lora_load) and what `ddpm sample --lora` / `ddpm merge`
 * do next. Any file either loads into a consistent set (rank >= 1, alpha finite and > 0,
 * every pair inside the block, every value finite, names found again by lora_find) that
 * fits a base made of its own shapes, refuses a base with one shape changed, merges into
 * it and survives a save and reload bit for bit — or it is refused with one line. The
 * same bytes are also tried as a --lora FILE[:SCALE] spec. */
#include <math.h>

#include "ddpm/lora.h"
#include "fuzz.h"

static void check_set(const LoraSet *s, const char *p) {
    if (s->n < 1 || s->rank < 1 || s->rank > LORA_MAX_RANK || !isfinite(s->alpha) || !(s->alpha > 0) ||
        strlen(s->base_sha256) != 64)
        abort();
    size_t nb = 0; /* floats the bases would take */
    for (int i = 0; i < s->n; i++) {
        const LoraPair *q = &s->p[i];
        size_t na = (size_t)s->rank * q->k * q->k * q->in, nbb = (size_t)q->out * s->rank;
        if ((q->ndim != 2 && q->ndim != 4) || (q->k != 1 && q->k != 3) || (q->ndim == 2 && q->k != 1) || q->out < 1 ||
            q->in < 1 || q->off_a + na > s->n_floats || q->off_b + nbb > s->n_floats || lora_find(s, q->name) != q)
            abort();
        for (size_t j = 0; j < na; j++)
            if (!isfinite(s->params[q->off_a + j])) abort();
        for (size_t j = 0; j < nbb; j++)
            if (!isfinite(s->params[q->off_b + j])) abort();
        nb += (size_t)q->out * q->k * q->k * q->in;
    }
    if (nb > (1u << 20)) return; /* a base far larger than the file: the checks above suffice */

    /* a base of the set's own shapes: fits, no warning against its own hash; merges */
    LoraBase *b = calloc((size_t)s->n, sizeof *b);
    char **names = calloc((size_t)s->n, sizeof *names);
    float *w = calloc(nb ? nb : 1, sizeof(float));
    size_t off = 0;
    for (int i = 0; i < s->n; i++) {
        const LoraPair *q = &s->p[i];
        names[i] = malloc(strlen(q->name) + 8);
        sprintf(names[i], "%s.weight", q->name);
        b[i].name = names[i];
        b[i].ndim = q->ndim;
        int sh[4] = {q->out, q->k, q->k, q->in};
        if (q->ndim == 2) sh[1] = q->in;
        memcpy(b[i].shape, sh, sizeof sh);
        b[i].w = w + off;
        off += (size_t)q->out * q->k * q->k * q->in;
    }
    char warn[512];
    if (lora_check_base(s, p, b, s->n, s->base_sha256, warn, sizeof warn) || warn[0]) abort();
    lora_merge(s, 0.5f, b, s->n);
    b[0].shape[0]++;
    int rc = lora_check_base(s, p, b, s->n, NULL, warn, sizeof warn);
    if (rc != DDPM_EUSAGE) abort();
    fz_check_error(rc);
    b[0].shape[0]--;

    /* save and reload: the same set */
    if (s->n_floats <= (1u << 16)) {
        char out[256];
        snprintf(out, sizeof out, "%s.out", p);
        LoraSet t;
        if (lora_save(out, s, NULL, NULL, 0) || lora_load(&t, out)) {
            fprintf(stderr, "a valid set did not survive a save and reload: %s\n", err_msg());
            abort();
        }
        if (t.n != s->n || t.rank != s->rank || t.alpha != s->alpha || t.targets != s->targets ||
            strcmp(t.base_sha256, s->base_sha256) || t.n_floats != s->n_floats ||
            memcmp(t.params, s->params, s->n_floats * sizeof(float)))
            abort();
        lora_set_free(&t);
        remove(out);
    }
    for (int i = 0; i < s->n; i++) free(names[i]);
    free(names);
    free(b);
    free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    const char *p = fz_file("lora.safetensors", data, n);
    char path[256];
    snprintf(path, sizeof path, "%s", p);
    LoraSet s;
    int rc = lora_load(&s, path);
    if (rc) {
        fz_check_error(rc);
    } else {
        check_set(&s, path);
        lora_set_free(&s);
    }
    /* the bytes as a FILE[:SCALE] spec */
    char *spec = malloc(n + 1);
    memcpy(spec, data, n);
    spec[n] = 0;
    char *file;
    float scale;
    rc = lora_spec_parse(spec, &file, &scale);
    if (rc) {
        fz_check_error(rc);
    } else {
        if (!file[0] || !isfinite(scale) || strlen(file) > strlen(spec)) abort();
        free(file);
    }
    free(spec);
    return 0;
}
