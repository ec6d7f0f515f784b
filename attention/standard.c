/* attention/standard.c — the scalar reference kernel for standard (softmax)
 * attention over a paged stream: kvd_attend_group_ref. It is the oracle the
 * SIMD kernels (standard_avx2.c, standard_avx512.c) are tested against, so it
 * favours clarity over speed: one key at a time, libm expf. */
#include <math.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/kernels.h"

void kvd_attend_group_ref(const kvd_kv_pages *kv, size_t n_visible,
                          const float *restrict q, size_t n_q, float scale,
                          float *restrict o)
{
    const size_t d = kv->head_dim;

    /* o doubles as the un-normalized accumulator: o[h] = sum_j p_j * v_j. */
    memset(o, 0, n_q * d * sizeof *o);
    if (n_visible == 0)
        return; /* a softmax over no tokens has no mass to spread: zeros */

    for (size_t h0 = 0; h0 < n_q; h0 += KVD_ATTN_MAX_GROUP) {
        const size_t g = n_q - h0 < KVD_ATTN_MAX_GROUP ? n_q - h0 : KVD_ATTN_MAX_GROUP;
        float m[KVD_ATTN_MAX_GROUP]; /* running max of the scores seen, per head */
        float l[KVD_ATTN_MAX_GROUP]; /* running sum of exp(score - m), per head */
        for (size_t h = 0; h < g; h++) {
            m[h] = -INFINITY;
            l[h] = 0.0f;
        }

        /* Keys outer, heads inner: each K and V row is read once per chunk of
         * heads, which for any real GQA group means once. */
        for (size_t j = 0; j < n_visible; j++) {
            const float *restrict k = kvd_kv_key(kv, j);
            const float *restrict v = kvd_kv_value(kv, j);
            for (size_t h = 0; h < g; h++) {
                const float *restrict qh = q + (h0 + h) * d;
                float *restrict acc = o + (h0 + h) * d;
                float dot = 0.0f;
                for (size_t i = 0; i < d; i++)
                    dot += qh[i] * k[i];
                const float s = scale * dot;

                /* Online softmax (Milakov & Gimelshein 2018): with running max
                 * m and sum l = sum_j exp(s_j - m), a new score s > m moves the
                 * reference point to s, so everything accumulated so far is
                 * multiplied by exp(m_old - s) (< 1, never overflows). Every
                 * exponent is <= 0, so large scores stay finite. */
                if (s > m[h]) {
                    const float alpha = m[h] == -INFINITY ? 0.0f : expf(m[h] - s);
                    for (size_t i = 0; i < d; i++)
                        acc[i] *= alpha;
                    l[h] *= alpha;
                    m[h] = s;
                }
                const float p = expf(s - m[h]);
                l[h] += p;
                for (size_t i = 0; i < d; i++)
                    acc[i] += p * v[i];
            }
        }

        /* l >= 1: the key that set the final max contributed exp(0). */
        for (size_t h = 0; h < g; h++) {
            float *restrict acc = o + (h0 + h) * d;
            const float inv = 1.0f / l[h];
            for (size_t i = 0; i < d; i++)
                acc[i] *= inv;
        }
    }
}
