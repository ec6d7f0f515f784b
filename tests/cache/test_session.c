/* tests/cache/test_session.c — sessions: create and destroy (every page goes
 * back to the pool), stream indexing [layer][kv_head], totals over streams,
 * -EINVAL when a slot does not fit in a page, an eviction index on every
 * stream when the config has a policy, streams in the config's dtype,
 * copy-on-write forks of a whole session, the heap a session holds outside
 * the pool (by hand, as it grows, predicted before create and fork), and
 * the API names of enums.
 * (KIVI sessions: tests/cache/test_kivi.c.) */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cache/evict.h"
#include "cache/policy.h"
#include "cache/pool.h"
#include "cache/session.h"
#include "tests/support/check_main.h"

#define PAGE 4096

static kvd_session_config default_config(void)
{
    kvd_session_config c;
    memset(&c, 0, sizeof c);
    c.layers = 3;
    c.heads = 8;
    c.kv_heads = 2;
    c.head_dim = 16;
    c.attention = KVD_ATTN_STANDARD;
    c.scale = 0.25f;
    c.cache.dtype = KVD_DTYPE_F32;
    c.cache.eviction = KVD_EVICT_NONE;
    c.ttl_seconds = 600.0;
    return c;
}

/* Appends m tokens (keys/values all `x`) to one stream. */
static void append(kvd_stream *s, kvd_pool *pool, size_t m, float x)
{
    const size_t d = s->head_dim, need = kvd_stream_pages_needed(s, m);
    float *rows = malloc(m * d * sizeof *rows);
    void **pages = malloc((need ? need : 1) * sizeof *pages);
    ck_assert(rows && pages);
    for (size_t i = 0; i < m * d; i++)
        rows[i] = x;
    ck_assert_int_eq(kvd_stream_reserve_table(s, need), 0);
    ck_assert_int_eq(kvd_stream_evict_reserve(s, m), 0);
    ck_assert_int_eq(kvd_pool_alloc(pool, need, pages), 0);
    kvd_stream_append(s, pool, m, rows, rows, d, pages);
    free(rows);
    free(pages);
}

START_TEST(test_create_destroy_returns_pages)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(1024 * PAGE, PAGE, &pool), 0);
    const kvd_session_config cfg = default_config();
    kvd_session *s = (kvd_session *)&pool;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(s->n_streams, 6);
    ck_assert_uint_eq(s->config.layers, 3);
    ck_assert_float_eq(s->config.scale, 0.25f);
    ck_assert_uint_eq(kvd_session_tokens(s), 0);
    ck_assert_uint_eq(kvd_session_pages(s), 0);
    for (size_t i = 0; i < s->n_streams; i++) {
        ck_assert_uint_eq(s->streams[i].head_dim, 16);
        ck_assert_uint_eq(s->streams[i].slots_per_page, kvd_stream_slots_per_page(PAGE, 16));
    }

    const size_t spp = s->streams[0].slots_per_page;
    size_t tokens = 0;
    for (uint32_t l = 0; l < 3; l++)
        for (uint32_t g = 0; g < 2; g++) {
            const size_t m = (l * 2 + g + 1) * spp / 2 + 1; /* ragged page counts */
            append(kvd_session_stream(s, l, g), pool, m, (float)(l * 10 + g));
            tokens += m;
        }
    ck_assert_uint_eq(kvd_session_tokens(s), tokens);
    ck_assert_uint_eq(kvd_session_appended(s), tokens);
    ck_assert_uint_eq(kvd_session_evicted(s), 0);
    ck_assert_uint_eq(kvd_session_pages(s), kvd_pool_pages_used(pool));
    ck_assert_uint_gt(kvd_pool_pages_used(pool), 6);

    kvd_session_destroy(s, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    ck_assert_uint_eq(kvd_pool_pages_free(pool), kvd_pool_pages_total(pool));
    kvd_session_destroy(NULL, pool); /* no-op */
    kvd_pool_destroy(pool);
}
END_TEST

START_TEST(test_stream_indexing)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
    kvd_session_config cfg = default_config();
    cfg.layers = 4;
    cfg.kv_heads = 3;
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    ck_assert_uint_eq(s->n_streams, 12);
    for (uint32_t l = 0; l < 4; l++)
        for (uint32_t g = 0; g < 3; g++)
            ck_assert_ptr_eq(kvd_session_stream(s, l, g), &s->streams[l * 3 + g]);
    /* Each stream holds its own tokens: layer l, head g gets l * 3 + g + 1,
     * keyed by a value that names the stream. */
    for (uint32_t l = 0; l < 4; l++)
        for (uint32_t g = 0; g < 3; g++)
            append(kvd_session_stream(s, l, g), pool, l * 3 + g + 1, (float)(100 * l + g));
    for (uint32_t l = 0; l < 4; l++)
        for (uint32_t g = 0; g < 3; g++) {
            const kvd_stream *st = kvd_session_stream(s, l, g);
            ck_assert_uint_eq(st->n_tokens, l * 3 + g + 1);
            const kvd_kv_pages kv = kvd_stream_view(st);
            ck_assert_float_eq(kvd_kv_key(&kv, st->n_tokens - 1)[15], (float)(100 * l + g));
        }
    ck_assert_uint_eq(kvd_session_tokens(s), 78); /* 1 + 2 + ... + 12 */
    ck_assert_uint_eq(kvd_session_pages(s), 12);  /* <= spp tokens each */
    s->streams[5].evicted = 7;                    /* totals sum every stream */
    ck_assert_uint_eq(kvd_session_evicted(s), 7);
    kvd_session_destroy(s, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}
END_TEST

START_TEST(test_create_einval)
{
    kvd_session_config cfg = default_config();
    kvd_session *s = (kvd_session *)&cfg;
    /* d = 512 f32: a slot is 2 * 2048 + 8 bytes, more than a 4 KiB page */
    cfg.head_dim = 512;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), -EINVAL);
    ck_assert_ptr_null(s);
    /* the same head_dim fits in 16 KiB pages */
    ck_assert_int_eq(kvd_session_create(&cfg, 4 * PAGE, &s), 0);
    ck_assert_uint_eq(s->streams[0].slots_per_page, 3);
    kvd_session_destroy(s, NULL); /* no pages taken: the pool is not touched */

    cfg = default_config();
    cfg.head_dim = 0;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), -EINVAL);
    cfg = default_config();
    cfg.kv_heads = 0;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), -EINVAL);
    cfg = default_config();
    cfg.layers = 0;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), -EINVAL);
    /* a KIVI tensor cache with a window: refused as the API refuses it */
    for (int dt = 0; dt < 2; dt++) {
        cfg = default_config();
        cfg.attention = KVD_ATTN_TENSOR;
        cfg.tensor_cache = KVD_TENSOR_CACHE_FOUR;
        cfg.cache.dtype = dt ? KVD_DTYPE_KIVI4 : KVD_DTYPE_KIVI2;
        cfg.cache.group = 32;
        cfg.cache.residual = 32;
        cfg.window = 8;
        ck_assert_int_eq(kvd_session_create(&cfg, 4 * PAGE, &s), -EINVAL);
        ck_assert_ptr_null(s);
        cfg.window = 0; /* the same cache without a window is fine */
        ck_assert_int_eq(kvd_session_create(&cfg, 4 * PAGE, &s), 0);
        kvd_session_destroy(s, NULL);
    }
}
END_TEST

/* A policy puts an index on every stream, with sink and recent from the
 * config; none puts none; subgen puts a recency index beside its sketch. */
START_TEST(test_create_with_eviction)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
    kvd_session_config cfg = default_config();
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    for (size_t i = 0; i < s->n_streams; i++)
        ck_assert_ptr_null(s->streams[i].evict);
    kvd_session_destroy(s, pool);

    cfg.cache.eviction = KVD_EVICT_RECENCY;
    cfg.cache.sink = 2;
    cfg.cache.recent = 3;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    for (size_t i = 0; i < s->n_streams; i++) {
        kvd_stream *st = &s->streams[i];
        ck_assert_ptr_nonnull(st->evict);
        append(st, pool, 10, 1.0f);
        /* 10 tokens: positions 0, 1 are sinks, 7..9 recent, 5 candidates */
        ck_assert_uint_eq(kvd_stream_evictable(st), 5);
        size_t used = 0;
        ck_assert_uint_eq(kvd_stream_evict(st, pool, 0, NULL, 0, &used), 5);
        ck_assert_uint_eq(st->n_tokens, 5);
    }
    ck_assert_uint_eq(kvd_session_evicted(s), 5 * s->n_streams);
    ck_assert_uint_eq(kvd_session_pages(s), kvd_pool_pages_used(pool));
    kvd_session_destroy(s, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);

    /* subgen: a recency index (tokens leave the window oldest first) and a
     * sketch per stream; refused with a quantized dtype or no samples. */
    cfg.cache.eviction = KVD_EVICT_SUBGEN;
    cfg.cache.delta = 0.5;
    cfg.cache.cluster_samples = 4;
    cfg.cache.value_samples = 8;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    ck_assert_ptr_nonnull(s->subgen);
    for (size_t i = 0; i < s->n_streams; i++)
        ck_assert_ptr_nonnull(s->streams[i].evict);
    ck_assert_uint_eq(kvd_session_heap_bytes(s), kvd_session_heap_bytes_new(&cfg));
    kvd_session_destroy(s, pool);
    cfg.cache.value_samples = 0;
    s = (kvd_session *)&cfg;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), -EINVAL);
    ck_assert_ptr_null(s);
    kvd_pool_destroy(pool);
}
END_TEST

/* A fork shares every page of every stream (no page taken, no copy), has
 * the same totals, and each side then goes its own way. */
START_TEST(test_fork)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(1024 * PAGE, PAGE, &pool), 0);
    kvd_session_config cfg = default_config();
    cfg.cache.eviction = KVD_EVICT_L2NORM;
    cfg.cache.sink = 1;
    kvd_session *p, *c;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &p), 0);
    const size_t spp = p->streams[0].slots_per_page;
    for (size_t i = 0; i < p->n_streams; i++)
        append(&p->streams[i], pool, (i + 1) * spp / 2 + 3, (float)i);
    const size_t used = kvd_pool_pages_used(pool);
    ck_assert_int_eq(kvd_session_fork(p, pool, &c), 0);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), used);
    ck_assert_uint_eq(kvd_pool_copies(pool), 0);
    ck_assert_uint_eq(c->n_streams, p->n_streams);
    ck_assert_uint_eq(c->config.layers, cfg.layers);
    ck_assert_uint_eq(kvd_session_tokens(c), kvd_session_tokens(p));
    ck_assert_uint_eq(kvd_session_appended(c), kvd_session_appended(p));
    ck_assert_uint_eq(kvd_session_pages(c), kvd_session_pages(p));
    for (size_t i = 0; i < p->n_streams; i++) {
        const kvd_stream *a = &p->streams[i], *b = &c->streams[i];
        ck_assert_ptr_nonnull(b->evict);
        ck_assert_ptr_ne(a->evict, b->evict);
        ck_assert_uint_eq(a->n_shared, a->n_pages);
        ck_assert_uint_eq(b->n_shared, b->n_pages);
        for (size_t pg = 0; pg < a->n_pages; pg++) {
            ck_assert_ptr_eq(a->pages[pg], b->pages[pg]);
            ck_assert_uint_eq(kvd_pool_refcount(pool, a->pages[pg]), 2);
        }
    }
    /* the child appends to one stream: the parent does not see it */
    append(&c->streams[0], pool, 2, 99.0f);
    ck_assert_uint_eq(c->streams[0].n_tokens, p->streams[0].n_tokens + 2);
    ck_assert_uint_eq(kvd_pool_copies(pool), 1); /* the shared, partly filled tail */
    const kvd_kv_pages kv = kvd_stream_view(&p->streams[0]);
    ck_assert_float_eq(kvd_kv_key(&kv, p->streams[0].n_tokens - 1)[0], 0.0f);
    /* destroying the parent leaves the child whole */
    kvd_session_destroy(p, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), kvd_session_pages(c));
    for (size_t i = 0; i < c->n_streams; i++) {
        const kvd_stream *b = &c->streams[i];
        for (size_t pg = 0; pg < b->n_pages; pg++)
            ck_assert_uint_eq(kvd_pool_refcount(pool, b->pages[pg]), 1);
        const kvd_kv_pages v = kvd_stream_view(b);
        ck_assert_float_eq(kvd_kv_value(&v, 0)[0], (float)i);
    }
    kvd_session_destroy(c, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);

    /* a session with no tokens forks into one with no pages */
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &p), 0);
    ck_assert_int_eq(kvd_session_fork(p, pool, &c), 0);
    ck_assert_uint_eq(kvd_session_pages(c), 0);
    kvd_session_destroy(p, pool);
    kvd_session_destroy(c, pool);
    kvd_pool_destroy(pool);
}
END_TEST

/* Streams take the config's dtype and group: slots per page follow the
 * dtype (a head_dim too big for f32 pages fits as int4), a grouped dtype
 * without a group is -EINVAL, and quantized sessions fork like f32 ones. */
START_TEST(test_create_quantized)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
    const kvd_dtype dtypes[] = {KVD_DTYPE_F16, KVD_DTYPE_BF16, KVD_DTYPE_INT8, KVD_DTYPE_INT4};
    for (size_t di = 0; di < sizeof dtypes / sizeof *dtypes; di++) {
        kvd_session_config cfg = default_config();
        cfg.cache.dtype = dtypes[di];
        cfg.cache.group = 8;
        kvd_session *s, *c;
        ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
        const kvd_stream_format f = {dtypes[di], 8, 0};
        for (size_t i = 0; i < s->n_streams; i++) {
            ck_assert(s->streams[i].fmt.dtype == dtypes[di]);
            ck_assert_uint_eq(s->streams[i].slots_per_page,
                              kvd_stream_slots_per_page_format(PAGE, 16, &f));
            ck_assert_uint_gt(s->streams[i].slots_per_page, kvd_stream_slots_per_page(PAGE, 16));
            ck_assert_ptr_null(s->streams[i].residual);
            append(&s->streams[i], pool, 50, (float)i);
        }
        ck_assert_uint_eq(kvd_session_pages(s), kvd_pool_pages_used(pool));
        ck_assert_int_eq(kvd_session_fork(s, pool, &c), 0);
        ck_assert_uint_eq(kvd_session_tokens(c), 50 * s->n_streams);
        kvd_session_destroy(s, pool);
        kvd_session_destroy(c, pool);
        ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    }
    kvd_session_config cfg = default_config();
    kvd_session *s = (kvd_session *)&cfg;
    cfg.head_dim = 512; /* f32 does not fit a 4 KiB page; int4 does */
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), -EINVAL);
    cfg.cache.dtype = KVD_DTYPE_INT4;
    cfg.cache.group = 32;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    ck_assert_uint_ge(s->streams[0].slots_per_page, 1);
    kvd_session_destroy(s, NULL);
    cfg.cache.group = 0;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), -EINVAL);
    ck_assert_ptr_null(s);
    kvd_pool_destroy(pool);
}
END_TEST

/* Bytes of an eviction index of `cap` slots by hand: its struct, a heap
 * entry (key, position, slot: 24 bytes) and a heap_pos (8) per slot, a
 * score (8) per slot for l2norm and h2o, and a ring of min(recent, cap). */
static size_t index_by_hand(size_t cap, size_t recent, bool scores)
{
    return sizeof(kvd_evict_index) + cap * (24 + 8 + (scores ? 8 : 0)) + (recent < cap ? recent : cap) * 8;
}

/* The heap of a small f32 session counted by hand: empty, then as appends
 * grow block tables (4 entries, then doubling; a pointer and a shared flag
 * each) and eviction indexes (16 slots, then doubling). */
START_TEST(test_heap_bytes_by_hand)
{
    _Static_assert(sizeof(void *) == 8, "the hand counts below assume 8-byte pointers");
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(1024 * PAGE, PAGE, &pool), 0);
    kvd_session_config cfg = default_config(); /* 3 layers x 2 kv heads = 6 streams */
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    const size_t empty = sizeof(kvd_session) + 6 * sizeof(kvd_stream);
    ck_assert_uint_eq(kvd_session_heap_bytes(s), empty);
    ck_assert_uint_eq(kvd_session_heap_bytes_new(&cfg), empty);
    const size_t spp = s->streams[0].slots_per_page;
    append(&s->streams[0], pool, 1, 1.0f); /* 1 page: a table of 4 */
    ck_assert_uint_eq(kvd_session_heap_bytes(s), empty + 4 * 9);
    append(&s->streams[0], pool, 4 * spp, 1.0f); /* 5 pages: 8 */
    ck_assert_uint_eq(s->streams[0].n_pages, 5);
    ck_assert_uint_eq(kvd_session_heap_bytes(s), empty + 8 * 9);
    append(&s->streams[5], pool, 2 * spp, 1.0f); /* 2 pages: 4 */
    ck_assert_uint_eq(kvd_session_heap_bytes(s), empty + 8 * 9 + 4 * 9);
    kvd_session_destroy(s, pool);

    /* h2o with recent 3: an index of 16 slots with scores on each stream. */
    cfg.cache.eviction = KVD_EVICT_H2O;
    cfg.cache.sink = 1;
    cfg.cache.recent = 3;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    const size_t with_index = empty + 6 * index_by_hand(16, 3, true);
    ck_assert_uint_eq(kvd_session_heap_bytes(s), with_index);
    ck_assert_uint_eq(kvd_session_heap_bytes_new(&cfg), with_index);
    ck_assert_uint_lt(20, spp); /* 20 tokens fit one page */
    append(&s->streams[2], pool, 20, 1.0f); /* index 16 -> 32, table 4 */
    ck_assert_uint_eq(kvd_session_heap_bytes(s),
                      with_index + 4 * 9 + index_by_hand(32, 3, true) - index_by_hand(16, 3, true));
    /* Eviction frees pages but not capacity: the heap stays. */
    const size_t grown = kvd_session_heap_bytes(s);
    size_t used = 0;
    ck_assert_uint_gt(kvd_stream_evict(&s->streams[2], pool, 4, NULL, 0, &used), 0);
    ck_assert_uint_eq(kvd_session_heap_bytes(s), grown);
    kvd_session_destroy(s, pool);

    /* recency keeps no score; recent 40 > cap: the ring is the cap's size. */
    cfg.cache.eviction = KVD_EVICT_RECENCY;
    cfg.cache.recent = 40;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    ck_assert_uint_eq(kvd_session_heap_bytes(s), empty + 6 * index_by_hand(16, 40, false));
    ck_assert_uint_eq(kvd_session_heap_bytes_new(&cfg), kvd_session_heap_bytes(s));
    kvd_session_destroy(s, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}
END_TEST

/* Every kind of session: the prediction made before create is what create
 * allocates; KIVI adds a residual with a [group][head_dim] f32 gather
 * buffer per stream, tensor sessions two or three stream arrays. */
START_TEST(test_heap_bytes_new_matches_create)
{
    kvd_session_config cfg = default_config();
    kvd_session *s;
    const size_t streams = 6, base = sizeof(kvd_session);

    cfg.cache.dtype = KVD_DTYPE_KIVI2;
    cfg.cache.group = 8;
    cfg.cache.residual = 16;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    const size_t kivi = base + streams * (sizeof(kvd_stream) + sizeof(kvd__kivi_residual) + 8 * 16 * 4);
    ck_assert_uint_eq(kvd_session_heap_bytes(s), kivi);
    ck_assert_uint_eq(kvd_session_heap_bytes_new(&cfg), kivi);
    ck_assert_uint_eq(kvd_session_fork_heap_bytes(s), kivi); /* KIVI forks its residual too: no page yet */
    kvd_session_destroy(s, NULL);

    cfg = default_config();
    cfg.attention = KVD_ATTN_TENSOR;
    cfg.tensor_cache = KVD_TENSOR_CACHE_FOUR;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    ck_assert_uint_eq(kvd_session_heap_bytes(s), base + 2 * streams * sizeof(kvd_stream));
    ck_assert_uint_eq(kvd_session_heap_bytes_new(&cfg), kvd_session_heap_bytes(s));
    ck_assert_uint_eq(kvd_session_fork_heap_bytes(s), kvd_session_heap_bytes(s)); /* tensor forks: no page yet */
    kvd_session_destroy(s, NULL);
    cfg.tensor_cache = KVD_TENSOR_CACHE_TWO;
    cfg.cache.eviction = KVD_EVICT_L2NORM; /* an index on k1/v1 only */
    cfg.cache.recent = 2;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    ck_assert_uint_eq(kvd_session_heap_bytes(s),
                      base + 3 * streams * sizeof(kvd_stream) + streams * index_by_hand(16, 2, true));
    ck_assert_uint_eq(kvd_session_heap_bytes_new(&cfg), kvd_session_heap_bytes(s));
    kvd_session_destroy(s, NULL);

    /* The largest shape the API allows, as the issue measured it: 8.5 MiB
     * of stream structs for an empty f32 session. */
    cfg = default_config();
    cfg.layers = 1024;
    cfg.heads = cfg.kv_heads = 64;
    cfg.head_dim = 8;
    ck_assert_uint_eq(kvd_session_heap_bytes_new(&cfg), base + 65536 * sizeof(kvd_stream));
    ck_assert_uint_gt(kvd_session_heap_bytes_new(&cfg), 8u << 20);
}
END_TEST

/* A fork's heap is predicted exactly before it is made: tables trimmed to
 * the parent's pages, indexes cloned at the parent's capacity. */
START_TEST(test_heap_bytes_fork)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(1024 * PAGE, PAGE, &pool), 0);
    kvd_session_config cfg = default_config();
    cfg.cache.eviction = KVD_EVICT_L2NORM;
    cfg.cache.recent = 2;
    kvd_session *p, *c;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &p), 0);
    const size_t spp = p->streams[0].slots_per_page;
    append(&p->streams[1], pool, 3 * spp, 1.0f); /* 3 pages (table 4), index 16 -> 128 */
    const size_t predicted = kvd_session_fork_heap_bytes(p);
    const size_t by_hand = sizeof(kvd_session) + 6 * sizeof(kvd_stream) + 3 * 9 +
                           5 * index_by_hand(16, 2, true) + index_by_hand(p->streams[1].evict->cap, 2, true);
    ck_assert_uint_ge(p->streams[1].evict->cap, 3 * spp);
    ck_assert_uint_eq(predicted, by_hand);
    const size_t parent_heap = kvd_session_heap_bytes(p);
    ck_assert_uint_eq(parent_heap, by_hand - 3 * 9 + 4 * 9); /* the parent's table has room for 4 */
    ck_assert_int_eq(kvd_session_fork(p, pool, &c), 0);
    ck_assert_uint_eq(kvd_session_heap_bytes(c), predicted);
    ck_assert_uint_eq(kvd_session_heap_bytes(p), parent_heap); /* the parent's heap is unchanged */
    /* The child grows on its own: a copied tail page, a bigger table. */
    append(&c->streams[1], pool, 2 * spp, 2.0f);
    ck_assert_uint_gt(kvd_session_heap_bytes(c), predicted);
    ck_assert_uint_eq(kvd_session_heap_bytes(p), parent_heap);
    kvd_session_destroy(p, pool);
    kvd_session_destroy(c, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}
END_TEST

START_TEST(test_names)
{
    ck_assert_str_eq(kvd_dtype_name(KVD_DTYPE_F32), "f32");
    ck_assert_str_eq(kvd_dtype_name(KVD_DTYPE_F16), "f16");
    ck_assert_str_eq(kvd_dtype_name(KVD_DTYPE_BF16), "bf16");
    ck_assert_str_eq(kvd_dtype_name(KVD_DTYPE_INT8), "int8");
    ck_assert_str_eq(kvd_dtype_name(KVD_DTYPE_INT4), "int4");
    ck_assert_str_eq(kvd_dtype_name(KVD_DTYPE_KIVI2), "kivi2");
    ck_assert_str_eq(kvd_dtype_name(KVD_DTYPE_KIVI4), "kivi4");
    ck_assert_str_eq(kvd_eviction_name(KVD_EVICT_NONE), "none");
    ck_assert_str_eq(kvd_eviction_name(KVD_EVICT_RECENCY), "recency");
    ck_assert_str_eq(kvd_eviction_name(KVD_EVICT_L2NORM), "l2norm");
    ck_assert_str_eq(kvd_eviction_name(KVD_EVICT_H2O), "h2o");
    ck_assert_str_eq(kvd_eviction_name(KVD_EVICT_SUBGEN), "subgen");
    ck_assert_str_eq(kvd_attention_name(KVD_ATTN_STANDARD), "standard");
    ck_assert_str_eq(kvd_attention_name(KVD_ATTN_TENSOR), "tensor");
    ck_assert_str_eq(kvd_tensor_cache_name(KVD_TENSOR_CACHE_FOUR), "four");
    ck_assert_str_eq(kvd_tensor_cache_name(KVD_TENSOR_CACHE_TWO), "two");
    ck_assert_ptr_nonnull(kvd_dtype_name((kvd_dtype)99)); /* never NULL */
}
END_TEST

static Suite *session_suite(void)
{
    Suite *s = suite_create("cache/session");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_create_destroy_returns_pages);
    tcase_add_test(tc, test_stream_indexing);
    tcase_add_test(tc, test_create_einval);
    tcase_add_test(tc, test_create_with_eviction);
    tcase_add_test(tc, test_fork);
    tcase_add_test(tc, test_create_quantized);
    tcase_add_test(tc, test_heap_bytes_by_hand);
    tcase_add_test(tc, test_heap_bytes_new_matches_create);
    tcase_add_test(tc, test_heap_bytes_fork);
    tcase_add_test(tc, test_names);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(session_suite)
