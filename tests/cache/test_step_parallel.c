/* tests/cache/test_step_parallel.c — a step split over a kvd_parallel
 * executor (cache/step.c's attend_entry) against the same step unsplit:
 * two sessions of one config take the same entries, one by kvd_step_run,
 * the other by kvd_step_run_parallel, and every output, token count,
 * eviction count and shadow error must be bit-identical, for every dtype,
 * policy and attention kind (standard, tensor four and two, shadow, h2o).
 * The executors run the pieces in reverse order, interleaved, or on four
 * real threads, and count that a split did happen. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "cache/pool.h"
#include "cache/session.h"
#include "cache/step.h"
#include "tests/support/check_main.h"
#include "tests/support/kvd_data.h"

#define PAGE 4096

typedef enum { ORDER_REVERSE, ORDER_STRIDED, ORDER_THREADS } piece_order;

/* The executor under test: counts the runs that split (n > 1). */
typedef struct test_exec {
    piece_order order;
    atomic_size_t splits, pieces;
} test_exec;

typedef struct thread_arg {
    void *ctx;
    kvd_parallel_fn fn;
    size_t n;
    atomic_size_t *next;
} thread_arg;

static void *thread_main(void *arg)
{
    thread_arg *a = arg;
    size_t i;
    while ((i = atomic_fetch_add(a->next, 1)) < a->n)
        a->fn(a->ctx, i);
    return NULL;
}

static void exec_run(void *self, void *ctx, kvd_parallel_fn fn, size_t n)
{
    test_exec *x = self;
    if (n > 1)
        atomic_fetch_add(&x->splits, 1);
    atomic_fetch_add(&x->pieces, n);
    if (x->order == ORDER_REVERSE) {
        for (size_t i = n; i-- > 0;)
            fn(ctx, i);
    } else if (x->order == ORDER_STRIDED) { /* odd pieces first, then even */
        for (size_t i = 1; i < n; i += 2)
            fn(ctx, i);
        for (size_t i = 0; i < n; i += 2)
            fn(ctx, i);
    } else {
        atomic_size_t next;
        atomic_init(&next, 0);
        thread_arg a = {ctx, fn, n, &next};
        pthread_t t[3];
        for (int k = 0; k < 3; k++)
            ck_assert_int_eq(pthread_create(&t[k], NULL, thread_main, &a), 0);
        thread_main(&a);
        for (int k = 0; k < 3; k++)
            pthread_join(t[k], NULL);
    }
}

typedef struct split_case {
    const char *name;
    kvd_attention_kind attention;
    kvd_tensor_cache tensor_cache;
    kvd_dtype dtype;
    kvd_eviction eviction;
    bool shadow;
    uint32_t heads, kv_heads, head_dim;
    size_t prefill;  /* tokens of the first (causal) entry, all of them queries */
    size_t budget;
} split_case;

static const split_case cases[] = {
    {"f32 none", KVD_ATTN_STANDARD, 0, KVD_DTYPE_F32, KVD_EVICT_NONE, false, 8, 2, 32, 200, 0},
    {"f16 recency", KVD_ATTN_STANDARD, 0, KVD_DTYPE_F16, KVD_EVICT_RECENCY, false, 8, 2, 32, 200, 150},
    {"bf16 l2norm", KVD_ATTN_STANDARD, 0, KVD_DTYPE_BF16, KVD_EVICT_L2NORM, false, 8, 2, 32, 200, 150},
    {"int8 none", KVD_ATTN_STANDARD, 0, KVD_DTYPE_INT8, KVD_EVICT_NONE, false, 8, 2, 32, 200, 0},
    {"int4 h2o", KVD_ATTN_STANDARD, 0, KVD_DTYPE_INT4, KVD_EVICT_H2O, false, 8, 2, 32, 200, 150},
    {"kivi2 none", KVD_ATTN_STANDARD, 0, KVD_DTYPE_KIVI2, KVD_EVICT_NONE, false, 8, 2, 32, 200, 0},
    {"kivi4 h2o", KVD_ATTN_STANDARD, 0, KVD_DTYPE_KIVI4, KVD_EVICT_H2O, false, 8, 2, 32, 200, 160},
    {"f32 h2o", KVD_ATTN_STANDARD, 0, KVD_DTYPE_F32, KVD_EVICT_H2O, false, 8, 4, 32, 200, 150},
    {"f32 mqa h2o", KVD_ATTN_STANDARD, 0, KVD_DTYPE_F32, KVD_EVICT_H2O, false, 8, 1, 32, 200, 150},
    {"int8 l2norm shadow", KVD_ATTN_STANDARD, 0, KVD_DTYPE_INT8, KVD_EVICT_L2NORM, true, 8, 2, 32, 200, 150},
    {"f16 h2o shadow", KVD_ATTN_STANDARD, 0, KVD_DTYPE_F16, KVD_EVICT_H2O, true, 8, 2, 32, 200, 150},
    /* decode steps large enough to split (2 queries x 2,113 slots x 512):
     * each stream's piece stores its scores in a buffer of its own */
    {"kivi4 h2o long decode", KVD_ATTN_STANDARD, 0, KVD_DTYPE_KIVI4, KVD_EVICT_H2O, false, 8, 2, 64, 2200, 2110},
    {"tensor four f32", KVD_ATTN_TENSOR, KVD_TENSOR_CACHE_FOUR, KVD_DTYPE_F32, KVD_EVICT_NONE, false, 4, 2, 16,
     48, 0},
    {"tensor four int8 recency", KVD_ATTN_TENSOR, KVD_TENSOR_CACHE_FOUR, KVD_DTYPE_INT8, KVD_EVICT_RECENCY, false,
     4, 2, 16, 48, 40},
    {"tensor four f32 h2o", KVD_ATTN_TENSOR, KVD_TENSOR_CACHE_FOUR, KVD_DTYPE_F32, KVD_EVICT_H2O, false, 4, 2, 16,
     48, 40},
    {"tensor two f32", KVD_ATTN_TENSOR, KVD_TENSOR_CACHE_TWO, KVD_DTYPE_F32, KVD_EVICT_NONE, false, 4, 2, 16, 48,
     0},
    {"tensor two f16 h2o", KVD_ATTN_TENSOR, KVD_TENSOR_CACHE_TWO, KVD_DTYPE_F16, KVD_EVICT_H2O, false, 4, 2, 16,
     48, 40},
};

static kvd_session_config config_of(const split_case *k)
{
    kvd_session_config c;
    memset(&c, 0, sizeof c);
    c.layers = 2;
    c.heads = k->heads;
    c.kv_heads = k->kv_heads;
    c.head_dim = k->head_dim;
    c.scale = 1.0f / sqrtf((float)k->head_dim);
    c.attention = k->attention;
    c.tensor_cache = k->tensor_cache;
    c.cache.dtype = k->dtype;
    c.cache.eviction = k->eviction;
    c.cache.budget = k->budget;
    c.cache.sink = 4;
    c.cache.group = 32;
    c.cache.residual = 32;
    c.shadow = k->shadow;
    c.ttl_seconds = 600;
    return c;
}

/* One session (and its shadow copy when the case has one). */
typedef struct side {
    kvd_session *s, *shadow;
} side;

static void side_create(const kvd_session_config *c, side *x)
{
    ck_assert_int_eq(kvd_session_create(c, PAGE, &x->s), 0);
    x->shadow = NULL;
    if (c->shadow) {
        const kvd_session_config sc = kvd_session_shadow_config(c);
        ck_assert_int_eq(kvd_session_create(&sc, PAGE, &x->shadow), 0);
    }
}

static void side_destroy(side *x, kvd_pool *pool)
{
    kvd_session_destroy(x->s, pool);
    if (x->shadow)
        kvd_session_destroy(x->shadow, pool);
}

static void assert_same(const split_case *k, int step, const kvd_step_output *a, const kvd_step_output *b,
                        const kvd_step_entry *e, size_t n)
{
    ck_assert_uint_eq(a->n_results, b->n_results);
    ck_assert_uint_eq(a->evicted_total, b->evicted_total);
    for (size_t i = 0; i < n; i++) {
        const kvd_step_result *x = &a->results[i], *y = &b->results[i];
        ck_assert_msg(x->tokens == y->tokens && x->evicted == y->evicted, "%s step %d entry %zu: tokens %zu/%zu",
                      k->name, step, i, x->tokens, y->tokens);
        const size_t len = e[i].m_q * (size_t)k->heads * k->head_dim;
        if (len)
            ck_assert_msg(memcmp(x->o, y->o, len * sizeof(float)) == 0, "%s step %d entry %zu: o differs",
                          k->name, step, i);
        ck_assert(x->has_shadow == y->has_shadow);
        ck_assert_msg(memcmp(&x->relative_error, &y->relative_error, sizeof(double)) == 0 &&
                          memcmp(&x->max_abs_error, &y->max_abs_error, sizeof(double)) == 0,
                      "%s step %d: shadow error differs", k->name, step);
    }
}

/* The case's sessions take a causal prefill on both layers (one request),
 * then decode steps: the parallel side must match bit for bit, and must
 * have split. */
static void run_case(const split_case *k, piece_order order)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create((size_t)8192 * PAGE, PAGE, &pool), 0);
    const kvd_session_config c = config_of(k);
    side a, b;
    side_create(&c, &a);
    side_create(&c, &b);
    test_exec x = {.order = order};
    atomic_init(&x.splits, 0);
    atomic_init(&x.pieces, 0);
    const kvd_parallel par = {exec_run, &x, 0};
    rng r;
    rng_seed(&r, 77);
    const size_t kv_row = (size_t)k->kv_heads * k->head_dim, q_row = (size_t)k->heads * k->head_dim;
    for (int step = 0; step < 6; step++) {
        const size_t m = step == 0 ? k->prefill : 3, m_q = step == 0 ? k->prefill : 2;
        float *buf[2][5];
        kvd_step_entry e[2];
        for (uint32_t l = 0; l < 2; l++) {
            for (int t = 0; t < 5; t++)
                buf[l][t] = rng_tensor(&r, (t == 2 ? m_q * q_row : m * kv_row), t == 2 ? -2 : -1, t == 2 ? 2 : 1);
            e[l] = (kvd_step_entry){.layer = l, .m = m, .m_q = m_q, .k = buf[l][0], .v = buf[l][1], .q = buf[l][2],
                                    .mask = step == 0 ? KVD_MASK_CAUSAL : KVD_MASK_BLOCK};
            if (k->attention == KVD_ATTN_TENSOR) {
                e[l].k2 = buf[l][3];
                e[l].v2 = buf[l][4];
            }
        }
        kvd_step_output oa, ob;
        ck_assert_int_eq(kvd_step_run(a.s, a.shadow, pool, e, 2, &oa), KVD_STEP_OK);
        ck_assert_int_eq(kvd_step_run_parallel(b.s, b.shadow, pool, e, 2, &par, &ob), KVD_STEP_OK);
        assert_same(k, step, &oa, &ob, e, 2);
        kvd_step_output_free(&oa);
        kvd_step_output_free(&ob);
        for (uint32_t l = 0; l < 2; l++)
            for (int t = 0; t < 5; t++)
                free(buf[l][t]);
    }
    /* One stream's h2o sums stay in one piece: a single kv head with h2o
     * (MQA) has nothing to split. */
    if (k->kv_heads == 1 && k->eviction == KVD_EVICT_H2O)
        ck_assert_msg(atomic_load(&x.splits) == 0, "%s: one h2o stream split", k->name);
    else
        ck_assert_msg(atomic_load(&x.splits) > 0, "%s: the step never split", k->name);
    side_destroy(&a, pool);
    side_destroy(&b, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}

START_TEST(split_is_bit_identical_reverse)
{
    run_case(&cases[_i], ORDER_REVERSE);
}
END_TEST

START_TEST(split_is_bit_identical_strided)
{
    run_case(&cases[_i], ORDER_STRIDED);
}
END_TEST

START_TEST(split_is_bit_identical_threads)
{
    run_case(&cases[_i], ORDER_THREADS);
}
END_TEST

/* A small decode (below KVD_STEP_SPLIT_WORK) runs on its own thread: the
 * executor is never asked. */
START_TEST(small_step_does_not_split)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create((size_t)4096 * PAGE, PAGE, &pool), 0);
    split_case k = cases[0];
    k.heads = 8;
    k.kv_heads = 8;
    k.head_dim = 64;
    const kvd_session_config c = config_of(&k);
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
    test_exec x = {.order = ORDER_REVERSE};
    atomic_init(&x.splits, 0);
    atomic_init(&x.pieces, 0);
    const kvd_parallel par = {exec_run, &x, 0};
    rng r;
    rng_seed(&r, 5);
    const size_t m = 1000;
    float *kk = rng_tensor(&r, m * 8 * 64, -1, 1), *v = rng_tensor(&r, m * 8 * 64, -1, 1);
    float *q = rng_tensor(&r, 8 * 64, -2, 2);
    kvd_step_entry e = {.layer = 0, .m = m, .m_q = 1, .k = kk, .v = v, .q = q, .mask = KVD_MASK_BLOCK};
    kvd_step_output o;
    ck_assert_int_eq(kvd_step_run_parallel(s, NULL, pool, &e, 1, &par, &o), KVD_STEP_OK);
    ck_assert_uint_eq(atomic_load(&x.pieces), 0);
    kvd_step_output_free(&o);
    free(kk);
    free(v);
    free(q);
    kvd_session_destroy(s, pool);
    kvd_pool_destroy(pool);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("step_parallel");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    const int n = (int)(sizeof cases / sizeof cases[0]);
    tcase_add_loop_test(tc, split_is_bit_identical_reverse, 0, n);
    tcase_add_loop_test(tc, split_is_bit_identical_strided, 0, n);
    tcase_add_loop_test(tc, split_is_bit_identical_threads, 0, n);
    tcase_add_test(tc, small_step_does_not_split);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
