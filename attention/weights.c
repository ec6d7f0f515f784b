/* attention/weights.c — heavy-hitter scoring for h2o eviction: the softmax
 * weight each cached slot receives from a group of query heads, added into a
 * per-slot accumulator. Scalar reference (kvd_attention_weights_ref); the
 * scores are computed exactly as kvd_attend_group_ref computes them. */
#include <math.h>

#include "attention/attention.h"

void kvd_attention_weights_ref(const kvd_kv_pages *kv, size_t n_visible, const float *restrict q,
                               size_t n_q, float scale, float *restrict scratch,
                               float *restrict acc)
{
    if (n_visible == 0)
        return; /* no slot to give weight to */
    const size_t d = kv->head_dim;
    for (size_t h = 0; h < n_q; h++) {
        const float *restrict qh = q + h * d;
        /* Pass 1: scores (f32 dot in key order, as the attention kernel) and
         * their max, so that every exponent below is <= 0. */
        float mx = -INFINITY;
        for (size_t j = 0; j < n_visible; j++) {
            const float *restrict k = kvd_kv_key(kv, j);
            float dot = 0.0f;
            for (size_t i = 0; i < d; i++)
                dot += qh[i] * k[i];
            scratch[j] = scale * dot;
            if (scratch[j] > mx)
                mx = scratch[j];
        }
        /* Pass 2: exp and their sum. The sum is >= 1 (the max contributes
         * exp(0)) and in double so that n = 128k small terms add up exactly
         * enough for the weights of one head to sum to 1 within f32 rounding. */
        double sum = 0.0;
        for (size_t j = 0; j < n_visible; j++) {
            scratch[j] = expf(scratch[j] - mx);
            sum += scratch[j];
        }
        const float inv = (float)(1.0 / sum);
        for (size_t j = 0; j < n_visible; j++)
            acc[j] += scratch[j] * inv;
    }
}
