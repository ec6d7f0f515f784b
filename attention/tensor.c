/* attention/tensor.c — tensor attention's scalar code: the oracles
 * kvd_tensor_four_ref and kvd_tensor_two_ref (tests compare the kernels
 * against them), the production scalar kvd_tensor_four_view and
 * kvd_tensor_weights_view for caches of any dtype, the pair rows a
 * two-cache stores, and the runtime choice of the four-cache kernel
 * (tensor_scalar.c, tensor_avx2.c, tensor_avx512.c over tensor_simd.h).
 * The scalar functions follow the definition in tensor.h literally: one
 * online softmax over the pairs, the output row itself as the accumulator,
 * so they need no scratch at all. */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "attention/tensor.h"
#include "attention/kernels.h"

/* Rows of any per-token format: f32 rows are read in place, others are
 * dequantized into `buf` ([head_dim] f32) by the reference dequantizer.
 * The four-cache kernels take f32 only; quantized tensor caches run
 * kvd_tensor_four_view (its O(n^2 d) dequantization is the same order as
 * the attention itself). */
#define ROW_MAX 4096 /* head_dim bound of the create body */

/* Row `value ? v : k` of slot i of one view, dequantized into buf unless it
 * is f32. KIVI keys: the slot's block and its token within it. */
static const float *pages_row(const kvd_kv_pages *kv, size_t i, int value, float *buf)
{
    const kvd_row_format f = value ? kv->v_format : kv->k_format;
    const unsigned char *page = kv->pages[i / kv->slots_per_page];
    const size_t in_page = i % kv->slots_per_page;
    if (f == KVD_ROW_F32)
        return (const float *)(page + (value ? kv->v_offset : kv->k_offset)) + in_page * kv->head_dim;
    if (kvd_row_is_block(f)) {
        kvd_dequant_row(f, page + kv->k_offset + (in_page / kv->group) * kv->k_row_bytes,
                            in_page % kv->group, kv->head_dim, kv->group, buf);
        return buf;
    }
    const size_t row_bytes = value ? kv->v_row_bytes : kv->k_row_bytes;
    kvd_dequant_row(f, page + (value ? kv->v_offset : kv->k_offset) + in_page * row_bytes, 0,
                        kv->head_dim, kv->group, buf);
    return buf;
}

/* Token j of a view: the segment holding it, then its row. */
static const float *view_row(const kvd_tensor_view *v, size_t j, int value, float *buf)
{
    size_t s = 0;
    while (s + 1 < v->n_seg && j >= v->seg[s].n)
        j -= v->seg[s++].n;
    return pages_row(&v->seg[s].kv, j, value, buf);
}

static const float *key_row(const kvd_tensor_view *v, size_t j, float *buf)
{
    return view_row(v, j, 0, buf);
}

static const float *value_row(const kvd_tensor_view *v, size_t j, float *buf)
{
    return view_row(v, j, 1, buf);
}

/* One f32-or-per-token view as a one-segment view of n tokens. */
static kvd_tensor_view one_segment(const kvd_kv_pages *kv, size_t n)
{
    kvd_tensor_view v = {.n_seg = 1};
    v.seg[0].kv = *kv;
    v.seg[0].n = n;
    return v;
}

/* First visible token of n with window W (0 = all). */
static size_t first_visible(size_t n, size_t window)
{
    return window > 0 && window < n ? n - window : 0;
}

/* One step of the online softmax: fold score s with value row v1 ⊙ v2 (v2
 * alone when v1 is NULL) into the output o [d], running max *m and running
 * sum *l. Rescales o only when the running max grows, so every weight is
 * e^(<= 0): no overflow whatever the score magnitude. */
static void online_fold(float *restrict o, size_t d, float *m, float *l, float s,
                        const float *restrict v1, const float *restrict v2)
{
    if (s > *m) {
        const float c = expf(*m - s); /* 0 for the first row: *m = -inf */
        *l *= c;
        for (size_t i = 0; i < d; i++)
            o[i] *= c;
        *m = s;
    }
    const float w = expf(s - *m);
    *l += w;
    if (v1 != NULL)
        for (size_t i = 0; i < d; i++)
            o[i] += w * (v1[i] * v2[i]);
    else
        for (size_t i = 0; i < d; i++)
            o[i] += w * v2[i];
}

/* scale * sum_l q_l k1_{j,l} k2_{k,l} */
static float pair_score(const kvd_tensor_view *a, const kvd_tensor_view *b, size_t j, size_t k, const float *q,
                        size_t d, float scale)
{
    float b1[ROW_MAX], b2[ROW_MAX];
    const float *k1 = key_row(a, j, b1), *k2 = key_row(b, k, b2);
    float s = 0.0f;
    for (size_t i = 0; i < d; i++)
        s += q[i] * k1[i] * k2[i];
    return scale * s;
}

void kvd_tensor_weights_view(const kvd_tensor_view *a, const kvd_tensor_view *b, size_t n,
                             size_t window, const float *q, size_t n_q, float scale, float *acc)
{
    const size_t d = a->seg[0].kv.head_dim, lo = first_visible(n, window);
    for (size_t h = 0; h < n_q; h++) {
        const float *qh = q + h * d;
        /* pass 1: the softmax's max and normalizer over all visible pairs
         * (normalizer in f64: n^2 terms one by one would drift in f32) */
        float m = -INFINITY;
        double l = 0.0;
        for (size_t j = lo; j < n; j++)
            for (size_t k = lo; k < n; k++) {
                const float s = pair_score(a, b, j, k, qh, d, scale);
                if (s > m) {
                    l *= expf(m - s);
                    m = s;
                }
                l += expf(s - m);
            }
        if (l == 0.0)
            continue; /* no visible pair */
        /* pass 2: each pair's weight goes to both of its tokens */
        const float inv = (float)(1.0 / l);
        for (size_t j = lo; j < n; j++)
            for (size_t k = lo; k < n; k++) {
                const float w = expf(pair_score(a, b, j, k, qh, d, scale) - m) * inv;
                acc[j] += w;
                if (k != j)
                    acc[k] += w;
            }
    }
}

/* The oracle reads f32 pages directly (kvd_kv_key), apart from the view
 * machinery kvd_tensor_four_view and the kernels use. */
void kvd_tensor_four_ref(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t n, size_t window,
                         const float *q, size_t n_q, float scale, float *o)
{
    kvd_tensor_four_lse_ref(a, b, n, window, q, n_q, scale, o, NULL);
}

void kvd_tensor_four_lse_ref(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t n, size_t window,
                         const float *q, size_t n_q, float scale, float *o, float *lse)
{
    const size_t d = a->head_dim;
    const size_t lo = first_visible(n, window);
    for (size_t h = 0; h < n_q; h++) {
        const float *qh = q + h * d;
        float *oh = o + h * d;
        memset(oh, 0, d * sizeof *oh);
        float m = -INFINITY, l = 0.0f;
        for (size_t j = lo; j < n; j++)
            for (size_t k = lo; k < n; k++) {
                const float *k1 = kvd_kv_key(a, j), *k2 = kvd_kv_key(b, k);
                float s = 0.0f;
                for (size_t i = 0; i < d; i++)
                    s += qh[i] * k1[i] * k2[i];
                online_fold(oh, d, &m, &l, scale * s, kvd_kv_value(a, j), kvd_kv_value(b, k));
            }
        if (l > 0.0f) /* l >= 1 once any pair was seen (the max pair weighs 1) */
            for (size_t i = 0; i < d; i++)
                oh[i] /= l;
        if (lse) /* -inf when no pair is visible */
            lse[h] = l > 0.0f ? m + logf(l) : -INFINITY;
    }
}

void kvd_tensor_four_view(const kvd_tensor_view *a, const kvd_tensor_view *b, size_t n,
                          size_t window, const float *q, size_t n_q, float scale, float *o)
{
    kvd_tensor_four_view_lse(a, b, n, window, q, n_q, scale, o, NULL);
}

/* online_fold with f64 sums (u [d], *l) and v1 = NULL: the production
 * view kernel's inner softmax over one token's n pairs. */
static void online_fold_f64(double *restrict u, size_t d, float *m, double *l, float s,
                            const float *restrict v2)
{
    if (s > *m) {
        const float c = expf(*m - s); /* 0 for the first row: *m = -inf */
        *l *= c;
        for (size_t i = 0; i < d; i++)
            u[i] *= c;
        *m = s;
    }
    const float w = expf(s - *m);
    *l += w;
    for (size_t i = 0; i < d; i++)
        u[i] += (double)w * v2[i];
}

/* The SIMD kernels' per-j algorithm (tensor_simd.h) in scalar code: for
 * each token j an online softmax over k (max m, sum l, u = sum_k w v2_k),
 * folded into the head's (M, L, od) with v1_j ⊙ u. The sums are f64
 * (kernels.h, issue 14): n^2 pairs one by one would drift in f32. */
void kvd_tensor_four_view_lse(const kvd_tensor_view *a, const kvd_tensor_view *b, size_t n,
                          size_t window, const float *q, size_t n_q, float scale, float *o, float *lse)
{
    const size_t d = a->seg[0].kv.head_dim;
    const size_t lo = first_visible(n, window);
    for (size_t h = 0; h < n_q; h++) {
        const float *qh = q + h * d;
        double od[ROW_MAX], u[ROW_MAX];
        memset(od, 0, d * sizeof *od);
        float gm = -INFINITY;
        double gl = 0.0;
        for (size_t j = lo; j < n; j++) {
            float bk1[ROW_MAX], bv1[ROW_MAX], bk2[ROW_MAX], bv2[ROW_MAX];
            const float *k1 = key_row(a, j, bk1), *v1 = value_row(a, j, bv1);
            float m = -INFINITY;
            double l = 0.0;
            memset(u, 0, d * sizeof *u);
            for (size_t k = lo; k < n; k++) {
                const float *k2 = key_row(b, k, bk2);
                float s = 0.0f;
                for (size_t i = 0; i < d; i++)
                    s += qh[i] * k1[i] * k2[i];
                online_fold_f64(u, d, &m, &l, scale * s, value_row(b, k, bv2));
            }
            const float mx = fmaxf(gm, m);
            const double ca = expf(gm - mx), cb = expf(m - mx);
            for (size_t i = 0; i < d; i++)
                od[i] = od[i] * ca + cb * (v1[i] * u[i]);
            gl = gl * ca + cb * l;
            gm = mx;
        }
        /* gl >= 1 once any pair was seen (the max pair weighs 1) */
        const double inv = gl > 0.0 ? 1.0 / gl : 0.0;
        for (size_t i = 0; i < d; i++)
            o[h * d + i] = (float)(od[i] * inv);
        if (lse) /* -inf when no pair is visible */
            lse[h] = gl > 0.0 ? (float)((double)gm + log(gl)) : -INFINITY;
    }
}

void kvd_tensor_view_rows(const kvd_tensor_view *view, size_t n, float *k, float *v)
{
    kvd_tensor_view_rows_from(view, 0, n, k, v);
}

void kvd_tensor_view_rows_from(const kvd_tensor_view *view, size_t j0, size_t n, float *k, float *v)
{
    const size_t d = view->seg[0].kv.head_dim;
    for (size_t j = 0; j < n; j++) {
        float *kj = k + j * d, *vj = v + j * d;
        const float *kr = key_row(view, j0 + j, kj), *vr = value_row(view, j0 + j, vj);
        if (kr != kj) /* an f32 segment: the row itself */
            memcpy(kj, kr, d * sizeof *kj);
        if (vr != vj)
            memcpy(vj, vr, d * sizeof *vj);
    }
}

void kvd_tensor_two_ref(const kvd_kv_pages *pairs, size_t n, const float *q, size_t n_q,
                        float scale, float *o)
{
    const size_t d = pairs->head_dim;
    const size_t rows = n * n;
    for (size_t h = 0; h < n_q; h++) {
        const float *qh = q + h * d;
        float *oh = o + h * d;
        memset(oh, 0, d * sizeof *oh);
        float m = -INFINITY, l = 0.0f;
        for (size_t r = 0; r < rows; r++) {
            const float *k = kvd_kv_key(pairs, r);
            float s = 0.0f;
            for (size_t i = 0; i < d; i++)
                s += qh[i] * k[i];
            online_fold(oh, d, &m, &l, scale * s, NULL, kvd_kv_value(pairs, r));
        }
        if (l > 0.0f)
            for (size_t i = 0; i < d; i++)
                oh[i] /= l;
    }
}

/* The i-th new pair of token t (kvd_tensor_pair_row's order), as (j, k). */
static void new_pair(size_t t, size_t i, size_t *j, size_t *k)
{
    if (i <= t) { /* (t, 0) .. (t, t) */
        *j = t;
        *k = i;
    } else {      /* (0, t) .. (t-1, t) */
        *j = i - t - 1;
        *k = t;
    }
}

void kvd_tensor_pair_rows(const kvd_kv_pages *a, const kvd_kv_pages *b, size_t t, float *k_rows,
                          float *v_rows)
{
    const kvd_tensor_view va = one_segment(a, t + 1), vb = one_segment(b, t + 1);
    kvd_tensor_pair_rows_view(&va, &vb, t, k_rows, v_rows);
}

void kvd_tensor_pair_rows_view(const kvd_tensor_view *a, const kvd_tensor_view *b, size_t t, float *k_rows,
                               float *v_rows)
{
    const size_t d = a->seg[0].kv.head_dim;
    for (size_t i = 0; i < kvd_tensor_pair_rows_added(t); i++) {
        size_t j, k;
        new_pair(t, i, &j, &k);
        float bk1[ROW_MAX], bv1[ROW_MAX], bk2[ROW_MAX], bv2[ROW_MAX];
        const float *k1 = key_row(a, j, bk1), *v1 = value_row(a, j, bv1);
        const float *k2 = key_row(b, k, bk2), *v2 = value_row(b, k, bv2);
        float *kr = k_rows + i * d, *vr = v_rows + i * d;
        for (size_t l = 0; l < d; l++) {
            kr[l] = k1[l] * k2[l];
            vr[l] = v1[l] * v2[l];
        }
    }
}

/* ---- runtime dispatch ------------------------------------------------------ */

/* Scalar first, best last; the prefix this CPU supports is usable (the
 * same levels as the standard kernels: attention/dispatch.c decides). A
 * two-cache needs no table of its own: it is standard attention over its
 * pair rows (kvd_attention_kernels_get()->attend). */
static const kvd_tensor_kernels tensor_tables[] = {
    {.name = "scalar", .four = kvd__tensor_four_scalar, .four_lse = kvd__tensor_four_lse_scalar},
#if defined(__x86_64__)
    {.name = "avx2", .four = kvd__tensor_four_avx2, .four_lse = kvd__tensor_four_lse_avx2},
    {.name = "avx512", .four = kvd__tensor_four_avx512, .four_lse = kvd__tensor_four_lse_avx512},
#endif
};

const kvd_tensor_kernels *kvd_tensor_kernels_get(void)
{
    return &tensor_tables[kvd__simd_levels() - 1];
}

const kvd_tensor_kernels *kvd_tensor_kernels_all(size_t *n)
{
    *n = kvd__simd_levels();
    return tensor_tables;
}
