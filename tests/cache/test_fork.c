/* tests/cache/test_fork.c — forks of tensor sessions (four- and two-cache,
 * with and without a window or a policy), subgen sessions (standard and
 * SubGen4Cache, the sketch copied eagerly) and KIVI sessions (standard and
 * tensor, with and without a policy) through the step engine: after a
 * fork, parent and child each take their own steps and each answers bit for
 * bit like a fresh session fed its own whole history; stream pages are
 * shared (no copy) until written, the parent never sees the child's writes,
 * and every page goes back to the pool. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "cache/pool.h"
#include "cache/session.h"
#include "cache/step.h"
#include "tests/support/check_main.h"
#include "tests/support/kvd_data.h"

#define PAGE 1024 /* small pages: a few tokens each, pair rows over many */
#define D 8
#define LAYERS 2
#define KV_HEADS 2
#define HEADS 4
#define ROW (KV_HEADS * D)

static kvd_session_config tensor_config(kvd_tensor_cache tc, uint32_t window, kvd_eviction ev, uint32_t budget)
{
    kvd_session_config c;
    memset(&c, 0, sizeof c);
    c.layers = LAYERS;
    c.heads = HEADS;
    c.kv_heads = KV_HEADS;
    c.head_dim = D;
    c.attention = KVD_ATTN_TENSOR;
    c.tensor_cache = tc;
    c.window = window;
    c.scale = 1.0f / sqrtf((float)D);
    c.cache.dtype = KVD_DTYPE_F32;
    c.cache.eviction = ev;
    c.cache.budget = budget;
    c.cache.sink = ev != KVD_EVICT_NONE ? 1 : 0;
    c.cache.recent = ev != KVD_EVICT_NONE ? 2 : 0;
    c.ttl_seconds = 600;
    return c;
}

/* One step: both layers, m new tokens (k1 v1 k2 v2 drawn from `seed`) and
 * m causal queries. Returns the outputs of both entries concatenated
 * (malloc'd, 2 * m * HEADS * D floats), asserting the step succeeded. */
static float *step(kvd_session *s, kvd_pool *pool, size_t m, uint64_t seed)
{
    rng r;
    rng_seed(&r, seed);
    float *t[LAYERS][5];
    kvd_step_entry e[LAYERS];
    for (uint32_t l = 0; l < LAYERS; l++) {
        for (int a = 0; a < 4; a++)
            t[l][a] = rng_tensor(&r, m * ROW, -1, 1);
        t[l][4] = rng_tensor(&r, m * HEADS * D, -2, 2);
        const bool tensor = s->tensor_b != NULL;
        e[l] = (kvd_step_entry){.layer = l, .m = m, .m_q = m, .k = t[l][0], .v = t[l][1],
                                .k2 = tensor ? t[l][2] : NULL, .v2 = tensor ? t[l][3] : NULL, .q = t[l][4],
                                .mask = KVD_MASK_CAUSAL};
    }
    kvd_step_output out;
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, e, LAYERS, &out), KVD_STEP_OK);
    const size_t n = m * HEADS * D;
    float *o = malloc(LAYERS * n * sizeof *o);
    ck_assert_ptr_nonnull(o);
    for (uint32_t l = 0; l < LAYERS; l++) {
        memcpy(o + l * n, out.results[l].o, n * sizeof *o);
        for (int a = 0; a < 5; a++)
            free(t[l][a]);
    }
    kvd_step_output_free(&out);
    return o;
}

/* The stream arrays of a tensor session. */
static kvd_stream *array(kvd_session *s, int a)
{
    return a == 0 ? s->streams : a == 1 ? s->tensor_b : s->pairs;
}

static const size_t history[] = {3, 1, 4, 1, 6}; /* 15 tokens: a partly filled tail page */ /* before the fork */
static const size_t after[] = {1, 2, 1, 3, 1, 1}; /* each side, after it */
#define N_HISTORY (sizeof history / sizeof *history)
#define N_AFTER (sizeof after / sizeof *after)

/* Runs the fork scenario for cfg: parent P and fresh F_p fed history then
 * steps drawn from seeds 100+i; child C (the fork) and fresh F_c fed history
 * then seeds 200+i. The child steps first each round, so a write of the
 * child that reached the parent would show in the parent's next answer. */
static void fork_scenario(const kvd_session_config *cfg)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(8192 * PAGE, PAGE, &pool), 0);
    kvd_session *p, *fp, *fc, *c;
    ck_assert_int_eq(kvd_session_create(cfg, PAGE, &p), 0);
    ck_assert_int_eq(kvd_session_create(cfg, PAGE, &fp), 0);
    ck_assert_int_eq(kvd_session_create(cfg, PAGE, &fc), 0);
    for (size_t i = 0; i < N_HISTORY; i++) {
        kvd_session *all[3] = {p, fp, fc};
        for (int k = 0; k < 3; k++)
            free(step(all[k], pool, history[i], 10 + i));
    }
    const size_t used = kvd_pool_pages_used(pool);
    size_t sketch = 0; /* pages of p's sketches: copied, not shared */
    for (size_t i = 0; p->subgen && i < p->n_streams; i++)
        sketch += kvd_subgen_pages(&p->subgen[i]) + (p->subgen_b ? kvd_subgen_pages(&p->subgen_b[i]) : 0);
    ck_assert_uint_eq(sketch > 0, p->subgen != NULL);
    const size_t heap = kvd_session_fork_heap_bytes(p);
    ck_assert_int_eq(kvd_session_fork(p, pool, &c), 0);
    ck_assert_uint_eq(kvd_session_heap_bytes(c), heap); /* predicted exactly (the API charges it first) */
    /* streams shared, not copied: no page taken, every page of every array
     * flagged on both sides with two references, the child's k2/v2 its own
     * mirror; a sketch is a copy in pages of the child's own */
    ck_assert_uint_eq(kvd_pool_pages_used(pool), used + sketch);
    for (size_t i = 0; p->subgen && i < p->n_streams; i++)
        for (int b = 0; b < 2; b++) {
            const kvd_subgen *x = b ? (p->subgen_b ? &p->subgen_b[i] : NULL) : &p->subgen[i];
            const kvd_subgen *y = b ? (c->subgen_b ? &c->subgen_b[i] : NULL) : &c->subgen[i];
            if (!x) {
                ck_assert_ptr_null(y);
                continue;
            }
            ck_assert_uint_eq(y->rng, x->rng);
            ck_assert_uint_eq(y->items, x->items);
            ck_assert_uint_eq(y->n_clusters, x->n_clusters);
            ck_assert(y->f == x->f);
            ck_assert_uint_eq(kvd_subgen_pages(y), kvd_subgen_pages(x));
            for (size_t pg = 0; pg < x->samples.n_pages; pg++) {
                ck_assert_ptr_ne(y->samples.pages[pg], x->samples.pages[pg]);
                ck_assert_mem_eq(y->samples.pages[pg], x->samples.pages[pg], PAGE);
            }
        }
    ck_assert_uint_eq(kvd_pool_copies(pool), 0);
    ck_assert_uint_eq(kvd_session_pages(c), kvd_session_pages(p));
    ck_assert_uint_eq(kvd_session_tokens(c), kvd_session_tokens(p));
    ck_assert_uint_eq(kvd_session_pair_rows(c), kvd_session_pair_rows(p));
    for (int a = 0; a < 3; a++) {
        if (!array(p, a)) {
            ck_assert_ptr_null(array(c, a));
            continue;
        }
        for (size_t i = 0; i < p->n_streams; i++) {
            const kvd_stream *x = &array(p, a)[i], *y = &array(c, a)[i];
            ck_assert_uint_gt(x->n_pages, 0);
            ck_assert_uint_eq(x->n_shared, x->n_pages);
            ck_assert_uint_eq(y->n_shared, y->n_pages);
            for (size_t pg = 0; pg < x->n_pages; pg++) {
                ck_assert_ptr_eq(x->pages[pg], y->pages[pg]);
                ck_assert_uint_eq(kvd_pool_refcount(pool, x->pages[pg]), 2);
            }
        }
    }
    for (size_t i = 0; c->tensor_b && i < c->n_streams; i++)
        ck_assert_ptr_eq(c->streams[i].mirror, &c->tensor_b[i]);

    const size_t n_out = LAYERS * HEADS * D;
    for (size_t i = 0; i < N_AFTER; i++) {
        float *oc = step(c, pool, after[i], 200 + i), *ofc = step(fc, pool, after[i], 200 + i);
        ck_assert_mem_eq(oc, ofc, after[i] * n_out * sizeof(float));
        float *op = step(p, pool, after[i], 100 + i), *ofp = step(fp, pool, after[i], 100 + i);
        ck_assert_mem_eq(op, ofp, after[i] * n_out * sizeof(float));
        ck_assert_mem_ne(op, oc, after[i] * n_out * sizeof(float)); /* they did diverge */
        free(oc);
        free(ofc);
        free(op);
        free(ofp);
        ck_assert_uint_eq(kvd_session_tokens(c), kvd_session_tokens(fc));
        ck_assert_uint_eq(kvd_session_evicted(c), kvd_session_evicted(fc));
        ck_assert_uint_eq(kvd_session_pair_rows(c), kvd_session_pair_rows(fc));
        ck_assert_uint_eq(kvd_session_tokens(p), kvd_session_tokens(fp));
        ck_assert_uint_eq(kvd_session_pair_rows(p), kvd_session_pair_rows(fp));
        for (size_t j = 0; c->subgen && j < c->n_streams; j++) { /* same draws as the twin's */
            ck_assert_uint_eq(c->subgen[j].rng, fc->subgen[j].rng);
            ck_assert_uint_eq(p->subgen[j].rng, fp->subgen[j].rng);
            ck_assert_uint_eq(c->subgen[j].n_clusters, fc->subgen[j].n_clusters);
        }
    }
    ck_assert_uint_gt(kvd_pool_copies(pool), 0); /* written pages were copied */
    if (!cfg->window && cfg->cache.eviction == KVD_EVICT_NONE && cfg->cache.dtype == KVD_DTYPE_F32)
        for (int a = 0; a < 3; a++) /* appends only: full pages never written stay shared */
            for (size_t i = 0; array(p, a) && i < p->n_streams; i++) {
                ck_assert_ptr_eq(array(p, a)[i].pages[0], array(c, a)[i].pages[0]);
                ck_assert_uint_eq(kvd_pool_refcount(pool, array(p, a)[i].pages[0]), 2);
            }
    /* the parent goes; the child keeps answering like its fresh twin */
    kvd_session_destroy(p, pool);
    float *oc = step(c, pool, 2, 300), *ofc = step(fc, pool, 2, 300);
    ck_assert_mem_eq(oc, ofc, 2 * n_out * sizeof(float));
    free(oc);
    free(ofc);
    kvd_session_destroy(c, pool);
    kvd_session_destroy(fp, pool);
    kvd_session_destroy(fc, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}

START_TEST(test_fork_tensor_four)
{
    kvd_session_config cfg = tensor_config(KVD_TENSOR_CACHE_FOUR, 0, KVD_EVICT_NONE, 0);
    fork_scenario(&cfg);
}
END_TEST

START_TEST(test_fork_tensor_two)
{
    kvd_session_config cfg = tensor_config(KVD_TENSOR_CACHE_TWO, 0, KVD_EVICT_NONE, 0);
    fork_scenario(&cfg);
}
END_TEST

/* A window slides k1/v1 and k2/v2 down in place (and rebuilds the pair
 * rows): every shared page is copied before. */
START_TEST(test_fork_tensor_window)
{
    kvd_session_config cfg = tensor_config(KVD_TENSOR_CACHE_FOUR, 6, KVD_EVICT_NONE, 0);
    fork_scenario(&cfg);
    cfg = tensor_config(KVD_TENSOR_CACHE_TWO, 6, KVD_EVICT_NONE, 0);
    fork_scenario(&cfg);
    cfg.cache.dtype = KVD_DTYPE_F16; /* quantized rows move byte for byte too */
    fork_scenario(&cfg);
}
END_TEST

/* A policy's eviction moves the last slot into a hole in k1/v1 and k2/v2
 * alike, and a two-cache rebuilds its pair rows. */
START_TEST(test_fork_tensor_policy)
{
    kvd_session_config cfg = tensor_config(KVD_TENSOR_CACHE_FOUR, 0, KVD_EVICT_H2O, 7);
    fork_scenario(&cfg);
    cfg = tensor_config(KVD_TENSOR_CACHE_TWO, 0, KVD_EVICT_L2NORM, 7);
    fork_scenario(&cfg);
    cfg = tensor_config(KVD_TENSOR_CACHE_TWO, 0, KVD_EVICT_RECENCY, 6);
    cfg.cache.dtype = KVD_DTYPE_INT8;
    fork_scenario(&cfg);
}
END_TEST

static kvd_session_config subgen_config(kvd_attention_kind attention)
{
    kvd_session_config c = tensor_config(KVD_TENSOR_CACHE_FOUR, 0, KVD_EVICT_SUBGEN, 0);
    c.attention = attention;
    c.cache.sink = 2;
    c.cache.recent = 3;
    c.cache.delta = 0.5;
    c.cache.cluster_samples = 4;
    c.cache.value_samples = 8;
    c.seed = 3;
    return c;
}

/* The sketch is copied with its random state: the child samples exactly
 * as a fresh session with its history would, and independently of the
 * parent from then on. */
START_TEST(test_fork_subgen)
{
    kvd_session_config cfg = subgen_config(KVD_ATTN_STANDARD);
    fork_scenario(&cfg);
}
END_TEST

START_TEST(test_fork_subgen_tensor)
{
    kvd_session_config cfg = subgen_config(KVD_ATTN_TENSOR); /* SubGen4Cache: two sketches a stream */
    fork_scenario(&cfg);
}
END_TEST

static kvd_session_config kivi(kvd_session_config c)
{
    c.cache.dtype = KVD_DTYPE_KIVI4;
    c.cache.group = 4;
    c.cache.residual = 4;
    return c;
}

/* KIVI: the residual is forked too; a settle shifts the residual and fills
 * the next key block's page, an eviction re-quantizes blocks anywhere: those
 * pages are copied first when still shared. */
START_TEST(test_fork_kivi)
{
    kvd_session_config cfg = kivi(tensor_config(KVD_TENSOR_CACHE_FOUR, 0, KVD_EVICT_NONE, 0));
    cfg.attention = KVD_ATTN_STANDARD;
    fork_scenario(&cfg);
    cfg = kivi(tensor_config(KVD_TENSOR_CACHE_FOUR, 0, KVD_EVICT_H2O, 9));
    cfg.attention = KVD_ATTN_STANDARD;
    fork_scenario(&cfg);
    cfg = kivi(tensor_config(KVD_TENSOR_CACHE_TWO, 0, KVD_EVICT_NONE, 0));
    fork_scenario(&cfg);
    cfg = kivi(tensor_config(KVD_TENSOR_CACHE_FOUR, 0, KVD_EVICT_RECENCY, 9));
    fork_scenario(&cfg);
    cfg = kivi(tensor_config(KVD_TENSOR_CACHE_TWO, 0, KVD_EVICT_L2NORM, 9));
    fork_scenario(&cfg);
}
END_TEST

static Suite *fork_suite(void)
{
    Suite *s = suite_create("fork");
    TCase *tc = tcase_create("tensor");
    tcase_add_test(tc, test_fork_tensor_four);
    tcase_add_test(tc, test_fork_tensor_two);
    tcase_add_test(tc, test_fork_tensor_window);
    tcase_add_test(tc, test_fork_tensor_policy);
    tcase_add_test(tc, test_fork_kivi);
    tcase_add_test(tc, test_fork_subgen);
    tcase_add_test(tc, test_fork_subgen_tensor);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(fork_suite)
