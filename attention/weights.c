/* attention/weights.c — h2o scoring: picks the weights kernel's tier for
 * the running CPU (attention/dispatch.c's levels; body weights_simd.h), hands
 * tests and benchmarks a given tier, and keeps kvd_attention_weights_ref, the
 * scalar three-pass oracle (the production pass before issue 9). */
#include <math.h>

#include "attention/weights.h"

#include "attention/kernels.h"

static const kvd__weights_fn tiers[] = {
    kvd__attention_weights_scalar,
#if defined(__x86_64__)
    kvd__attention_weights_avx2,
    kvd__attention_weights_avx512,
#endif
};

kvd__weights_fn kvd__attention_weights_tier(size_t level)
{
    return level < kvd__simd_levels() && level < sizeof tiers / sizeof *tiers ? tiers[level] : NULL;
}

static const kvd__weights_scores_fn score_tiers[] = {
    kvd__attention_weights_scores_scalar,
#if defined(__x86_64__)
    kvd__attention_weights_scores_avx2,
    kvd__attention_weights_scores_avx512,
#endif
};

kvd__weights_scores_fn kvd__attention_weights_scores_tier(size_t level)
{
    return level < kvd__simd_levels() && level < sizeof score_tiers / sizeof *score_tiers
               ? score_tiers[level]
               : NULL;
}

void kvd_attention_weights_from_scores(const float *scores, size_t stride, size_t n, size_t n_q,
                                       const float *lse, float *acc)
{
    score_tiers[kvd__simd_levels() - 1](scores, stride, n, n_q, lse, acc);
}

void kvd_attention_weights(const kvd_kv_segment *seg, size_t n_seg, const float *q, size_t m_q,
                           size_t n_q, size_t q_stride, kvd_prefill_mask mask, float scale,
                           const float *lse, size_t lse_stride, float *acc)
{
    tiers[kvd__simd_levels() - 1](seg, n_seg, q, m_q, n_q, q_stride, mask, scale, lse, lse_stride,
                                  acc);
}

/* Channels of a key decoded at a time: a fixed stack buffer for any head_dim. */
#define WEIGHTS_CHUNK 256

/* scale * <q, k_j> for slot j of one view, decoding the key chunk by chunk. */
static float score(const kvd_kv_pages *kv, size_t ks, size_t j, const float *restrict q,
                   float scale)
{
    const size_t d = kv->head_dim;
    float buf[WEIGHTS_CHUNK];
    size_t t;
    const unsigned char *unit = kvd__kv_unit(kv, kv->k_offset, kv->k_format, ks, j, &t);
    float dot = 0.0f;
    for (size_t c0 = 0; c0 < d; c0 += WEIGHTS_CHUNK) {
        const size_t c1 = d - c0 < WEIGHTS_CHUNK ? d : c0 + WEIGHTS_CHUNK;
        kvd_dequant_range(kv->k_format, unit, t, d, kv->group, c0, c1, buf);
        for (size_t c = c0; c < c1; c++)
            dot += q[c] * buf[c - c0];
    }
    return scale * dot;
}

void kvd_attention_weights_ref(const kvd_kv_segment *seg, size_t n_seg, const float *restrict q,
                               size_t n_q, float scale, float *restrict scratch,
                               float *restrict acc)
{
    size_t total = 0;
    for (size_t s = 0; s < n_seg; s++)
        total += seg[s].n;
    if (total == 0)
        return; /* no slot to give weight to */
    const size_t d = seg[0].kv.head_dim;
    for (size_t h = 0; h < n_q; h++) {
        const float *restrict qh = q + h * d;
        /* Pass 1: scores of every segment's slots, numbered across the
         * segments in order (f32 dot in channel order, as the attention
         * kernel), and their max, so that every exponent below is <= 0. */
        float mx = -INFINITY;
        for (size_t s = 0, j0 = 0; s < n_seg; j0 += seg[s].n, s++) {
            const kvd_kv_pages *kv = &seg[s].kv;
            const size_t ks = seg[s].n ? kvd__kv_k_stride(kv) : 0;
            for (size_t j = 0; j < seg[s].n; j++) {
                scratch[j0 + j] = score(kv, ks, j, qh, scale);
                if (scratch[j0 + j] > mx)
                    mx = scratch[j0 + j];
            }
        }
        /* Pass 2: exp and their sum. The sum is >= 1 (the max contributes
         * exp(0)) and in double so that n = 128k small terms add up exactly
         * enough for the weights of one head to sum to 1 within f32 rounding. */
        double sum = 0.0;
        for (size_t j = 0; j < total; j++) {
            scratch[j] = expf(scratch[j] - mx);
            sum += scratch[j];
        }
        const float inv = (float)(1.0 / sum);
        for (size_t j = 0; j < total; j++)
            acc[j] += scratch[j] * inv;
    }
}
