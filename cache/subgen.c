/* cache/subgen.c — the SubGen sketch (cache/subgen.h): online clustering of
 * keys with a count and a reservoir per cluster, s independent l2 samplers
 * of (k, v), and the estimator that reads them (Zandieh et al. 2024,
 * arXiv 2402.06082, Alg. 1-2; docs/subgen.md has the unbiasedness argument).
 * Storage: four flat row arrays in pool pages. */
#include "cache/subgen.h"

#include <assert.h>
#include <stdbool.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static size_t div_up(size_t a, size_t b)
{
    return a / b + (a % b != 0);
}

static void rows_init(kvd__subgen_rows *r, size_t page_bytes, size_t row_bytes)
{
    memset(r, 0, sizeof *r);
    r->row_bytes = (uint32_t)row_bytes;
    r->rows_per_page = (uint32_t)(page_bytes / row_bytes);
    assert(r->rows_per_page > 0 && "a row must fit a page (the session checks head_dim)");
}

/* Pages `extra` more rows need. */
static size_t rows_pages_needed(const kvd__subgen_rows *r, size_t extra)
{
    return div_up(r->n_rows + extra, r->rows_per_page) - r->n_pages;
}

static int rows_reserve(kvd__subgen_rows *r, size_t extra_pages)
{
    if (r->n_pages + extra_pages <= r->cap_pages)
        return 0;
    size_t cap = r->cap_pages ? r->cap_pages : 4;
    while (cap < r->n_pages + extra_pages)
        cap *= 2;
    void **p = realloc(r->pages, cap * sizeof *p);
    if (!p)
        return -ENOMEM;
    r->pages = p;
    r->cap_pages = cap;
    return 0;
}

/* Appends `extra` zeroed rows, taking pages from spare. */
static void rows_grow(kvd__subgen_rows *r, size_t extra, void *const *spare, size_t n_spare, size_t *used)
{
    size_t need = rows_pages_needed(r, extra);
    assert(*used + need <= n_spare && r->n_pages + need <= r->cap_pages && "the plan undercounted");
    (void)n_spare;
    for (size_t i = 0; i < need; i++) {
        void *page = spare[(*used)++];
        memset(page, 0, (size_t)r->rows_per_page * r->row_bytes);
        r->pages[r->n_pages++] = page;
    }
    r->n_rows += extra;
}

static void *row(const kvd__subgen_rows *r, size_t i)
{
    return (unsigned char *)r->pages[i / r->rows_per_page] + (i % r->rows_per_page) * (size_t)r->row_bytes;
}

static void rows_release(kvd__subgen_rows *r, kvd_pool *pool)
{
    if (r->n_pages && pool)
        kvd_pool_release(pool, r->pages, r->n_pages);
    free(r->pages);
    const uint32_t rb = r->row_bytes, rpp = r->rows_per_page;
    memset(r, 0, sizeof *r);
    r->row_bytes = rb;
    r->rows_per_page = rpp;
}

/* splitmix64 (Steele et al. 2014): a full-period 64-bit generator, cheap
 * and good enough for sampling decisions. */
static uint64_t next_u64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1) with 53 random bits. */
static double uniform(uint64_t *state)
{
    return (double)(next_u64(state) >> 11) * 0x1.0p-53;
}

void kvd_subgen_init(kvd_subgen *g, uint32_t head_dim, size_t page_bytes, double delta, float scale,
                     uint32_t cluster_samples, uint32_t value_samples, uint32_t max_clusters, uint64_t seed,
                     size_t stream)
{
    memset(g, 0, sizeof *g);
    g->head_dim = head_dim;
    g->t = cluster_samples;
    g->s = value_samples;
    g->max_clusters = max_clusters;
    const double r = delta / (double)scale;
    g->radius_sq = r * r;
    /* Distinct, decorrelated streams of one seed: the state is the seed
     * mixed with the stream index through one splitmix64 step. */
    uint64_t st = seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(stream + 1));
    g->rng = next_u64(&st);
    const size_t key = (size_t)head_dim * sizeof(float);
    rows_init(&g->centres, page_bytes, key);
    rows_init(&g->counts, page_bytes, sizeof(uint64_t));
    rows_init(&g->reservoir, page_bytes, key);
    rows_init(&g->samples, page_bytes, 2 * key);
}

/* `clusters` cut to the room the cap leaves. */
static size_t room(const kvd_subgen *g, size_t clusters)
{
    if (!g->max_clusters)
        return clusters;
    const size_t left = g->n_clusters < g->max_clusters ? g->max_clusters - g->n_clusters : 0;
    return clusters < left ? clusters : left;
}

size_t kvd_subgen_pages_bound(const kvd_subgen *g, size_t clusters)
{
    clusters = room(g, clusters);
    if (!clusters)
        return 0;
    size_t n = rows_pages_needed(&g->centres, clusters) + rows_pages_needed(&g->counts, clusters) +
               rows_pages_needed(&g->reservoir, clusters * g->t);
    if (g->samples.n_rows == 0)
        n += rows_pages_needed(&g->samples, g->s);
    return n;
}

int kvd_subgen_reserve(kvd_subgen *g, size_t clusters)
{
    clusters = room(g, clusters);
    if (!clusters)
        return 0;
    if (rows_reserve(&g->centres, rows_pages_needed(&g->centres, clusters)) ||
        rows_reserve(&g->counts, rows_pages_needed(&g->counts, clusters)) ||
        rows_reserve(&g->reservoir, rows_pages_needed(&g->reservoir, clusters * g->t)) ||
        (g->samples.n_rows == 0 && rows_reserve(&g->samples, rows_pages_needed(&g->samples, g->s))))
        return -ENOMEM;
    return 0;
}

static double dist_sq(const float *a, const float *b, size_t d)
{
    double acc = 0;
    for (size_t i = 0; i < d; i++) {
        const double x = (double)a[i] - (double)b[i];
        acc += x * x;
    }
    return acc;
}

bool kvd_subgen_near(const kvd_subgen *g, const float *centre, const float *k)
{
    return !(dist_sq(centre, k, g->head_dim) > g->radius_sq);
}

size_t kvd_subgen_assign(const kvd_subgen *g, const float *k, const float *const *fresh, size_t n_fresh)
{
    const size_t n = g->n_clusters + n_fresh;
    /* One pass: the first centre within the radius ends it; the nearest is
     * tracked on the way for a capped sketch (a scan that finds none has
     * measured every distance anyway). A NaN distance counts as near, as
     * in kvd_subgen_near. */
    size_t best = 0;
    double best_sq = INFINITY;
    for (size_t c = 0; c < n; c++) {
        const float *centre = c < g->n_clusters ? row(&g->centres, c) : fresh[c - g->n_clusters];
        const double dd = dist_sq(centre, k, g->head_dim);
        if (!(dd > g->radius_sq))
            return c;
        if (dd < best_sq) {
            best_sq = dd;
            best = c;
        }
    }
    return g->max_clusters && n >= g->max_clusters ? best : n;
}

size_t kvd_subgen_find(const kvd_subgen *g, const float *k)
{
    return kvd_subgen_assign(g, k, NULL, 0);
}

void kvd_subgen_insert(kvd_subgen *g, const float *k, const float *v, void *const *spare, size_t n_spare,
                       size_t *used)
{
    kvd_subgen_insert_at(g, kvd_subgen_find(g, k), k, v, spare, n_spare, used);
}

void kvd_subgen_insert_at(kvd_subgen *g, size_t c, const float *k, const float *v, void *const *spare,
                          size_t n_spare, size_t *used)
{
    const size_t d = g->head_dim, key = d * sizeof(float);
    assert(c <= g->n_clusters && "a cluster that exists, or the next to open");
    assert((c < g->n_clusters || !g->max_clusters || g->n_clusters < g->max_clusters) && "the cap holds");
    if (c == g->n_clusters) { /* no centre within the radius: open a cluster at k */
        rows_grow(&g->centres, 1, spare, n_spare, used);
        rows_grow(&g->counts, 1, spare, n_spare, used);
        rows_grow(&g->reservoir, g->t, spare, n_spare, used);
        memcpy(row(&g->centres, c), k, key);
        g->n_clusters++;
    }
    uint64_t *n_c = row(&g->counts, c);
    const uint64_t n = ++*n_c;
    /* Algorithm R: the n-th item fills slot n-1 while the reservoir has
     * room, else replaces a uniform slot with probability t / n. */
    size_t slot = SIZE_MAX;
    if (n <= g->t) {
        slot = (size_t)(n - 1);
    } else {
        const uint64_t j = (uint64_t)(uniform(&g->rng) * (double)n);
        if (j < g->t)
            slot = (size_t)j;
    }
    if (slot != SIZE_MAX)
        memcpy(row(&g->reservoir, c * g->t + slot), k, key);

    /* l2 samplers: each keeps its pick with probability 1 - w/F, so token j
     * is its pick at the end with probability (w_j/F_j) prod_{i>j}(1 -
     * w_i/F_i) = w_j / F. A token with v = 0 is never picked (weight 0).
     * The s independent Bernoulli(p) trials are drawn as geometric gaps
     * between successes (the same distribution), O(1 + successes) draws
     * instead of s: most tokens replace no sample once F is large. */
    if (g->samples.n_rows == 0)
        rows_grow(&g->samples, g->s, spare, n_spare, used);
    double w = 0;
    for (size_t i = 0; i < d; i++)
        w += (double)v[i] * v[i];
    g->items++;
    if (!(w > 0))
        return;
    g->f += w;
    const double p = w / g->f;
    const double log_miss = log1p(-p); /* -inf when p == 1: every sampler takes it */
    for (double i = -1;;) {
        const double u = ((double)(next_u64(&g->rng) >> 11) + 0.5) * 0x1.0p-53; /* (0, 1) */
        i += 1 + floor(log(u) / log_miss);
        if (!(i < (double)g->s))
            break;
        float *r = row(&g->samples, (size_t)i);
        memcpy(r, k, key);
        memcpy(r + d, v, key);
    }
}

void kvd_subgen_acc_reset(kvd_subgen_acc *a, double *num, size_t d)
{
    a->max = -INFINITY;
    a->den = 0;
    a->num = num;
    a->d = d;
    memset(num, 0, d * sizeof *num);
}

/* Moves the running max up to x (rescaling what is held) if x is above it. */
static void raise_max(kvd_subgen_acc *a, double x)
{
    if (x <= a->max)
        return;
    if (a->max > -INFINITY) {
        const double r = exp(a->max - x);
        a->den *= r;
        for (size_t i = 0; i < a->d; i++)
            a->num[i] *= r;
    }
    a->max = x;
}

void kvd_subgen_acc_exact(kvd_subgen_acc *a, double x, const float *v)
{
    raise_max(a, x);
    const double e = exp(x - a->max);
    a->den += e;
    for (size_t i = 0; i < a->d; i++)
        a->num[i] += e * v[i];
}

void kvd_subgen_acc_exact2(kvd_subgen_acc *a, double x, const float *v1, const float *v2)
{
    raise_max(a, x);
    const double e = exp(x - a->max);
    a->den += e;
    for (size_t i = 0; i < a->d; i++)
        a->num[i] += e * v1[i] * v2[i];
}

static double dot(const float *a, const float *b, size_t d)
{
    double acc = 0;
    for (size_t i = 0; i < d; i++)
        acc += (double)a[i] * b[i];
    return acc;
}

void kvd_subgen_terms(const kvd_subgen *g, const float *q, float scale, double w_den, double w_num,
                      const float *vmul, kvd_subgen_acc *a)
{
    const size_t d = g->head_dim;
    for (size_t c = 0; w_den > 0 && c < g->n_clusters; c++) {
        const uint64_t n = *(const uint64_t *)row(&g->counts, c);
        const size_t r = n < g->t ? (size_t)n : g->t;
        const double w = w_den * (double)n / (double)r;
        for (size_t j = 0; j < r; j++) {
            const double x = (double)scale * dot(q, row(&g->reservoir, c * g->t + j), d);
            raise_max(a, x);
            a->den += w * exp(x - a->max);
        }
    }
    if (!(w_num > 0) || !(g->f > 0))
        return; /* every value so far is zero: so is the numerator */
    const double fs = w_num * g->f / (double)g->s;
    for (uint32_t i = 0; i < g->s; i++) {
        const float *k = row(&g->samples, i), *v = k + d;
        const double vv = dot(v, v, d);
        const double x = (double)scale * dot(q, k, d);
        raise_max(a, x);
        const double e = fs / vv * exp(x - a->max);
        if (vmul)
            for (size_t j = 0; j < d; j++)
                a->num[j] += e * v[j] * vmul[j];
        else
            for (size_t j = 0; j < d; j++)
                a->num[j] += e * v[j];
    }
}

void kvd_subgen_attend(const kvd_subgen *g, const float *q, float scale, kvd_subgen_acc *a)
{
    kvd_subgen_terms(g, q, scale, 1.0, 1.0, NULL, a);
}

void kvd_subgen_attend_pairs(const kvd_subgen *g1, const kvd_subgen *g2, const float *q, float scale,
                             float *qk, kvd_subgen_acc *a)
{
    const size_t d = g1->head_dim;
    /* denominator: every reservoir key a of a k1 cluster (weight n_c1 / |R_c1|)
     * against the k2 sketch's reservoirs, query q (.) a */
    for (size_t c = 0; c < g1->n_clusters; c++) {
        const uint64_t n = *(const uint64_t *)row(&g1->counts, c);
        const size_t r = n < g1->t ? (size_t)n : g1->t;
        for (size_t j = 0; j < r; j++) {
            const float *k1 = row(&g1->reservoir, c * g1->t + j);
            for (size_t i = 0; i < d; i++)
                qk[i] = q[i] * k1[i];
            kvd_subgen_terms(g2, qk, scale, (double)n / (double)r, 0.0, NULL, a);
        }
    }
    /* numerator: every k1 sample i (weight F1 / (s1 ||v1_i||^2)) against
     * every k2 sample: all s1 * s2 pairs of two independent samplers */
    if (!(g1->f > 0))
        return;
    for (uint32_t i = 0; i < g1->s; i++) {
        const float *k1 = row(&g1->samples, i), *v1 = k1 + d;
        for (size_t c = 0; c < d; c++)
            qk[c] = q[c] * k1[c];
        kvd_subgen_terms(g2, qk, scale, 0.0, g1->f / ((double)g1->s * dot(v1, v1, d)), v1, a);
    }
}

void kvd_subgen_acc_finish(const kvd_subgen_acc *a, float *o)
{
    for (size_t i = 0; i < a->d; i++)
        o[i] = a->den > 0 ? (float)(a->num[i] / a->den) : 0.0f;
}

size_t kvd_subgen_pages(const kvd_subgen *g)
{
    return g->centres.n_pages + g->counts.n_pages + g->reservoir.n_pages + g->samples.n_pages;
}

size_t kvd_subgen_payload_bytes(const kvd_subgen *g)
{
    /* Every row laid out, used or not: a cluster reserves all t reservoir
     * rows when it opens, so that is what it costs. */
    return g->centres.n_rows * g->centres.row_bytes + g->counts.n_rows * g->counts.row_bytes +
           g->reservoir.n_rows * g->reservoir.row_bytes + g->samples.n_rows * g->samples.row_bytes;
}

size_t kvd_subgen_heap_bytes(const kvd_subgen *g)
{
    return (g->centres.cap_pages + g->counts.cap_pages + g->reservoir.cap_pages + g->samples.cap_pages) *
           sizeof(void *);
}

void *kvd__subgen_row(const kvd__subgen_rows *r, size_t i)
{
    return row(r, i);
}

void kvd__subgen_layout(kvd_subgen *g, size_t n_clusters, void *const *spare, size_t n_spare, size_t *used)
{
    assert(g->n_clusters == 0 && g->samples.n_rows == 0 && "a restore lays out an empty sketch");
    if (!n_clusters)
        return;
    rows_grow(&g->centres, n_clusters, spare, n_spare, used);
    rows_grow(&g->counts, n_clusters, spare, n_spare, used);
    rows_grow(&g->reservoir, n_clusters * g->t, spare, n_spare, used);
    rows_grow(&g->samples, g->s, spare, n_spare, used);
    g->n_clusters = n_clusters;
}

/* The four row arrays of a sketch, in a fixed order. */
static kvd__subgen_rows *rows_of(kvd_subgen *g, int i)
{
    return i == 0 ? &g->centres : i == 1 ? &g->counts : i == 2 ? &g->reservoir : &g->samples;
}

int kvd__subgen_fork_prepare(const kvd_subgen *src, kvd_subgen *dst)
{
    *dst = *src; /* counters, F, items and the random state: the child draws what the parent would */
    for (int i = 0; i < 4; i++) {
        kvd__subgen_rows *r = rows_of(dst, i);
        r->pages = NULL;
        r->cap_pages = 0;
    }
    for (int i = 0; i < 4; i++) {
        kvd__subgen_rows *r = rows_of(dst, i);
        if (r->n_pages == 0)
            continue;
        if (!(r->pages = calloc(r->n_pages, sizeof *r->pages))) {
            kvd__subgen_fork_abort(dst);
            return -ENOMEM;
        }
        r->cap_pages = r->n_pages;
    }
    return 0;
}

void kvd__subgen_fork_commit(const kvd_subgen *src, kvd_subgen *dst, size_t page_bytes, void *const *spare,
                             size_t *used)
{
    for (int i = 0; i < 4; i++) {
        const kvd__subgen_rows *from = rows_of((kvd_subgen *)src, i); /* read only */
        kvd__subgen_rows *to = rows_of(dst, i);
        for (size_t pg = 0; pg < to->n_pages; pg++) {
            to->pages[pg] = spare[(*used)++];
            memcpy(to->pages[pg], from->pages[pg], page_bytes);
        }
    }
}

void kvd__subgen_fork_abort(kvd_subgen *dst)
{
    for (int i = 0; i < 4; i++) {
        kvd__subgen_rows *r = rows_of(dst, i);
        r->n_pages = 0; /* no page was placed: nothing to give back */
        rows_release(r, NULL);
    }
    dst->n_clusters = 0;
    dst->items = 0;
    dst->f = 0;
}

void kvd_subgen_release(kvd_subgen *g, kvd_pool *pool)
{
    rows_release(&g->centres, pool);
    rows_release(&g->counts, pool);
    rows_release(&g->reservoir, pool);
    rows_release(&g->samples, pool);
    g->n_clusters = 0;
    g->items = 0;
    g->f = 0;
}
