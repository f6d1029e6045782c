/* libFuzzer: the safetensors reader (st_read) and, when the file is a ddpm checkpoint, what
 * `ddpm sample --ckpt` / `train --resume` do next: parse and validate the stored config,
 * read the training state, and (for small models) load every parameter. */
#include "ddpm/safetensors.h"
#include "ddpm/checkpoint.h"
#include "ddpm/unet.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    const char *p = fz_file("x.safetensors", data, n);
    StFile f;
    int rc = st_read(&f, p);
    if (rc) {
        fz_check_error(rc);
        return 0;
    }
    /* what st_read promises: every entry inside the data section, sizes consistent */
    for (int i = 0; i < f.n; i++) {
        const StEntry *e = &f.e[i];
        if (e->begin > e->end || e->end > f.data_size || st_find(&f, e->name) == NULL) abort();
        if (!strcmp(e->dtype, "F32") && e->end - e->begin <= (1u << 24)) {
            float *dst = malloc((size_t)(e->end - e->begin) + 4);
            if (st_get_f32(&f, e->name, e->ndim, e->shape, dst)) abort();
            free(dst);
        }
    }
    for (int i = 0; i < f.n_meta; i++)
        if (st_meta(&f, f.meta_k[i]) == NULL) abort();
    st_free(&f);

    Config c;
    rc = ckpt_open(&f, p, &c);
    if (rc) {
        fz_check_error(rc);
        return 0;
    }
    TrainState ts;
    rc = ckpt_load_state(&f, &ts);
    if (rc) fz_check_error(rc);
    UNet u;
    if (unet_plan(&u, &c, 1, 0) == 0) {
        size_t nf = u.n_floats;
        unet_free(&u);
        if (nf <= (1u << 20) && unet_init(&u, &c, 1, 0) == 0) {
            rc = ckpt_load_params(&f, "", &u, u.params);
            if (rc) fz_check_error(rc);
            unet_free(&u);
        }
    }
    st_free(&f);
    return 0;
}
