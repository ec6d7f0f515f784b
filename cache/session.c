/* cache/session.c — a session's streams ([layers][kv_heads]) and its totals,
 * copy-on-write forks of a whole session, plus the API names of the
 * configuration enums. A session owns its streams and, through them,
 * references to pool pages; destroying it drops them all. */
#include <errno.h>
#include <stdlib.h>

#include "attention/hadamard.h"
#include "attention/tensor.h"
#include "cache/evict.h"
#include "cache/internal.h"
#include "cache/session.h"

const char *kvd_dtype_name(kvd_dtype d)
{
    switch (d) {
    case KVD_DTYPE_F32: return "f32";
    case KVD_DTYPE_F16: return "f16";
    case KVD_DTYPE_BF16: return "bf16";
    case KVD_DTYPE_INT8: return "int8";
    case KVD_DTYPE_INT4: return "int4";
    case KVD_DTYPE_KIVI2: return "kivi2";
    case KVD_DTYPE_KIVI4: return "kivi4";
    }
    return "unknown"; /* never NULL: names go straight into JSON and logs */
}

const char *kvd_eviction_name(kvd_eviction e)
{
    switch (e) {
    case KVD_EVICT_NONE: return "none";
    case KVD_EVICT_RECENCY: return "recency";
    case KVD_EVICT_L2NORM: return "l2norm";
    case KVD_EVICT_H2O: return "h2o";
    case KVD_EVICT_SUBGEN: return "subgen";
    }
    return "unknown";
}

const char *kvd_attention_name(kvd_attention_kind a)
{
    switch (a) {
    case KVD_ATTN_STANDARD: return "standard";
    case KVD_ATTN_TENSOR: return "tensor";
    }
    return "unknown";
}

const char *kvd_tensor_cache_name(kvd_tensor_cache t)
{
    switch (t) {
    case KVD_TENSOR_CACHE_FOUR: return "four";
    case KVD_TENSOR_CACHE_TWO: return "two";
    }
    return "unknown";
}

int kvd_session_create(const kvd_session_config *cfg, size_t page_bytes, kvd_session **out)
{
    *out = NULL;
    if (cfg->layers == 0 || cfg->kv_heads == 0 || cfg->head_dim == 0 || kvd_session_check_rotate(cfg) != 0)
        return -EINVAL;
    /* A KIVI cache cannot slide a window (sliding would re-quantize every
     * key block, and such a session was seen to attend to NaN):
     * the API refuses it (api/create_body.c), and so does this, so a restore
     * or an in-process caller cannot build one. */
    const bool kivi = cfg->cache.dtype == KVD_DTYPE_KIVI2 || cfg->cache.dtype == KVD_DTYPE_KIVI4;
    if (cfg->window && kivi)
        return -EINVAL;
    const kvd_stream_format fmt = {
        .dtype = cfg->cache.dtype, .group = cfg->cache.group, .residual = cfg->cache.residual};
    if (kvd_stream_slots_per_page_format(page_bytes, cfg->head_dim, &fmt) == 0)
        return -EINVAL; /* not even one slot fits a page: no token could be stored */
    size_t n_streams;
    if (__builtin_mul_overflow((size_t)cfg->layers, (size_t)cfg->kv_heads, &n_streams))
        return -ENOMEM;

    kvd_session *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    s->streams = calloc(n_streams, sizeof *s->streams); /* calloc checks n * size */
    if (s->streams == NULL) {
        free(s);
        return -ENOMEM;
    }
    s->config = *cfg;
    s->n_streams = n_streams;
    if (cfg->attention == KVD_ATTN_TENSOR) {
        /* k2/v2 and, for the two-cache, the pair rows are streams of their
         * own in the session's dtype. */
        s->tensor_b = calloc(n_streams, sizeof *s->tensor_b);
        if (cfg->tensor_cache == KVD_TENSOR_CACHE_TWO)
            s->pairs = calloc(n_streams, sizeof *s->pairs);
        if (s->tensor_b == NULL || (cfg->tensor_cache == KVD_TENSOR_CACHE_TWO && s->pairs == NULL)) {
            kvd_session_destroy(s, NULL);
            return -ENOMEM;
        }
        for (size_t i = 0; i < n_streams; i++) {
            /* k2/v2 and pair rows in the same dtype as k1/v1 */
            int rc = kvd_stream_init_format(&s->tensor_b[i], page_bytes, cfg->head_dim, &fmt);
            if (rc == 0 && s->pairs)
                rc = kvd_stream_init_format(&s->pairs[i], page_bytes, cfg->head_dim, &fmt);
            if (rc != 0) {
                kvd_session_destroy(s, NULL);
                return rc;
            }
        }
    }
    for (size_t i = 0; i < n_streams; i++) {
        const int rc = kvd_stream_init_format(&s->streams[i], page_bytes, cfg->head_dim, &fmt);
        if (rc != 0) { /* -ENOMEM (KIVI's residual), or -EINVAL if it cannot hold f32 */
            kvd_session_destroy(s, NULL); /* no stream holds a page yet */
            return rc;
        }
    }
    for (size_t i = 0; s->tensor_b && i < n_streams; i++)
        s->streams[i].mirror = &s->tensor_b[i]; /* k2/v2 follow k1/v1's slot moves */
    if (cfg->cache.eviction == KVD_EVICT_SUBGEN) {
        const bool four = cfg->attention == KVD_ATTN_TENSOR && cfg->tensor_cache == KVD_TENSOR_CACHE_FOUR;
        if ((cfg->attention != KVD_ATTN_STANDARD && !four) || cfg->window || cfg->cache.dtype != KVD_DTYPE_F32 ||
            cfg->cache.value_samples == 0 || cfg->cache.cluster_samples == 0 || !(cfg->cache.delta > 0) ||
            cfg->cache.max_clusters > KVD_SUBGEN_CLUSTERS_MAX) {
            kvd_session_destroy(s, NULL);
            return -EINVAL; /* the API refuses these combinations first (api/create_body.c) */
        }
        s->subgen = calloc(n_streams, sizeof *s->subgen);
        if (four)
            s->subgen_b = calloc(n_streams, sizeof *s->subgen_b);
        if (!s->subgen || (four && !s->subgen_b)) {
            kvd_session_destroy(s, NULL);
            return -ENOMEM;
        }
        for (size_t i = 0; i < n_streams; i++) {
            kvd_subgen_init(&s->subgen[i], cfg->head_dim, page_bytes, cfg->cache.delta, cfg->scale,
                            cfg->cache.cluster_samples, cfg->cache.value_samples, cfg->cache.max_clusters, cfg->seed, i);
            if (four) /* its own random sequence: the two samplers must be independent */
                kvd_subgen_init(&s->subgen_b[i], cfg->head_dim, page_bytes, cfg->cache.delta, cfg->scale,
                                cfg->cache.cluster_samples, cfg->cache.value_samples, cfg->cache.max_clusters,
                                cfg->seed, n_streams + i);
        }
    }
    if (cfg->cache.eviction != KVD_EVICT_NONE) {
        /* subgen: the stream's tokens leave it oldest unprotected first (a
         * recency index), into the sketch (cache/step.c). */
        const kvd_evict_config ec = {
            .policy = cfg->cache.eviction == KVD_EVICT_SUBGEN ? KVD_EVICT_RECENCY : cfg->cache.eviction,
            .sink = cfg->cache.sink, .recent = cfg->cache.recent};
        for (size_t i = 0; i < n_streams; i++) {
            const int rc = kvd_stream_evict_init(&s->streams[i], &ec);
            if (rc != 0) {
                kvd_session_destroy(s, NULL); /* no stream holds a page yet */
                return rc;
            }
        }
    }
    *out = s;
    return 0;
}

int kvd_session_check_rotate(const kvd_session_config *cfg)
{
    if (cfg->cache.rotate == KVD_ROTATE_NONE)
        return 0;
    if (cfg->cache.rotate != KVD_ROTATE_HADAMARD || !kvd_hadamard_size_ok(cfg->head_dim)
        || cfg->attention != KVD_ATTN_STANDARD || cfg->cache.eviction == KVD_EVICT_SUBGEN)
        return -EINVAL;
    return 0;
}

kvd_session_config kvd_session_shadow_config(const kvd_session_config *cfg)
{
    kvd_session_config exact = *cfg;
    exact.cache.dtype = KVD_DTYPE_F32;
    exact.cache.eviction = KVD_EVICT_NONE;
    exact.cache.budget = 0;
    exact.shadow = false;
    exact.cache.rotate = KVD_ROTATE_NONE; /* the exact copy keeps tokens as sent */
    /* Tensor attention: every token's four rows, no window (the same scores
     * over all pairs, exactly); a two-cache's copy is a four-cache, whose
     * O(n * d) rows give the same exact attention as the n^2 pair rows. */
    exact.window = 0;
    if (exact.attention == KVD_ATTN_TENSOR)
        exact.tensor_cache = KVD_TENSOR_CACHE_FOUR;
    return exact;
}

/* The stream arrays a session holds, in a fixed order: streams, then a
 * tensor session's k2/v2 and pair rows (NULL when it has none). */
static kvd_stream *stream_array(const kvd_session *s, int a)
{
    return a == 0 ? s->streams : a == 1 ? s->tensor_b : s->pairs;
}

/* The sketch arrays of a subgen session: 0 its k (or k1) sketches, 1 a
 * SubGen4Cache's k2 sketches (NULL when it has none). */
static kvd_subgen *sketch_array(const kvd_session *s, int a)
{
    return a == 0 ? s->subgen : s->subgen_b;
}

/* Frees a child that fork prepared up to (but excluding) stream i of array
 * a, or every stream (a = 3) and sketch i of sketch array b (b = 2: all). */
static void fork_undo(kvd_session *c, size_t n_streams, int a, size_t i, int b, size_t j)
{
    for (int x = 0; x < 3 && x <= a; x++)
        for (size_t k = 0; stream_array(c, x) && k < (x < a ? n_streams : i); k++)
            kvd__stream_fork_abort(&stream_array(c, x)[k]);
    for (int x = 0; x < 2 && x <= b; x++)
        for (size_t k = 0; sketch_array(c, x) && k < (x < b ? n_streams : j); k++)
            kvd__subgen_fork_abort(&sketch_array(c, x)[k]);
    free(c->streams);
    free(c->tensor_b);
    free(c->pairs);
    free(c->subgen);
    free(c->subgen_b);
    free(c);
}

int kvd_session_fork(kvd_session *parent, kvd_pool *pool, kvd_session **out)
{
    *out = NULL;
    const size_t n = parent->n_streams;
    kvd_session *c = calloc(1, sizeof *c);
    if (c == NULL)
        return -ENOMEM;
    c->streams = calloc(n, sizeof *c->streams);
    if (parent->tensor_b)
        c->tensor_b = calloc(n, sizeof *c->tensor_b);
    if (parent->pairs)
        c->pairs = calloc(n, sizeof *c->pairs);
    if (parent->subgen)
        c->subgen = calloc(n, sizeof *c->subgen);
    if (parent->subgen_b)
        c->subgen_b = calloc(n, sizeof *c->subgen_b);
    if (!c->streams || (parent->tensor_b && !c->tensor_b) || (parent->pairs && !c->pairs) ||
        (parent->subgen && !c->subgen) || (parent->subgen_b && !c->subgen_b)) {
        fork_undo(c, n, 0, 0, 0, 0);
        return -ENOMEM;
    }
    /* Every allocation of every stream of every array first, so that a
     * failure leaves the parent exactly as it was (no reference taken, no
     * page flagged). */
    for (int a = 0; a < 3; a++)
        for (size_t i = 0; stream_array(parent, a) && i < n; i++) {
            const int rc = kvd__stream_fork_prepare(&stream_array(parent, a)[i], &stream_array(c, a)[i]);
            if (rc != 0) { /* -ENOMEM; stream i is left empty */
                fork_undo(c, n, a, i, -1, 0);
                return rc;
            }
        }
    /* A sketch is copied, not shared (cache/subgen.h): its tables, then all
     * its pages from the pool at once. */
    size_t sketch_pages = 0;
    for (int b = 0; b < 2; b++)
        for (size_t j = 0; sketch_array(parent, b) && j < n; j++) {
            if (kvd__subgen_fork_prepare(&sketch_array(parent, b)[j], &sketch_array(c, b)[j]) != 0) {
                fork_undo(c, n, 3, 0, b, j);
                return -ENOMEM;
            }
            sketch_pages += kvd_subgen_pages(&sketch_array(parent, b)[j]);
        }
    void **pages = NULL;
    if (sketch_pages && !(pages = malloc(sketch_pages * sizeof *pages))) {
        fork_undo(c, n, 3, 0, 2, 0);
        return -ENOMEM;
    }
    if (sketch_pages && kvd_pool_alloc(pool, sketch_pages, pages) != 0) {
        free(pages);
        fork_undo(c, n, 3, 0, 2, 0);
        return -ENOSPC;
    }
    for (int a = 0; a < 3; a++)
        for (size_t i = 0; stream_array(parent, a) && i < n; i++)
            kvd__stream_fork_commit(&stream_array(parent, a)[i], &stream_array(c, a)[i], pool);
    for (size_t i = 0; c->tensor_b && i < n; i++)
        c->streams[i].mirror = &c->tensor_b[i]; /* prepare copied the parent's pointer */
    size_t used = 0;
    for (int b = 0; b < 2; b++)
        for (size_t j = 0; sketch_array(parent, b) && j < n; j++)
            kvd__subgen_fork_commit(&sketch_array(parent, b)[j], &sketch_array(c, b)[j], kvd_pool_page_bytes(pool),
                                    pages, &used);
    free(pages);
    c->config = parent->config;
    c->n_streams = n;
    *out = c;
    return 0;
}

/* Pages of st a step may rewrite in place while still shared: all of them
 * (`all`: rows move anywhere), else KIVI's residual and settle page only. */
static size_t stream_unshare_bound(const kvd_stream *st, bool all)
{
    if (!all)
        return kvd__stream_kivi_unshare_bound(st);
    return st->n_shared + (st->residual != NULL ? st->residual->n_shared : 0);
}

static size_t stream_unshare(kvd_stream *st, kvd_pool *pool, bool all, void *const *spare, size_t n_spare)
{
    if (!all)
        return kvd__stream_kivi_unshare(st, pool, spare, n_spare);
    size_t used = kvd__stream_unshare_all(st, pool, spare, n_spare);
    if (st->residual != NULL)
        used += kvd__stream_unshare_all(st->residual, pool, spare + used, n_spare - used);
    return used;
}

/* Whether array a's stream idx has its rows moved anywhere by a step: a
 * tensor window slides k1/v1 and k2/v2; with a policy, k2/v2 follow k1/v1's
 * moves and pair rows are rebuilt; KIVI's eviction re-quantizes blocks
 * anywhere (f32 and per-token k1/v1 copy the hole's page themselves, in
 * kvd_stream_evict). */
static bool rewrites_all(const kvd_session *s, int a)
{
    const kvd_session_config *cfg = &s->config;
    const bool policy = cfg->cache.eviction != KVD_EVICT_NONE;
    const bool kivi = cfg->cache.dtype == KVD_DTYPE_KIVI2 || cfg->cache.dtype == KVD_DTYPE_KIVI4;
    return cfg->window || (policy && (a > 0 || kivi));
}

size_t kvd__session_unshare_bound(const kvd_session *s, size_t idx)
{
    size_t n = 0;
    for (int a = 0; a < 3; a++)
        if (stream_array(s, a))
            n += stream_unshare_bound(&stream_array(s, a)[idx], rewrites_all(s, a));
    return n;
}

size_t kvd__session_unshare(kvd_session *s, kvd_pool *pool, size_t idx, void *const *spare, size_t n_spare)
{
    if (kvd__session_unshare_bound(s, idx) == 0)
        return 0;
    size_t used = 0;
    for (int a = 0; a < 3; a++)
        if (stream_array(s, a))
            used += stream_unshare(&stream_array(s, a)[idx], pool, rewrites_all(s, a), spare + used,
                                   n_spare - used);
    return used;
}

void kvd_session_destroy(kvd_session *s, kvd_pool *pool)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n_streams; i++) {
        kvd_stream_release(&s->streams[i], pool);
        if (s->tensor_b)
            kvd_stream_release(&s->tensor_b[i], pool);
        if (s->pairs)
            kvd_stream_release(&s->pairs[i], pool);
        if (s->subgen)
            kvd_subgen_release(&s->subgen[i], pool);
        if (s->subgen_b)
            kvd_subgen_release(&s->subgen_b[i], pool);
    }
    free(s->subgen);
    free(s->subgen_b);
    free(s->streams);
    free(s->tensor_b);
    free(s->pairs);
    free(s);
}

size_t kvd_session_tokens(const kvd_session *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n_streams; i++)
        n += s->streams[i].n_tokens;
    return n;
}

uint64_t kvd_session_appended(const kvd_session *s)
{
    uint64_t n = 0;
    for (size_t i = 0; i < s->n_streams; i++)
        n += s->streams[i].appended;
    return n;
}

uint64_t kvd_session_evicted(const kvd_session *s)
{
    uint64_t n = 0;
    for (size_t i = 0; i < s->n_streams; i++)
        n += s->streams[i].evicted;
    return n;
}

/* A stream's pages and, for KIVI, its f32 residual's own pages. */
static size_t stream_pages(const kvd_stream *st)
{
    return st->n_pages + (st->residual != NULL ? st->residual->n_pages : 0);
}

size_t kvd_session_pages(const kvd_session *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->n_streams; i++) {
        n += stream_pages(&s->streams[i]);
        if (s->tensor_b) /* a KIVI tensor session's k2/v2 and pair rows have residuals too */
            n += stream_pages(&s->tensor_b[i]);
        if (s->pairs)
            n += stream_pages(&s->pairs[i]);
        if (s->subgen)
            n += kvd_subgen_pages(&s->subgen[i]);
        if (s->subgen_b)
            n += kvd_subgen_pages(&s->subgen_b[i]);
    }
    return n;
}

size_t kvd_session_shared_pages(const kvd_session *s)
{
    size_t n = 0;
    for (int a = 0; a < 3; a++)
        for (size_t i = 0; stream_array(s, a) && i < s->n_streams; i++) {
            const kvd_stream *st = &stream_array(s, a)[i];
            n += st->n_shared + (st->residual != NULL ? st->residual->n_shared : 0);
        }
    return n;
}

size_t kvd_session_pair_rows(const kvd_session *s)
{
    size_t n = 0;
    for (size_t i = 0; s->pairs && i < s->n_streams; i++)
        n += s->pairs[i].n_tokens;
    return n;
}

size_t kvd_session_heap_bytes(const kvd_session *s)
{
    const size_t arrays = 1 + (s->tensor_b != NULL) + (s->pairs != NULL);
    size_t n = sizeof *s + arrays * s->n_streams * sizeof *s->streams;
    if (s->subgen)
        n += s->n_streams * sizeof *s->subgen;
    if (s->subgen_b)
        n += s->n_streams * sizeof *s->subgen_b;
    for (size_t i = 0; i < s->n_streams; i++) {
        n += kvd_stream_heap_bytes(&s->streams[i]);
        if (s->tensor_b)
            n += kvd_stream_heap_bytes(&s->tensor_b[i]);
        if (s->pairs)
            n += kvd_stream_heap_bytes(&s->pairs[i]);
        if (s->subgen)
            n += kvd_subgen_heap_bytes(&s->subgen[i]);
        if (s->subgen_b)
            n += kvd_subgen_heap_bytes(&s->subgen_b[i]);
    }
    return n;
}

size_t kvd_session_heap_bytes_new(const kvd_session_config *cfg)
{
    /* As kvd_session_create allocates: the struct, one stream array (three
     * for a tensor two-cache), each stream's init_format allocation (KIVI)
     * and, with a policy, an empty eviction index on streams[] only. */
    const kvd_stream_format fmt = {
        .dtype = cfg->cache.dtype, .group = cfg->cache.group, .residual = cfg->cache.residual};
    const size_t streams = (size_t)cfg->layers * cfg->kv_heads; /* both < 2^32: no overflow */
    const size_t arrays = cfg->attention != KVD_ATTN_TENSOR                ? 1
                          : cfg->tensor_cache == KVD_TENSOR_CACHE_TWO ? 3
                                                                      : 2;
    const size_t per_stream = sizeof(kvd_stream) + kvd__stream_heap_bytes_init(cfg->head_dim, &fmt);
    const bool subgen = cfg->cache.eviction == KVD_EVICT_SUBGEN; /* a recency index and a sketch */
    const size_t index = kvd__evict_heap_bytes_new(subgen ? KVD_EVICT_RECENCY : cfg->cache.eviction,
                                                   cfg->cache.recent);
    const size_t sketches = subgen ? (cfg->attention == KVD_ATTN_TENSOR ? 2 : 1) : 0; /* SubGen4Cache: two */
    return sizeof(kvd_session) + streams * (arrays * per_stream + index + sketches * sizeof(kvd_subgen));
}

size_t kvd_session_fork_heap_bytes(const kvd_session *parent)
{
    /* As kvd_session_fork and kvd__stream_fork_prepare allocate: the struct,
     * its stream arrays (a tensor session's k2/v2 and pair rows too) and
     * sketch arrays with their tables, each
     * table and its flags trimmed to the pages held, each index cloned at its
     * capacity. */
    size_t n = sizeof *parent;
    for (int b = 0; b < 2; b++) { /* sketches: tables trimmed to the pages copied */
        const kvd_subgen *arr = sketch_array(parent, b);
        for (size_t i = 0; arr && i < parent->n_streams; i++)
            n += sizeof *arr + kvd_subgen_pages(&arr[i]) * sizeof(void *);
    }
    for (int a = 0; a < 3; a++) {
        const kvd_stream *arr = stream_array(parent, a);
        if (arr == NULL)
            continue;
        n += parent->n_streams * sizeof *arr;
        for (size_t i = 0; i < parent->n_streams; i++) {
            const kvd_stream *st = &arr[i], *r = st->residual; /* KIVI: its residual is forked too */
            n += st->n_pages * (sizeof *st->pages + sizeof *st->shared) + kvd__evict_heap_bytes(st->evict);
            if (r != NULL)
                n += kvd__stream_heap_bytes_init(st->head_dim, &st->fmt) + r->n_pages * (sizeof *r->pages + 1);
        }
    }
    return n;
}

void kvd__session_rebuild_pairs(kvd_session *s, kvd_pool *pool, size_t idx, float *pair_k, float *pair_v)
{
    const size_t n = s->streams[idx].n_tokens;
    kvd_stream *pr = &s->pairs[idx];
    if (pr->n_tokens == n * n)
        return;
    kvd_tensor_view a, b;
    a.n_seg = kvd_stream_segments(&s->streams[idx], n, a.seg);
    b.n_seg = kvd_stream_segments(&s->tensor_b[idx], n, b.seg);
    for (size_t t = 0; t < n; t++) {
        kvd_tensor_pair_rows_view(&a, &b, t, pair_k, pair_v);
        kvd__stream_overwrite(pr, t * t, kvd_tensor_pair_rows_added(t), pair_k, pair_v, s->config.head_dim);
    }
    kvd__stream_truncate(pr, pool, n * n);
}
