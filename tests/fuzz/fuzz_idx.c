/* libFuzzer: the IDX reader (MNIST format, plain or gzip) through dataset_load_idx. The
 * first input byte picks the role of the rest: even, the images file (no labels file:
 * every label 0); odd, the labels file next to a valid 2-image images file. Output size
 * and channels vary with the input length. */
#include "ddpm/data.h"
#include "fuzz.h"

static const uint8_t GOOD_IMAGES[16 + 2 * 4 * 4] = {0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 4, 1, 2, 3};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n < 1) return 0;
    int as_labels = data[0] & 1;
    data++, n--;
    const char *img = fz_file("train-images-idx3-ubyte", as_labels ? GOOD_IMAGES : data, as_labels ? sizeof GOOD_IMAGES : n);
    char path[256];
    snprintf(path, sizeof path, "%s", img);
    char lab[256];
    snprintf(lab, sizeof lab, "%s/train-labels-idx1-ubyte", fz_dir);
    if (as_labels) fz_file("train-labels-idx1-ubyte", data, n);
    else unlink(lab);
    Dataset ds;
    int size = 1 + (int)(n % 9), channels = n % 2 ? 3 : 1;
    int rc = dataset_load_idx(&ds, path, size, channels, (int)(n % 3));
    if (rc) {
        fz_check_error(rc);
        return 0;
    }
    if (ds.n < 1 || ds.size != size || ds.c != channels) abort();
    for (int i = 0; i < ds.n; i++)
        if (ds.labels[i] < 0 || ds.labels[i] >= ds.n_classes) abort();
    dataset_free(&ds);
    return 0;
}
