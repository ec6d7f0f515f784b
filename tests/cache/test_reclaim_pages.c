/* tests/cache/test_reclaim_pages.c — kvd_session_reclaimable_pages
 * (cache/reclaim.c) against the real thing: for each session kind reclaim
 * accepts (dtypes per token and KIVI, every policy, tensor four- and
 * two-caches) and fills that leave partial pages, the count equals the
 * pool's free-page delta of kvd_session_reclaim(s, pool, SIZE_MAX). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "cache/pool.h"
#include "cache/reclaim.h"
#include "cache/session.h"
#include "cache/step.h"
#include "tests/support/check_main.h"
#include "tests/support/kvd_data.h"

#define PAGE 4096
#define POOL_PAGES 8192

typedef struct kind {
    const char *name;
    kvd_dtype dtype;
    kvd_eviction policy;
    uint32_t sink, recent, budget;
    kvd_attention_kind attention;
    kvd_tensor_cache tensor_cache;
    uint32_t head_dim;
} kind;

static kvd_session_config config_of(const kind *k)
{
    kvd_session_config c;
    memset(&c, 0, sizeof c);
    c.layers = 2;
    c.heads = 2;
    c.kv_heads = k->attention == KVD_ATTN_TENSOR ? 1 : 2;
    c.head_dim = k->head_dim;
    c.scale = 1.0f / sqrtf((float)c.head_dim);
    c.cache.dtype = k->dtype;
    c.cache.group = k->dtype == KVD_DTYPE_INT4 ? 16 : 32;
    c.cache.residual = 32;
    c.cache.eviction = k->policy;
    c.cache.sink = k->sink;
    c.cache.recent = k->recent;
    c.cache.budget = k->budget;
    c.attention = k->attention;
    c.tensor_cache = k->tensor_cache;
    c.ttl_seconds = 600;
    return c;
}

/* One step of m tokens on `layer` with m_q block queries (h2o scores them). */
static void step(kvd_session *s, kvd_pool *pool, rng *r, uint32_t layer, size_t m, size_t m_q)
{
    const kvd_session_config *c = &s->config;
    const size_t kv_row = (size_t)c->kv_heads * c->head_dim, q_row = (size_t)c->heads * c->head_dim;
    float *k = rng_tensor(r, m * kv_row, -1, 1), *v = rng_tensor(r, m * kv_row, -1, 1);
    float *q = m_q ? rng_tensor(r, m_q * q_row, -2, 2) : NULL;
    float *k2 = NULL, *v2 = NULL;
    kvd_step_entry e = {.layer = layer, .m = m, .m_q = m_q, .k = k, .v = v, .q = q, .mask = KVD_MASK_BLOCK};
    if (c->attention == KVD_ATTN_TENSOR) {
        k2 = rng_tensor(r, m * kv_row, -1, 1);
        v2 = rng_tensor(r, m * kv_row, -1, 1);
        e.k2 = k2;
        e.v2 = v2;
    }
    kvd_step_output out;
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &e, 1, &out), KVD_STEP_OK);
    kvd_step_output_free(&out);
    free(k);
    free(v);
    free(q);
    free(k2);
    free(v2);
}

static const kind kinds[] = {
    {"f32 recency", KVD_DTYPE_F32, KVD_EVICT_RECENCY, 2, 3, 0, KVD_ATTN_STANDARD, 0, 16},
    {"f32 recency no window", KVD_DTYPE_F32, KVD_EVICT_RECENCY, 0, 0, 0, KVD_ATTN_STANDARD, 0, 16},
    {"f32 h2o", KVD_DTYPE_F32, KVD_EVICT_H2O, 1, 4, 0, KVD_ATTN_STANDARD, 0, 16},
    {"f32 l2norm budget", KVD_DTYPE_F32, KVD_EVICT_L2NORM, 3, 5, 150, KVD_ATTN_STANDARD, 0, 32},
    {"f16 recency", KVD_DTYPE_F16, KVD_EVICT_RECENCY, 4, 0, 0, KVD_ATTN_STANDARD, 0, 16},
    {"int8 h2o", KVD_DTYPE_INT8, KVD_EVICT_H2O, 2, 2, 0, KVD_ATTN_STANDARD, 0, 32},
    {"int4 recency", KVD_DTYPE_INT4, KVD_EVICT_RECENCY, 2, 7, 0, KVD_ATTN_STANDARD, 0, 32},
    {"kivi2 recency", KVD_DTYPE_KIVI2, KVD_EVICT_RECENCY, 2, 3, 0, KVD_ATTN_STANDARD, 0, 32},
    {"kivi4 h2o", KVD_DTYPE_KIVI4, KVD_EVICT_H2O, 1, 40, 0, KVD_ATTN_STANDARD, 0, 32},
    {"tensor four f32", KVD_DTYPE_F32, KVD_EVICT_RECENCY, 1, 2, 0, KVD_ATTN_TENSOR, KVD_TENSOR_CACHE_FOUR, 8},
    {"tensor four kivi2", KVD_DTYPE_KIVI2, KVD_EVICT_RECENCY, 1, 2, 0, KVD_ATTN_TENSOR, KVD_TENSOR_CACHE_FOUR,
     32},
    {"tensor two f32", KVD_DTYPE_F32, KVD_EVICT_RECENCY, 1, 2, 0, KVD_ATTN_TENSOR, KVD_TENSOR_CACHE_TWO, 8},
    {"tensor two l2norm", KVD_DTYPE_F32, KVD_EVICT_L2NORM, 2, 1, 0, KVD_ATTN_TENSOR, KVD_TENSOR_CACHE_TWO, 8},
};

/* Fills per layer (tokens, in steps of these sizes): partial last pages,
 * layers of different lengths, and one tiny layer with nothing evictable. */
static const size_t fills[][2][3] = {
    {{100, 37, 5}, {60, 0, 0}},
    {{301, 0, 0}, {3, 0, 0}},
    {{64, 64, 1}, {129, 2, 0}},
};

START_TEST(reclaimable_pages_match_reclaim)
{
    const kind *k = &kinds[_i / (int)(sizeof fills / sizeof fills[0])];
    const size_t (*f)[3] = fills[_i % (int)(sizeof fills / sizeof fills[0])];
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create((size_t)POOL_PAGES * PAGE, PAGE, &pool), 0);
    const kvd_session_config c = config_of(k);
    kvd_session *s;
    ck_assert_msg(kvd_session_create(&c, PAGE, &s) == 0, "%s: create", k->name);
    rng r;
    rng_seed(&r, 300 + (uint64_t)_i);
    const bool tensor_two = k->attention == KVD_ATTN_TENSOR && k->tensor_cache == KVD_TENSOR_CACHE_TWO;
    for (uint32_t layer = 0; layer < 2; layer++)
        for (int j = 0; j < 3; j++) {
            /* a two-cache holds tokens^2 pair rows: keep it small */
            size_t m = tensor_two ? f[layer][j] / 2 : f[layer][j];
            if (m)
                step(s, pool, &r, layer, m, k->policy == KVD_EVICT_H2O ? 2 : 0);
        }
    if (_i % 3 == 0) /* the first fill gives every kind whole pages to give back */
        ck_assert_msg(kvd_session_reclaimable(s), "%s: test bug: not reclaimable", k->name);
    const size_t predicted = kvd_session_reclaimable_pages(s);
    /* the yes/no check is the count's, not a page's worth of tokens */
    ck_assert_msg(kvd_session_reclaimable(s) == (predicted > 0), "%s, fill %d: reclaimable %d, %zu pages",
                  k->name, _i % 3, kvd_session_reclaimable(s), predicted);
    const size_t free_before = kvd_pool_pages_free(pool), held_before = kvd_session_pages(s);
    const uint64_t evicted = kvd_session_reclaim(s, pool, SIZE_MAX);
    const size_t freed = kvd_pool_pages_free(pool) - free_before;
    ck_assert_msg(predicted == freed, "%s, fill %d: predicted %zu pages, reclaim freed %zu (evicted %llu, held %zu)",
                  k->name, _i % 3, predicted, freed, (unsigned long long)evicted, held_before);
    ck_assert_uint_eq(held_before - kvd_session_pages(s), freed);
    if (_i % 3 == 0)
        ck_assert_uint_gt(freed, 0);
    /* nothing left to give */
    ck_assert_uint_eq(kvd_session_reclaimable_pages(s), 0);
    ck_assert(!kvd_session_reclaimable(s));
    kvd_session_destroy(s, pool);
    ck_assert_uint_eq(kvd_pool_pages_free(pool), POOL_PAGES);
    kvd_pool_destroy(pool);
}
END_TEST

/* Sessions reclaim refuses count nothing: no policy, a fork's shared pages. */
START_TEST(refused_kinds_count_nothing)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create((size_t)POOL_PAGES * PAGE, PAGE, &pool), 0);
    kind plain = kinds[0];
    plain.policy = KVD_EVICT_NONE;
    kvd_session_config c = config_of(&plain);
    kvd_session *s, *child;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
    rng r;
    rng_seed(&r, 400);
    step(s, pool, &r, 0, 200, 0);
    ck_assert_uint_eq(kvd_session_reclaimable_pages(s), 0);
    kvd_session_destroy(s, pool);
    c = config_of(&kinds[0]);
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
    step(s, pool, &r, 0, 200, 0);
    ck_assert_uint_gt(kvd_session_reclaimable_pages(s), 0);
    ck_assert_int_eq(kvd_session_fork(s, pool, &child), 0);
    ck_assert_uint_eq(kvd_session_reclaimable_pages(s), 0);
    ck_assert_uint_eq(kvd_session_reclaimable_pages(child), 0);
    kvd_session_destroy(child, pool);
    kvd_session_destroy(s, pool);
    kvd_pool_destroy(pool);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("cache/reclaim_pages");
    TCase *tc = tcase_create("reclaim_pages");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, reclaimable_pages_match_reclaim, 0,
                        (int)(sizeof kinds / sizeof kinds[0] * (sizeof fills / sizeof fills[0])));
    tcase_add_test(tc, refused_kinds_count_nothing);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
