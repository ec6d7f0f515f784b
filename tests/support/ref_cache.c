/* tests/support/ref_cache.c — the evicting reference: each stream is an
 * unordered array of kept tokens (softmax is order-free, so a victim's hole is
 * filled by the last token), victims are found by a linear scan that also
 * measures the decision margin, and attention is the two-pass double softmax
 * of ref_attention.c over the kept set. */
#include "tests/support/ref_cache.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct ref_stream {
    int64_t *pos;      /* [cap] original position of each kept token */
    double *k, *v;     /* [cap][head_dim] */
    double *norm;      /* [cap] L2 norm of the key, from the f32 values sent */
    double *score;     /* [cap] h2o: softmax weight accumulated since the append */
    size_t n, cap;
    uint64_t appended; /* tokens ever appended: the next position */
    uint64_t evicted;  /* tokens ever evicted */
} ref_stream;

struct ref_cache {
    ref_cache_config cfg;
    double max_abs_v;
    ref_stream *s;     /* [layers][kv_heads] */
};

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        abort();
    return p;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        abort();
    return p;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        abort();
    return q;
}

static ref_stream *stream_at(const ref_cache *c, size_t layer, size_t g)
{
    return &c->s[layer * c->cfg.kv_heads + g];
}

ref_cache *ref_cache_new(const ref_cache_config *cfg)
{
    ref_cache *c = xcalloc(1, sizeof *c);
    c->cfg = *cfg;
    if (c->cfg.scale <= 0)
        c->cfg.scale = 1.0 / sqrt((double)cfg->head_dim);
    c->s = xcalloc(cfg->layers * cfg->kv_heads, sizeof *c->s);
    return c;
}

static void stream_grow(ref_stream *s, size_t d, size_t need)
{
    if (need <= s->cap)
        return;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < need)
        cap *= 2;
    s->pos = xrealloc(s->pos, cap * sizeof *s->pos);
    s->k = xrealloc(s->k, cap * d * sizeof *s->k);
    s->v = xrealloc(s->v, cap * d * sizeof *s->v);
    s->norm = xrealloc(s->norm, cap * sizeof *s->norm);
    s->score = xrealloc(s->score, cap * sizeof *s->score);
    s->cap = cap;
}

ref_cache *ref_cache_clone(const ref_cache *c)
{
    ref_cache *o = ref_cache_new(&c->cfg);
    o->max_abs_v = c->max_abs_v;
    const size_t d = c->cfg.head_dim, n_streams = c->cfg.layers * c->cfg.kv_heads;
    for (size_t i = 0; i < n_streams; i++) {
        const ref_stream *a = &c->s[i];
        ref_stream *b = &o->s[i];
        stream_grow(b, d, a->n);
        if (a->n) {
            memcpy(b->pos, a->pos, a->n * sizeof *a->pos);
            memcpy(b->k, a->k, a->n * d * sizeof *a->k);
            memcpy(b->v, a->v, a->n * d * sizeof *a->v);
            memcpy(b->norm, a->norm, a->n * sizeof *a->norm);
            memcpy(b->score, a->score, a->n * sizeof *a->score);
        }
        b->n = a->n;
        b->appended = a->appended;
        b->evicted = a->evicted;
    }
    return o;
}

void ref_cache_free(ref_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->cfg.layers * c->cfg.kv_heads; i++) {
        free(c->s[i].pos);
        free(c->s[i].k);
        free(c->s[i].v);
        free(c->s[i].norm);
        free(c->s[i].score);
    }
    free(c->s);
    free(c);
}

const ref_cache_config *ref_cache_cfg(const ref_cache *c)
{
    return &c->cfg;
}

static int is_protected(const ref_cache_config *cfg, const ref_stream *s, int64_t pos)
{
    /* pos >= appended - recent, without the unsigned wrap. */
    return (uint64_t)pos < cfg->sink || (uint64_t)pos + cfg->recent >= s->appended;
}

/* Does candidate a go before candidate b? Policy key first, then the
 * smaller position. */
static int goes_first(const ref_cache_config *cfg, const ref_stream *s, size_t a, size_t b)
{
    switch (cfg->policy) {
    case REF_EVICT_L2NORM:
        if (s->norm[a] != s->norm[b])
            return s->norm[a] > s->norm[b];
        break;
    case REF_EVICT_H2O:
        if (s->score[a] != s->score[b])
            return s->score[a] < s->score[b];
        break;
    case REF_EVICT_RECENCY:
    case REF_EVICT_NONE:
        break;
    }
    return s->pos[a] < s->pos[b];
}

static double key_gap(const ref_cache_config *cfg, const ref_stream *s, size_t victim, size_t rival)
{
    switch (cfg->policy) {
    case REF_EVICT_L2NORM:
        return s->norm[victim] - s->norm[rival];
    case REF_EVICT_H2O:
        return s->score[rival] - s->score[victim];
    case REF_EVICT_RECENCY:
    case REF_EVICT_NONE:
        break;
    }
    return INFINITY;
}

static void remove_slot(ref_stream *s, size_t d, size_t j)
{
    const size_t last = s->n - 1;
    if (j != last) {
        s->pos[j] = s->pos[last];
        memcpy(s->k + j * d, s->k + last * d, d * sizeof *s->k);
        memcpy(s->v + j * d, s->v + last * d, d * sizeof *s->v);
        s->norm[j] = s->norm[last];
        s->score[j] = s->score[last];
    }
    s->n--;
}

/* Evicts from s until n <= target or no candidate is left; *margin gets the
 * smallest decision gap seen (unchanged if no decision had a rival). */
static size_t stream_evict(const ref_cache_config *cfg, ref_stream *s, size_t target, double *margin)
{
    size_t evicted = 0;
    if (cfg->policy == REF_EVICT_NONE)
        return 0;
    while (s->n > target) {
        size_t best = SIZE_MAX, second = SIZE_MAX;
        for (size_t j = 0; j < s->n; j++) {
            if (is_protected(cfg, s, s->pos[j]))
                continue;
            if (best == SIZE_MAX || goes_first(cfg, s, j, best)) {
                second = best;
                best = j;
            } else if (second == SIZE_MAX || goes_first(cfg, s, j, second)) {
                second = j;
            }
        }
        if (best == SIZE_MAX)
            break; /* only protected tokens left */
        if (second != SIZE_MAX) {
            double gap = key_gap(cfg, s, best, second);
            if (gap < *margin)
                *margin = gap;
        }
        remove_slot(s, cfg->head_dim, best);
        evicted++;
    }
    s->evicted += evicted;
    return evicted;
}

size_t ref_cache_evict(ref_cache *c, size_t layer, size_t kv_head, size_t target)
{
    double margin = INFINITY;
    return stream_evict(&c->cfg, stream_at(c, layer, kv_head), target, &margin);
}

int ref_cache_step(ref_cache *c, size_t layer, const float *k, const float *v, size_t m, const float *q,
                   size_t m_q, ref_mask mask, double *o, ref_entry_result *res)
{
    const ref_cache_config *cfg = &c->cfg;
    if (layer >= cfg->layers || (mask == REF_MASK_CAUSAL && m_q > m))
        return -1;
    const size_t d = cfg->head_dim, row = cfg->kv_heads * d, group = cfg->heads / cfg->kv_heads;
    const uint64_t first_new = stream_at(c, layer, 0)->appended;

    for (size_t g = 0; g < cfg->kv_heads; g++) {
        ref_stream *s = stream_at(c, layer, g);
        stream_grow(s, d, s->n + m);
        for (size_t t = 0; t < m; t++) {
            const size_t j = s->n + t;
            const float *kt = k + t * row + g * d, *vt = v + t * row + g * d;
            double sq = 0;
            for (size_t i = 0; i < d; i++) {
                s->k[j * d + i] = kt[i];
                s->v[j * d + i] = vt[i];
                sq += (double)kt[i] * kt[i];
                double a = fabs((double)vt[i]);
                if (a > c->max_abs_v)
                    c->max_abs_v = a;
            }
            s->pos[j] = (int64_t)(s->appended + t);
            s->norm[j] = sqrt(sq);
            s->score[j] = 0;
        }
        s->n += m;
        s->appended += m;
    }

    for (size_t g = 0; g < cfg->kv_heads; g++) {
        ref_stream *s = stream_at(c, layer, g);
        double *w = xmalloc((s->n ? s->n : 1) * sizeof *w);  /* [n] scores, then weights */
        for (size_t i = 0; i < m_q; i++) {
            /* Tokens with a position below `limit` are visible to query i. */
            const uint64_t limit = mask == REF_MASK_CAUSAL ? first_new + (m - m_q + i) + 1 : first_new + m;
            for (size_t h = g * group; h < (g + 1) * group; h++) {
                const float *qh = q + (i * cfg->heads + h) * d;
                double *oh = o + (i * cfg->heads + h) * d;
                memset(oh, 0, d * sizeof *oh);
                double mx = -INFINITY;
                for (size_t j = 0; j < s->n; j++) {
                    if ((uint64_t)s->pos[j] >= limit)
                        continue;
                    double dot = 0;
                    for (size_t e = 0; e < d; e++)
                        dot += (double)qh[e] * s->k[j * d + e];
                    w[j] = cfg->scale * dot;
                    if (w[j] > mx)
                        mx = w[j];
                }
                if (mx == -INFINITY)
                    continue; /* sees nothing: zeros */
                double sum = 0;
                for (size_t j = 0; j < s->n; j++)
                    if ((uint64_t)s->pos[j] < limit) {
                        w[j] = exp(w[j] - mx);
                        sum += w[j];
                    }
                for (size_t j = 0; j < s->n; j++) {
                    if ((uint64_t)s->pos[j] >= limit)
                        continue;
                    const double p = w[j] / sum;
                    s->score[j] += p;
                    for (size_t e = 0; e < d; e++)
                        oh[e] += p * s->v[j * d + e];
                }
            }
        }
        free(w);
    }

    ref_entry_result r = {.margin = INFINITY};
    for (size_t g = 0; g < cfg->kv_heads; g++) {
        ref_stream *s = stream_at(c, layer, g);
        size_t e = cfg->budget ? stream_evict(cfg, s, cfg->budget, &r.margin) : 0;
        if (e > r.evicted)
            r.evicted = e;
    }
    r.tokens = stream_at(c, layer, 0)->n;
    if (res)
        *res = r;
    return 0;
}

size_t ref_cache_tokens(const ref_cache *c, size_t layer, size_t kv_head)
{
    return stream_at(c, layer, kv_head)->n;
}

size_t ref_cache_stream_evicted(const ref_cache *c, size_t layer, size_t kv_head)
{
    return (size_t)stream_at(c, layer, kv_head)->evicted;
}

size_t ref_cache_evictable(const ref_cache *c, size_t layer, size_t kv_head)
{
    if (c->cfg.policy == REF_EVICT_NONE)
        return 0;
    const ref_stream *s = stream_at(c, layer, kv_head);
    size_t n = 0;
    for (size_t j = 0; j < s->n; j++)
        n += !is_protected(&c->cfg, s, s->pos[j]);
    return n;
}

size_t ref_cache_total_tokens(const ref_cache *c)
{
    size_t t = 0;
    for (size_t i = 0; i < c->cfg.layers * c->cfg.kv_heads; i++)
        t += c->s[i].n;
    return t;
}

uint64_t ref_cache_total_appended(const ref_cache *c)
{
    uint64_t t = 0;
    for (size_t i = 0; i < c->cfg.layers * c->cfg.kv_heads; i++)
        t += c->s[i].appended;
    return t;
}

uint64_t ref_cache_total_evicted(const ref_cache *c)
{
    uint64_t t = 0;
    for (size_t i = 0; i < c->cfg.layers * c->cfg.kv_heads; i++)
        t += c->s[i].evicted;
    return t;
}

double ref_cache_max_abs_v(const ref_cache *c)
{
    return c->max_abs_v;
}

double ref_cache_norm_gap(const ref_cache *c, size_t layer, size_t kv_head, double norm)
{
    const ref_stream *s = stream_at(c, layer, kv_head);
    double gap = INFINITY;
    for (size_t j = 0; j < s->n; j++)
        if (fabs(s->norm[j] - norm) < gap)
            gap = fabs(s->norm[j] - norm);
    return gap;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

size_t ref_cache_positions(const ref_cache *c, size_t layer, size_t kv_head, int64_t *out, size_t cap)
{
    const ref_stream *s = stream_at(c, layer, kv_head);
    size_t n = s->n < cap ? s->n : cap;
    if (n) {
        memcpy(out, s->pos, n * sizeof *out);
        qsort(out, n, sizeof *out, cmp_i64);
    }
    return s->n;
}
