/* tests/cache/test_subgen_cap.c — SubGen's cluster cap (cache.max_clusters,
 * cache/subgen.c kvd_subgen_assign; docs/subgen.md "The cluster cap"): the
 * cap holds, every key is counted, bytes stay within the documented bound,
 * past the cap a key joins the nearest centre, the estimator stays exact
 * where it was and unbiased on unclustered keys, and the step's page plan
 * (cache/plan.c dry_run) predicts "joins the nearest" exactly. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "cache/pool.h"
#include "cache/session.h"
#include "cache/step.h"
#include "cache/subgen.h"
#include "tests/support/check_main.h"
#include "tests/support/kvd_data.h"

#define PAGE 4096
/* Exact cases: double accumulation. */
#define TOL_EXACT 1e-12

static double gauss(rng *r)
{
    double u1 = rng_uniform(r, 1e-12, 1), u2 = rng_uniform(r, 0, 1);
    return sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
}

/* A sketch fed n tokens straight (no session), pages from its own pool. */
typedef struct fed {
    kvd_pool *pool;
    kvd_subgen g;
} fed;

static void feed(fed *f, const float *k, const float *v, size_t n, size_t d)
{
    for (size_t j = 0; j < n; j++) {
        ck_assert_int_eq(kvd_subgen_reserve(&f->g, 1), 0);
        const size_t need = kvd_subgen_pages_bound(&f->g, 1);
        void *pages[16];
        ck_assert_uint_le(need, 16);
        ck_assert_int_eq(kvd_pool_alloc(f->pool, need, pages), 0);
        size_t used = 0;
        kvd_subgen_insert(&f->g, k + j * d, v + j * d, pages, need, &used);
        kvd_pool_release(f->pool, pages + used, need - used);
    }
}

static void fed_done(fed *f)
{
    kvd_subgen_release(&f->g, f->pool);
    ck_assert_uint_eq(kvd_pool_pages_used(f->pool), 0);
    kvd_pool_destroy(f->pool);
}

static uint64_t count_sum(const kvd_subgen *g)
{
    uint64_t sum = 0;
    for (size_t c = 0; c < g->n_clusters; c++)
        sum += *(const uint64_t *)kvd__subgen_row(&g->counts, c);
    return sum;
}

/* Unclustered Gaussian keys (every pair farther apart than delta): capped,
 * exactly max_clusters clusters open and no more; the counts sum to the
 * tokens sketched; the payload is exactly max_clusters (t + 1) head_dim
 * floats + max_clusters counts + s (k, v) samples, and the pages the
 * bound for n tokens asks no more than that rounded up per row array.
 * Uncapped (0), every key opens its own. */
START_TEST(test_cap_holds)
{
    const size_t d = 16, n = 400, t = 4, s = 8;
    const uint32_t cap = _i == 0 ? 8 : _i == 1 ? 1 : 0;
    rng r;
    rng_seed(&r, 17);
    float *k = malloc(n * d * sizeof *k), *v = rng_tensor(&r, n * d, -1, 1);
    for (size_t j = 0; j < n * d; j++)
        k[j] = (float)gauss(&r);
    fed f;
    ck_assert_int_eq(kvd_pool_create(4096 * PAGE, PAGE, &f.pool), 0);
    kvd_subgen_init(&f.g, (uint32_t)d, PAGE, 0.1, 1.0f, (uint32_t)t, (uint32_t)s, cap, 3, 0);
    const size_t bound = kvd_subgen_pages_bound(&f.g, n);
    feed(&f, k, v, n, d);
    const size_t want = cap ? cap : n;
    ck_assert_uint_eq(f.g.n_clusters, want);
    ck_assert_uint_eq(f.g.items, n);
    ck_assert_uint_eq(count_sum(&f.g), n);
    const size_t key = d * sizeof(float);
    ck_assert_uint_eq(kvd_subgen_payload_bytes(&f.g), want * (t + 1) * key + want * 8 + s * 2 * key);
    ck_assert_uint_eq(kvd_subgen_pages(&f.g), bound); /* the bound for n tokens is met exactly here */
    if (cap)
        ck_assert_uint_eq(kvd_subgen_pages_bound(&f.g, 1000), 0); /* full: no token opens anything */
    free(k);
    free(v);
    fed_done(&f);
}
END_TEST

/* Past the cap a key joins the nearest centre (the first of equals), its
 * count and reservoir like any member's; one within the radius still joins
 * the first such centre. */
START_TEST(test_joins_nearest)
{
    const size_t d = 4;
    fed f;
    ck_assert_int_eq(kvd_pool_create(64 * PAGE, PAGE, &f.pool), 0);
    kvd_subgen_init(&f.g, (uint32_t)d, PAGE, 0.5, 1.0f, 4, 2, 2, 1, 0);
    const float k[][4] = {{0, 0, 0, 0}, {10, 0, 0, 0}, {9, 0, 0, 0}, {1, 0, 0, 0}, {5, 0, 0, 0}, {0, 0, 0.3f, 0}};
    const float v[4] = {1, 0, 0, 0};
    const size_t want[] = {0, 1, 1, 0, 0, 0}; /* {5,0,0,0} is 5 from both: the first */
    for (size_t j = 0; j < 6; j++) {
        ck_assert_uint_eq(kvd_subgen_find(&f.g, k[j]), want[j] < f.g.n_clusters ? want[j] : f.g.n_clusters);
        feed(&f, k[j], v, 1, d);
    }
    ck_assert_uint_eq(f.g.n_clusters, 2);
    ck_assert_uint_eq(*(const uint64_t *)kvd__subgen_row(&f.g.counts, 0), 4);
    ck_assert_uint_eq(*(const uint64_t *)kvd__subgen_row(&f.g.counts, 1), 2);
    /* members go to the reservoir (t = 4 >= count: every one kept, in order) */
    ck_assert_mem_eq(kvd__subgen_row(&f.g.reservoir, 1 * 4 + 1), k[2], sizeof k[2]);
    ck_assert_mem_eq(kvd__subgen_row(&f.g.reservoir, 0 * 4 + 2), k[4], sizeof k[4]);
    /* The plan's form: clusters opened earlier in the same request (fresh,
     * not laid out yet) count toward the cap and are candidates. */
    kvd_subgen g1;
    kvd_subgen_init(&g1, (uint32_t)d, PAGE, 0.5, 1.0f, 4, 2, 2, 1, 0);
    const float *fresh[2] = {k[0], k[1]};
    ck_assert_uint_eq(kvd_subgen_assign(&g1, k[2], fresh, 1), 1); /* one open: room for a second */
    ck_assert_uint_eq(kvd_subgen_assign(&g1, k[2], fresh, 2), 1); /* cap reached: nearest, fresh[1] */
    ck_assert_uint_eq(kvd_subgen_assign(&g1, k[4], fresh, 2), 0); /* equals: the first */
    ck_assert_uint_eq(kvd_subgen_assign(&g1, k[5], fresh, 2), 0); /* within the radius */
    fed_done(&f);
}
END_TEST

/* Where the estimator was exact it stays exact: one cluster of identical
 * keys under cap 1; and, the cap's point, unclustered keys all forced into
 * one cluster with t >= their count (weight n / |R| = 1) give the exact
 * denominator sum_j exp(scale <q, k_j>) too. */
START_TEST(test_exact_with_cap)
{
    const size_t d = 8, n = 60;
    rng r;
    rng_seed(&r, 9);
    float *k = malloc(n * d * sizeof *k), *v = rng_tensor(&r, n * d, -1, 1), q[8];
    for (size_t j = 0; j < n * d; j++)
        k[j] = _i == 0 ? (j < d ? (float)gauss(&r) : k[j % d]) : (float)gauss(&r);
    for (size_t c = 0; c < d; c++)
        q[c] = (float)gauss(&r);
    const float scale = 0.35f;
    fed f;
    ck_assert_int_eq(kvd_pool_create(64 * PAGE, PAGE, &f.pool), 0);
    kvd_subgen_init(&f.g, (uint32_t)d, PAGE, 0.05, scale, 64, 4, 1, 5, 0);
    feed(&f, k, v, n, d);
    ck_assert_uint_eq(f.g.n_clusters, 1);
    double want = 0;
    for (size_t j = 0; j < n; j++) {
        double x = 0;
        for (size_t c = 0; c < d; c++)
            x += (double)q[c] * k[j * d + c];
        want += exp((double)scale * x);
    }
    double num[8];
    kvd_subgen_acc acc;
    kvd_subgen_acc_reset(&acc, num, d);
    kvd_subgen_attend(&f.g, q, scale, &acc);
    ck_assert_double_eq_tol(acc.den * exp(acc.max) / want, 1.0, TOL_EXACT);
    free(k);
    free(v);
    fed_done(&f);
}
END_TEST

/* Unbiased for any partition: on unclustered Gaussian keys (no two within
 * delta, drifting along q) under cap 4, t = 8 (|R_c| < n_c: the reservoirs sample), the
 * denominator estimate averaged over SEEDS independent sketches is the exact
 * sum within MEAN_TOL; every estimate and the output's relative error are
 * finite (printed). A reservoir that is not uniform over a cluster's
 * members (one keeping its first t: mean 0.20) misses the mean. */
#define SEEDS 300
/* The mean of SEEDS ratios: their spread (measured: sd 0.33 per sketch
 * here) over sqrt(300) is 0.019; 0.06 is 3 standard errors. The seeds are
 * fixed, so the outcome is too (measured mean: 1.0014). */
#define MEAN_TOL 0.06
START_TEST(test_unbiased_unclustered)
{
    const size_t d = 8, n = 400;
    const uint32_t cap = 4, t = 8, s = 64;
    rng r;
    rng_seed(&r, 23);
    float *k = malloc(n * d * sizeof *k), *v = malloc(n * d * sizeof *v), q[8];
    double qq = 0;
    for (size_t c = 0; c < d; c++) {
        q[c] = (float)gauss(&r);
        qq += (double)q[c] * q[c];
    }
    /* Keys drift toward q over the stream (later tokens score higher), so a
     * reservoir that is not uniform over a cluster's members is biased. */
    for (size_t j = 0; j < n; j++)
        for (size_t c = 0; c < d; c++) {
            k[j * d + c] = (float)(gauss(&r) + 2.0 * (double)j / (double)n * q[c] / sqrt(qq));
            v[j * d + c] = (float)(1.0 + 0.5 * gauss(&r));
        }
    const float scale = 0.35f;
    double tau = 0, nu[8] = {0};
    for (size_t j = 0; j < n; j++) {
        double x = 0;
        for (size_t c = 0; c < d; c++)
            x += (double)q[c] * k[j * d + c];
        const double e = exp((double)scale * x);
        tau += e;
        for (size_t c = 0; c < d; c++)
            nu[c] += e * v[j * d + c];
    }
    double sum_ratio = 0, sum_ratio2 = 0, sum_rel = 0, worst = 0;
    for (int seed = 0; seed < SEEDS; seed++) {
        fed f;
        ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &f.pool), 0);
        kvd_subgen_init(&f.g, (uint32_t)d, PAGE, 0.05, scale, t, s, cap, (uint64_t)seed, 0);
        feed(&f, k, v, n, d);
        ck_assert_uint_eq(f.g.n_clusters, cap);
        double num[8];
        kvd_subgen_acc acc;
        kvd_subgen_acc_reset(&acc, num, d);
        kvd_subgen_attend(&f.g, q, scale, &acc);
        const double den = acc.den * exp(acc.max);
        ck_assert(isfinite(den) && den > 0);
        sum_ratio += den / tau;
        sum_ratio2 += (den / tau) * (den / tau);
        double err = 0, norm = 0;
        for (size_t c = 0; c < d; c++) {
            const double o = num[c] / acc.den, want = nu[c] / tau;
            err += (o - want) * (o - want);
            norm += want * want;
        }
        const double rel = sqrt(err / norm);
        ck_assert(isfinite(rel));
        sum_rel += rel;
        worst = rel > worst ? rel : worst;
        fed_done(&f);
    }
    const double mean = sum_ratio / SEEDS;
    const double sd = sqrt(sum_ratio2 / SEEDS - mean * mean);
    printf("subgen cap %u, t %u, s %u, unclustered n %zu: mean den ratio %.4f (sd %.4f), "
           "output relative error mean %.4f worst %.4f over %d seeds\n",
           cap, t, s, n, mean, sd, sum_rel / SEEDS, worst, SEEDS);
    ck_assert_double_eq_tol(mean, 1.0, MEAN_TOL);
    free(k);
    free(v);
}
END_TEST

static kvd_session_config cap_config(uint32_t d, uint32_t t, uint32_t s, uint32_t cap, bool four)
{
    kvd_session_config c;
    memset(&c, 0, sizeof c);
    c.layers = 1;
    c.heads = 2;
    c.kv_heads = four ? 1 : 2;
    c.head_dim = d;
    c.scale = 1.0f / sqrtf((float)d);
    if (four) {
        c.attention = KVD_ATTN_TENSOR;
        c.tensor_cache = KVD_TENSOR_CACHE_FOUR;
    }
    c.cache.dtype = KVD_DTYPE_F32;
    c.cache.eviction = KVD_EVICT_SUBGEN;
    c.cache.group = c.cache.residual = 32;
    c.cache.sink = 3;
    c.cache.recent = 5;
    c.cache.delta = 0.3;
    c.cache.cluster_samples = t;
    c.cache.value_samples = s;
    c.cache.max_clusters = cap;
    c.seed = 11;
    c.ttl_seconds = 600;
    return c;
}

/* The plan's dry run predicts "joins the nearest" exactly: a capped session
 * stepped in requests of several entries of one layer (queries between)
 * ends with the sketch one-at-a-time kvd_subgen_insert builds — clusters
 * (at the cap), counts, centres, F, random state — and the pool holds
 * exactly the session's pages after each step. SubGen4Cache (_i == 1):
 * the cap holds in the k1 and the k2 sketch both. */
START_TEST(test_plan_with_cap)
{
    const bool four = _i == 1;
    const uint32_t d = 8, cap = 5, kvh = four ? 1 : 2;
    kvd_pool *pool, *ref_pool;
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &ref_pool), 0);
    kvd_session_config cfg = cap_config(d, 3, 8, cap, four);
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    const size_t n = 120, row = (size_t)kvh * d;
    rng r;
    rng_seed(&r, 5);
    float *k = rng_tensor(&r, n * row, -1, 1), *v = rng_tensor(&r, n * row, -1, 1), *q = rng_tensor(&r, 2 * d, -1, 1);
    float *k2 = rng_tensor(&r, n * row, -1, 1), *v2 = rng_tensor(&r, n * row, -1, 1);
    static const size_t split[][3] = {{2, 0, 1}, {7, 0, 11}, {1, 1, 1}, {30, 0, 4}, {0, 9, 0}, {25, 20, 8}};
    size_t at = 0;
    for (size_t i = 0; i < sizeof split / sizeof *split; i++) {
        kvd_step_entry e[3];
        for (int j = 0; j < 3; j++) {
            const size_t m = split[i][j];
            e[j] = (kvd_step_entry){.layer = 0, .m = m, .m_q = j == 1 ? 1 : 0, .k = k + at * row,
                                    .v = v + at * row, .q = j == 1 ? q : NULL, .mask = KVD_MASK_BLOCK};
            if (four) {
                e[j].k2 = k2 + at * row;
                e[j].v2 = v2 + at * row;
            }
            at += m;
        }
        kvd_step_output out;
        ck_assert_int_eq(kvd_step_run(s, NULL, pool, e, 3, &out), KVD_STEP_OK);
        kvd_step_output_free(&out);
        ck_assert_uint_eq(kvd_pool_pages_used(pool), kvd_session_pages(s));
    }
    ck_assert_uint_eq(at, n);
    for (uint32_t g = 0; g < kvh; g++)
        for (int b = 0; b < (four ? 2 : 1); b++) {
            fed ref = {.pool = ref_pool};
            kvd_subgen_init(&ref.g, d, PAGE, cfg.cache.delta, cfg.scale, 3, 8, cap, cfg.seed,
                            b ? (size_t)kvh + g : g);
            const float *kk = b ? k2 : k, *vv = b ? v2 : v;
            for (size_t j = cfg.cache.sink; j < n - cfg.cache.recent; j++)
                feed(&ref, kk + j * row + g * d, vv + j * row + g * d, 1, d);
            const kvd_subgen *got = b ? &s->subgen_b[g] : &s->subgen[g];
            ck_assert_uint_eq(ref.g.n_clusters, cap);
            ck_assert_uint_eq(got->n_clusters, cap);
            ck_assert_uint_eq(got->items, ref.g.items);
            ck_assert_uint_eq(count_sum(got), got->items);
            ck_assert_uint_eq(got->rng, ref.g.rng);
            ck_assert(got->f == ref.g.f);
            ck_assert_uint_eq(kvd_subgen_pages(got), kvd_subgen_pages(&ref.g));
            for (size_t c = 0; c < cap; c++) {
                ck_assert_mem_eq(kvd__subgen_row(&got->counts, c), kvd__subgen_row(&ref.g.counts, c), 8);
                ck_assert_mem_eq(kvd__subgen_row(&got->centres, c), kvd__subgen_row(&ref.g.centres, c), d * 4);
            }
            kvd_subgen_release(&ref.g, ref_pool);
        }
    kvd_session_destroy(s, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    ck_assert_uint_eq(kvd_pool_pages_used(ref_pool), 0);
    free(k);
    free(v);
    free(k2);
    free(v2);
    free(q);
    kvd_pool_destroy(pool);
    kvd_pool_destroy(ref_pool);
}
END_TEST

/* A step that fits with the cap is not refused: 190 far-apart keys would
 * open 190 clusters of 32 reservoir rows (more than the 24-page pool, and
 * refused uncapped), but under cap 2 they open two, and the step runs. */
START_TEST(test_capped_step_fits)
{
    const uint32_t d = 16;
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(24 * PAGE, PAGE, &pool), 0);
    for (int capped = 0; capped < 2; capped++) {
        kvd_session_config cfg = cap_config(d, 32, 4, capped ? 2 : 0, false);
        cfg.kv_heads = cfg.heads = 1;
        kvd_session *s;
        ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
        rng r;
        rng_seed(&r, 1);
        float *k = rng_tensor(&r, 200 * d, -4, 4), *v = rng_tensor(&r, 200 * d, -1, 1);
        kvd_step_entry e = {.layer = 0, .m = 200, .k = k, .v = v, .mask = KVD_MASK_BLOCK};
        kvd_step_output out;
        const int rc = kvd_step_run(s, NULL, pool, &e, 1, &out);
        if (capped) {
            ck_assert_int_eq(rc, KVD_STEP_OK);
            kvd_step_output_free(&out);
            ck_assert_uint_eq(s->subgen[0].n_clusters, 2);
            ck_assert_uint_eq(s->subgen[0].items, 200 - 8);
            ck_assert_uint_eq(count_sum(&s->subgen[0]), 200 - 8);
        } else {
            ck_assert(rc == KVD_STEP_POOL_FULL || rc == KVD_STEP_TOO_BIG);
            ck_assert_uint_eq(s->subgen[0].n_clusters, 0);
        }
        ck_assert_uint_eq(kvd_pool_pages_used(pool), kvd_session_pages(s));
        kvd_session_destroy(s, pool);
        free(k);
        free(v);
    }
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("subgen_cap");
    TCase *tc = tcase_create("subgen_cap");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_cap_holds, 0, 3);
    tcase_add_test(tc, test_joins_nearest);
    tcase_add_loop_test(tc, test_exact_with_cap, 0, 2);
    tcase_add_test(tc, test_unbiased_unclustered);
    tcase_add_loop_test(tc, test_plan_with_cap, 0, 2);
    tcase_add_test(tc, test_capped_step_fits);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
