/* simd: the few vector operations the hand-vectorized kernels use, for AVX-512 (16 lanes)
 * and AVX2+FMA (8 lanes), private to src/nn. A kernel is written once against these (vf,
 * VF_N, vf_* below) and compiles for whichever the build targets (-march=native, or
 * `make ISA=avx2`); without either, VF_N is undefined and the kernel's portable loop,
 * which the compiler vectorizes, is used instead.
 *
 * Loads and stores of a partial vector (the tail of a row) take a lane count n < VF_N;
 * vf_ld/vf_st pick plain or masked access, so a caller passes the count and the compiler
 * folds the choice away where it is a constant. */
#ifndef DDPM_NN_SIMD_H
#define DDPM_NN_SIMD_H

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#define VF_INLINE static inline __attribute__((always_inline))

#if defined(__AVX512F__)
#define VF_N 16
#define VF_ISA "avx512"
typedef __m512 vf;
VF_INLINE vf vf_set1(float a) { return _mm512_set1_ps(a); }
VF_INLINE vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
VF_INLINE vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
VF_INLINE vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
VF_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }   /* a b + c */
VF_INLINE vf vf_fnma(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); } /* c - a b */
VF_INLINE vf vf_min(vf a, vf b) { return _mm512_min_ps(a, b); }
VF_INLINE vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
VF_INLINE vf vf_round(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
/* p 2^n for integral n in [-127, 127] */
VF_INLINE vf vf_scale2(vf p, vf n) { return _mm512_scalef_ps(p, n); }
/* 1/d for d in [1, 2^126]: 14-bit estimate and one Newton step (~1 ulp) */
VF_INLINE vf vf_rcp(vf d) {
    vf q = _mm512_rcp14_ps(d);
    return vf_fma(q, vf_fnma(d, q, vf_set1(1.0f)), q);
}
VF_INLINE __mmask16 vf_mask_(int n) { return (__mmask16)((1u << n) - 1); }
VF_INLINE vf vf_ld(const float *p, int n) { return n == VF_N ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(vf_mask_(n), p); }
VF_INLINE void vf_st(float *p, vf v, int n) {
    if (n == VF_N) _mm512_storeu_ps(p, v);
    else _mm512_mask_storeu_ps(p, vf_mask_(n), v);
}
VF_INLINE float vf_hsum(vf a) { return _mm512_reduce_add_ps(a); }

#elif defined(__AVX2__) && defined(__FMA__)
#define VF_N 8
#define VF_ISA "avx2"
typedef __m256 vf;
VF_INLINE vf vf_set1(float a) { return _mm256_set1_ps(a); }
VF_INLINE vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
VF_INLINE vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
VF_INLINE vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
VF_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
VF_INLINE vf vf_fnma(vf a, vf b, vf c) { return _mm256_fnmadd_ps(a, b, c); }
VF_INLINE vf vf_min(vf a, vf b) { return _mm256_min_ps(a, b); }
VF_INLINE vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
VF_INLINE vf vf_round(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
/* p 2^n for integral n in [-126, 127]: 2^n assembled in the exponent bits */
VF_INLINE vf vf_scale2(vf p, vf n) {
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
/* 1/d for d in [1, 2^126]: 12-bit estimate and two Newton steps (~1 ulp, as AVX-512's) */
VF_INLINE vf vf_rcp(vf d) {
    vf q = _mm256_rcp_ps(d);
    q = vf_fma(q, vf_fnma(d, q, vf_set1(1.0f)), q);
    return vf_fma(q, vf_fnma(d, q, vf_set1(1.0f)), q);
}
VF_INLINE __m256i vf_mask_(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
VF_INLINE vf vf_ld(const float *p, int n) { return n == VF_N ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, vf_mask_(n)); }
VF_INLINE void vf_st(float *p, vf v, int n) {
    if (n == VF_N) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, vf_mask_(n), v);
}
VF_INLINE float vf_hsum(vf a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

#ifdef VF_N
/* e^x for x <= 87 (below -87 it is clamped: e^-87 ~ 1.6e-38): the same range reduction and
 * degree-7 polynomial as nn_expf() in fastexp.h. */
VF_INLINE vf vf_exp(vf x) {
    x = vf_max(vf_min(x, vf_set1(87.0f)), vf_set1(-87.0f));
    vf n = vf_round(vf_mul(x, vf_set1(1.44269504088896341f)));
    vf r = vf_fnma(n, vf_set1(0.693145751953125f), x);
    r = vf_fnma(n, vf_set1(1.428606765330187e-06f), r);
    vf p = vf_set1(1.0f / 5040.0f);
    p = vf_fma(p, r, vf_set1(1.0f / 720.0f));
    p = vf_fma(p, r, vf_set1(1.0f / 120.0f));
    p = vf_fma(p, r, vf_set1(1.0f / 24.0f));
    p = vf_fma(p, r, vf_set1(1.0f / 6.0f));
    p = vf_fma(p, r, vf_set1(0.5f));
    p = vf_fma(p, r, vf_set1(1.0f));
    p = vf_fma(p, r, vf_set1(1.0f));
    return vf_scale2(p, n);
}

/* s = sigmoid(y) = 1 / (1 + e), *e = e^-y (so 1 - s = e s without cancellation) */
VF_INLINE vf vf_sigmoid(vf y, vf *e) {
    *e = vf_exp(vf_sub(vf_set1(0.0f), y));
    return vf_rcp(vf_add(*e, vf_set1(1.0f)));
}
#else
#define VF_ISA "portable"
#endif

#endif
