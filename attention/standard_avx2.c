/* attention/standard_avx2.c — the AVX2+FMA attend_group kernel. Only this
 * file's functions are compiled for AVX2 (target attribute), so the binary
 * still runs on any x86-64; dispatch.c calls it only when the CPU has
 * avx2 and fma. The kernel body is shared with AVX-512 (standard_simd.h). */
#if defined(__x86_64__)

#include <immintrin.h>

#define KVD_SIMD_ATTR __attribute__((target("avx2,fma")))
#define KVD_SIMD_FN kvd_attend_group_avx2
#define KVD_SIMD_W 8

typedef __m256 vf;

KVD_SIMD_ATTR static inline vf v_zero(void) { return _mm256_setzero_ps(); }
KVD_SIMD_ATTR static inline vf v_set1(float x) { return _mm256_set1_ps(x); }
KVD_SIMD_ATTR static inline vf v_load(const float *p) { return _mm256_loadu_ps(p); }
KVD_SIMD_ATTR static inline void v_store(float *p, vf x) { _mm256_storeu_ps(p, x); }
KVD_SIMD_ATTR static inline vf v_add(vf a, vf b) { return _mm256_add_ps(a, b); }
KVD_SIMD_ATTR static inline vf v_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
KVD_SIMD_ATTR static inline vf v_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
KVD_SIMD_ATTR static inline vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }

KVD_SIMD_ATTR static inline float v_hsum(vf x)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* exp(x) for x <= 0 (softmax weights after subtracting the running max).
 * exp(x) = 2^n * exp(r) with n = round(x / ln2), r = x - n ln2 in
 * [-ln2/2, ln2/2]; ln2 is split in a short high part (n * hi is exact) and a
 * low part (Cody & Waite) so r keeps full precision. exp(r) is its Taylor
 * series to degree 7: the truncation error r^8/8! <= 5.2e-9 is below f32
 * rounding. Below -87 (2^n would leave the normal range) the result is 0,
 * which is also what padding lanes at -inf need; relative to the largest
 * weight (1) that loses less than 2e-38. */
KVD_SIMD_ATTR static inline vf v_exp(vf x)
{
    const vf lo = _mm256_set1_ps(-87.0f);
    const vf under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_setzero_ps());
    const vf n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    vf p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* n in [-126, 0]: 2^n is the normal float with biased exponent n + 127 */
    const __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    p = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(under, p);
}

#include "attention/standard_simd.h"

#else
typedef int kvd_standard_avx2_unused; /* arm64: scalar kernels only */
#endif
