/* attention/simd_avx512.h — the AVX-512F (+ F16C) vector layer (16 f32
 * lanes), private to attention/: the same names as simd_avx2.h (read its
 * comments), on 16-lane vectors with mask registers for row tails, scalef
 * for exp's 2^n and vpermps lookup tables for U4G/U2G codes. Include once
 * per .c file, before a kernel body. */
#ifndef KVD_SIMD_LAYER
#define KVD_SIMD_LAYER "avx512"

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "attention/formats.h"

#define KVD_SIMD_ATTR __attribute__((target("avx512f,f16c")))
#include "attention/simd_f16c.h" /* v_halves */
#define KVD_SIMD_W 16
#define KVD_SIMD_NAME(prefix) prefix##avx512

typedef __m512 vf;
typedef __mmask16 vmask;

KVD_SIMD_ATTR static inline vf v_zero(void) { return _mm512_setzero_ps(); }
KVD_SIMD_ATTR static inline vf v_set1(float x) { return _mm512_set1_ps(x); }
KVD_SIMD_ATTR static inline vf v_load(const float *p) { return _mm512_loadu_ps(p); }
KVD_SIMD_ATTR static inline void v_store(float *p, vf x) { _mm512_storeu_ps(p, x); }
KVD_SIMD_ATTR static inline vf v_add(vf a, vf b) { return _mm512_add_ps(a, b); }
KVD_SIMD_ATTR static inline vf v_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
KVD_SIMD_ATTR static inline vf v_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
KVD_SIMD_ATTR static inline vf v_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
KVD_SIMD_ATTR static inline vf v_max(vf a, vf b) { return _mm512_max_ps(a, b); }
KVD_SIMD_ATTR static inline float v_hmax(vf x) { return _mm512_reduce_max_ps(x); }
KVD_SIMD_ATTR static inline float v_hsum(vf x) { return _mm512_reduce_add_ps(x); }

KVD_SIMD_ATTR static inline vmask v_tail_mask(size_t c, size_t d)
{
    if (c >= d)
        return 0;
    return d - c >= KVD_SIMD_W ? (vmask)0xffff : (vmask)((1u << (d - c)) - 1u);
}

KVD_SIMD_ATTR static inline vf v_load_mask(const float *p, vmask m)
{
    return _mm512_maskz_loadu_ps(m, p);
}

KVD_SIMD_ATTR static inline void v_store_mask(float *p, vmask m, vf x)
{
    _mm512_mask_storeu_ps(p, m, x);
}

KVD_SIMD_ATTR static inline int v_any_gt(vf a, vf b)
{
    return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ) != 0;
}

/* Lane b of the result = the sum of the 16 lanes of a[b]: a transpose-and-
 * add tree. 16 -> 8: unpack lo/hi pairs within 128-bit lanes and add;
 * 8 -> 4: the same on 64-bit halves, leaving keys 4k..4k+3 in order in
 * every 128-bit lane; then two rounds across 128-bit lanes. 45 ops. */
KVD_SIMD_ATTR static inline vf v_sum_lanes(const vf *a)
{
    vf p[8], r[4];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < 8; i++)
        p[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                             _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    _Pragma("GCC unroll 4")
    for (int i = 0; i < 4; i++) {
        const __m512d x = _mm512_castps_pd(p[2 * i]), y = _mm512_castps_pd(p[2 * i + 1]);
        r[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    /* r[i]: keys 4i..4i+3, one partial sum per 128-bit lane */
    const vf s0 = _mm512_add_ps(_mm512_shuffle_f32x4(r[0], r[1], 0x88),
                                _mm512_shuffle_f32x4(r[0], r[1], 0xdd));
    const vf s1 = _mm512_add_ps(_mm512_shuffle_f32x4(r[2], r[3], 0x88),
                                _mm512_shuffle_f32x4(r[2], r[3], 0xdd));
    /* s0: [keys 0-3 (lanes 0+1), 0-3 (2+3), 4-7 (0+1), 4-7 (2+3)]; s1 likewise 8-15 */
    return _mm512_add_ps(_mm512_shuffle_f32x4(s0, s1, 0x88), _mm512_shuffle_f32x4(s0, s1, 0xdd));
}

/* out[i * 16 + c] = lane i of r[c] for a 16 x 16 tile (out 64-byte
 * aligned): pairs, then quads (unpack), then 128-bit lanes (2 shuffles). */
KVD_SIMD_ATTR static inline void v_transpose(const vf *r, float *out)
{
    vf t[16], u[16];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < 8; i++) { /* per 128-bit lane: [a0 b0 a1 b1], [a2 b2 a3 b3] */
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    _Pragma("GCC unroll 4")
    for (int g = 0; g < 4; g++) { /* u[4g+k] lane L = column 4L+k of rows 4g..4g+3 */
        const __m512d t0 = _mm512_castps_pd(t[4 * g]), t1 = _mm512_castps_pd(t[4 * g + 1]),
                      t2 = _mm512_castps_pd(t[4 * g + 2]), t3 = _mm512_castps_pd(t[4 * g + 3]);
        u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    _Pragma("GCC unroll 4")
    for (int k = 0; k < 4; k++) {
        const vf a = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x88);      /* cols k, k+8: rows 0-7 */
        const vf b = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xdd);      /* cols k+4, k+12 */
        const vf c = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x88); /* rows 8-15 */
        const vf e = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xdd);
        _mm512_store_ps(out + k * 16, _mm512_shuffle_f32x4(a, c, 0x88));
        _mm512_store_ps(out + (k + 8) * 16, _mm512_shuffle_f32x4(a, c, 0xdd));
        _mm512_store_ps(out + (k + 4) * 16, _mm512_shuffle_f32x4(b, e, 0x88));
        _mm512_store_ps(out + (k + 12) * 16, _mm512_shuffle_f32x4(b, e, 0xdd));
    }
}

/* exp(x) for x <= 0: simd_avx2.h's method, polynomial and bounds, here with
 * scalef for the 2^n factor; x < KVD_SIMD_EXP_MIN, -inf, NaN give 0. */
#define KVD_SIMD_EXP_MIN (-87.0f)

KVD_SIMD_ATTR static inline vf v_exp(vf x)
{
    const vf lo = _mm512_set1_ps(KVD_SIMD_EXP_MIN);
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

KVD_SIMD_ATTR static inline void v_prefetch(const void *p)
{
    _mm_prefetch((const char *)p, _MM_HINT_T0);
}

/* ---- decoders: W values of a row format from bytes (attention/formats.h) -- */

KVD_SIMD_ATTR static inline vf v_f16(const unsigned char *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

/* bfloat16 is the top half of an f32: widen and shift into place. */
KVD_SIMD_ATTR static inline vf v_bf16(const unsigned char *p)
{
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

KVD_SIMD_ATTR static inline vf v_i8(const unsigned char *p)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* Lanes 0..7 = the little-endian 32-bit word at p, lanes 8..15 = the one
 * at p + 4: two broadcasts from memory (load-port only) and a blend. */
KVD_SIMD_ATTR static inline __m512i v_words2(const unsigned char *p)
{
    uint32_t lo, hi;
    memcpy(&lo, p, sizeof lo);
    memcpy(&hi, p + 4, sizeof hi);
    return _mm512_mask_blend_epi32(0xff00, _mm512_set1_epi32((int)lo), _mm512_set1_epi32((int)hi));
}

/* 16 codes of 4 bits in 8 bytes (channel i in bits 4i..4i+3 of the 64-bit
 * little-endian word): lane i takes the 32-bit word holding it and shifts
 * it down by 4 (i mod 8); masked, the codes as f32. */
KVD_SIMD_ATTR static inline vf v_u4(const unsigned char *p)
{
    const __m512i sh = _mm512_set_epi32(28, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0);
    const __m512i x = _mm512_srlv_epi32(v_words2(p), sh);
    return _mm512_cvtepi32_ps(_mm512_and_si512(x, _mm512_set1_epi32(0xf)));
}

/* 16 codes of 2 bits: one little-endian 32-bit word, channel i in bits
 * 2i..2i+1: broadcast, shift each lane by 2i, mask. */
KVD_SIMD_ATTR static inline vf v_u2(const unsigned char *p)
{
    uint32_t w;
    memcpy(&w, p, sizeof w);
    const __m512i sh = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i x = _mm512_srlv_epi32(_mm512_set1_epi32((int)w), sh);
    return _mm512_cvtepi32_ps(_mm512_and_si512(x, _mm512_set1_epi32(0x3)));
}

/* U4G/U2G rows: one group's scale and minimum become a table of its 2^B
 * dequantized values t[c] = z + s*c (fma: the same single rounding as
 * kvd_dequant_range's z + s*q, since s*q is exact), and vpermps looks
 * each code up, so a vector of channels costs a shift and a permute
 * instead of mask, convert and fma. vpermps reads only the low 4 bits of
 * each lane: 4-bit codes need no mask, and the 2-bit table repeats with
 * period 4 so the neighbouring code in bits 2..3 does not matter. */
typedef struct vgroup {
    vf t;
} vgroup;

KVD_SIMD_ATTR static inline vgroup v_group4(float s, float z)
{
    const vf iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    return (vgroup){_mm512_fmadd_ps(iota, _mm512_set1_ps(s), _mm512_set1_ps(z))};
}

KVD_SIMD_ATTR static inline vgroup v_group2(float s, float z)
{
    const vf iota = _mm512_set_ps(3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0);
    return (vgroup){_mm512_fmadd_ps(iota, _mm512_set1_ps(s), _mm512_set1_ps(z))};
}

KVD_SIMD_ATTR static inline vf v_dq4(const unsigned char *p, const vgroup *g)
{
    const __m512i sh = _mm512_set_epi32(28, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(_mm512_srlv_epi32(v_words2(p), sh), g->t);
}

KVD_SIMD_ATTR static inline vf v_dq2(const unsigned char *p, const vgroup *g)
{
    uint32_t w;
    memcpy(&w, p, sizeof w);
    const __m512i sh = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    return _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_set1_epi32((int)w), sh), g->t);
}

/* ---- codes as integers (attention/standard_codes.h) ----------------------- */

typedef __m512i vi;

/* 16 little-endian units of packed codes, one per lane, zero-extended: 32-bit
 * words (bits = 4: 8 codes each) or 16-bit halves (bits = 2: 8 codes). */
KVD_SIMD_ATTR static inline vi v_units(const unsigned char *p, unsigned bits)
{
    if (bits == 4)
        return _mm512_loadu_si512((const void *)p);
    return _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
}

/* (lane >> shift) & mask as f32: exact, the caller keeps it below 2^31. */
KVD_SIMD_ATTR static inline vf v_field(vi x, unsigned shift, uint32_t mask)
{
    if (shift)
        x = _mm512_srli_epi32(x, shift);
    return _mm512_cvtepi32_ps(_mm512_and_si512(x, _mm512_set1_epi32((int)mask)));
}

/* 16 little-endian halves at p as f32, straight from memory into a register
 * (a table built with v_halves' stores and reloaded whole would stall on
 * store forwarding). */
KVD_SIMD_ATTR static inline vf v_halves_w(const unsigned char *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

/* Lane i = lane idx[i] of tbl, idx[i] < 16; idx is 64-byte aligned. */
KVD_SIMD_ATTR static inline vf v_lookup(vf tbl, const int32_t *idx)
{
    return _mm512_permutexvar_ps(_mm512_load_si512((const void *)idx), tbl);
}

/* KIVI headers: lane i gets the {f16 s, f16 z} pair at p + 4 idx[i] (idx
 * 64-byte aligned) as *s and *z in f32: one gather of 32-bit words, the two
 * halves narrowed and converted. */
KVD_SIMD_ATTR static inline void v_gather_sz(const unsigned char *p, const int32_t *idx, vf *s,
                                             vf *z)
{
    const __m512i w = _mm512_i32gather_epi32(_mm512_load_si512((const void *)idx), (const void *)p, 4);
    *s = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(w));
    *z = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(w, 16)));
}

#endif
