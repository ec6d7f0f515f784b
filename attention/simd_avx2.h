/* attention/simd_avx2.h — the AVX2 + FMA + F16C vector layer (8 f32 lanes),
 * private to attention/: the vector type, loads and stores (masked for row
 * tails), arithmetic, horizontal sum and max, the one exp, 8x8 transposes,
 * and the decoders of every row format. The kernel bodies (standard_simd.h,
 * tensor_simd.h) are written over these names only; simd_avx512.h and
 * simd_scalar.h define the same names for their ISA. Include once per .c
 * file, before a body; every function carries KVD_SIMD_ATTR (target
 * attribute), so the rest of the binary still runs on any x86-64. */
#ifndef KVD_SIMD_LAYER
#define KVD_SIMD_LAYER "avx2"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "attention/formats.h"

#define KVD_SIMD_ATTR __attribute__((target("avx2,fma,f16c")))
#include "attention/simd_f16c.h" /* v_halves */
#define KVD_SIMD_W 8
#define KVD_SIMD_NAME(prefix) prefix##avx2 /* kvd__attend_ + avx2 */

typedef __m256 vf;
typedef __m256i vmask; /* lanes all-ones (in) or zero (out) */

KVD_SIMD_ATTR static inline vf v_zero(void) { return _mm256_setzero_ps(); }
KVD_SIMD_ATTR static inline vf v_set1(float x) { return _mm256_set1_ps(x); }
KVD_SIMD_ATTR static inline vf v_load(const float *p) { return _mm256_loadu_ps(p); }
KVD_SIMD_ATTR static inline void v_store(float *p, vf x) { _mm256_storeu_ps(p, x); }
KVD_SIMD_ATTR static inline vf v_add(vf a, vf b) { return _mm256_add_ps(a, b); }
KVD_SIMD_ATTR static inline vf v_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
KVD_SIMD_ATTR static inline vf v_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
KVD_SIMD_ATTR static inline vf v_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
KVD_SIMD_ATTR static inline vf v_max(vf a, vf b) { return _mm256_max_ps(a, b); }

/* Lanes of the vector starting at channel c that lie below d. */
KVD_SIMD_ATTR static inline vmask v_tail_mask(size_t c, size_t d)
{
    const int left = c >= d ? 0 : d - c >= KVD_SIMD_W ? KVD_SIMD_W : (int)(d - c);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Masked lanes are neither read nor written; a masked load gives them 0. */
KVD_SIMD_ATTR static inline vf v_load_mask(const float *p, vmask m)
{
    return _mm256_maskload_ps(p, m);
}

KVD_SIMD_ATTR static inline void v_store_mask(float *p, vmask m, vf x)
{
    _mm256_maskstore_ps(p, m, x);
}

/* Whether any lane of a is greater than the same lane of b. */
KVD_SIMD_ATTR static inline int v_any_gt(vf a, vf b)
{
    return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)) != 0;
}

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

/* out[i * 8 + c] = lane i of r[c] for an 8 x 8 tile (out 32-byte aligned):
 * pairs and quads within 128-bit lanes (unpack, shuffle), then the lanes. */
KVD_SIMD_ATTR static inline void v_transpose(const vf *r, float *out)
{
    vf t[8], u[8];
    _Pragma("GCC unroll 4")
    for (int i = 0; i < 4; i++) { /* per 128-bit lane: [a0 b0 a1 b1], [a2 b2 a3 b3] */
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    _Pragma("GCC unroll 2")
    for (int g = 0; g < 2; g++) { /* u[4g+k] lane L = column 4L+k of rows 4g..4g+3 */
        u[4 * g] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        u[4 * g + 1] = _mm256_shuffle_ps(t[4 * g], t[4 * g + 2], 0xee);
        u[4 * g + 2] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        u[4 * g + 3] = _mm256_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xee);
    }
    _Pragma("GCC unroll 4")
    for (int k = 0; k < 4; k++) {
        _mm256_store_ps(out + k * 8, _mm256_permute2f128_ps(u[k], u[4 + k], 0x20));
        _mm256_store_ps(out + (k + 4) * 8, _mm256_permute2f128_ps(u[k], u[4 + k], 0x31));
    }
}

/* exp(x) for x <= 0 (softmax weights after subtracting a running max), the
 * one exp of every kernel. exp(x) = 2^n * exp(r) with n = round(x / ln2),
 * r = x - n ln2 in [-ln2/2, ln2/2]; ln2 is split in a short high part
 * (n * hi is exact) and a low part (Cody & Waite) so r keeps full precision.
 * exp(r) is its Taylor series to degree 7: the truncation error
 * r^8/8! <= 5.2e-9 is below f32 rounding; measured over [-86, 0] it is
 * within 0.92 ulp of exp (Cephes' minimax polynomial, used before by the
 * tensor kernels, evaluated the same way: 1.24 ulp). x < KVD_SIMD_EXP_MIN
 * (where 2^n would leave the normal range), -inf and NaN give exactly 0:
 * padding lanes at -inf need it, and relative to the largest weight (1)
 * that loses less than 2e-38. */
#define KVD_SIMD_EXP_MIN (-87.0f)

KVD_SIMD_ATTR static inline vf v_exp(vf x)
{
    const vf lo = _mm256_set1_ps(KVD_SIMD_EXP_MIN);
    const vf keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
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
    return _mm256_and_ps(keep, p);
}

/* Asks for the cache line of p in L1 ahead of use. */
KVD_SIMD_ATTR static inline void v_prefetch(const void *p)
{
    _mm_prefetch((const char *)p, _MM_HINT_T0);
}

/* ---- decoders: W values of a row format from bytes (attention/formats.h) -- */

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
 * 16 codes). z + s*q with fma is kvd_dequant_range's single rounding. */
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

/* ---- codes as integers (attention/standard_codes.h) ----------------------- */

typedef __m256i vi;

/* 8 little-endian units of packed codes, one per lane, zero-extended: 32-bit
 * words (bits = 4: 8 codes each) or 16-bit halves (bits = 2: 8 codes). */
KVD_SIMD_ATTR static inline vi v_units(const unsigned char *p, unsigned bits)
{
    if (bits == 4)
        return _mm256_loadu_si256((const __m256i *)p);
    return _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
}

/* (lane >> shift) & mask as f32: exact, the caller keeps it below 2^31. */
KVD_SIMD_ATTR static inline vf v_field(vi x, unsigned shift, uint32_t mask)
{
    if (shift)
        x = _mm256_srli_epi32(x, (int)shift);
    return _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32((int)mask)));
}

/* 8 little-endian halves at p as f32, straight into a register. */
KVD_SIMD_ATTR static inline vf v_halves_w(const unsigned char *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* Lane i = lane idx[i] of tbl, idx[i] < 8; idx is 32-byte aligned. */
KVD_SIMD_ATTR static inline vf v_lookup(vf tbl, const int32_t *idx)
{
    return _mm256_permutevar8x32_ps(tbl, _mm256_load_si256((const __m256i *)idx));
}

/* KIVI headers: lane i gets the {f16 s, f16 z} pair at p + 4 idx[i] (idx
 * 32-byte aligned) as *s and *z in f32: one gather of 32-bit words, the
 * halves packed (values <= 0xffff: packus is exact) and converted. */
KVD_SIMD_ATTR static inline void v_gather_sz(const unsigned char *p, const int32_t *idx, vf *s,
                                             vf *z)
{
    const __m256i w = _mm256_i32gather_epi32((const int *)(const void *)p,
                                             _mm256_load_si256((const __m256i *)idx), 4);
    const __m256i lo = _mm256_and_si256(w, _mm256_set1_epi32(0xffff));
    const __m256i hi = _mm256_srli_epi32(w, 16);
    *s = _mm256_cvtph_ps(_mm_packus_epi32(_mm256_castsi256_si128(lo), _mm256_extracti128_si256(lo, 1)));
    *z = _mm256_cvtph_ps(_mm_packus_epi32(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1)));
}

#endif
