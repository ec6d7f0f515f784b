/* attention/standard_simd.h — the body of the SIMD attend_group kernels,
 * written once and included by standard_avx2.c and standard_avx512.c (private
 * to attention/). The including file defines the vector layer first:
 *   KVD_SIMD_ATTR (target attribute), KVD_SIMD_FN (kernel name), KVD_SIMD_W
 *   (f32 lanes), vf (vector type), v_zero/v_set1/v_load/v_store/v_add/v_sub/
 *   v_mul/v_fma(a, b, c) = a * b + c/v_hsum, and v_exp (exp for x <= 0 that
 *   returns exactly 0 for x = -inf). */
#ifndef KVD_SIMD_FN
#error "define the vector layer before including attention/standard_simd.h"
#endif

#include <float.h>
#include <math.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/kernels.h"

_Static_assert(KVD_ATTN_BLOCK % KVD_SIMD_W == 0, "a block of scores is whole vectors");

/* <a, b> over d floats: two vector accumulators to hide FMA latency, then an
 * explicit scalar tail so any head_dim works (d = 1, 3, 17, 130 ...). */
KVD_SIMD_ATTR static inline float simd_dot(const float *restrict a, const float *restrict b,
                                           size_t d)
{
    vf acc0 = v_zero(), acc1 = v_zero();
    size_t i = 0;
    for (; i + 2 * KVD_SIMD_W <= d; i += 2 * KVD_SIMD_W) {
        acc0 = v_fma(v_load(a + i), v_load(b + i), acc0);
        acc1 = v_fma(v_load(a + i + KVD_SIMD_W), v_load(b + i + KVD_SIMD_W), acc1);
    }
    for (; i + KVD_SIMD_W <= d; i += KVD_SIMD_W)
        acc0 = v_fma(v_load(a + i), v_load(b + i), acc0);
    float s = v_hsum(v_add(acc0, acc1));
    for (; i < d; i++)
        s += a[i] * b[i];
    return s;
}

/* <q, k[0..3]>: four keys against one query, four independent chains and
 * each q vector loaded once; scalar tail as in simd_dot. */
KVD_SIMD_ATTR static inline void simd_dot4(const float *restrict q,
                                           const float *const *restrict k, size_t d,
                                           float *restrict out)
{
    vf a0 = v_zero(), a1 = v_zero(), a2 = v_zero(), a3 = v_zero();
    size_t i = 0;
    for (; i + KVD_SIMD_W <= d; i += KVD_SIMD_W) {
        const vf qi = v_load(q + i);
        a0 = v_fma(qi, v_load(k[0] + i), a0);
        a1 = v_fma(qi, v_load(k[1] + i), a1);
        a2 = v_fma(qi, v_load(k[2] + i), a2);
        a3 = v_fma(qi, v_load(k[3] + i), a3);
    }
    float s0 = v_hsum(a0), s1 = v_hsum(a1), s2 = v_hsum(a2), s3 = v_hsum(a3);
    for (; i < d; i++) {
        s0 += q[i] * k[0][i];
        s1 += q[i] * k[1][i];
        s2 += q[i] * k[2][i];
        s3 += q[i] * k[3][i];
    }
    out[0] = s0;
    out[1] = s1;
    out[2] = s2;
    out[3] = s3;
}

/* acc[0..d) *= alpha */
KVD_SIMD_ATTR static inline void simd_scale(float *restrict acc, float alpha, size_t d)
{
    const vf va = v_set1(alpha);
    size_t i = 0;
    for (; i + KVD_SIMD_W <= d; i += KVD_SIMD_W)
        v_store(acc + i, v_mul(v_load(acc + i), va));
    for (; i < d; i++)
        acc[i] *= alpha;
}

/* acc[0..d) += sum_b p[b] * v[b][0..d): acc is loaded and stored once per
 * block. Four vector columns at a time give four independent FMA chains per
 * weight (one chain would wait on FMA latency for every key of the block). */
KVD_SIMD_ATTR static inline void simd_accumulate(float *restrict acc, const float *restrict p,
                                                 const float *const *restrict v, size_t nb,
                                                 size_t d)
{
    size_t i = 0;
    for (; i + 4 * KVD_SIMD_W <= d; i += 4 * KVD_SIMD_W) {
        vf a0 = v_load(acc + i), a1 = v_load(acc + i + KVD_SIMD_W);
        vf a2 = v_load(acc + i + 2 * KVD_SIMD_W), a3 = v_load(acc + i + 3 * KVD_SIMD_W);
        for (size_t b = 0; b < nb; b++) {
            const vf pb = v_set1(p[b]);
            const float *restrict vb = v[b] + i;
            a0 = v_fma(pb, v_load(vb), a0);
            a1 = v_fma(pb, v_load(vb + KVD_SIMD_W), a1);
            a2 = v_fma(pb, v_load(vb + 2 * KVD_SIMD_W), a2);
            a3 = v_fma(pb, v_load(vb + 3 * KVD_SIMD_W), a3);
        }
        v_store(acc + i, a0);
        v_store(acc + i + KVD_SIMD_W, a1);
        v_store(acc + i + 2 * KVD_SIMD_W, a2);
        v_store(acc + i + 3 * KVD_SIMD_W, a3);
    }
    for (; i + KVD_SIMD_W <= d; i += KVD_SIMD_W) {
        vf a = v_load(acc + i);
        for (size_t b = 0; b < nb; b++)
            a = v_fma(v_set1(p[b]), v_load(v[b] + i), a);
        v_store(acc + i, a);
    }
    for (; i < d; i++) {
        float a = acc[i];
        for (size_t b = 0; b < nb; b++)
            a += p[b] * v[b][i];
        acc[i] = a;
    }
}

KVD_SIMD_ATTR void KVD_SIMD_FN(const kvd_kv_pages *kv, size_t n_visible,
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
        float m[KVD_ATTN_MAX_GROUP]; /* running max per head */
        float l[KVD_ATTN_MAX_GROUP]; /* running sum of exp(s - m) per head */
        /* -FLT_MAX rather than -inf: the first block's rescale factor
         * exp(-FLT_MAX - max) is then an ordinary 0, no special case. */
        for (size_t h = 0; h < g; h++) {
            m[h] = -FLT_MAX;
            l[h] = 0.0f;
        }

        for (size_t j0 = 0; j0 < n_visible; j0 += KVD_ATTN_BLOCK) {
            const size_t nb = n_visible - j0 < KVD_ATTN_BLOCK ? n_visible - j0 : KVD_ATTN_BLOCK;
            const float *krow[KVD_ATTN_BLOCK]; /* rows may straddle a page boundary */
            const float *vrow[KVD_ATTN_BLOCK];
            for (size_t b = 0; b < nb; b++) {
                krow[b] = kvd_kv_key(kv, j0 + b);
                vrow[b] = kvd_kv_value(kv, j0 + b);
            }

            /* Heads inner: the block's K and V rows come from memory once and
             * are reused from L1 by every head of the group. */
            for (size_t h = 0; h < g; h++) {
                const float *restrict qh = q + (h0 + h) * d;
                float *restrict acc = o + (h0 + h) * d;
                _Alignas(64) float s[KVD_ATTN_BLOCK]; /* scores, then weights */

                size_t b = 0;
                for (; b + 4 <= nb; b += 4)
                    simd_dot4(qh, krow + b, d, s + b);
                for (; b < nb; b++)
                    s[b] = simd_dot(qh, krow[b], d);
                float bmax = -INFINITY;
                for (b = 0; b < nb; b++) {
                    s[b] *= scale;
                    bmax = s[b] > bmax ? s[b] : bmax;
                }
                for (b = nb; b < KVD_ATTN_BLOCK; b++)
                    s[b] = -INFINITY; /* padding: weight exactly 0 */

                /* Online softmax: moving the reference point from m to a larger
                 * block max multiplies what was accumulated by exp(m - max) <= 1;
                 * every exponent below is <= 0, so huge scores stay finite. */
                if (bmax > m[h]) {
                    const float alpha = expf(m[h] - bmax);
                    simd_scale(acc, alpha, d);
                    l[h] *= alpha;
                    m[h] = bmax;
                }
                const vf vm = v_set1(m[h]);
                vf vsum = v_zero();
                for (b = 0; b < KVD_ATTN_BLOCK; b += KVD_SIMD_W) {
                    const vf p = v_exp(v_sub(v_load(s + b), vm));
                    v_store(s + b, p);
                    vsum = v_add(vsum, p);
                }
                l[h] += v_hsum(vsum);
                simd_accumulate(acc, s, vrow, nb, d);
            }
        }

        /* l >= 1: the key that set the final max contributed exp(0). */
        for (size_t h = 0; h < g; h++)
            simd_scale(o + (h0 + h) * d, 1.0f / l[h], d);
    }
}
