/* tests/cache/test_subgen.c — the SubGen sketch (cache/subgen.c) and its
 * place in the step engine (cache/step.c, cache/plan.c): cases where the
 * estimator is exact, the 1/sqrt(s) and 1/sqrt(t) shrinkage of its error
 * over many seeds (a fitted log-log slope), bit-for-bit reproducibility
 * (also across how tokens are split into steps), GQA, shadow error, and a
 * step the pool cannot hold failing whole. */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "cache/pool.h"
#include "cache/reclaim.h"
#include "cache/session.h"
#include "cache/step.h"
#include "cache/subgen.h"
#include "tests/support/check_main.h"
#include "tests/support/kvd_data.h"

#define PAGE 4096
/* Exact cases: double accumulation, f32 in and out. */
#define TOL_EXACT 1e-5
/* The fitted slope of log(rms relative error) against log(samples): the
 * theory says -0.5; the range allows the noise of SEEDS draws per point. */
#define SLOPE_LO (-0.75)
#define SLOPE_HI (-0.3)
#define SEEDS 120

static double gauss(rng *r)
{
    double u1 = rng_uniform(r, 1e-12, 1), u2 = rng_uniform(r, 0, 1);
    return sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
}

static kvd_session_config subgen_config(uint32_t heads, uint32_t kv_heads, uint32_t d, uint32_t t, uint32_t s)
{
    kvd_session_config c;
    memset(&c, 0, sizeof c);
    c.layers = 1;
    c.heads = heads;
    c.kv_heads = kv_heads;
    c.head_dim = d;
    c.scale = 1.0f / sqrtf((float)d);
    c.cache.dtype = KVD_DTYPE_F32;
    c.cache.eviction = KVD_EVICT_SUBGEN;
    c.cache.group = 32;
    c.cache.residual = 32;
    c.cache.sink = 2;
    c.cache.recent = 2;
    c.cache.delta = 0.5;
    c.cache.cluster_samples = t;
    c.cache.value_samples = s;
    c.seed = 7;
    c.ttl_seconds = 600;
    return c;
}

/* Exact softmax attention in double over n rows of one kv head. */
static void exact_attention(const float *k, const float *v, size_t n, size_t stride, const float *q, size_t d,
                            double scale, double *o)
{
    double mx = -INFINITY, den = 0;
    for (size_t j = 0; j < n; j++) {
        double x = 0;
        for (size_t c = 0; c < d; c++)
            x += (double)q[c] * k[j * stride + c];
        mx = fmax(mx, scale * x);
    }
    memset(o, 0, d * sizeof *o);
    for (size_t j = 0; j < n; j++) {
        double x = 0;
        for (size_t c = 0; c < d; c++)
            x += (double)q[c] * k[j * stride + c];
        const double e = exp(scale * x - mx);
        den += e;
        for (size_t c = 0; c < d; c++)
            o[c] += e * v[j * stride + c];
    }
    for (size_t c = 0; c < d; c++)
        o[c] /= den;
}

/* One cluster of identical keys (t >= its size) carrying one value, beside
 * protected tokens with their own keys and values: the sketch's terms are
 * exact, so the step's output is exact attention over every token. */
START_TEST(test_exact_one_cluster_one_value)
{
    const uint32_t d = 16, n = 40;
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(64 * PAGE, PAGE, &pool), 0);
    kvd_session_config cfg = subgen_config(2, 1, d, 64, 8);
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    rng r;
    rng_seed(&r, 3);
    float *k = rng_tensor(&r, (size_t)n * d, -1, 1), *v = rng_tensor(&r, (size_t)n * d, -1, 1);
    float *q = rng_tensor(&r, 2 * d, -2, 2);
    /* tokens 2 .. n-3 leave the window (sink 2, recent 2): one key, one value */
    for (uint32_t j = 3; j < n - 2; j++) {
        memcpy(k + (size_t)j * d, k + 2 * d, d * sizeof *k);
        memcpy(v + (size_t)j * d, v + 2 * d, d * sizeof *v);
    }
    kvd_step_entry e = {.layer = 0, .m = n, .m_q = 0, .k = k, .v = v, .mask = KVD_MASK_BLOCK};
    kvd_step_output out;
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &e, 1, &out), KVD_STEP_OK);
    kvd_step_output_free(&out);
    ck_assert_uint_eq(s->streams[0].n_tokens, 4);
    ck_assert_uint_eq(s->subgen[0].n_clusters, 1);
    ck_assert_uint_eq(s->subgen[0].items, n - 4);
    kvd_step_entry qe = {.layer = 0, .m = 0, .m_q = 1, .q = q, .mask = KVD_MASK_BLOCK};
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &qe, 1, &out), KVD_STEP_OK);
    for (int h = 0; h < 2; h++) { /* GQA: both heads read kv head 0's sketch */
        double want[16];
        exact_attention(k, v, n, d, q + h * d, d, cfg.scale, want);
        for (uint32_t c = 0; c < d; c++)
            ck_assert_double_eq_tol(out.results[0].o[h * d + c], want[c], TOL_EXACT);
    }
    kvd_step_output_free(&out);
    free(k);
    free(v);
    free(q);
    kvd_session_destroy(s, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}
END_TEST

/* Keys spread within the radius, t >= their count: the denominator term is
 * exactly sum_j exp(scale <q, k_j>) (each cluster weight n / |R| = 1). */
START_TEST(test_exact_denominator)
{
    const uint32_t d = 8, n = 50;
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(64 * PAGE, PAGE, &pool), 0);
    kvd_subgen g;
    kvd_subgen_init(&g, d, PAGE, 0.5, 1.0f, 64, 4, 0, 1, 0);
    ck_assert_int_eq(kvd_subgen_reserve(&g, n), 0);
    const size_t need = kvd_subgen_pages_bound(&g, n);
    void **pages = malloc(need * sizeof *pages);
    ck_assert_int_eq(kvd_pool_alloc(pool, need, pages), 0);
    rng r;
    rng_seed(&r, 5);
    float base[8], k[8], v[8], q[8];
    rng_fill(&r, base, d, -1, 1);
    rng_fill(&r, q, d, -2, 2);
    size_t used = 0;
    double want = 0;
    for (uint32_t j = 0; j < n; j++) {
        for (uint32_t c = 0; c < d; c++)
            k[c] = base[c] + (float)rng_uniform(&r, -0.05, 0.05); /* within 0.5 of base and of each other */
        rng_fill(&r, v, d, -1, 1);
        kvd_subgen_insert(&g, k, v, pages, need, &used);
        double x = 0;
        for (uint32_t c = 0; c < d; c++)
            x += (double)q[c] * k[c];
        want += exp(x);
    }
    ck_assert_uint_eq(g.n_clusters, 1);
    double num[8];
    kvd_subgen_acc acc;
    kvd_subgen_acc_reset(&acc, num, d);
    kvd_subgen_attend(&g, q, 1.0f, &acc);
    ck_assert_double_eq_tol(acc.den * exp(acc.max) / want, 1.0, 1e-12);
    kvd_pool_release(pool, pages + used, need - used);
    kvd_subgen_release(&g, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    free(pages);
    kvd_pool_destroy(pool);
}
END_TEST

/* Clusters open only beyond the radius (measured after scale): keys at
 * distance 0.9 * delta join, at 1.1 * delta open a new one. */
START_TEST(test_radius_after_scale)
{
    const uint32_t d = 4;
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(64 * PAGE, PAGE, &pool), 0);
    kvd_subgen g;
    const float scale = 0.25f; /* raw radius = delta / scale = 2 */
    kvd_subgen_init(&g, d, PAGE, 0.5, scale, 2, 1, 0, 1, 0);
    ck_assert_int_eq(kvd_subgen_reserve(&g, 3), 0);
    const size_t need = kvd_subgen_pages_bound(&g, 3);
    void **pages = malloc(need * sizeof *pages);
    ck_assert_int_eq(kvd_pool_alloc(pool, need, pages), 0);
    const float k0[4] = {0}, k1[4] = {1.8f, 0, 0, 0}, k2[4] = {0, 2.2f, 0, 0}, v[4] = {1, 0, 0, 0};
    size_t used = 0;
    kvd_subgen_insert(&g, k0, v, pages, need, &used);
    kvd_subgen_insert(&g, k1, v, pages, need, &used);
    ck_assert_uint_eq(g.n_clusters, 1);
    kvd_subgen_insert(&g, k2, v, pages, need, &used);
    ck_assert_uint_eq(g.n_clusters, 2);
    ck_assert_uint_le(used, need);
    kvd_pool_release(pool, pages + used, need - used);
    kvd_subgen_release(&g, pool);
    free(pages);
    kvd_pool_destroy(pool);
}
END_TEST

/* Least-squares slope of log(err) against log(x). */
static double loglog_slope(const double *x, const double *err, int n)
{
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (int i = 0; i < n; i++) {
        const double lx = log(x[i]), ly = log(err[i]);
        sx += lx;
        sy += ly;
        sxx += lx * lx;
        sxy += lx * ly;
    }
    return (n * sxy - sx * sy) / (n * sxx - sx * sx);
}

#define STAT_N 600
#define STAT_D 8

/* The data of the statistical tests: one cluster (radius huge), Gaussian
 * keys, values = a mean + noise (so the numerator is far from zero). */
typedef struct stat_data {
    float k[STAT_N][STAT_D], v[STAT_N][STAT_D], q[STAT_D];
    double tau, nu[STAT_D];
} stat_data;

static void stat_data_make(stat_data *sd)
{
    rng r;
    rng_seed(&r, 11);
    for (int c = 0; c < STAT_D; c++)
        sd->q[c] = (float)gauss(&r);
    for (int j = 0; j < STAT_N; j++)
        for (int c = 0; c < STAT_D; c++) {
            sd->k[j][c] = (float)gauss(&r);
            sd->v[j][c] = (float)(1.0 + 0.5 * gauss(&r));
        }
    sd->tau = 0;
    memset(sd->nu, 0, sizeof sd->nu);
    const double scale = 1.0 / sqrt(STAT_D);
    for (int j = 0; j < STAT_N; j++) {
        double x = 0;
        for (int c = 0; c < STAT_D; c++)
            x += (double)sd->q[c] * sd->k[j][c];
        const double e = exp(scale * x);
        sd->tau += e;
        for (int c = 0; c < STAT_D; c++)
            sd->nu[c] += e * sd->v[j][c];
    }
}

/* RMS over seeds of the relative error of tau (which = 0) or nu (which = 1). */
static double rms_error(kvd_pool *pool, const stat_data *sd, uint32_t t, uint32_t s, int which)
{
    const double scale = 1.0 / sqrt(STAT_D);
    double sum = 0;
    for (int seed = 0; seed < SEEDS; seed++) {
        kvd_subgen g;
        kvd_subgen_init(&g, STAT_D, PAGE, 1e9, (float)scale, t, s, 0, (uint64_t)seed, 0);
        ck_assert_int_eq(kvd_subgen_reserve(&g, 1), 0);
        const size_t need = kvd_subgen_pages_bound(&g, 1);
        void *pages[64];
        ck_assert_uint_le(need, 64);
        ck_assert_int_eq(kvd_pool_alloc(pool, need, pages), 0);
        size_t used = 0;
        for (int j = 0; j < STAT_N; j++)
            kvd_subgen_insert(&g, sd->k[j], sd->v[j], pages, need, &used);
        ck_assert_uint_eq(used, need);
        double num[STAT_D];
        kvd_subgen_acc acc;
        kvd_subgen_acc_reset(&acc, num, STAT_D);
        kvd_subgen_attend(&g, sd->q, (float)scale, &acc);
        const double f = exp(acc.max);
        if (which == 0) {
            const double rel = (acc.den * f - sd->tau) / sd->tau;
            sum += rel * rel;
        } else {
            double e2 = 0, r2 = 0;
            for (int c = 0; c < STAT_D; c++) {
                e2 += (num[c] * f - sd->nu[c]) * (num[c] * f - sd->nu[c]);
                r2 += sd->nu[c] * sd->nu[c];
            }
            sum += e2 / r2;
        }
        kvd_subgen_release(&g, pool);
    }
    return sqrt(sum / SEEDS);
}

/* The numerator's error shrinks like 1/sqrt(s). */
START_TEST(test_error_slope_value_samples)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
    static stat_data sd;
    stat_data_make(&sd);
    double xs[5], err[5];
    for (int i = 0; i < 5; i++) {
        xs[i] = 8 << i; /* 8 .. 128 */
        err[i] = rms_error(pool, &sd, 1, (uint32_t)xs[i], 1);
    }
    const double slope = loglog_slope(xs, err, 5);
    ck_assert_msg(slope >= SLOPE_LO && slope <= SLOPE_HI, "slope %.3f (errors %.4f .. %.4f)", slope, err[0],
                  err[4]);
    kvd_pool_destroy(pool);
}
END_TEST

/* The denominator's error shrinks like 1/sqrt(t) (t well below n). */
START_TEST(test_error_slope_cluster_samples)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
    static stat_data sd;
    stat_data_make(&sd);
    double xs[5], err[5];
    for (int i = 0; i < 5; i++) {
        xs[i] = 4 << i; /* 4 .. 64 */
        err[i] = rms_error(pool, &sd, (uint32_t)xs[i], 1, 0);
    }
    const double slope = loglog_slope(xs, err, 5);
    ck_assert_msg(slope >= SLOPE_LO && slope <= SLOPE_HI, "slope %.3f (errors %.4f .. %.4f)", slope, err[0],
                  err[4]);
    kvd_pool_destroy(pool);
}
END_TEST

/* Runs `n` tokens into a fresh session in steps of `chunk`, then one query;
 * returns the output (heads * d floats, malloc'd). */
static float *run_session(const kvd_session_config *cfg, kvd_pool *pool, const float *k, const float *v,
                          const float *q, size_t n, size_t chunk)
{
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(cfg, PAGE, &s), 0);
    const size_t row = (size_t)cfg->kv_heads * cfg->head_dim;
    kvd_step_output out;
    for (size_t i = 0; i < n; i += chunk) {
        const size_t m = i + chunk <= n ? chunk : n - i;
        kvd_step_entry e = {.layer = 0, .m = m, .k = k + i * row, .v = v + i * row, .mask = KVD_MASK_BLOCK};
        ck_assert_int_eq(kvd_step_run(s, NULL, pool, &e, 1, &out), KVD_STEP_OK);
        kvd_step_output_free(&out);
    }
    kvd_step_entry e = {.layer = 0, .m_q = 1, .q = q, .mask = KVD_MASK_BLOCK};
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &e, 1, &out), KVD_STEP_OK);
    const size_t q_len = (size_t)cfg->heads * cfg->head_dim;
    float *o = malloc(q_len * sizeof *o);
    memcpy(o, out.results[0].o, q_len * sizeof *o);
    kvd_step_output_free(&out);
    kvd_session_destroy(s, pool);
    return o;
}

/* Same seed and tokens: bit-identical outputs, however the tokens were
 * split into steps; another seed: different ones. */
START_TEST(test_reproducible)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(512 * PAGE, PAGE, &pool), 0);
    kvd_session_config cfg = subgen_config(4, 2, 16, 4, 16);
    cfg.cache.delta = 1.2;
    const size_t n = 300, row = 2 * 16;
    rng r;
    rng_seed(&r, 9);
    float *k = rng_tensor(&r, n * row, -1, 1), *v = rng_tensor(&r, n * row, -1, 1), *q = rng_tensor(&r, 64, -2, 2);
    float *a = run_session(&cfg, pool, k, v, q, n, 300);
    float *b = run_session(&cfg, pool, k, v, q, n, 300);
    float *c = run_session(&cfg, pool, k, v, q, n, 7);
    ck_assert_mem_eq(a, b, 64 * sizeof(float));
    ck_assert_mem_eq(a, c, 64 * sizeof(float));
    cfg.seed = 8;
    float *d = run_session(&cfg, pool, k, v, q, n, 300);
    ck_assert_msg(memcmp(a, d, 64 * sizeof(float)) != 0, "another seed gave the same sketch");
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    free(a);
    free(b);
    free(c);
    free(d);
    free(k);
    free(v);
    free(q);
    kvd_pool_destroy(pool);
}
END_TEST

/* A step whose sketch the pool cannot hold fails whole: same tokens,
 * clusters, pages and pool; a smaller one then succeeds. Subgen sessions
 * are not reclaimable, and a fork the pool cannot copy the sketch for fails
 * whole. */
START_TEST(test_pool_full_whole)
{
    const uint32_t d = 16;
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(12 * PAGE, PAGE, &pool), 0);
    kvd_session_config cfg = subgen_config(1, 1, d, 8, 4);
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    rng r;
    rng_seed(&r, 1);
    float *k = rng_tensor(&r, 200 * d, -4, 4), *v = rng_tensor(&r, 200 * d, -1, 1);
    kvd_step_entry e = {.layer = 0, .m = 10, .k = k, .v = v, .mask = KVD_MASK_BLOCK};
    kvd_step_output out;
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &e, 1, &out), KVD_STEP_OK);
    kvd_step_output_free(&out);
    const size_t pages = kvd_session_pages(s), used = kvd_pool_pages_used(pool), cl = s->subgen[0].n_clusters;
    const uint64_t items = s->subgen[0].items, rng_state = s->subgen[0].rng;
    /* 190 far-apart keys: up to 190 clusters of 8 reservoir rows — more than the pool */
    e.m = 190;
    e.k = k + 10 * d;
    e.v = v + 10 * d;
    const int rc = kvd_step_run(s, NULL, pool, &e, 1, &out);
    ck_assert(rc == KVD_STEP_POOL_FULL || rc == KVD_STEP_TOO_BIG);
    ck_assert_ptr_null(out.results);
    ck_assert_uint_gt(out.need_pages, 0);
    ck_assert_uint_eq(kvd_session_pages(s), pages);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), used);
    ck_assert_uint_eq(s->subgen[0].n_clusters, cl);
    ck_assert_uint_eq(s->subgen[0].items, items);
    ck_assert_uint_eq(s->subgen[0].rng, rng_state);
    ck_assert_uint_eq(s->streams[0].n_tokens, 4);
    ck_assert(!kvd_session_reclaimable(s));
    /* A fork copies the sketch: with fewer free pages than it holds, the
     * fork fails whole (-ENOSPC), the parent unflagged and the pool as it
     * was. */
    kvd_session *child = NULL;
    const size_t sketch = kvd_subgen_pages(&s->subgen[0]), hold = kvd_pool_pages_free(pool) - sketch + 1;
    void *held[16];
    ck_assert_uint_le(hold, 16);
    ck_assert_int_eq(kvd_pool_alloc(pool, hold, held), 0); /* one page short of the sketch */
    ck_assert_int_eq(kvd_session_fork(s, pool, &child), -ENOSPC);
    ck_assert_ptr_null(child);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), used + hold);
    ck_assert_uint_eq(kvd_session_shared_pages(s), 0);
    kvd_pool_release(pool, held, hold);
    ck_assert_int_eq(kvd_session_fork(s, pool, &child), 0); /* with room it forks */
    ck_assert_uint_eq(kvd_pool_pages_used(pool), used + sketch);
    kvd_session_destroy(child, pool);
    e.m = 3;
    ck_assert_int_eq(kvd_step_run(s, NULL, pool, &e, 1, &out), KVD_STEP_OK);
    kvd_step_output_free(&out);
    ck_assert_uint_eq(s->subgen[0].items, items + 3);
    free(k);
    free(v);
    kvd_session_destroy(s, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}
END_TEST

/* The plan's dry run (cache/plan.c) assigns clusters exactly as inserting
 * one token at a time would: a session stepped with requests of several
 * entries of the same layer (pure queries between) ends with the sketch a
 * plain kvd_subgen_insert of the same tokens in position order builds —
 * clusters, counts, F, random state bit for bit — and the pool holds
 * exactly the session's pages after each step (what the plan took and the
 * sketch did not use went back). */
START_TEST(test_plan_dry_run_matches_insert)
{
    const uint32_t d = 8, kvh = 2;
    kvd_pool *pool, *ref_pool;
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &ref_pool), 0);
    kvd_session_config cfg = subgen_config(4, kvh, d, 3, 8);
    cfg.cache.sink = 3;
    cfg.cache.recent = 5;
    cfg.cache.delta = 0.9;
    cfg.seed = 11;
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    const size_t n = 120, row = (size_t)kvh * d;
    rng r;
    rng_seed(&r, 5);
    float *k = rng_tensor(&r, n * row, -1, 1), *v = rng_tensor(&r, n * row, -1, 1), *q = rng_tensor(&r, 4 * d, -1, 1);
    static const size_t split[][3] = {{2, 0, 1}, {7, 0, 11}, {1, 1, 1}, {30, 0, 4}, {0, 9, 0}, {25, 20, 8}};
    size_t at = 0;
    for (size_t i = 0; i < sizeof split / sizeof *split; i++) {
        kvd_step_entry e[3];
        size_t ne = 0;
        for (int j = 0; j < 3; j++) {
            const size_t m = split[i][j];
            e[ne++] = (kvd_step_entry){.layer = 0, .m = m, .m_q = j == 1 ? 1 : 0, .k = k + at * row,
                                       .v = v + at * row, .q = j == 1 ? q : NULL, .mask = KVD_MASK_BLOCK};
            at += m;
        }
        kvd_step_output out;
        ck_assert_int_eq(kvd_step_run(s, NULL, pool, e, ne, &out), KVD_STEP_OK);
        kvd_step_output_free(&out);
        ck_assert_uint_eq(kvd_pool_pages_used(pool), kvd_session_pages(s));
    }
    ck_assert_uint_eq(at, n);
    for (uint32_t g = 0; g < kvh; g++) {
        kvd_subgen ref;
        kvd_subgen_init(&ref, d, PAGE, cfg.cache.delta, cfg.scale, 3, 8, cfg.cache.max_clusters, cfg.seed, g);
        for (size_t j = cfg.cache.sink; j < n - cfg.cache.recent; j++) {
            ck_assert_int_eq(kvd_subgen_reserve(&ref, 1), 0);
            const size_t need = kvd_subgen_pages_bound(&ref, 1);
            void *pages[8];
            ck_assert_uint_le(need, 8);
            ck_assert_int_eq(kvd_pool_alloc(ref_pool, need, pages), 0);
            size_t used = 0;
            kvd_subgen_insert(&ref, k + j * row + g * d, v + j * row + g * d, pages, need, &used);
            kvd_pool_release(ref_pool, pages + used, need - used);
        }
        const kvd_subgen *got = &s->subgen[g];
        ck_assert_uint_gt(ref.n_clusters, 3);
        ck_assert_uint_eq(got->n_clusters, ref.n_clusters);
        ck_assert_uint_eq(got->items, ref.items);
        ck_assert_uint_eq(got->rng, ref.rng);
        ck_assert(got->f == ref.f);
        ck_assert_uint_eq(kvd_subgen_pages(got), kvd_subgen_pages(&ref));
        for (size_t c = 0; c < ref.n_clusters; c++) {
            ck_assert_mem_eq(kvd__subgen_row(&got->counts, c), kvd__subgen_row(&ref.counts, c), 8);
            ck_assert_mem_eq(kvd__subgen_row(&got->centres, c), kvd__subgen_row(&ref.centres, c), d * 4);
        }
        kvd_subgen_release(&ref, ref_pool);
    }
    kvd_session_destroy(s, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    ck_assert_uint_eq(kvd_pool_pages_used(ref_pool), 0);
    free(k);
    free(v);
    free(q);
    kvd_pool_destroy(pool);
    kvd_pool_destroy(ref_pool);
}
END_TEST

/* With a shadow copy the step reports the sketch's live error: zero while
 * every token a query sees is exact (the window, and an entry's own
 * tokens, which leave the window only at its end), positive once the sketch
 * holds distinct tokens; every planned page is placed or given back. */
START_TEST(test_shadow_error)
{
    const uint32_t d = 8;
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
    kvd_session_config cfg = subgen_config(2, 2, d, 2, 4);
    kvd_session_config sc = kvd_session_shadow_config(&cfg);
    kvd_session *s, *sh;
    ck_assert_int_eq(kvd_session_create(&cfg, PAGE, &s), 0);
    ck_assert_int_eq(kvd_session_create(&sc, PAGE, &sh), 0);
    rng r;
    rng_seed(&r, 2);
    float *k = rng_tensor(&r, 100 * 2 * d, -1, 1), *v = rng_tensor(&r, 100 * 2 * d, -1, 1);
    float *q = rng_tensor(&r, 100 * 2 * d, -2, 2);
    kvd_step_entry e = {.layer = 0, .m = 3, .m_q = 3, .k = k, .v = v, .q = q, .mask = KVD_MASK_CAUSAL};
    kvd_step_output out;
    ck_assert_int_eq(kvd_step_run(s, sh, pool, &e, 1, &out), KVD_STEP_OK);
    ck_assert(out.results[0].has_shadow);
    ck_assert_double_eq_tol(out.results[0].relative_error, 0, 1e-6);
    kvd_step_output_free(&out);
    e.m = e.m_q = 97;
    e.k = k + 3 * 2 * d;
    e.v = v + 3 * 2 * d;
    e.q = q + 3 * 2 * d;
    ck_assert_int_eq(kvd_step_run(s, sh, pool, &e, 1, &out), KVD_STEP_OK);
    /* the entry's queries saw its tokens exactly; they leave the window at its end */
    ck_assert_double_eq_tol(out.results[0].relative_error, 0, 1e-6);
    ck_assert_uint_eq(out.results[0].tokens, 4);
    ck_assert_uint_eq(out.results[0].evicted, 96);
    kvd_step_output_free(&out);
    e.m = 0;
    e.m_q = 1;
    e.mask = KVD_MASK_BLOCK;
    ck_assert_int_eq(kvd_step_run(s, sh, pool, &e, 1, &out), KVD_STEP_OK);
    ck_assert(out.results[0].relative_error > 1e-4);
    kvd_step_output_free(&out);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), kvd_session_pages(s) + kvd_session_pages(sh));
    free(k);
    free(v);
    free(q);
    kvd_session_destroy(s, pool);
    kvd_session_destroy(sh, pool);
    kvd_pool_destroy(pool);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("subgen");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_exact_one_cluster_one_value);
    tcase_add_test(tc, test_exact_denominator);
    tcase_add_test(tc, test_radius_after_scale);
    tcase_add_test(tc, test_error_slope_value_samples);
    tcase_add_test(tc, test_error_slope_cluster_samples);
    tcase_add_test(tc, test_reproducible);
    tcase_add_test(tc, test_pool_full_whole);
    tcase_add_test(tc, test_plan_dry_run_matches_insert);
    tcase_add_test(tc, test_shadow_error);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
