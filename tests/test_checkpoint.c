/* checkpoint: safetensors round trip, st_get_f32, atomic writes, I/O failures, and a
 * catalogue of corrupt files (plus truncation at every length and byte-flip fuzzing of
 * the header) that must each be rejected with DDPM_ERUNTIME and never crash. */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ddpm/safetensors.h"
#include "ddpm/err.h"
#include "test.h"

static char g_path[512];

static const char *tpath(const char *name) {
    snprintf(g_path, sizeof g_path, "%s/%s", t_tmpdir(), name);
    return g_path;
}

static int write_bytes(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    size_t w = n ? fwrite(p, 1, n, fp) : 0;
    return (fclose(fp) == 0 && w == n) ? 0 : -1;
}

static uint8_t *read_bytes(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, fp);
    fclose(fp);
    return b;
}

/* A raw file: u64 header length (hlen_override unless ~0), the hl header bytes, `dlen`
 * data bytes. */
static void make_raw_n(const char *path, const char *hdr, size_t hl, uint64_t hlen_override,
                       size_t dlen) {
    uint64_t h = hlen_override != ~0ull ? hlen_override : hl;
    size_t n = 8 + hl + dlen;
    uint8_t *b = calloc(n, 1);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(h >> (8 * i));
    memcpy(b + 8, hdr, hl);
    for (size_t i = 0; i < dlen; i++) b[8 + hl + i] = (uint8_t)(i * 7 + 1);
    write_bytes(path, b, n);
    free(b);
}

static void make_raw(const char *path, const char *hdr, uint64_t hlen_override, size_t dlen) {
    make_raw_n(path, hdr, strlen(hdr), hlen_override, dlen);
}

static int count_tmp_files(void) {
    DIR *d = opendir(t_tmpdir());
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strstr(de->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

static int starts_with(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* rejected with ERUNTIME, "<path>: corrupt checkpoint: ...", one line, StFile left empty */
static int rejected_ok(int rc, const StFile *f, const char *path) {
    char pre[600];
    snprintf(pre, sizeof pre, "%s: corrupt checkpoint: ", path);
    return rc == DDPM_ERUNTIME && starts_with(err_msg(), pre) && !strchr(err_msg(), '\n') &&
           f->buf == NULL && f->n == 0 && f->e == NULL && f->path == NULL;
}

static void expect_corrupt_n(const char *what, const char *hdr, size_t hl, size_t dlen,
                             const char *needle) {
    const char *path = tpath("corrupt.safetensors");
    make_raw_n(path, hdr, hl, ~0ull, dlen);
    StFile f;
    int rc = st_read(&f, path);
    int ok = rejected_ok(rc, &f, path) && (!needle || strstr(err_msg(), needle));
    T_OK(ok, "%s: rc %d, %s", what, rc, rc ? err_msg() + strlen(path) + 2 : "ACCEPTED");
    if (!rc) st_free(&f);
}

static void expect_corrupt(const char *what, const char *hdr, size_t dlen, const char *needle) {
    expect_corrupt_n(what, hdr, strlen(hdr), dlen, needle);
}

/* An accepted file must be internally consistent; touch every byte it points at. */
static int sane(const StFile *f) {
    uint64_t total = 0;
    unsigned sum = 0;
    for (int i = 0; i < f->n; i++) {
        const StEntry *e = &f->e[i];
        if (e->ndim < 0 || e->ndim > ST_MAX_DIM || e->begin > e->end || e->end > f->data_size)
            return 0;
        for (uint64_t k = e->begin; k < e->end; k++) sum += f->data[k];
        total += e->end - e->begin;
        if (!st_find(f, e->name)) return 0;
    }
    for (int i = 0; i < f->n_meta; i++)
        if (!f->meta_k[i] || !f->meta_v[i]) return 0;
    (void)sum;
    return total == f->data_size && f->data == f->buf + (f->size - f->data_size);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

/* ------------------------------------------------------------------------ */

static float A[2 * 3], B[4], S[1], BIG[3 * 4 * 5 * 2];

static int write_reference(const char *path, const char *long_meta) {
    for (int i = 0; i < 6; i++) A[i] = (float)i - 2.5f;
    for (int i = 0; i < 4; i++) B[i] = 1.0f / (float)(i + 1);
    S[0] = 3.14159f;
    for (int i = 0; i < 120; i++) BIG[i] = (float)(i * i) * 1e-3f - 1.0f;
    StTensorOut t[] = {
        {"conv_in.weight", 2, {2, 3}, A},
        {"b\xc3\xbcias", 1, {4}, B}, /* UTF-8 name */
        {"scalar", 0, {0}, S},
        {"empty", 2, {0, 5}, NULL},
        {"down.0.big", 4, {3, 4, 5, 2}, BIG},
    };
    const char *mk[] = {"config", "step", "blank"};
    const char *mv[] = {long_meta, "1234", ""};
    return st_write(path, t, 5, mk, mv, 3);
}

static void test_round_trip(void) {
    printf("round trip\n");
    /* a long JSON string with quotes, backslashes, newlines, tabs, control and UTF-8 */
    size_t cap = 20000, o = 0;
    char *meta = malloc(cap);
    o += (size_t)snprintf(meta + o, cap - o, "{\n  \"model\": {\"ch\": 128, \"path\": \"C:\\\\x\"},\n");
    while (o < cap - 200)
        o += (size_t)snprintf(meta + o, cap - o, "  \"k%zu\": \"v\\\"\t\x01\xc3\xa9\",\n", o);
    snprintf(meta + o, cap - o, "  \"end\": true\n}");

    const char *path = tpath("rt.safetensors");
    int rc = write_reference(path, meta);
    T_OK(rc == 0, "st_write rc %d %s", rc, err_msg());
    T_OK(count_tmp_files() == 0, "no temp file left after a successful write");

    size_t n;
    uint8_t *raw = read_bytes(path, &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | raw[i];
    T_OK((8 + hl) % 8 == 0, "data starts at 8-aligned file offset %llu", (unsigned long long)(8 + hl));
    T_OK(raw[8] == '{' && raw[8 + hl - 1] != 0, "header starts with '{'");
    T_OK(n == 8 + hl + (6 + 4 + 1 + 0 + 120) * 4, "file size %zu = 8 + header + data", n);
    free(raw);

    StFile f;
    rc = st_read(&f, path);
    T_OK(rc == 0, "st_read rc %d %s", rc, rc ? err_msg() : "");
    if (rc) {
        free(meta);
        return;
    }
    T_OK(f.n == 5 && f.n_meta == 3, "5 tensors (%d), 3 metadata (%d)", f.n, f.n_meta);
    const char *names[] = {"conv_in.weight", "b\xc3\xbcias", "scalar", "empty", "down.0.big"};
    const int nd[] = {2, 1, 0, 2, 4};
    const int64_t shapes[5][4] = {{2, 3}, {4}, {0}, {0, 5}, {3, 4, 5, 2}};
    const float *datas[] = {A, B, S, NULL, BIG};
    const uint64_t nbytes[] = {24, 16, 4, 0, 480};
    uint64_t off = 0;
    for (int i = 0; i < 5; i++) {
        const StEntry *e = st_find(&f, names[i]);
        int ok = e && strcmp(e->dtype, "F32") == 0 && e->ndim == nd[i] && e->begin == off &&
                 e->end == off + nbytes[i];
        for (int d = 0; ok && d < nd[i]; d++) ok = e->shape[d] == shapes[i][d];
        if (ok && nbytes[i]) ok = memcmp(f.data + e->begin, datas[i], nbytes[i]) == 0;
        T_OK(ok, "tensor %-15s dtype, shape, offsets [%llu, %llu) and bytes", names[i],
             (unsigned long long)off, (unsigned long long)(off + nbytes[i]));
        off += nbytes[i];
    }
    T_OK(f.data_size == off, "data section %zu bytes, fully covered", f.data_size);
    const char *m = st_meta(&f, "config");
    T_OK(m && strcmp(m, meta) == 0, "long metadata string survives (%zu chars)", strlen(meta));
    T_OK(st_meta(&f, "step") && strcmp(st_meta(&f, "step"), "1234") == 0, "metadata step");
    T_OK(st_meta(&f, "blank") && st_meta(&f, "blank")[0] == 0, "empty metadata value");
    T_OK(st_meta(&f, "nope") == NULL && st_find(&f, "nope") == NULL, "missing key -> NULL");

    /* st_get_f32 */
    float big[120], sc = 0, dummy[8];
    int64_t sh_big[4] = {3, 4, 5, 2}, sh_bad[4] = {3, 4, 2, 5}, sh_e[2] = {0, 5};
    rc = st_get_f32(&f, "down.0.big", 4, sh_big, big);
    T_OK(rc == 0 && memcmp(big, BIG, sizeof big) == 0, "st_get_f32 copies down.0.big");
    rc = st_get_f32(&f, "scalar", 0, NULL, &sc);
    T_NEAR(sc, 3.14159f, 0, "st_get_f32 scalar");
    T_OK(st_get_f32(&f, "empty", 2, sh_e, dummy) == 0, "st_get_f32 empty tensor");
    rc = st_get_f32(&f, "down.0.big", 4, sh_bad, big);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "\"down.0.big\"") &&
             strstr(err_msg(), "[3, 4, 5, 2]") && strstr(err_msg(), "[3, 4, 2, 5]"),
         "wrong shape: %s", err_msg());
    rc = st_get_f32(&f, "down.0.big", 3, sh_big, big);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "\"down.0.big\""), "wrong ndim: %s", err_msg());
    rc = st_get_f32(&f, "missing.weight", 1, sh_big, big);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "\"missing.weight\"") &&
             strstr(err_msg(), "not found"),
         "missing: %s", err_msg());
    st_free(&f);
    T_OK(f.buf == NULL && f.n == 0, "st_free clears the struct");
    st_free(&f); /* twice is harmless */

    /* wrong dtype: a hand-made F16 tensor */
    const char *p16 = tpath("f16.safetensors");
    make_raw(p16,
             "{\"h\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,8]},"
             "\"__metadata__\":{\"format\":\"pt\"}}   ",
             ~0ull, 8);
    rc = st_read(&f, p16);
    T_OK(rc == 0 && f.n == 1 && strcmp(f.e[0].dtype, "F16") == 0, "F16 file reads (rc %d)", rc);
    int64_t sh22[2] = {2, 2};
    rc = rc ? rc : st_get_f32(&f, "h", 2, sh22, dummy);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "\"h\" is F16"), "wrong dtype: %s", err_msg());
    st_free(&f);
    free(meta);
}

static void test_accepted_variants(void) {
    printf("valid files written by others\n");
    const char *path = tpath("ok.safetensors");
    struct {
        const char *what, *hdr;
        size_t dlen;
        int n;
    } cases[] = {
        {"empty object, no data", "{}", 0, 0},
        {"offsets in reverse JSON order, whitespace, null metadata",
         "{ \"b\" : {\"shape\":[1],\"dtype\":\"F32\",\"data_offsets\":[8,12]},\n"
         "  \"a\" : {\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]},"
         "\"__metadata__\":null }\n\t ",
         12, 2},
        {"all dtypes",
         "{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[8,10]},"
         "\"c\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[10,12]},"
         "\"d\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[12,16]},"
         "\"e\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[16,17]},"
         "\"f\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[17,18]},"
         "\"g\":{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[18,20]},"
         "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[20,20]},"
         "\"z2\":{\"dtype\":\"F32\",\"shape\":[7,0],\"data_offsets\":[20,20]}}",
         20, 9},
        {"empty tensor and empty name", "{\"\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}",
         0, 1},
    };
    StFile f;
    int rc = st_write(path, NULL, 0, NULL, NULL, 0);
    rc = rc ? rc : st_read(&f, path);
    T_OK(rc == 0 && f.n == 0 && f.n_meta == 0 && f.size == 16, "we write and read an empty file");
    if (!rc) st_free(&f);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        make_raw(path, cases[i].hdr, ~0ull, cases[i].dlen);
        rc = st_read(&f, path);
        T_OK(rc == 0 && f.n == cases[i].n && sane(&f), "%s: rc %d %s", cases[i].what, rc,
             rc ? err_msg() : "");
        st_free(&f);
    }
}

static void test_atomic_and_io_errors(void) {
    printf("atomic writes and I/O errors\n");
    const char *path = tpath("atomic.safetensors");
    float x[4] = {1, 2, 3, 4};
    StTensorOut t1 = {"x", 1, {4}, x};
    int rc = st_write(path, &t1, 1, NULL, NULL, 0);
    size_t n0;
    uint8_t *before = read_bytes(path, &n0);
    T_OK(rc == 0 && before, "first version written");

    /* failures must leave the old file untouched and no temp file behind */
    StTensorOut dup[2] = {{"x", 1, {4}, x}, {"x", 1, {4}, x}};
    rc = st_write(path, dup, 2, NULL, NULL, 0);
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "duplicate"), "duplicate names refused: %s",
         err_msg());
    StTensorOut res = {"__metadata__", 1, {4}, x};
    rc = st_write(path, &res, 1, NULL, NULL, 0);
    T_OK(rc == DDPM_ERUNTIME, "reserved name refused: %s", err_msg());
    StTensorOut neg = {"n", 1, {-1}, x};
    rc = st_write(path, &neg, 1, NULL, NULL, 0);
    T_OK(rc == DDPM_ERUNTIME, "negative dim refused: %s", err_msg());

    /* "disk full": a file size limit makes write(2) fail with EFBIG part way through */
    size_t big_n = 1 << 20;
    float *big = calloc(big_n, sizeof *big);
    StTensorOut tb = {"big", 1, {(int64_t)big_n}, big};
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = 64 * 1024;
    int lim_ok = setrlimit(RLIMIT_FSIZE, &lim) == 0;
    rc = st_write(path, &tb, 1, NULL, NULL, 0);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, old_handler);
    char pre[600];
    snprintf(pre, sizeof pre, "%s: ", path);
    T_OK(lim_ok && rc == DDPM_ERUNTIME && starts_with(err_msg(), pre) &&
             strstr(err_msg(), strerror(EFBIG)),
         "write past the file size limit fails: %s", err_msg());
    size_t n1;
    uint8_t *after = read_bytes(path, &n1);
    T_OK(after && n1 == n0 && memcmp(before, after, n0) == 0, "old file intact after failures");
    T_OK(count_tmp_files() == 0, "no temp file left after failures");
    free(after);

    /* a successful write replaces it */
    rc = st_write(path, &tb, 1, NULL, NULL, 0);
    StFile f;
    rc = rc ? rc : st_read(&f, path);
    T_OK(rc == 0 && f.n == 1 && strcmp(f.e[0].name, "big") == 0, "successful write replaces");
    if (!rc) st_free(&f);
    T_OK(count_tmp_files() == 0, "no temp file left");
    free(big);
    free(before);

    const char *bad[] = {"/nonexistent_ddpm_dir/x.safetensors", "/proc/x/ck.safetensors",
                         "/proc/ddpm.safetensors"};
    for (int i = 0; i < 3; i++) {
        rc = st_write(bad[i], &t1, 1, NULL, NULL, 0);
        snprintf(pre, sizeof pre, "%s: ", bad[i]);
        T_OK(rc == DDPM_ERUNTIME && starts_with(err_msg(), pre), "unwritable: %s", err_msg());
    }

    rc = st_read(&f, tpath("does_not_exist.safetensors"));
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "cannot open") &&
             strstr(err_msg(), strerror(ENOENT)) && f.buf == NULL,
         "missing file: %s", err_msg());
    rc = st_read(&f, t_tmpdir());
    T_OK(rc == DDPM_ERUNTIME && strstr(err_msg(), "cannot open"), "folder: %s", err_msg());
}

#define F32(name, shape, b, e) \
    "\"" name "\":{\"dtype\":\"F32\",\"shape\":" shape ",\"data_offsets\":[" b "," e "]}"

static void test_corrupt_catalogue(void) {
    printf("corrupt files\n");
    const char *path = tpath("corrupt.safetensors");
    StFile f;
    int rc;
    /* short files */
    for (size_t len = 0; len < 8; len += 4) {
        write_bytes(path, "\x02\0\0\0\0\0\0\0", len);
        rc = st_read(&f, path);
        T_OK(rejected_ok(rc, &f, path), "%zu-byte file: %s", len, err_msg());
    }
    write_bytes(path, "\0\0\0\0\0\0\0\0", 8);
    rc = st_read(&f, path);
    T_OK(rejected_ok(rc, &f, path), "8 bytes, header length 0: %s", err_msg());
    make_raw(path, "{}", 100, 0);
    rc = st_read(&f, path);
    T_OK(rejected_ok(rc, &f, path) && strstr(err_msg(), "larger"), "header length > file: %s",
         err_msg());
    make_raw(path, "{}", ~0ull - 1, 0);
    rc = st_read(&f, path);
    T_OK(rejected_ok(rc, &f, path) && strstr(err_msg(), "absurd"), "header length 2^64-2: %s",
         err_msg());
    make_raw(path, "{}", 200000000, 0);
    rc = st_read(&f, path);
    T_OK(rejected_ok(rc, &f, path), "header length 200 MB: %s", err_msg());

    /* JSON level */
    expect_corrupt("not JSON", "{abc", 0, "not valid JSON");
    expect_corrupt("unterminated", "{\"a\":{\"dtype\":\"F32\"", 0, NULL);
    expect_corrupt("array at top", "[1,2]", 0, NULL);
    expect_corrupt("string at top", "\"x\"", 0, NULL);
    expect_corrupt("leading space", " {}", 0, NULL);
    expect_corrupt("junk after object", "{}  x", 0, "after the JSON");
    expect_corrupt("two objects", "{}{}", 0, NULL);
    expect_corrupt_n("NUL in header", "{}\0 ", 4, 0, "control byte 0x00");
    expect_corrupt_n("NUL inside a name", "{\"a\0b\":5}", 7, 0, "control byte 0x00");
    expect_corrupt("control byte", "{\"a\x01\":1}", 0, "control");
    expect_corrupt("invalid UTF-8", "{\"\xff\":{}}", 0, "UTF-8");
    expect_corrupt("overlong UTF-8", "{\"\xc0\xaf\":{}}", 0, "UTF-8");
    expect_corrupt("deep nesting",
                   "{\"a\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
                   "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
                   0, NULL);

    /* entries */
    expect_corrupt("entry not an object", "{\"a\":5}", 0, "\"a\" is not an object");
    expect_corrupt("entry is an array", "{\"a\":[]}", 0, "\"a\"");
    expect_corrupt("missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype");
    expect_corrupt("missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "shape");
    expect_corrupt("missing offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "data_offsets");
    expect_corrupt("unknown key",
                   "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
                   "unexpected key");
    expect_corrupt("key twice",
                   "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                   4, "twice");
    expect_corrupt("unknown dtype F33",
                   "{\"w\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                   "\"w\" has unknown dtype \"F33\"");
    expect_corrupt("lowercase dtype",
                   "{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype");
    expect_corrupt("dtype not a string",
                   "{\"w\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype");
    expect_corrupt("shape not array", "{" F32("w", "4", "0", "16") "}", 16, "\"shape\" is not");
    expect_corrupt("negative dim", "{" F32("w", "[-1]", "0", "0") "}", 0, "shape[0]");
    expect_corrupt("fractional dim", "{" F32("w", "[2.5]", "0", "10") "}", 10, "shape[0]");
    expect_corrupt("string dim", "{" F32("w", "[\"2\"]", "0", "8") "}", 8, "shape[0]");
    expect_corrupt("null dim", "{" F32("w", "[null]", "0", "0") "}", 0, "shape[0]");
    expect_corrupt("9 dims", "{" F32("w", "[1,1,1,1,1,1,1,1,1]", "0", "4") "}", 4, "dims");
    expect_corrupt("numel overflow",
                   "{" F32("w", "[4294967296,4294967296,4294967296,4294967296]", "0", "0") "}", 0,
                   "\"w\"");
    expect_corrupt("dim beyond 2^53", "{" F32("w", "[18014398509481984]", "0", "4") "}", 4,
                   "\"w\"");
    expect_corrupt("shape/offset mismatch", "{" F32("w", "[2,3]", "0", "20") "}", 20,
                   "needs 24");
    expect_corrupt("one offset", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", 4,
                   "data_offsets");
    expect_corrupt("three offsets",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
                   "data_offsets");
    expect_corrupt("offsets not array",
                   "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":4}}", 4, "data_offsets");
    expect_corrupt("negative offset", "{" F32("w", "[1]", "-4", "0") "}", 4, "data_offsets");
    expect_corrupt("fractional offset", "{" F32("w", "[1]", "0.5", "4.5") "}", 5, "data_offsets");
    expect_corrupt("string offset", "{" F32("w", "[1]", "\"0\"", "4") "}", 4, "data_offsets");
    expect_corrupt("begin > end", "{" F32("w", "[0]", "8", "4") "}", 8, "end before");
    expect_corrupt("huge offsets", "{" F32("w", "[1]", "1152921504606846976", "1152921504606846980") "}",
                   4, "data_offsets");
    expect_corrupt("end past data", "{" F32("w", "[2]", "0", "8") "}", 4, "past the data");
    expect_corrupt("not starting at 0", "{" F32("w", "[2]", "4", "12") "}", 12, "gap of 4");
    expect_corrupt("overlap", "{" F32("a", "[2]", "0", "8") "," F32("b", "[2]", "4", "12") "}", 12,
                   "overlap");
    expect_corrupt("same range twice", "{" F32("a", "[2]", "0", "8") "," F32("b", "[2]", "0", "8") "}",
                   8, "overlap");
    expect_corrupt("gap", "{" F32("a", "[2]", "0", "8") "," F32("b", "[2]", "12", "20") "}", 20,
                   "gap of 4 bytes before tensor \"b\"");
    expect_corrupt("trailing garbage", "{" F32("a", "[2]", "0", "8") "}", 12, "4 bytes of data after");
    expect_corrupt("data but no tensors", "{}", 3, "3 bytes");
    expect_corrupt("duplicate tensor", "{" F32("a", "[1]", "0", "4") "," F32("a", "[1]", "4", "8") "}",
                   8, "\"a\" appears twice");

    /* metadata */
    expect_corrupt("metadata value a number", "{\"__metadata__\":{\"step\":12}}", 0,
                   "\"step\" is not a string");
    expect_corrupt("metadata value null", "{\"__metadata__\":{\"k\":null}}", 0, "not a string");
    expect_corrupt("metadata value object", "{\"__metadata__\":{\"k\":{}}}", 0, "not a string");
    expect_corrupt("metadata an array", "{\"__metadata__\":[\"a\"]}", 0, "not an object");
    expect_corrupt("metadata a string", "{\"__metadata__\":\"a\"}", 0, "not an object");
    expect_corrupt("metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, "twice");
    expect_corrupt("metadata key twice", "{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, "twice");
}

static void test_fuzz(void) {
    printf("truncation and byte flips\n");
    const char *src = tpath("fuzz_src.safetensors");
    int rc = write_reference(src, "{\"a\": \"b\\n\"}");
    size_t n;
    uint8_t *orig = read_bytes(src, &n);
    T_OK(rc == 0 && orig, "reference file %zu bytes", n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | orig[i];
    const char *path = tpath("fuzz.safetensors");
    StFile f;

    /* truncation at every length, and one extra byte */
    int trunc_ok = 1, first_bad = -1;
    for (size_t len = 0; len < n; len++) {
        write_bytes(path, orig, len);
        rc = st_read(&f, path);
        if (!rejected_ok(rc, &f, path)) {
            trunc_ok = 0;
            if (first_bad < 0) first_bad = (int)len;
        }
        if (!rc) st_free(&f);
    }
    T_OK(trunc_ok, "truncated at each of 0..%zu bytes: all rejected (first bad %d)", n - 1,
         first_bad);
    write_bytes(path, orig, n - 1);
    rc = st_read(&f, path);
    T_OK(rejected_ok(rc, &f, path), "one byte short: %s", err_msg());
    uint8_t *longer = malloc(n + 1);
    memcpy(longer, orig, n);
    longer[n] = 0;
    write_bytes(path, longer, n + 1);
    rc = st_read(&f, path);
    T_OK(rejected_ok(rc, &f, path), "one byte extra: %s", err_msg());
    free(longer);

    /* every byte of prefix + header, several masks each */
    uint8_t *buf = malloc(n);
    static const uint8_t masks[] = {0x01, 0x02, 0x08, 0x20, 0x40, 0x80, 0xFF};
    int accepted = 0, rejected = 0, bad = 0;
    for (size_t p = 0; p < 8 + hl; p++) {
        for (size_t m = 0; m < sizeof masks; m++) {
            memcpy(buf, orig, n);
            buf[p] ^= masks[m];
            write_bytes(path, buf, n);
            rc = st_read(&f, path);
            if (rc == 0) {
                accepted++;
                if (!sane(&f)) bad++;
                st_free(&f);
            } else {
                rejected++;
                if (!rejected_ok(rc, &f, path)) bad++;
            }
        }
    }
    T_OK(bad == 0, "single flips at %llu positions x %zu masks: %d rejected, %d accepted, %d bad",
         (unsigned long long)(8 + hl), sizeof masks, rejected, accepted, bad);

    /* random multi-byte damage with random bytes, incl. JSON punctuation */
    static const char punct[] = "{}[]\":,0123456789-.eE \\u";
    accepted = rejected = bad = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(buf, orig, n);
        int k = 1 + (int)(rnd() % 4);
        for (int j = 0; j < k; j++) {
            size_t p = 8 + rnd() % hl;
            buf[p] = (rnd() & 1) ? (uint8_t)punct[rnd() % (sizeof punct - 1)] : (uint8_t)rnd();
        }
        write_bytes(path, buf, n);
        rc = st_read(&f, path);
        if (rc == 0) {
            accepted++;
            if (!sane(&f)) bad++;
            st_free(&f);
        } else {
            rejected++;
            if (!rejected_ok(rc, &f, path)) bad++;
        }
    }
    T_OK(bad == 0, "3000 random multi-byte header edits: %d rejected, %d accepted, %d bad", rejected,
         accepted, bad);

    /* random garbage files with a plausible length prefix */
    bad = 0;
    for (int it = 0; it < 300; it++) {
        size_t len = rnd() % 200;
        for (size_t i = 0; i < len && i < n; i++) buf[i] = (uint8_t)rnd();
        if (len >= 8) {
            uint64_t h = rnd() % (len - 7);
            for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(h >> (8 * i));
            if (len > 8) buf[8] = '{';
        }
        write_bytes(path, buf, len < n ? len : n);
        rc = st_read(&f, path);
        if (rc == 0) {
            if (!sane(&f)) bad++;
            st_free(&f);
        } else if (!rejected_ok(rc, &f, path)) {
            bad++;
        }
    }
    T_OK(bad == 0, "300 random garbage files: %d bad", bad);
    free(buf);
    free(orig);
}

int main(void) {
    test_round_trip();
    test_accepted_variants();
    test_atomic_and_io_errors();
    test_corrupt_catalogue();
    test_fuzz();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", t_tmpdir());
    if (system(cmd) != 0) printf("  (could not remove %s)\n", t_tmpdir());
    return t_done();
}
