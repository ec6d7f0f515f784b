/* tests/support/ref_attention.c — exact (double) attention over a growing
 * cache: o = sum_j softmax_j(scale * <q, k_j>) v_j, with the max subtracted
 * before exp (two passes over the visible tokens) so nothing overflows. */
#include "tests/support/ref_attention.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct ref_layer {
    double *k, *v;   /* [cap][kv_heads][head_dim] */
    size_t n, cap;   /* tokens per stream */
} ref_layer;

struct ref_session {
    size_t layers, heads, kv_heads, head_dim;
    double scale;
    double max_abs_v;
    ref_layer *l;    /* [layers] */
};

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        abort();
    return p;
}

ref_session *ref_session_new(size_t layers, size_t heads, size_t kv_heads, size_t head_dim, double scale)
{
    ref_session *s = xcalloc(1, sizeof *s);
    s->layers = layers;
    s->heads = heads;
    s->kv_heads = kv_heads;
    s->head_dim = head_dim;
    s->scale = scale > 0 ? scale : 1.0 / sqrt((double)head_dim);
    s->l = xcalloc(layers, sizeof *s->l);
    return s;
}

void ref_session_free(ref_session *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->layers; i++) {
        free(s->l[i].k);
        free(s->l[i].v);
    }
    free(s->l);
    free(s);
}

ref_mask ref_default_mask(size_t m, size_t m_q)
{
    return m_q == m ? REF_MASK_CAUSAL : REF_MASK_BLOCK;
}

static void grow(ref_session *s, ref_layer *L, size_t need)
{
    if (need <= L->cap)
        return;
    size_t cap = L->cap ? L->cap : 64;
    while (cap < need)
        cap *= 2;
    size_t row = s->kv_heads * s->head_dim;
    double *nk = realloc(L->k, cap * row * sizeof *nk);
    if (!nk)
        abort();
    L->k = nk;
    double *nv = realloc(L->v, cap * row * sizeof *nv);
    if (!nv)
        abort();
    L->v = nv;
    L->cap = cap;
}

int ref_step(ref_session *s, size_t layer, const float *k, const float *v, size_t m, const float *q,
             size_t m_q, ref_mask mask, double *o)
{
    if (layer >= s->layers || (mask == REF_MASK_CAUSAL && m_q > m))
        return -1;
    ref_layer *L = &s->l[layer];
    const size_t d = s->head_dim, row = s->kv_heads * d;
    const size_t before = L->n;
    grow(s, L, before + m);
    for (size_t i = 0; i < m * row; i++) {
        L->k[before * row + i] = k[i];
        L->v[before * row + i] = v[i];
        double a = fabs((double)v[i]);
        if (a > s->max_abs_v)
            s->max_abs_v = a;
    }
    L->n = before + m;

    const size_t group = s->heads / s->kv_heads;
    double *w = xcalloc(L->n, sizeof *w);  /* [visible tokens] scores, then weights */
    for (size_t i = 0; i < m_q; i++) {
        size_t visible = mask == REF_MASK_CAUSAL ? before + (m - m_q + i) + 1 : before + m;
        for (size_t h = 0; h < s->heads; h++) {
            const size_t g = h / group;
            const float *qh = q + (i * s->heads + h) * d;
            double *oh = o + (i * s->heads + h) * d;
            memset(oh, 0, d * sizeof *oh);
            if (visible == 0)
                continue;
            double mx = -INFINITY;
            for (size_t j = 0; j < visible; j++) {
                const double *kj = L->k + j * row + g * d;
                double dot = 0;
                for (size_t c = 0; c < d; c++)
                    dot += (double)qh[c] * kj[c];
                w[j] = s->scale * dot;
                if (w[j] > mx)
                    mx = w[j];
            }
            double sum = 0;
            for (size_t j = 0; j < visible; j++) {
                w[j] = exp(w[j] - mx);
                sum += w[j];
            }
            for (size_t j = 0; j < visible; j++) {
                const double *vj = L->v + j * row + g * d;
                double p = w[j] / sum;
                for (size_t c = 0; c < d; c++)
                    oh[c] += p * vj[c];
            }
        }
    }
    free(w);
    return 0;
}

size_t ref_tokens(const ref_session *s, size_t layer)
{
    return layer < s->layers ? s->l[layer].n : 0;
}

size_t ref_total_tokens(const ref_session *s)
{
    size_t t = 0;
    for (size_t i = 0; i < s->layers; i++)
        t += s->l[i].n * s->kv_heads;
    return t;
}

double ref_max_abs_v(const ref_session *s)
{
    return s->max_abs_v;
}

double ref_max_abs_diff(const float *got, const double *want, size_t n)
{
    double mx = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (!(e <= mx)) /* NaN propagates as an infinite error */
            mx = isnan(e) ? INFINITY : e;
    }
    return mx;
}
