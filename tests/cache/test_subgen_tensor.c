/* tests/cache/test_subgen_tensor.c — SubGen4Cache (tensor attention, four
 * caches, eviction subgen) through the step engine: exact when the sketched
 * tokens are one cluster of identical rows, close to exact tensor attention
 * on clustered keys, reproducible bit for bit across step splits, and a
 * step the pool cannot hold failing whole. */
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

#define PAGE 4096
#define D 8
/* Exact cases: double accumulation, f32 in and out. */
#define TOL_EXACT 1e-5
/* Clustered keys (spread far inside the radius), t = 16, s = 256: the
 * estimate's relative error is a few percent; 0.25 leaves room for the
 * sampling noise while still failing a wrong term (which is off by O(1)). */
#define TOL_CLUSTERED 0.25

static kvd_session_config four_config(uint32_t t, uint32_t s)
{
    kvd_session_config c;
    memset(&c, 0, sizeof c);
    c.layers = 1;
    c.heads = 2;
    c.kv_heads = 1;
    c.head_dim = D;
    c.attention = KVD_ATTN_TENSOR;
    c.tensor_cache = KVD_TENSOR_CACHE_FOUR;
    c.scale = 1.0f / sqrtf((float)D);
    c.cache.dtype = KVD_DTYPE_F32;
    c.cache.eviction = KVD_EVICT_SUBGEN;
    c.cache.group = c.cache.residual = 32;
    c.cache.sink = 2;
    c.cache.recent = 3;
    c.cache.delta = 0.5;
    c.cache.cluster_samples = t;
    c.cache.value_samples = s;
    c.seed = 3;
    c.ttl_seconds = 600;
    return c;
}

/* Exact tensor attention in double over n tokens (rows of D). */
static void exact_tensor(const float *k1, const float *k2, const float *v1, const float *v2, size_t n,
                         const float *q, double scale, double *o)
{
    double mx = -INFINITY, den = 0;
    for (size_t j = 0; j < n; j++)
        for (size_t k = 0; k < n; k++) {
            double x = 0;
            for (int c = 0; c < D; c++)
                x += (double)q[c] * k1[j * D + c] * k2[k * D + c];
            mx = fmax(mx, scale * x);
        }
    memset(o, 0, D * sizeof *o);
    for (size_t j = 0; j < n; j++)
        for (size_t k = 0; k < n; k++) {
            double x = 0;
            for (int c = 0; c < D; c++)
                x += (double)q[c] * k1[j * D + c] * k2[k * D + c];
            const double e = exp(scale * x - mx);
            den += e;
            for (int c = 0; c < D; c++)
                o[c] += e * v1[j * D + c] * v2[k * D + c];
        }
    for (int c = 0; c < D; c++)
        o[c] /= den;
}

typedef struct data {
    float *k1, *k2, *v1, *v2, *q;
} data;

static data make(size_t n, uint64_t seed, bool identical_middle, bool clustered)
{
    rng r;
    rng_seed(&r, seed);
    data x = {rng_tensor(&r, n * D, -1, 1), rng_tensor(&r, n * D, -1, 1), rng_tensor(&r, n * D, -1, 1),
              rng_tensor(&r, n * D, -1, 1), rng_tensor(&r, 2 * D, -1, 1)};
    float *rows[4] = {x.k1, x.k2, x.v1, x.v2};
    for (size_t j = 3; identical_middle && j < n; j++)
        for (int a = 0; a < 4; a++)
            memcpy(rows[a] + j * D, rows[a] + 2 * D, D * sizeof(float));
    if (clustered) { /* 3 centres per side, spread 0.02; values = centre mean + 0.2 noise */
        float c1[3][D], c2[3][D], m1[3][D], m2[3][D];
        rng_fill(&r, &c1[0][0], 3 * D, -2, 2);
        rng_fill(&r, &c2[0][0], 3 * D, -2, 2);
        rng_fill(&r, &m1[0][0], 3 * D, -1, 1);
        rng_fill(&r, &m2[0][0], 3 * D, -1, 1);
        for (size_t j = 0; j < n; j++) {
            const size_t a = rng_next(&r) % 3, b = rng_next(&r) % 3;
            for (int c = 0; c < D; c++) {
                x.k1[j * D + c] = c1[a][c] + (float)rng_uniform(&r, -0.02, 0.02);
                x.k2[j * D + c] = c2[b][c] + (float)rng_uniform(&r, -0.02, 0.02);
                x.v1[j * D + c] = m1[a][c] + (float)rng_uniform(&r, -0.2, 0.2);
                x.v2[j * D + c] = m2[b][c] + (float)rng_uniform(&r, -0.2, 0.2);
            }
        }
    }
    return x;
}

static void data_free(data *x)
{
    free(x->k1);
    free(x->k2);
    free(x->v1);
    free(x->v2);
    free(x->q);
}

/* Feeds n tokens in steps of `chunk`, then one query; returns o (2 heads). */
static void run(const kvd_session_config *cfg, kvd_pool *pool, const data *x, size_t n, size_t chunk, float *o,
                kvd_session **keep)
{
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(cfg, PAGE, &s), 0);
    kvd_step_output out;
    for (size_t i = 0; i < n; i += chunk) {
        const size_t m = i + chunk <= n ? chunk : n - i;
        kvd_step_entry e = {.layer = 0, .m = m, .k = x->k1 + i * D, .v = x->v1 + i * D, .k2 = x->k2 + i * D,
                            .v2 = x->v2 + i * D, .mask = KVD_MASK_BLOCK};
        ck_assert_int_eq(kvd_step_run(s, NULL, pool, &e, 1, &out), KVD_STEP_OK);
        kvd_step_output_free(&out);
    }
    kvd_step_entry e = {.layer = 0, .m_q = 1, .q = x->q, .mask = KVD_MASK_BLOCK};
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &e, 1, &out), KVD_STEP_OK);
    memcpy(o, out.results[0].o, 2 * D * sizeof *o);
    kvd_step_output_free(&out);
    if (keep)
        *keep = s;
    else
        kvd_session_destroy(s, pool);
}

static double rel_error(const float *o, const double *want)
{
    double e = 0, r = 0;
    for (int c = 0; c < D; c++) {
        e += (o[c] - want[c]) * (o[c] - want[c]);
        r += want[c] * want[c];
    }
    return sqrt(e / r);
}

/* Sketched tokens all alike (k1, k2, v1, v2 each one row; t >= their count):
 * every sketched term (E x S, S x E, S x S) is exact. */
START_TEST(test_four_exact)
{
    const size_t n = 30;
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(128 * PAGE, PAGE, &pool), 0);
    kvd_session_config cfg = four_config(64, 16);
    data x = make(n, 5, true, false);
    /* the window keeps positions 0, 1 (sink) and n-3 .. n-1 (recent): give
     * those their own rows so the exact part is not trivial */
    rng r;
    rng_seed(&r, 6);
    float *rows[4] = {x.k1, x.k2, x.v1, x.v2};
    for (size_t j = n - 3; j < n; j++)
        for (int a = 0; a < 4; a++)
            rng_fill(&r, rows[a] + j * D, D, -1, 1);
    float o[2 * D];
    kvd_session *s;
    run(&cfg, pool, &x, n, 7, o, &s);
    ck_assert_uint_eq(s->subgen[0].n_clusters, 1);
    ck_assert_uint_eq(s->subgen_b[0].n_clusters, 1);
    ck_assert_uint_eq(s->subgen[0].items, n - 5);
    ck_assert_uint_eq(s->streams[0].n_tokens, 5);
    ck_assert_uint_eq(s->tensor_b[0].n_tokens, 5);
    for (int h = 0; h < 2; h++) {
        double want[D];
        exact_tensor(x.k1, x.k2, x.v1, x.v2, n, x.q + h * D, cfg.scale, want);
        for (int c = 0; c < D; c++)
            ck_assert_double_eq_tol(o[h * D + c], want[c], TOL_EXACT);
    }
    kvd_session_destroy(s, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    data_free(&x);
    kvd_pool_destroy(pool);
}
END_TEST

/* Clustered keys (3 x 3 cluster pairs): close to exact tensor attention,
 * memory independent of n once every cluster is open; and the same seed
 * gives the same bits however the tokens were split into steps. */
START_TEST(test_four_clustered_and_reproducible)
{
    const size_t n = 400;
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(512 * PAGE, PAGE, &pool), 0);
    kvd_session_config cfg = four_config(16, 256);
    data x = make(n, 9, false, true);
    float o[2 * D], o_split[2 * D];
    kvd_session *s;
    run(&cfg, pool, &x, n, 400, o, &s);
    ck_assert_uint_le(s->subgen[0].n_clusters, 3);
    ck_assert_uint_le(s->subgen_b[0].n_clusters, 3);
    for (int h = 0; h < 2; h++) {
        double want[D];
        exact_tensor(x.k1, x.k2, x.v1, x.v2, n, x.q + h * D, cfg.scale, want);
        const double err = rel_error(o + h * D, want);
        ck_assert_msg(err < TOL_CLUSTERED, "head %d: relative error %g", h, err);
    }
    kvd_session_destroy(s, pool);
    run(&cfg, pool, &x, n, 13, o_split, NULL);
    ck_assert_mem_eq(o, o_split, sizeof o);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    data_free(&x);
    kvd_pool_destroy(pool);
}
END_TEST

/* A step the pool cannot hold: nothing changes, in either sketch. */
START_TEST(test_four_pool_full)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(20 * PAGE, PAGE, &pool), 0);
    kvd_session_config cfg = four_config(32, 4);
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    data x = make(200, 2, false, false);
    kvd_step_entry e = {.layer = 0, .m = 10, .k = x.k1, .v = x.v1, .k2 = x.k2, .v2 = x.v2, .mask = KVD_MASK_BLOCK};
    kvd_step_output out;
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &e, 1, &out), KVD_STEP_OK);
    kvd_step_output_free(&out);
    const size_t pages = kvd_session_pages(s), used = kvd_pool_pages_used(pool);
    const size_t c1 = s->subgen[0].n_clusters, c2 = s->subgen_b[0].n_clusters;
    e.m = 100;
    e.k = x.k1 + 10 * D;
    e.v = x.v1 + 10 * D;
    e.k2 = x.k2 + 10 * D;
    e.v2 = x.v2 + 10 * D;
    const int rc = kvd_step_run(s, NULL, pool, &e, 1, &out);
    ck_assert(rc == KVD_STEP_POOL_FULL || rc == KVD_STEP_TOO_BIG);
    ck_assert_uint_eq(kvd_session_pages(s), pages);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), used);
    ck_assert_uint_eq(s->subgen[0].n_clusters, c1);
    ck_assert_uint_eq(s->subgen_b[0].n_clusters, c2);
    ck_assert_uint_eq(s->streams[0].n_tokens, 5);
    ck_assert_uint_eq(s->tensor_b[0].n_tokens, 5);
    kvd_session_destroy(s, pool);
    data_free(&x);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}
END_TEST

/* Shadow mode for tensor sessions: the copy is an exact f32 four-cache fed
 * the same entries, and each step reports the live output's error against
 * it. _i: 0 an exact four-cache (error exactly 0: the same kernel on the
 * same rows), 1 a four-cache with a window of 6 (0 until it slides, then
 * > 0), 2 an exact two-cache (its copy is a four-cache: rounding only),
 * 3 SubGen4Cache on clustered keys (the error the double reference gives).
 * The pool holds exactly the session's and the copy's pages. */
START_TEST(test_tensor_shadow)
{
    const size_t n = 40;
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(512 * PAGE, PAGE, &pool), 0);
    kvd_session_config cfg = four_config(16, 256);
    if (_i < 3) {
        cfg.cache.eviction = KVD_EVICT_NONE;
        cfg.cache.sink = cfg.cache.recent = 0;
        cfg.window = _i == 1 ? 6 : 0;
        cfg.tensor_cache = _i == 2 ? KVD_TENSOR_CACHE_TWO : KVD_TENSOR_CACHE_FOUR;
    }
    cfg.shadow = true;
    const kvd_session_config xc = kvd_session_shadow_config(&cfg);
    ck_assert(xc.attention == KVD_ATTN_TENSOR && xc.tensor_cache == KVD_TENSOR_CACHE_FOUR && xc.window == 0 &&
              xc.cache.eviction == KVD_EVICT_NONE && !xc.shadow);
    kvd_session *s, *sh;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    ck_assert_int_eq(kvd_session_create(&xc, PAGE, &sh), 0);
    data x = make(n, 21, false, _i == 3);
    kvd_step_output out;
    for (size_t i = 0; i < n; i += 5) {
        /* 5 tokens, then a query over everything so far */
        kvd_step_entry e[2] = {{.layer = 0, .m = 5, .k = x.k1 + i * D, .v = x.v1 + i * D, .k2 = x.k2 + i * D,
                                .v2 = x.v2 + i * D, .mask = KVD_MASK_BLOCK},
                               {.layer = 0, .m_q = 1, .q = x.q, .mask = KVD_MASK_BLOCK}};
        ck_assert_int_eq(kvd_step_run(s, sh, pool, e, 2, &out), KVD_STEP_OK);
        const kvd_step_result *r = &out.results[1];
        ck_assert(r->has_shadow);
        ck_assert_uint_eq(kvd_pool_pages_used(pool), kvd_session_pages(s) + kvd_session_pages(sh));
        ck_assert_uint_eq(kvd_session_tokens(sh), i + 5);
        double want[2][D];
        exact_tensor(x.k1, x.k2, x.v1, x.v2, i + 5, x.q, cfg.scale, want[0]);
        exact_tensor(x.k1, x.k2, x.v1, x.v2, i + 5, x.q + D, cfg.scale, want[1]);
        double err = 0, ref = 0;
        for (int h = 0; h < 2; h++)
            for (int c = 0; c < D; c++) {
                err += (r->o[h * D + c] - want[h][c]) * (r->o[h * D + c] - want[h][c]);
                ref += want[h][c] * want[h][c];
            }
        const double rel = sqrt(err / ref);
        if (_i == 0 || (_i == 1 && i + 5 <= 6)) {
            ck_assert_msg(r->relative_error == 0 && r->max_abs_error == 0, "exact: %g", r->relative_error);
        } else if (_i == 2) {
            ck_assert_msg(r->relative_error < TOL_EXACT, "two-cache against four: %g", r->relative_error);
        } else {
            /* the error the shadow reports is the one against exact attention */
            ck_assert_msg(r->relative_error > 0, "step %zu: no error reported", i);
            ck_assert_msg(fabs(r->relative_error - rel) <= 1e-4 * rel + TOL_EXACT, "reported %g, reference %g",
                          r->relative_error, rel);
            if (_i == 3)
                ck_assert_msg(rel < TOL_CLUSTERED, "SubGen4Cache error %g", rel);
        }
        kvd_step_output_free(&out);
    }
    kvd_session_destroy(s, pool);
    kvd_session_destroy(sh, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    data_free(&x);
    kvd_pool_destroy(pool);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("subgen_tensor");
    TCase *tc = tcase_create("four");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_four_exact);
    tcase_add_test(tc, test_four_clustered_and_reproducible);
    tcase_add_test(tc, test_four_pool_full);
    tcase_add_loop_test(tc, test_tensor_shadow, 0, 4);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
