/* tests/support/ref_tensor.c — see ref_tensor.h. Brute force on purpose:
 * O(n^2 d) per query head with an explicit score matrix, nothing shared with
 * kvd's online-softmax kernels or its pair-row layout. */
#include "tests/support/ref_tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct ref_tstream {
    double *k1, *k2, *v1, *v2; /* [n][head_dim] each */
    size_t n, cap;
} ref_tstream;

struct ref_tensor {
    size_t layers, heads, kv_heads, head_dim, window;
    double scale;
    size_t appended;
    ref_tstream *streams; /* [layers][kv_heads] */
    double *scores;       /* scratch: [n][n] */
    size_t scores_cap;
};

static void *xrealloc(void *p, size_t bytes)
{
    void *q = realloc(p, bytes ? bytes : 1);
    if (!q) {
        fprintf(stderr, "ref_tensor: out of memory\n");
        abort();
    }
    return q;
}

ref_tensor *ref_tensor_new(size_t layers, size_t heads, size_t kv_heads, size_t head_dim, double scale,
                           size_t window)
{
    ref_tensor *s = xrealloc(NULL, sizeof *s);
    memset(s, 0, sizeof *s);
    s->layers = layers;
    s->heads = heads;
    s->kv_heads = kv_heads;
    s->head_dim = head_dim;
    s->window = window;
    s->scale = scale > 0 ? scale : 1.0 / sqrt((double)head_dim);
    s->streams = xrealloc(NULL, layers * kv_heads * sizeof *s->streams);
    memset(s->streams, 0, layers * kv_heads * sizeof *s->streams);
    return s;
}

void ref_tensor_free(ref_tensor *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->layers * s->kv_heads; i++) {
        free(s->streams[i].k1);
        free(s->streams[i].k2);
        free(s->streams[i].v1);
        free(s->streams[i].v2);
    }
    free(s->streams);
    free(s->scores);
    free(s);
}

static void stream_append(ref_tstream *st, size_t d, const float *k1, const float *k2, const float *v1,
                          const float *v2)
{
    if (st->n == st->cap) {
        st->cap = st->cap ? 2 * st->cap : 16;
        st->k1 = xrealloc(st->k1, st->cap * d * sizeof(double));
        st->k2 = xrealloc(st->k2, st->cap * d * sizeof(double));
        st->v1 = xrealloc(st->v1, st->cap * d * sizeof(double));
        st->v2 = xrealloc(st->v2, st->cap * d * sizeof(double));
    }
    for (size_t l = 0; l < d; l++) {
        st->k1[st->n * d + l] = k1[l];
        st->k2[st->n * d + l] = k2[l];
        st->v1[st->n * d + l] = v1[l];
        st->v2[st->n * d + l] = v2[l];
    }
    st->n++;
}

/* One query head against tokens [lo, hi) of a stream. */
static void attend(ref_tensor *s, const ref_tstream *st, size_t lo, size_t hi, const float *q, double *o)
{
    const size_t d = s->head_dim, w = hi - lo;
    for (size_t l = 0; l < d; l++)
        o[l] = 0;
    if (w == 0)
        return;
    if (w * w > s->scores_cap) {
        s->scores_cap = w * w;
        s->scores = xrealloc(s->scores, s->scores_cap * sizeof *s->scores);
    }
    double mx = -INFINITY;
    for (size_t j = 0; j < w; j++)
        for (size_t k = 0; k < w; k++) {
            const double *a = st->k1 + (lo + j) * d, *b = st->k2 + (lo + k) * d;
            double acc = 0;
            for (size_t l = 0; l < d; l++)
                acc += (double)q[l] * a[l] * b[l];
            acc *= s->scale;
            s->scores[j * w + k] = acc;
            if (acc > mx)
                mx = acc;
        }
    double sum = 0;
    for (size_t r = 0; r < w * w; r++) {
        s->scores[r] = exp(s->scores[r] - mx);
        sum += s->scores[r];
    }
    for (size_t j = 0; j < w; j++)
        for (size_t k = 0; k < w; k++) {
            const double p = s->scores[j * w + k] / sum;
            const double *a = st->v1 + (lo + j) * d, *b = st->v2 + (lo + k) * d;
            for (size_t l = 0; l < d; l++)
                o[l] += p * a[l] * b[l];
        }
}

int ref_tensor_step(ref_tensor *s, size_t layer, const float *k1, const float *k2, const float *v1,
                    const float *v2, size_t m, const float *q, size_t m_q, ref_mask mask, double *o)
{
    if (mask == REF_MASK_CAUSAL && m_q > m)
        return -1;
    const size_t d = s->head_dim, kv_row = s->kv_heads * d, q_row = s->heads * d;
    const size_t group = s->heads / s->kv_heads;
    size_t n_before = 0;
    for (size_t g = 0; g < s->kv_heads; g++) {
        ref_tstream *st = &s->streams[layer * s->kv_heads + g];
        n_before = st->n;
        for (size_t t = 0; t < m; t++)
            stream_append(st, d, k1 + t * kv_row + g * d, k2 + t * kv_row + g * d, v1 + t * kv_row + g * d,
                          v2 + t * kv_row + g * d);
    }
    s->appended += m * s->kv_heads;
    for (size_t i = 0; i < m_q; i++) {
        size_t hi = mask == REF_MASK_CAUSAL ? n_before + (m - m_q) + i + 1 : n_before + m;
        size_t lo = s->window && hi > s->window ? hi - s->window : 0;
        for (size_t h = 0; h < s->heads; h++) {
            const ref_tstream *st = &s->streams[layer * s->kv_heads + h / group];
            attend(s, st, lo, hi, q + i * q_row + h * d, o + i * q_row + h * d);
        }
    }
    return 0;
}

void ref_tensor_end_request(ref_tensor *s)
{
    if (!s->window)
        return;
    const size_t d = s->head_dim;
    for (size_t i = 0; i < s->layers * s->kv_heads; i++) {
        ref_tstream *st = &s->streams[i];
        if (st->n <= s->window)
            continue;
        size_t drop = st->n - s->window;
        memmove(st->k1, st->k1 + drop * d, s->window * d * sizeof(double));
        memmove(st->k2, st->k2 + drop * d, s->window * d * sizeof(double));
        memmove(st->v1, st->v1 + drop * d, s->window * d * sizeof(double));
        memmove(st->v2, st->v2 + drop * d, s->window * d * sizeof(double));
        st->n = s->window;
    }
}

size_t ref_tensor_tokens(const ref_tensor *s, size_t layer)
{
    return s->streams[layer * s->kv_heads].n;
}

size_t ref_tensor_total_tokens(const ref_tensor *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->layers * s->kv_heads; i++)
        n += s->streams[i].n;
    return n;
}

size_t ref_tensor_total_appended(const ref_tensor *s)
{
    return s->appended;
}

size_t ref_tensor_pair_rows(const ref_tensor *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->layers * s->kv_heads; i++)
        n += s->streams[i].n * s->streams[i].n;
    return n;
}
