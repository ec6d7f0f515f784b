/* attention/standard.c — the scalar reference kernel for standard (softmax)
 * attention over a stream's segments in any row format: kvd_attend_ref, and
 * its one-segment wrapper kvd_attend_group_ref. It is the oracle every
 * kernel tier (standard_scalar.c, standard_avx2.c, standard_avx512.c: one
 * blocked body, standard_simd.h) is tested against and never runs in
 * production, so it favours clarity over speed: one key at a time,
 * element-wise dequantization straight from the page (kvd_dequant_range),
 * libm expf. */
#include <math.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/kernels.h"

/* Channels dequantized at a time: a fixed 1 KiB stack buffer for any
 * head_dim (no VLA, no allocation), each key/value element decoded once. */
#define REF_CHUNK 256

/* Online softmax state of one chunk of heads. */
typedef struct ref_state {
    float m[KVD_ATTN_MAX_GROUP]; /* running max of the scores seen, per head */
    float l[KVD_ATTN_MAX_GROUP]; /* running sum of exp(score - m), per head */
} ref_state;

/* Folds the first n slots of kv into the state of heads q[0..g), whose
 * un-normalized accumulators are o[0..g) ([g][d]). */
static void ref_segment(const kvd_kv_pages *kv, size_t n, const float *restrict q, size_t g,
                        float scale, float *restrict o, ref_state *st)
{
    const size_t d = kv->head_dim;
    const size_t ks = kvd__kv_k_stride(kv), vs = kvd__kv_v_stride(kv);
    float buf[REF_CHUNK];          /* one chunk of the current key or value */
    float dot[KVD_ATTN_MAX_GROUP]; /* <q[h], k_j> per head, then weights */

    /* Keys outer, heads inner: each K and V element is decoded once per
     * chunk of heads, which for any real GQA group means once. */
    for (size_t j = 0; j < n; j++) {
        size_t kt, vt;
        const unsigned char *ku = kvd__kv_unit(kv, kv->k_offset, kv->k_format, ks, j, &kt);
        const unsigned char *vu = kvd__kv_unit(kv, kv->v_offset, kv->v_format, vs, j, &vt);
        for (size_t h = 0; h < g; h++)
            dot[h] = 0.0f;
        for (size_t c0 = 0; c0 < d; c0 += REF_CHUNK) {
            const size_t c1 = d - c0 < REF_CHUNK ? d : c0 + REF_CHUNK;
            kvd_dequant_range(kv->k_format, ku, kt, d, kv->group, c0, c1, buf);
            for (size_t h = 0; h < g; h++) {
                const float *restrict qh = q + h * d;
                float acc = dot[h];
                for (size_t c = c0; c < c1; c++)
                    acc += qh[c] * buf[c - c0];
                dot[h] = acc;
            }
        }
        for (size_t h = 0; h < g; h++) {
            const float s = scale * dot[h];
            /* Online softmax (Milakov & Gimelshein 2018): with running max
             * m and sum l = sum_j exp(s_j - m), a new score s > m moves the
             * reference point to s, so everything accumulated so far is
             * multiplied by exp(m_old - s) (< 1, never overflows). Every
             * exponent is <= 0, so large scores stay finite. */
            if (s > st->m[h]) {
                const float alpha = st->m[h] == -INFINITY ? 0.0f : expf(st->m[h] - s);
                float *restrict acc = o + h * d;
                for (size_t i = 0; i < d; i++)
                    acc[i] *= alpha;
                st->l[h] *= alpha;
                st->m[h] = s;
            }
            dot[h] = expf(s - st->m[h]); /* now the weight p of slot j */
            st->l[h] += dot[h];
        }
        for (size_t c0 = 0; c0 < d; c0 += REF_CHUNK) {
            const size_t c1 = d - c0 < REF_CHUNK ? d : c0 + REF_CHUNK;
            kvd_dequant_range(kv->v_format, vu, vt, d, kv->group, c0, c1, buf);
            for (size_t h = 0; h < g; h++) {
                float *restrict acc = o + h * d;
                for (size_t c = c0; c < c1; c++)
                    acc[c] += dot[h] * buf[c - c0];
            }
        }
    }
}

void kvd_attend_ref(const kvd_kv_segment *seg, size_t n_seg, const float *restrict q,
                    size_t n_q, float scale, float *restrict o)
{
    kvd_attend_lse_ref(seg, n_seg, q, n_q, scale, o, NULL);
}

void kvd_attend_lse_ref(const kvd_kv_segment *seg, size_t n_seg, const float *restrict q,
                        size_t n_q, float scale, float *restrict o, float *restrict lse)
{
    if (lse)
        for (size_t h = 0; h < n_q; h++)
            lse[h] = -INFINITY;
    if (n_q == 0)
        return;
    const size_t d = seg[0].kv.head_dim; /* n_seg >= 1: every view names head_dim */

    /* o doubles as the un-normalized accumulator: o[h] = sum_j p_j * v_j. */
    memset(o, 0, n_q * d * sizeof *o);
    size_t total = 0;
    for (size_t s = 0; s < n_seg; s++)
        total += seg[s].n;
    if (total == 0)
        return; /* a softmax over no tokens has no mass to spread: zeros */

    for (size_t h0 = 0; h0 < n_q; h0 += KVD_ATTN_MAX_GROUP) {
        const size_t g = n_q - h0 < KVD_ATTN_MAX_GROUP ? n_q - h0 : KVD_ATTN_MAX_GROUP;
        ref_state st;
        for (size_t h = 0; h < g; h++) {
            st.m[h] = -INFINITY;
            st.l[h] = 0.0f;
        }
        /* One softmax over the segments in order, as if concatenated: the
         * state carries over from one segment (and format) to the next. */
        for (size_t s = 0; s < n_seg; s++)
            if (seg[s].n > 0)
                ref_segment(&seg[s].kv, seg[s].n, q + h0 * d, g, scale, o + h0 * d, &st);

        /* l >= 1: the key that set the final max contributed exp(0). */
        for (size_t h = 0; h < g; h++) {
            float *restrict acc = o + (h0 + h) * d;
            const float inv = 1.0f / st.l[h];
            for (size_t i = 0; i < d; i++)
                acc[i] *= inv;
            if (lse)
                lse[h0 + h] = st.m[h] + logf(st.l[h]);
        }
    }
}

void kvd_attend_group_ref(const kvd_kv_pages *kv, size_t n_visible, const float *q, size_t n_q,
                          float scale, float *o)
{
    const kvd_kv_segment seg = {.kv = *kv, .n = n_visible};
    kvd_attend_ref(&seg, 1, q, n_q, scale, o);
}
