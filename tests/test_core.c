/* Tensor core: GEMM against the naive reference; the counter RNG's moments, stream
 * independence and thread-count independence; the arena. */
#include <stdint.h>

#include "ddpm/rng.h"
#include "ddpm/arena.h"
#include "ddpm/gemm.h"
#include "ddpm/platform.h"
#include <strings.h>

#include "test.h"

/* gemm() against the double reference, every transpose, beta 0 and 0.5, alpha 1.5, for shapes
 * that take each of its paths: small products, K cut into parts (20x24x600), tall, wide and
 * square products that OpenBLAS threads. The bound: whatever order OpenBLAS sums the K
 * products in (blocked, several accumulators), a sum of K terms is off by at most
 * (K - 1) u sum|terms| with u = 2^-24; alpha and beta add a rounding each (beta 0.5 is
 * exact), so |error| <= (K + 1) u (sum|alpha a b| + |beta c|), taken twice; a K split adds its
 * P <= 16 partial sums afterwards, 15 more roundings of that size at most. */
static void test_gemm(void) {
    const int shapes[][3] = {{1, 1, 1},   {3, 5, 7},     {17, 13, 29},   {64, 3, 128},
                             {33, 65, 1}, {128, 96, 200}, {20, 24, 600}, {300, 40, 520}, {40, 300, 64},
                             {1200, 4, 64}};
    const float alpha = 1.5f;
    double worst = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int beta1 = 0; beta1 < 2; beta1++) {
                    int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                    size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
                    float *A = malloc(na * 4), *Bm = malloc(nb * 4), *C0 = malloc(nc * 4), *C1 = malloc(nc * 4),
                          *C2 = malloc(nc * 4);
                    rng_normal(A, na, 1, si * 8 + ta * 4 + tb * 2, 0);
                    rng_normal(Bm, nb, 2, si * 8 + ta * 4 + tb * 2, 0);
                    rng_normal(C0, nc, 3, si, 0);
                    memcpy(C1, C0, nc * 4), memcpy(C2, C0, nc * 4);
                    float beta = beta1 ? 0.5f : 0.0f;
                    gemm(ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C1, ldc);
                    gemm_ref(ta, tb, M, N, K, alpha, A, lda, Bm, ldb, beta, C2, ldc);
                    double e = 0;
                    for (int i = 0; i < M; i++)
                        for (int j = 0; j < N; j++) {
                            double abs_sum = beta * fabs((double)C0[i * ldc + j]);
                            for (int k = 0; k < K; k++)
                                abs_sum += fabs((double)alpha * (ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                                                (tb ? Bm[(size_t)j * ldb + k] : Bm[(size_t)k * ldb + j]));
                            double bound = 2.0 * (K + 1 + 15) * 5.96e-8 * abs_sum + 1e-30;
                            double d = fabs((double)C1[i * ldc + j] - C2[i * ldc + j]) / bound;
                            if (d > e) e = d;
                        }
                    /* padding columns untouched */
                    int pad_ok = 1;
                    for (int i = 0; i < M; i++) pad_ok &= C1[i * ldc + N] == C2[i * ldc + N];
                    if (e > worst) worst = e;
                    if (e > 1 || !pad_ok)
                        T_OK(0, "gemm %dx%dx%d ta=%d tb=%d beta=%g: error %.3g of the float32 bound, padding kept %d", M, N, K,
                             ta, tb, beta, e, pad_ok);
                    free(A), free(Bm), free(C0), free(C1), free(C2);
                }
    }
    T_OK(worst <= 1, "gemm matches the reference for 10 shapes x all transposes x beta (worst %.3g of the float32 bound)", worst);
}

/* With beta = 0, gemm() clears C itself and asks OpenBLAS for beta = 1 (except on the path
 * OpenBLAS computes directly, gemm.c): the same bits as OpenBLAS's own beta = 0 call, and C's
 * old contents (NaN here) never read. Products too small to be cut, with C's rows far apart as
 * in the Winograd tile products, and contiguous. */
static void test_gemm_beta0(void) {
    const int shapes[][4] = {{103, 64, 32, 36 * 64}, {52, 128, 32, 36 * 128}, {17, 13, 29, 13}, {29, 128, 64, 128}, {7, 300, 9, 301}};
    int ok = 1, cases = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int a1 = 0; a1 < 2; a1++) {
                    const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2], ldc = shapes[si][3];
                    const float alpha = a1 ? 1.0f : 0.75f;
                    size_t nc = (size_t)M * ldc;
                    float *A = malloc((size_t)M * K * 4), *Bm = malloc((size_t)K * N * 4), *C1 = malloc(nc * 4),
                          *C2 = malloc(nc * 4);
                    rng_normal(A, (size_t)M * K, 7, si * 8 + ta * 4 + tb * 2 + a1, 0);
                    rng_normal(Bm, (size_t)K * N, 8, si * 8 + ta * 4 + tb * 2 + a1, 0);
                    for (size_t i = 0; i < nc; i++) C1[i] = C2[i] = NAN;
                    gemm(ta, tb, M, N, K, alpha, A, ta ? M : K, Bm, tb ? K : N, 0.0f, C1, ldc);
                    gemm_blas(ta, tb, M, N, K, alpha, A, ta ? M : K, Bm, tb ? K : N, 0.0f, C2, ldc);
                    for (int i = 0; i < M; i++) {
                        ok &= !memcmp(C1 + (size_t)i * ldc, C2 + (size_t)i * ldc, (size_t)N * 4);
                        for (int j = 0; j < N; j++) ok &= isfinite(C1[(size_t)i * ldc + j]);
                        if (ldc > N) ok &= isnan(C1[(size_t)i * ldc + N]); /* the gap after the row */
                    }
                    cases++;
                    free(A), free(Bm), free(C1), free(C2);
                }
    T_OK(ok, "gemm with beta 0: OpenBLAS's own bits for %d products (5 shapes x transposes x alpha), old C never read, "
             "the gaps between C's rows untouched (core %s)", cases, blas_core_name());
}

/* Outside a parallel region gemm() cuts a product OpenBLAS would thread into parts that depend
 * on the processor count only (gemm.c): its bits must not depend on the thread count, for the
 * shapes where OpenBLAS's own threading changes them (600x8x600, 600x600x8, 6x512x150), a
 * narrow tall one, and each transpose. (Values: test_gemm's shapes, 1200x4x64 among them.) */
static void test_gemm_threads(void) {
    if (procs_capped(16) < 2) {
        T_SKIP("gemm thread invariance: one processor, so no product is cut here");
        return;
    }
    const int shapes[][3] = {{600, 8, 600}, {600, 600, 8}, {6, 512, 150}, {4000, 4, 96}, {150, 1024, 6}};
    const int nthr[3] = {1, 3, 2}, nt = threads_get();
    int ok = 1, cases = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
                const int lda = ta ? M : K, ldb = tb ? K : N;
                float *A = malloc((size_t)M * K * 4), *Bm = malloc((size_t)K * N * 4), *C[3];
                rng_normal(A, (size_t)M * K, 5, si * 4 + ta * 2 + tb, 0);
                rng_normal(Bm, (size_t)K * N, 6, si * 4 + ta * 2 + tb, 0);
                for (int r = 0; r < 3; r++) {
                    C[r] = malloc((size_t)M * N * 4);
                    threads_set(nthr[r]);
                    gemm(ta, tb, M, N, K, 1.0f, A, lda, Bm, ldb, 0.0f, C[r], N);
                }
                ok &= !memcmp(C[0], C[1], (size_t)M * N * 4) && !memcmp(C[0], C[2], (size_t)M * N * 4);
                cases++;
                free(A), free(Bm), free(C[0]), free(C[1]), free(C[2]);
            }
    threads_set(nt);
    T_OK(ok, "gemm: the same bits on 1, 3 and 2 threads for %d products (5 shapes x transposes)", cases);
}

/* The OpenBLAS kernel family ddpm sets, for each CPU kind the project runs on and each build:
 * the widest vectors both use; AMD's AVX2 family is "Zen"; other architectures and CPUs
 * without AVX2 keep OpenBLAS's own detection. */
static void test_blas_choice(void) {
    const struct {
        const char *cpu;
        CpuKind k;
        const char *want512, *want256, *want0; /* native AVX-512 build, AVX2 build, portable build */
    } cases[] = {
        {"AMD EPYC Zen 3 (AVX2)", {1, 1, 1, 0}, "Zen", "Zen", "Zen"},
        {"AMD EPYC Zen 4 / Zen 5 (AVX-512)", {1, 1, 1, 1}, "SkylakeX", "Zen", "SkylakeX"},
        {"Intel Xeon (AVX-512)", {1, 0, 1, 1}, "SkylakeX", "Haswell", "SkylakeX"},
        {"Intel (AVX2)", {1, 0, 1, 0}, "Haswell", "Haswell", "Haswell"},
        {"x86-64 without AVX2", {1, 0, 0, 0}, NULL, NULL, NULL},
        {"arm64", {0, 0, 0, 0}, NULL, NULL, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *got[3] = {blas_core_for(cases[i].k, 512), blas_core_for(cases[i].k, 256), blas_core_for(cases[i].k, 0)};
        const char *want[3] = {cases[i].want512, cases[i].want256, cases[i].want0};
        int ok = 1;
        for (int b = 0; b < 3; b++) ok &= (!got[b] && !want[b]) || (got[b] && want[b] && !strcmp(got[b], want[b]));
        T_OK(ok, "OpenBLAS core for %s: %s (AVX-512 build), %s (AVX2 build), %s (portable build)", cases[i].cpu,
             got[0] ? got[0] : "OpenBLAS's own", got[1] ? got[1] : "OpenBLAS's own", got[2] ? got[2] : "OpenBLAS's own");
    }
    T_OK(blas_init() == 0 && strlen(blas_core_name()) > 0, "OpenBLAS loaded: core %s (%s), ddpm kernels %s, %s",
         blas_core_name(), blas_core_source(), kernel_isa(), cpu_model_name());
    const char *user = getenv("OPENBLAS_CORETYPE");
    if (user && *user)
        T_OK(!strcasecmp(blas_core_name(), user) && !strcmp(blas_core_source(), "set by OPENBLAS_CORETYPE"),
             "the user's OPENBLAS_CORETYPE=%s is honoured: OpenBLAS runs %s", user, blas_core_name());
    else
        T_OK(!getenv("OPENBLAS_CORETYPE"), "OPENBLAS_CORETYPE is set only while OpenBLAS loads, not left in the environment");
}

static void test_rng(void) {
    /* Known-answer: Philox4x32-10 test vector (Random123 kat_vectors: ctr 0, key 0). */
    uint32_t ctr[4] = {0, 0, 0, 0}, key[2] = {0, 0}, out[4];
    philox4x32_10(ctr, key, out);
    T_OK(out[0] == 0x6627e8d5u && out[1] == 0xe169c58du && out[2] == 0xbc57ac4cu && out[3] == 0x9b00dbd8u,
         "philox4x32-10 known answer for zero counter and key: %08x %08x %08x %08x", out[0], out[1], out[2], out[3]);
    uint32_t ctr2[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, key2[2] = {0xffffffffu, 0xffffffffu};
    philox4x32_10(ctr2, key2, out);
    T_OK(out[0] == 0x408f276du && out[1] == 0x41c83b0eu && out[2] == 0xa20bc7c6u && out[3] == 0x6d5451fdu,
         "philox4x32-10 known answer for all-ones: %08x %08x %08x %08x", out[0], out[1], out[2], out[3]);

    size_t n = 1 << 20;
    float *x = malloc(n * 4), *y = malloc(n * 4);
    rng_normal(x, n, 42, 7, 0);
    double m = 0, v = 0, m3 = 0, m4 = 0;
    for (size_t i = 0; i < n; i++) m += x[i];
    m /= n;
    for (size_t i = 0; i < n; i++) {
        double d = x[i] - m;
        v += d * d, m3 += d * d * d, m4 += d * d * d * d;
    }
    v /= n, m3 /= n, m4 /= n;
    double se = 1 / sqrt((double)n);
    T_NEAR(m, 0, 5 * se, "normal mean (2^20 samples, 5 sigma)");
    T_NEAR(v, 1, 5 * sqrt(2.0) * se, "normal variance");
    T_NEAR(m3, 0, 5 * sqrt(15.0) * se, "normal third moment");
    T_NEAR(m4, 3, 5 * sqrt(96.0) * se, "normal fourth moment");
    rng_uniform(y, n, 42, 7, 0);
    double um = 0, umin = 1, umax = 0;
    for (size_t i = 0; i < n; i++) um += y[i], umin = fmin(umin, y[i]), umax = fmax(umax, y[i]);
    um /= n;
    T_NEAR(um, 0.5, 5 * se / sqrt(12.0), "uniform mean");
    T_OK(umin >= 0 && umax < 1, "uniform in [0,1): min %g max %g", umin, umax);

    /* streams: correlation between two streams near 0 */
    rng_normal(y, n, 42, 8, 0);
    double cxy = 0;
    for (size_t i = 0; i < n; i++) cxy += (double)x[i] * y[i];
    cxy /= n;
    T_NEAR(cxy, 0, 5 * se, "correlation of streams 7 and 8");
    /* offsets: numbers [1000, 2000) equal the slice of a longer draw */
    float z[1000];
    rng_normal(z, 1000, 42, 7, 1000);
    T_OK(!memcmp(z, x + 1000, sizeof z), "rng_normal(offset) equals the slice of a longer draw");
    /* thread count: identical bits with 1 and 2 threads */
    const int nt = threads_get();
    threads_set(1);
    rng_normal(y, n, 9, 3, 0);
    threads_set(2);
    rng_normal(x, n, 9, 3, 0);
    threads_set(nt);
    T_OK(!memcmp(x, y, n * 4), "normal stream identical with 1 and 2 threads");
    free(x), free(y);
}

static void test_arena(void) {
    Arena a;
    arena_init(&a, arena_need(10) + arena_need(100));
    float *p = arena_floats(&a, 10), *q = arena_floats(&a, 100);
    T_OK(((uintptr_t)p % 64) == 0 && ((uintptr_t)q % 64) == 0 && q >= p + 10, "arena: 64-byte aligned, disjoint");
    T_OK(a.used == a.cap, "arena: sizing pass matches the allocations (%zu of %zu)", a.used, a.cap);
    arena_free(&a);
}

int main(void) {
    test_blas_choice();
    test_gemm();
    test_gemm_beta0();
    test_gemm_threads();
    test_rng();
    test_arena();
    return t_done();
}
