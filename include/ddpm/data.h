/* data: dataset loaders (into memory as uint8) and the seeded batch sampler.
 *
 * Formats (config data.format):
 *  - "idx":     MNIST-format IDX, plain or .gz. data.path is a folder holding
 *               train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz], or the
 *               images file itself (labels looked up by replacing "images-idx3" with
 *               "labels-idx1"; missing labels -> all label 0).
 *  - "cifar10": data.path is cifar-10-batches-bin/ with data_batch_{1..5}.bin, 3073-byte
 *               records (label byte, 1024 R, 1024 G, 1024 B).
 *  - "folder":  PNG/JPEG files under data.path, recursive; the first-level subfolder name
 *               is the class (files directly in the root get class "" ); classes sorted by name.
 * Images are converted to data.channels and center-cropped/resized to data.image_size.
 * Bad data -> one error naming the file, DDPM_ERUNTIME; never a partial load. */
#ifndef DDPM_DATA_H
#define DDPM_DATA_H

#include <stdbool.h>
#include <stdint.h>
#include "ddpm/config.h"

typedef struct {
    int n, size, c;       /* n images of size x size x c */
    uint8_t *pix;         /* n*size*size*c, HWC per image */
    int *labels;          /* n */
    int n_classes;
    char **class_names;   /* n_classes strings: folder names, CIFAR-10's, Fashion-MNIST's (an idx
                           * path containing "fashion", 10 classes), else "0".."k-1" */
    int has_labels;       /* 0: idx without a labels file (every label 0) */
} Dataset;

/* Load data.path; with data.classes only the images of those labels are kept (labels,
 * n_classes and class_names unchanged), then data.limit counts over what was kept. */
int dataset_load(Dataset *ds, const Config *cfg);
/* Keep, in order, the images whose label is one of classes[0..n-1], then the first `limit`
 * of them (0 = all). EUSAGE naming `what` (the dataset's path) when the dataset has no
 * labels, a label is not one of its classes, or nothing is left; ds is untouched then. */
int dataset_keep_classes(Dataset *ds, const int *classes, int n, int limit, const char *what);
/* Individual loaders, for tests. limit 0 = all. */
int dataset_load_idx(Dataset *ds, const char *path, int size, int channels, int limit);
int dataset_load_cifar10(Dataset *ds, const char *dir, int size, int channels, int limit);
int dataset_load_folder(Dataset *ds, const char *dir, int size, int channels, int limit);
/* Image files (.png/.jpg/.jpeg) under dir, recursively, hidden entries skipped, as paths
 * relative to dir sorted by strcmp: *files is a malloc'd array of *n malloc'd strings
 * (free each, then the array). ERUNTIME naming a folder that cannot be read. */
int dataset_list_images(const char *dir, char ***files, int *n);
/* Decode the n images dir/files[i] into pix (n, size, size, channels), converted and
 * center-cropped/resized as the folder loader does. ERUNTIME naming the first bad file. */
int dataset_decode_images(uint8_t *pix, const char *dir, const char *const *files, int n, int size,
                          int channels);
void dataset_free(Dataset *ds);
/* Per-channel mean and std of pixels scaled to [0,1]. */
void dataset_stats(const Dataset *ds, double mean[3], double std[3]);

/* Batch sampler: each epoch is a permutation of 0..n-1, a pure function of (seed, epoch)
 * (Fisher-Yates driven by rng stream RNG_SHUFFLE). A batch of B takes the next B indices;
 * when fewer than B remain the rest of the epoch is skipped and the next epoch starts.
 * State is just (epoch, pos), so a run resumes exactly. */
typedef struct {
    int n;
    uint64_t seed;
    bool hflip;
    int epoch, pos;
    int *perm;        /* permutation for `epoch` */
    int perm_epoch;   /* which epoch perm holds (-1 = none) */
} Batcher;

void batcher_init(Batcher *b, int n, uint64_t seed, bool hflip);
void batcher_free(Batcher *b);
/* Advance by one global batch of B images and write images lo..hi-1 of it (hi-lo images)
 * to out, (hi-lo, size, size, c) NHWC floats in [-1,1]; labels (may be NULL).
 * Flip of image at global position p (= epoch*n + pos) is decided by rng stream RNG_FLIP.
 * lo/hi let MPI ranks take their shard of the same global batch. */
void batcher_next(Batcher *b, const Dataset *ds, float *out, int *labels, int B, int lo, int hi);

#endif
