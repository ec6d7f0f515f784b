/* attention/standard_avx2.c — the AVX2+FMA+F16C attend kernel, every row
 * format. Only this file's functions are compiled for AVX2 (target
 * attribute), so the binary still runs on any x86-64; dispatch.c calls it
 * only when the CPU has avx2, fma and f16c. The kernel body is shared with
 * AVX-512 (standard_simd.h); this file supplies its 8-lane vector layer. */
#if defined(__x86_64__)

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define KVD_SIMD_ATTR __attribute__((target("avx2,fma,f16c")))
#define KVD_SIMD_FN kvd_attend_avx2
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
KVD_SIMD_ATTR static inline vf v_max(vf a, vf b) { return _mm256_max_ps(a, b); }

KVD_SIMD_ATTR static inline float v_hmax(vf x)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

KVD_SIMD_ATTR static inline float v_hsum(vf x)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Lane b of the result = the sum of the 8 lanes of a[b]: a transpose-and-
 * add tree (pairs within 128-bit lanes, then 64-bit halves, leaving keys
 * 4k..4k+3 in order in each 128-bit lane, then across the two lanes). */
KVD_SIMD_ATTR static inline vf v_sum_lanes(const vf *a)
{
    vf p[4], r[2];
    _Pragma("GCC unroll 4")
    for (int i = 0; i < 4; i++)
        p[i] = _mm256_add_ps(_mm256_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                             _mm256_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    _Pragma("GCC unroll 2")
    for (int i = 0; i < 2; i++) {
        const __m256d x = _mm256_castps_pd(p[2 * i]), y = _mm256_castps_pd(p[2 * i + 1]);
        r[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(x, y)),
                             _mm256_castpd_ps(_mm256_unpackhi_pd(x, y)));
    }
    return _mm256_add_ps(_mm256_permute2f128_ps(r[0], r[1], 0x20),
                         _mm256_permute2f128_ps(r[0], r[1], 0x31));
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

/* Decoders: 8 values of a row format from bytes (attention/formats.h). */
KVD_SIMD_ATTR static inline vf v_f16(const unsigned char *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* bfloat16 is the top half of an f32: widen and shift into place. */
KVD_SIMD_ATTR static inline vf v_bf16(const unsigned char *p)
{
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

KVD_SIMD_ATTR static inline vf v_i8(const unsigned char *p)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

/* 8 codes of 4 bits are one little-endian 32-bit word, channel i in bits
 * 4i..4i+3: broadcast the word, shift each lane by its own amount, mask. */
KVD_SIMD_ATTR static inline vf v_u4(const unsigned char *p)
{
    uint32_t w;
    memcpy(&w, p, sizeof w);
    const __m256i sh = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    const __m256i x = _mm256_srlv_epi32(_mm256_set1_epi32((int)w), sh);
    return _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(0xf)));
}

/* 8 codes of 2 bits: one 16-bit word, channel i in bits 2i..2i+1. */
KVD_SIMD_ATTR static inline vf v_u2(const unsigned char *p)
{
    const uint32_t w = (uint32_t)p[0] | ((uint32_t)p[1] << 8);
    const __m256i sh = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const __m256i x = _mm256_srlv_epi32(_mm256_set1_epi32((int)w), sh);
    return _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(0x3)));
}

/* U4G/U2G rows: a group's scale and minimum as vectors; codes are
 * converted and scaled (an 8-lane vpermps table would hold only half the
 * 16 codes). z + s*q with fma is kvd_dequant_range_ref's single rounding. */
typedef struct vgroup {
    vf s, z;
} vgroup;

KVD_SIMD_ATTR static inline vgroup v_group4(float s, float z)
{
    return (vgroup){_mm256_set1_ps(s), _mm256_set1_ps(z)};
}

KVD_SIMD_ATTR static inline vgroup v_group2(float s, float z)
{
    return v_group4(s, z);
}

KVD_SIMD_ATTR static inline vf v_dq4(const unsigned char *p, const vgroup *g)
{
    return _mm256_fmadd_ps(v_u4(p), g->s, g->z);
}

KVD_SIMD_ATTR static inline vf v_dq2(const unsigned char *p, const vgroup *g)
{
    return _mm256_fmadd_ps(v_u2(p), g->s, g->z);
}

#include "attention/standard_simd.h"

#else
typedef int kvd_standard_avx2_unused; /* arm64: scalar kernels only */
#endif
