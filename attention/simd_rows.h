/* attention/simd_rows.h — the whole-vector row decodes that the standard
 * kernel (standard_simd.h) and the tiled prefill kernel (prefill_simd.h)
 * share: the float-like rows (f16, bf16, int8) and KIVI keys from their
 * block's per-channel scales, bit for bit what kvd_dequant_range gives.
 * Each returns the first channel it did not write (a ragged tail, or a
 * format it does not take), for the caller's kvd_dequant_range. Included
 * after a vector layer (attention/simd_*.h). Private to attention/. */
#ifndef KVD_ATTENTION_SIMD_ROWS_H
#define KVD_ATTENTION_SIMD_ROWS_H

#ifndef KVD_SIMD_LAYER
#error "include a vector layer (attention/simd_*.h) before attention/simd_rows.h"
#endif

#include <string.h>

#include "attention/formats.h"
#include "attention/kernels.h"

/* Per-channel scale and minimum of the current KIVI key block, decoded once
 * per (block, channel chunk) and reused by its `group` tokens. */
typedef struct simd_kivi_cache {
    const unsigned char *unit; /* the block they belong to; NULL: none yet */
    size_t c0;                 /* first channel of the chunk they cover */
    _Alignas(64) float s[KVD_ATTN_CHUNK];
    _Alignas(64) float z[KVD_ATTN_CHUNK];
    _Alignas(64) float sz[2 * KVD_ATTN_CHUNK]; /* the interleaved {s, z} as read */
} simd_kivi_cache;

/* Channels [c0, c) of an F16, BF16 or I8 row to out[0..c - c0), c the end
 * of the whole vectors up to c1; any other format: c0, nothing written.
 * The f16/bf16 decodes and int8's code are exact conversions, and int8's
 * s*q rounds once, as the reference does. Always inlined where f is a
 * constant, so the switch folds away. */
KVD_SIMD_ATTR static inline __attribute__((always_inline)) size_t
simd_decode_plain(kvd_row_format f, const unsigned char *restrict unit, size_t c0, size_t c1,
                  float *restrict out)
{
    size_t c = c0;
    switch (f) {
    case KVD_ROW_F16:
        for (; c + KVD_SIMD_W <= c1; c += KVD_SIMD_W)
            v_store(out + (c - c0), v_f16(unit + 2 * c));
        break;
    case KVD_ROW_BF16:
        for (; c + KVD_SIMD_W <= c1; c += KVD_SIMD_W)
            v_store(out + (c - c0), v_bf16(unit + 2 * c));
        break;
    case KVD_ROW_I8: {
        float s;
        memcpy(&s, unit, sizeof s);
        const vf vs = v_set1(s);
        for (; c + KVD_SIMD_W <= c1; c += KVD_SIMD_W)
            v_store(out + (c - c0), v_mul(v_i8(unit + 4 + c), vs));
        break;
    }
    default:
        break;
    }
    return c;
}

/* Channels [c0, c) of one token's KIVI key codes (`codes`, 4 bits a channel
 * when four, else 2) in the block `unit` to out[0..c - c0), c the end of
 * the whole vectors up to c1 (c1 - c0 <= KVD_ATTN_CHUNK). The block's
 * per-channel {s, z} come from kc, decoded there when the block or chunk
 * changes (every `group` tokens). z + s*q with one fma is the reference's
 * single rounding: s*q (an 11-bit half times a code of <= 4 bits) is exact
 * in f32. */
KVD_SIMD_ATTR static inline __attribute__((always_inline)) size_t
simd_decode_kivi_keys(int four, const unsigned char *restrict unit,
                      const unsigned char *restrict codes, size_t c0, size_t c1,
                      simd_kivi_cache *restrict kc, float *restrict out)
{
    if (kc->unit != unit || kc->c0 != c0) {
        v_halves(unit + 4 * c0, 2 * (c1 - c0), kc->sz);
        for (size_t i = 0; i < c1 - c0; i++) {
            kc->s[i] = kc->sz[2 * i];
            kc->z[i] = kc->sz[2 * i + 1];
        }
        kc->unit = unit;
        kc->c0 = c0;
    }
    size_t c = c0;
    if (four)
        for (; c + KVD_SIMD_W <= c1; c += KVD_SIMD_W)
            v_store(out + (c - c0), v_fma(v_u4(codes + c / 2), v_load(kc->s + (c - c0)),
                                          v_load(kc->z + (c - c0))));
    else
        for (; c + KVD_SIMD_W <= c1; c += KVD_SIMD_W)
            v_store(out + (c - c0), v_fma(v_u2(codes + c / 4), v_load(kc->s + (c - c0)),
                                          v_load(kc->z + (c - c0))));
    return c;
}

#endif
