/* attention/simd_f16c.h — F16C helpers both x86 SIMD layers share
 * (simd_avx2.h and simd_avx512.h include it after defining KVD_SIMD_ATTR;
 * a translation unit includes one layer, so each gets its own copy with its
 * own target attribute). Not for direct inclusion. */
#ifndef KVD_ATTENTION_SIMD_F16C_H
#define KVD_ATTENTION_SIMD_F16C_H

#ifndef KVD_SIMD_ATTR
#error "include attention/simd_avx2.h or attention/simd_avx512.h instead"
#endif

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#include "attention/formats.h"

/* n (even) little-endian halves at p -> out[0..n), 8 or 4 at a time with
 * F16C; reads exactly 2n bytes (a row's scale/min header may be the last
 * bytes before a region boundary; a U4G/U2G chunk has fewer than 16 groups). */
KVD_SIMD_ATTR static inline void v_halves(const unsigned char *restrict p, size_t n,
                                          float *restrict out)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i))));
    for (; i + 4 <= n; i += 4)
        _mm_storeu_ps(out + i, _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(p + 2 * i))));
    for (; i < n; i++)
        out[i] = kvd_f16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
}

#endif
