/* attention/standard_avx512.c — the AVX-512F attend_group kernel: the body of
 * standard_simd.h on 16-lane vectors. Only this file's functions are compiled
 * for AVX-512 (target attribute); dispatch.c calls it only when the CPU has
 * avx512f. */
#if defined(__x86_64__)

#include <immintrin.h>

#define KVD_SIMD_ATTR __attribute__((target("avx512f")))
#define KVD_SIMD_FN kvd_attend_group_avx512
#define KVD_SIMD_W 16

typedef __m512 vf;

KVD_SIMD_ATTR static inline vf v_zero(void) { return _mm512_setzero_ps(); }
KVD_SIMD_ATTR static inline vf v_set1(float x) { return _mm512_set1_ps(x); }
KVD_SIMD_ATTR static inline vf v_load(const float *p) { return _mm512_loadu_ps(p); }
KVD_SIMD_ATTR static inline void v_store(float *p, vf x) { _mm512_storeu_ps(p, x); }
KVD_SIMD_ATTR static inline vf v_add(vf a, vf b) { return _mm512_add_ps(a, b); }
KVD_SIMD_ATTR static inline vf v_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
KVD_SIMD_ATTR static inline vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
KVD_SIMD_ATTR static inline vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
KVD_SIMD_ATTR static inline float v_hsum(vf x) { return _mm512_reduce_add_ps(x); }

/* exp(x) for x <= 0, same method and error as the AVX2 version
 * (standard_avx2.c): Cody-Waite reduction by ln2, degree-7 Taylor series,
 * here with scalef for the 2^n factor; x < -87 gives exactly 0. */
KVD_SIMD_ATTR static inline vf v_exp(vf x)
{
    const vf lo = _mm512_set1_ps(-87.0f);
    const __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_setzero_ps());
    const vf n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    vf p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(p, n));
}

#include "attention/standard_simd.h"

#else
typedef int kvd_standard_avx512_unused; /* arm64: scalar kernels only */
#endif
