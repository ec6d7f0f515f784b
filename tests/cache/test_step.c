/* tests/cache/test_step.c — the step engine (cache/step.c, cache/plan.c,
 * cache/reclaim.c) driven directly, no JSON or HTTP: outputs against the
 * double-precision references in tests/support, whole-or-nothing failure
 * when the pool is short, page accounting (every planned page either placed
 * or given back), per-entry results of multi-entry requests, shadow error,
 * two-cache pair rows kept in step with eviction, and reclaim. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "cache/evict.h"
#include "cache/pool.h"
#include "cache/reclaim.h"
#include "cache/session.h"
#include "cache/step.h"
#include "tests/support/check_main.h"
#include "tests/support/kvd_data.h"
#include "tests/support/ref_attention.h"
#include "tests/support/ref_cache.h"

#define PAGE 4096
/* f32 attention against the double reference, relative to max |v|: the
 * kernels accumulate in f32 over at most a few hundred tokens. */
#define TOL_F32 1e-5
/* The shadow's exact copy is f32 attention too: its error measure agrees
 * with one taken against the double reference to about this much. */
#define TOL_SHADOW_AGREEMENT 1e-4

static kvd_session_config base_config(uint32_t layers, uint32_t heads, uint32_t kv_heads, uint32_t d)
{
    kvd_session_config c;
    memset(&c, 0, sizeof c);
    c.layers = layers;
    c.heads = heads;
    c.kv_heads = kv_heads;
    c.head_dim = d;
    c.scale = 1.0f / sqrtf((float)d);
    c.cache.dtype = KVD_DTYPE_F32;
    c.cache.group = 32;
    c.cache.residual = 32;
    c.ttl_seconds = 600;
    return c;
}

/* Random tensors of one entry (owned by the caller through the three buffers). */
typedef struct entry_data {
    float *k, *v, *q;
} entry_data;

static kvd_step_entry make_entry(rng *r, const kvd_session_config *c, uint32_t layer, size_t m, size_t m_q,
                                 kvd_mask mask, entry_data *d)
{
    const size_t kv_row = (size_t)c->kv_heads * c->head_dim, q_row = (size_t)c->heads * c->head_dim;
    d->k = m ? rng_tensor(r, m * kv_row, -1, 1) : NULL;
    d->v = m ? rng_tensor(r, m * kv_row, -1, 1) : NULL;
    d->q = m_q ? rng_tensor(r, m_q * q_row, -2, 2) : NULL;
    kvd_step_entry e = {.layer = layer, .m = m, .m_q = m_q, .k = d->k, .v = d->v, .q = d->q, .mask = mask};
    return e;
}

static void free_data(entry_data *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(d[i].k);
        free(d[i].v);
        free(d[i].q);
    }
}

static ref_mask ref_of(kvd_mask m)
{
    return m == KVD_MASK_CAUSAL ? REF_MASK_CAUSAL : REF_MASK_BLOCK;
}

/* Every page the pool handed out is held by one of the sessions: the step
 * gave back whatever its plan reserved and did not use. */
static void assert_pages_balanced(const kvd_pool *pool, kvd_session *a, kvd_session *b, const char *what)
{
    size_t held = kvd_session_pages(a) + (b ? kvd_session_pages(b) : 0);
    ck_assert_msg(kvd_pool_pages_used(pool) == held, "%s: pool has %zu pages out, sessions hold %zu", what,
                  kvd_pool_pages_used(pool), held);
}

START_TEST(standard_decode_matches_exact)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(512 * PAGE, PAGE, &pool), 0);
    const kvd_session_config c = base_config(2, 4, 2, 16);
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
    ref_session *ref = ref_session_new(2, 4, 2, 16, c.scale);
    rng r;
    rng_seed(&r, 11);
    double *want = malloc(8 * 4 * 16 * sizeof *want);
    for (int step = 0; step < 40; step++) {
        /* Step 0 is a prefill of 7 tokens; then ordinary decode, both layers
         * in one request, and every 10th step a pure block query. */
        const size_t m = step == 0 ? 7 : (step % 10 == 5 ? 0 : 1);
        const size_t m_q = step == 0 ? 7 : (m ? 1 : 3);
        const kvd_mask mask = m == m_q ? KVD_MASK_CAUSAL : KVD_MASK_BLOCK;
        entry_data d[2];
        kvd_step_entry e[2];
        for (uint32_t l = 0; l < 2; l++)
            e[l] = make_entry(&r, &c, l, m, m_q, mask, &d[l]);
        kvd_step_output out;
        ck_assert_int_eq(kvd_step_run(s, NULL, pool, e, 2, &out), KVD_STEP_OK);
        ck_assert_uint_eq(out.n_results, 2);
        ck_assert_uint_eq(out.tokens_in, 2 * m);
        ck_assert_uint_eq(out.evicted_total, 0);
        for (uint32_t l = 0; l < 2; l++) {
            ck_assert_int_eq(ref_step(ref, l, e[l].k, e[l].v, m, e[l].q, m_q, ref_of(mask), want), 0);
            ck_assert_uint_eq(out.results[l].tokens, ref_tokens(ref, l));
            ck_assert_uint_eq(out.results[l].evicted, 0);
            ck_assert(!out.results[l].has_shadow);
            double diff = ref_max_abs_diff(out.results[l].o, want, m_q * 4 * 16);
            ck_assert_msg(diff <= TOL_F32 * ref_max_abs_v(ref), "step %d layer %u: max diff %g", step, l, diff);
        }
        kvd_step_output_free(&out);
        free_data(d, 2);
        assert_pages_balanced(pool, s, NULL, "decode");
    }
    ck_assert_uint_eq(kvd_session_tokens(s), ref_total_tokens(ref));
    free(want);
    ref_session_free(ref);
    kvd_session_destroy(s, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}
END_TEST

START_TEST(short_pool_changes_nothing)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(6 * PAGE, PAGE, &pool), 0);
    kvd_session_config c = base_config(1, 2, 2, 16);
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
    const size_t spp = s->streams[0].slots_per_page;
    rng r;
    rng_seed(&r, 12);
    /* Two pages per stream: four of the six pages. */
    entry_data d;
    kvd_step_entry e = make_entry(&r, &c, 0, 2 * spp, 0, KVD_MASK_BLOCK, &d);
    kvd_step_output out;
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &e, 1, &out), KVD_STEP_OK);
    kvd_step_output_free(&out);
    free_data(&d, 1);
    ck_assert_uint_eq(kvd_pool_pages_free(pool), 2);

    /* Two more pages per stream: four, but two are free. */
    const size_t tokens = kvd_session_tokens(s), pages = kvd_session_pages(s);
    e = make_entry(&r, &c, 0, 2 * spp, 1, KVD_MASK_BLOCK, &d);
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &e, 1, &out), KVD_STEP_POOL_FULL);
    ck_assert_uint_eq(out.need_pages, 4);
    ck_assert_ptr_null(out.results);
    ck_assert_uint_eq(kvd_session_tokens(s), tokens);
    ck_assert_uint_eq(kvd_session_pages(s), pages);
    ck_assert_uint_eq(s->streams[0].appended, 2 * spp);
    ck_assert_uint_eq(kvd_pool_pages_free(pool), 2);
    free_data(&d, 1);

    /* More than the whole pool: refused as too big, not as full. */
    e = make_entry(&r, &c, 0, 4 * spp, 0, KVD_MASK_BLOCK, &d);
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &e, 1, &out), KVD_STEP_TOO_BIG);
    ck_assert_uint_eq(out.need_pages, 8);
    ck_assert_uint_eq(kvd_session_tokens(s), tokens);
    ck_assert_uint_eq(kvd_pool_pages_free(pool), 2);
    free_data(&d, 1);

    /* What fits still runs. */
    e = make_entry(&r, &c, 0, spp, 1, KVD_MASK_BLOCK, &d);
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &e, 1, &out), KVD_STEP_OK);
    ck_assert_uint_eq(out.results[0].tokens, 3 * spp);
    kvd_step_output_free(&out);
    free_data(&d, 1);
    ck_assert_uint_eq(kvd_pool_pages_free(pool), 0);
    kvd_session_destroy(s, pool);
    kvd_pool_destroy(pool);
}
END_TEST

/* Several entries of one layer in one request, with recency eviction: each
 * entry's result is its own (tokens and evicted after that entry), the
 * outputs match the evicting reference, and the pages the plan bounded for
 * the worst case come back. */
START_TEST(multi_entry_eviction_matches_model)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
    kvd_session_config c = base_config(2, 4, 2, 8);
    c.cache.eviction = KVD_EVICT_RECENCY;
    c.cache.budget = 24;
    c.cache.sink = 2;
    c.cache.recent = 4;
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
    ref_cache_config rc = {.layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 8, .scale = c.scale,
                           .policy = REF_EVICT_RECENCY, .budget = 24, .sink = 2, .recent = 4};
    ref_cache *ref = ref_cache_new(&rc);
    rng r;
    rng_seed(&r, 13);
    double *want = malloc(9 * 4 * 8 * sizeof *want);
    uint64_t evicted_total = 0;
    for (int req = 0; req < 12; req++) {
        /* layer 0 twice, then layer 1: eviction between two entries of one
         * layer frees pages the next one takes again. */
        const uint32_t layers[3] = {0, 0, 1};
        const size_t m[3] = {9, 5, 7};
        entry_data d[3];
        kvd_step_entry e[3];
        for (int i = 0; i < 3; i++)
            e[i] = make_entry(&r, &c, layers[i], m[i], 2, KVD_MASK_CAUSAL, &d[i]);
        kvd_step_output out;
        ck_assert_int_eq(kvd_step_run(s, NULL, pool, e, 3, &out), KVD_STEP_OK);
        uint64_t model_evicted = 0;
        for (int i = 0; i < 3; i++) {
            ref_entry_result res;
            const uint64_t before = ref_cache_total_evicted(ref);
            ck_assert_int_eq(ref_cache_step(ref, layers[i], e[i].k, e[i].v, m[i], e[i].q, 2, REF_MASK_CAUSAL,
                                            want, &res), 0);
            model_evicted += ref_cache_total_evicted(ref) - before;
            ck_assert_uint_eq(out.results[i].tokens, res.tokens);
            ck_assert_uint_eq(out.results[i].evicted, res.evicted);
            double diff = ref_max_abs_diff(out.results[i].o, want, 2 * 4 * 8);
            ck_assert_msg(diff <= TOL_F32 * ref_cache_max_abs_v(ref), "request %d entry %d: diff %g", req, i, diff);
        }
        ck_assert_uint_eq(out.evicted_total, model_evicted);
        evicted_total += out.evicted_total;
        kvd_step_output_free(&out);
        free_data(d, 3);
        assert_pages_balanced(pool, s, NULL, "eviction");
    }
    ck_assert_uint_eq(kvd_session_evicted(s), evicted_total);
    ck_assert_uint_eq(evicted_total, ref_cache_total_evicted(ref));
    free(want);
    ref_cache_free(ref);
    kvd_session_destroy(s, pool);
    kvd_pool_destroy(pool);
}
END_TEST

/* Shadow mode: the engine's error measure for a quantized cache agrees with
 * one taken against the double reference, and is exactly zero for an f32
 * cache (same kernel over the same numbers). */
START_TEST(shadow_measures_each_entry)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
    for (int dt = 0; dt < 2; dt++) {
        kvd_session_config c = base_config(1, 4, 2, 32);
        c.cache.dtype = dt ? KVD_DTYPE_INT8 : KVD_DTYPE_F32;
        c.shadow = true;
        const kvd_session_config exact = kvd_session_shadow_config(&c);
        ck_assert(exact.cache.dtype == KVD_DTYPE_F32 && exact.cache.eviction == KVD_EVICT_NONE && !exact.shadow);
        kvd_session *s, *shadow;
        ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
        ck_assert_int_eq(kvd_session_create(&exact, PAGE, &shadow), 0);
        ref_session *ref = ref_session_new(1, 4, 2, 32, c.scale);
        rng r;
        rng_seed(&r, 14);
        double *want = malloc(6 * 4 * 32 * sizeof *want);
        for (int step = 0; step < 6; step++) {
            /* Two entries of the one layer: each is measured on its own. */
            entry_data d[2];
            kvd_step_entry e[2];
            e[0] = make_entry(&r, &c, 0, 6, 6, KVD_MASK_CAUSAL, &d[0]);
            e[1] = make_entry(&r, &c, 0, 1, 1, KVD_MASK_CAUSAL, &d[1]);
            kvd_step_output out;
            ck_assert_int_eq(kvd_step_run(s, shadow, pool, e, 2, &out), KVD_STEP_OK);
            for (int i = 0; i < 2; i++) {
                const size_t n = e[i].m_q * 4 * 32;
                ck_assert_int_eq(ref_step(ref, 0, e[i].k, e[i].v, e[i].m, e[i].q, e[i].m_q, REF_MASK_CAUSAL, want), 0);
                double err = 0, norm = 0, max_abs = 0;
                for (size_t j = 0; j < n; j++) {
                    const double diff = out.results[i].o[j] - want[j];
                    err += diff * diff;
                    norm += want[j] * want[j];
                    max_abs = fmax(max_abs, fabs(diff));
                }
                const kvd_step_result *res = &out.results[i];
                ck_assert(res->has_shadow);
                if (!dt) {
                    ck_assert(res->relative_error == 0.0 && res->max_abs_error == 0.0);
                    continue;
                }
                ck_assert_msg(res->relative_error > 1e-4, "int8 error %g is no error", res->relative_error);
                ck_assert_msg(fabs(res->relative_error - sqrt(err / norm)) <= TOL_SHADOW_AGREEMENT,
                              "reported %g, against the double reference %g", res->relative_error, sqrt(err / norm));
                ck_assert(fabs(res->max_abs_error - max_abs) <= TOL_SHADOW_AGREEMENT);
            }
            kvd_step_output_free(&out);
            free_data(d, 2);
            assert_pages_balanced(pool, s, shadow, "shadow");
        }
        ck_assert_uint_eq(kvd_session_tokens(shadow), kvd_session_tokens(s));
        free(want);
        ref_session_free(ref);
        kvd_session_destroy(s, pool);
        kvd_session_destroy(shadow, pool);
    }
    kvd_pool_destroy(pool);
}
END_TEST

/* A two-cache with eviction keeps exactly tokens^2 pair rows per stream
 * after every entry, and answers like a four-cache with the same policy
 * (the same attention, to f32 rounding). */
START_TEST(two_cache_pair_rows_follow_eviction)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(2048 * PAGE, PAGE, &pool), 0);
    kvd_session *four, *two;
    kvd_session_config c = base_config(1, 2, 1, 8);
    c.attention = KVD_ATTN_TENSOR;
    c.cache.eviction = KVD_EVICT_RECENCY;
    c.cache.budget = 10;
    c.cache.sink = 1;
    c.tensor_cache = KVD_TENSOR_CACHE_FOUR;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &four), 0);
    c.tensor_cache = KVD_TENSOR_CACHE_TWO;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &two), 0);
    rng r;
    rng_seed(&r, 15);
    for (int step = 0; step < 12; step++) {
        const size_t m = step == 0 ? 8 : 3;
        entry_data d;
        kvd_step_entry e = make_entry(&r, &c, 0, m, 1, KVD_MASK_BLOCK, &d);
        float *k2 = rng_tensor(&r, m * 8, -1, 1), *v2 = rng_tensor(&r, m * 8, -1, 1);
        e.k2 = k2;
        e.v2 = v2;
        kvd_step_output a, b;
        ck_assert_int_eq(kvd_step_run(four, NULL, pool, &e, 1, &a), KVD_STEP_OK);
        ck_assert_int_eq(kvd_step_run(two, NULL, pool, &e, 1, &b), KVD_STEP_OK);
        const size_t n = kvd_session_stream(two, 0, 0)->n_tokens;
        ck_assert_uint_eq(b.results[0].tokens, n);
        ck_assert_uint_eq(a.results[0].tokens, n);
        ck_assert_uint_eq(kvd_session_pair_rows(two), n * n);
        for (size_t j = 0; j < 2 * 8; j++)
            ck_assert_msg(fabsf(a.results[0].o[j] - b.results[0].o[j]) <= 1e-5f, "step %d: %g vs %g", step,
                          a.results[0].o[j], b.results[0].o[j]);
        kvd_step_output_free(&a);
        kvd_step_output_free(&b);
        free(k2);
        free(v2);
        free_data(&d, 1);
    }
    ck_assert_uint_eq(kvd_session_stream(two, 0, 0)->n_tokens, 10);
    kvd_session_destroy(four, pool);
    kvd_session_destroy(two, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}
END_TEST

START_TEST(reclaim_takes_unprotected_tokens)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
    kvd_session_config c = base_config(2, 2, 2, 16);
    kvd_session *plain, *policy;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &plain), 0);
    c.cache.eviction = KVD_EVICT_RECENCY;
    c.cache.sink = 2;
    c.cache.recent = 3;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &policy), 0);
    const size_t spp = policy->streams[0].slots_per_page;
    rng r;
    rng_seed(&r, 16);
    kvd_session *both[2] = {plain, policy};
    for (int i = 0; i < 2; i++)
        for (uint32_t l = 0; l < 2; l++) {
            entry_data d;
            kvd_step_entry e = make_entry(&r, &c, l, 3 * spp, 0, KVD_MASK_BLOCK, &d);
            kvd_step_output out;
            ck_assert_int_eq(kvd_step_run(both[i], NULL, pool, &e, 1, &out), KVD_STEP_OK);
            kvd_step_output_free(&out);
            free_data(&d, 1);
        }
    ck_assert(!kvd_session_reclaimable(plain)); /* no policy: nothing it would give up */
    ck_assert(kvd_session_reclaimable(policy));

    /* Asking for one more free page stops after the first stream. */
    const size_t free_before = kvd_pool_pages_free(pool);
    ck_assert_uint_eq(kvd_session_reclaim(policy, pool, free_before + 1), 3 * spp - 5);
    ck_assert_uint_eq(policy->streams[0].n_tokens, 5);
    ck_assert_uint_eq(policy->streams[1].n_tokens, 3 * spp);
    ck_assert_uint_eq(kvd_pool_pages_free(pool), free_before + 2);
    /* Asking for everything takes every stream down to sink + recent. */
    ck_assert_uint_eq(kvd_session_reclaim(policy, pool, SIZE_MAX), 3 * (3 * spp - 5));
    for (size_t j = 0; j < policy->n_streams; j++)
        ck_assert_uint_eq(policy->streams[j].n_tokens, 5);
    ck_assert(!kvd_session_reclaimable(policy));
    ck_assert_uint_eq(kvd_session_tokens(plain), 4 * 3 * spp);
    assert_pages_balanced(pool, plain, policy, "reclaim");
    kvd_session_destroy(plain, pool);
    kvd_session_destroy(policy, pool);
    kvd_pool_destroy(pool);
}
END_TEST

/* A session with a page shared with a fork is not reclaimable: evicting
 * would first copy pages, the very thing a full pool lacks. */
START_TEST(fork_blocks_reclaim_and_unused_pages_return)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(64 * PAGE, PAGE, &pool), 0);
    kvd_session_config c = base_config(1, 1, 1, 16);
    c.cache.eviction = KVD_EVICT_RECENCY;
    c.cache.sink = 1;
    kvd_session *s, *child;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
    rng r;
    rng_seed(&r, 17);
    entry_data d;
    kvd_step_entry e = make_entry(&r, &c, 0, 3 * s->streams[0].slots_per_page, 0, KVD_MASK_BLOCK, &d);
    kvd_step_output out;
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &e, 1, &out), KVD_STEP_OK);
    kvd_step_output_free(&out);
    free_data(&d, 1);
    ck_assert(kvd_session_reclaimable(s));
    ck_assert_int_eq(kvd_session_fork(s, pool, &child), 0);
    ck_assert(!kvd_session_reclaimable(s));
    ck_assert(!kvd_session_reclaimable(child));

    /* The child's next append lands in a new page (the shared tail is
     * full), but the plan must bound copies of shared pages too: what it
     * reserved and did not use goes back. */
    const size_t used_before = kvd_pool_pages_used(pool), child_pages = kvd_session_pages(child);
    e = make_entry(&r, &c, 0, 1, 1, KVD_MASK_CAUSAL, &d);
    ck_assert_int_eq(kvd_step_run(child, NULL, pool, &e, 1, &out), KVD_STEP_OK);
    kvd_step_output_free(&out);
    free_data(&d, 1);
    ck_assert_uint_eq(kvd_session_pages(child), child_pages + 1);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), used_before + 1);
    kvd_session_destroy(child, pool);
    kvd_session_destroy(s, pool);
    kvd_pool_destroy(pool);
}
END_TEST

/* One step of m tokens (k1, v1, k2, v2 random) with m_q block queries on a
 * tensor session; the output is the caller's (kvd_step_output_free). */
static void tensor_step(kvd_session *s, kvd_pool *pool, rng *r, size_t m, size_t m_q, kvd_step_output *out)
{
    const kvd_session_config *c = &s->config;
    entry_data d;
    kvd_step_entry e = make_entry(r, c, 0, m, m_q, KVD_MASK_BLOCK, &d);
    const size_t row = (size_t)c->kv_heads * c->head_dim;
    float *k2 = m ? rng_tensor(r, m * row, -1, 1) : NULL, *v2 = m ? rng_tensor(r, m * row, -1, 1) : NULL;
    e.k2 = k2;
    e.v2 = v2;
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &e, 1, out), KVD_STEP_OK);
    free(k2);
    free(v2);
    free_data(&d, 1);
}

/* Issue 10 bug 1: reclaim on a tensor two-cache left tokens 3 and pair_rows
 * 3600, so the next query read stale rows and the next append overflowed its
 * pages. Reclaim now rebuilds the pair rows (tokens^2 again, answering like
 * a four-cache reclaimed alike), keeps k2/v2 in step for both layouts, and
 * refuses the KIVI two-cache, whose rebuild would need pages (see
 * cache/reclaim.h). The same seed drives both sessions. */
START_TEST(reclaim_keeps_tensor_sessions_consistent)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(4096 * PAGE, PAGE, &pool), 0);
    kvd_session_config c = base_config(1, 2, 1, 8);
    c.attention = KVD_ATTN_TENSOR;
    c.cache.eviction = KVD_EVICT_RECENCY;
    c.cache.sink = 1;
    c.cache.recent = 2;
    kvd_session *four, *two;
    c.tensor_cache = KVD_TENSOR_CACHE_FOUR;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &four), 0);
    c.tensor_cache = KVD_TENSOR_CACHE_TWO;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &two), 0);
    kvd_session *both[2] = {four, two};
    for (int i = 0; i < 2; i++) {
        rng r;
        rng_seed(&r, 18);
        kvd_step_output out;
        tensor_step(both[i], pool, &r, 60, 0, &out);
        kvd_step_output_free(&out);
        ck_assert(kvd_session_reclaimable(both[i]));
        ck_assert_uint_eq(kvd_session_reclaim(both[i], pool, SIZE_MAX), 57);
        ck_assert_uint_eq(both[i]->streams[0].n_tokens, 3);
        ck_assert_uint_eq(both[i]->tensor_b[0].n_tokens, 3);
    }
    ck_assert_uint_eq(kvd_session_pair_rows(two), 9);
    kvd_step_output a, b;
    for (int round = 0; round < 2; round++) { /* a query, then an append that grows the pair rows */
        rng r;
        rng_seed(&r, 19 + round);
        tensor_step(four, pool, &r, 5, 1, &a);
        rng_seed(&r, 19 + round);
        tensor_step(two, pool, &r, 5, 1, &b);
        for (size_t j = 0; j < 2 * 8; j++)
            ck_assert_msg(fabsf(a.results[0].o[j] - b.results[0].o[j]) <= 1e-5f, "round %d: %g vs %g", round,
                          a.results[0].o[j], b.results[0].o[j]);
        kvd_step_output_free(&a);
        kvd_step_output_free(&b);
        const size_t n = 3 + 5 * (size_t)(round + 1);
        ck_assert_uint_eq(kvd_session_pair_rows(two), n * n);
    }
    assert_pages_balanced(pool, four, two, "tensor reclaim");
    kvd_session_destroy(four, pool);
    kvd_session_destroy(two, pool);

    /* KIVI: a four-cache reclaims (k2/v2 follow as a mirror), a two-cache
     * does not. */
    c.cache.dtype = KVD_DTYPE_KIVI4;
    for (int i = 0; i < 2; i++) {
        c.tensor_cache = i ? KVD_TENSOR_CACHE_TWO : KVD_TENSOR_CACHE_FOUR;
        kvd_session *k;
        ck_assert_int_eq(kvd_session_create(&c, PAGE, &k), 0);
        rng r;
        rng_seed(&r, 21);
        kvd_step_output out;
        tensor_step(k, pool, &r, 250, 0, &out); /* over a page (192 slots) evictable */
        kvd_step_output_free(&out);
        ck_assert_msg(kvd_session_reclaimable(k) == !i, "spp %u evictable %zu", k->streams[0].slots_per_page, kvd_stream_evictable(&k->streams[0]));
        if (!i) {
            ck_assert_uint_eq(kvd_session_reclaim(k, pool, SIZE_MAX), 247);
            ck_assert_uint_eq(k->tensor_b[0].n_tokens, 3);
            tensor_step(k, pool, &r, 40, 1, &out);
            kvd_step_output_free(&out);
            ck_assert_uint_eq(k->tensor_b[0].n_tokens, k->streams[0].n_tokens);
        }
        assert_pages_balanced(pool, k, NULL, "KIVI tensor reclaim");
        kvd_session_destroy(k, pool);
    }
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("cache/step");
    TCase *tc = tcase_create("step");
    tcase_add_test(tc, standard_decode_matches_exact);
    tcase_add_test(tc, short_pool_changes_nothing);
    tcase_add_test(tc, multi_entry_eviction_matches_model);
    tcase_add_test(tc, shadow_measures_each_entry);
    tcase_add_test(tc, two_cache_pair_rows_follow_eviction);
    tcase_add_test(tc, reclaim_takes_unprotected_tokens);
    tcase_add_test(tc, fork_blocks_reclaim_and_unused_pages_return);
    tcase_add_test(tc, reclaim_keeps_tensor_sessions_consistent);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
