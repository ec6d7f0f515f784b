/* tests/cache/test_fuzz_regress.c — the step engine inputs tests/fuzz found
 * wrong, replayed as ordinary tests. Steps whose plan needs no page (an
 * empty entry on a KIVI session: fuzz_step's body "{}"; a decode token that
 * fits in the tail page: fuzz_http's pipelined seed) offset a NULL page
 * table, undefined behaviour clang's UBSan stops at (gcc's does not check
 * NULL + 0, so these fail only in the clang build `make fuzz` runs them in);
 * everywhere they pin what such a step must do. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "cache/pool.h"
#include "cache/session.h"
#include "cache/step.h"
#include "tests/support/check_main.h"

#define PAGE 1024

static kvd_session_config config(uint32_t heads, uint32_t kv_heads, uint32_t d, kvd_dtype dtype)
{
    kvd_session_config c;
    memset(&c, 0, sizeof c);
    c.layers = 1;
    c.heads = heads;
    c.kv_heads = kv_heads;
    c.head_dim = d;
    c.scale = 1.0f / sqrtf((float)d);
    c.cache.dtype = dtype;
    c.cache.group = 4;
    c.cache.residual = 4;
    c.ttl_seconds = 600;
    return c;
}

/* fuzz_step crash input "\n{}": config 2 (KIVI 2-bit, recency budget 10,
 * sink 2), one entry with nothing in it, on a fresh session. */
START_TEST(empty_entry_on_kivi_session)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(96 * PAGE, PAGE, &pool), 0);
    kvd_session_config c = config(2, 2, 8, KVD_DTYPE_KIVI2);
    c.cache.eviction = KVD_EVICT_RECENCY;
    c.cache.budget = 10;
    c.cache.sink = 2;
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
    const kvd_step_entry e = {.layer = 0, .m = 0, .m_q = 0, .mask = KVD_MASK_CAUSAL};
    kvd_step_output out;
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &e, 1, &out), KVD_STEP_OK);
    ck_assert_uint_eq(out.n_results, 1);
    ck_assert_ptr_null(out.results[0].o);
    ck_assert_uint_eq(out.results[0].tokens, 0);
    ck_assert_uint_eq(out.tokens_in, 0);
    ck_assert_uint_eq(kvd_session_tokens(s), 0);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_step_output_free(&out);
    kvd_session_destroy(s, pool);
    kvd_pool_destroy(pool);
}
END_TEST

/* fuzz_http's pipelined seed: a one-token step into a tail page with room
 * (its plan takes no page), then a pure query (none either). */
START_TEST(step_into_tail_page_takes_no_page)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(8 * PAGE, PAGE, &pool), 0);
    const kvd_session_config c = config(2, 1, 4, KVD_DTYPE_F32);
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
    const float k[4] = {1, 0, 0, 0}, v[4] = {1, 2, 3, 4}, q[8] = {1, 0, 0, 0, 0, 1, 0, 0};
    const kvd_step_entry append = {.layer = 0, .m = 1, .m_q = 1, .k = k, .v = v, .q = q,
                                   .mask = KVD_MASK_CAUSAL};
    const kvd_step_entry query = {.layer = 0, .m = 0, .m_q = 1, .q = q, .mask = KVD_MASK_BLOCK};
    kvd_step_output out;
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &append, 1, &out), KVD_STEP_OK);
    kvd_step_output_free(&out);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 1);
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &append, 1, &out), KVD_STEP_OK); /* no new page */
    ck_assert_uint_eq(out.results[0].tokens, 2);
    kvd_step_output_free(&out);
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &query, 1, &out), KVD_STEP_OK);
    /* Both cached values are v: every query head's output is v. */
    for (size_t i = 0; i < 8; i++)
        ck_assert_float_eq_tol(out.results[0].o[i], v[i % 4], 1e-6f);
    kvd_step_output_free(&out);
    ck_assert_uint_eq(kvd_session_tokens(s), 2);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 1);
    ck_assert_uint_eq(kvd_session_pages(s), 1);
    kvd_session_destroy(s, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("cache_fuzz_regress");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, empty_entry_on_kivi_session);
    tcase_add_test(tc, step_into_tail_page_takes_no_page);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
