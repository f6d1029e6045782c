/* libFuzzer: the CIFAR-10 binary reader (3073-byte records) through dataset_load_cifar10;
 * the input is data_batch_1.bin of a folder. */
#include "ddpm/data.h"
#include <sys/stat.h>

#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    fz_init();
    char dir[256];
    snprintf(dir, sizeof dir, "%s/cifar", fz_dir);
    mkdir(dir, 0700);
    static char name[300];
    snprintf(name, sizeof name, "cifar/data_batch_1.bin");
    fz_file(name, data, n);
    Dataset ds;
    int size = n % 2 ? 32 : 8, channels = n % 3 ? 3 : 1;
    int rc = dataset_load_cifar10(&ds, dir, size, channels, (int)(n % 4));
    if (rc) {
        fz_check_error(rc);
        return 0;
    }
    if (ds.n < 1 || ds.size != size || ds.c != channels) abort();
    for (int i = 0; i < ds.n; i++)
        if (ds.labels[i] < 0 || ds.labels[i] > 9) abort();
    dataset_free(&ds);
    return 0;
}
