/* tests/cache/test_tensor_rows.c — four-cache tensor sessions of every
 * non-f32 dtype run the SIMD four-cache kernel over the plan's f32 copy of
 * their rows (cache/step.c fill_rows, cache/plan.c
 * plan_tensor_rows): each step's o and lse against the scalar view kernel
 * kvd_tensor_four_view_lse over the session's own streams (the same
 * dequantized floats), for several n, GQA groups, a window, KIVI with a
 * residual, and the step split over an executor; bit for bit against the
 * kernel over one contiguous copy (the copy lives in pool pages, one kv
 * head at a time: cache/plan.c plan_tensor_rows); and the copy's pages
 * counted against the pool (503 / 413 before anything changes). */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "attention/tensor.h"
#include "cache/pool.h"
#include "cache/session.h"
#include "cache/step.h"
#include "cache/stream.h"
#include "tests/support/check_main.h"
#include "tests/support/kvd_data.h"

#define PAGE 4096
/* The two kernels read the same floats and differ only in the order of
 * their f32 score sums and in FMA: |o - o_view| relative to max |v1 v2|
 * (<= 1 here), and |lse - lse_view| (scores are O(1), lse O(log n^2)). */
#define TOL_SAME_ROWS 2e-5

typedef struct dtype_case {
    const char *name;
    kvd_dtype dtype;
} dtype_case;

static const dtype_case dtypes[] = {
    {"f16", KVD_DTYPE_F16},   {"bf16", KVD_DTYPE_BF16},   {"int8", KVD_DTYPE_INT8},
    {"int4", KVD_DTYPE_INT4}, {"kivi4", KVD_DTYPE_KIVI4}, {"kivi2", KVD_DTYPE_KIVI2},
};
#define N_DTYPES (sizeof dtypes / sizeof dtypes[0])

typedef struct shape_case {
    uint32_t heads, kv_heads, d, window;
} shape_case;

static const shape_case shapes[] = {
    {2, 2, 32, 0},  /* MHA */
    {8, 2, 64, 0},  /* GQA groups of 4 */
    {6, 1, 32, 0},  /* MQA, a group of 6 */
    {4, 2, 32, 11}, /* windowed (not KIVI) */
};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])

/* A serial executor: runs every piece on this thread, so the split path
 * (pieces reading the rows filled once per entry) runs too; as width 1 the
 * kv heads attend one round each. */
static void run_serial(void *self, void *ctx, kvd_parallel_fn fn, size_t n)
{
    (void)self;
    for (size_t i = 0; i < n; i++)
        fn(ctx, i);
}

static kvd_session_config tensor_config(const dtype_case *dc, const shape_case *sc)
{
    kvd_session_config c;
    memset(&c, 0, sizeof c);
    c.layers = 2;
    c.heads = sc->heads;
    c.kv_heads = sc->kv_heads;
    c.head_dim = sc->d;
    c.scale = 1.0f / sqrtf((float)sc->d);
    c.attention = KVD_ATTN_TENSOR;
    c.tensor_cache = KVD_TENSOR_CACHE_FOUR;
    c.window = sc->window;
    c.cache.dtype = dc->dtype;
    c.cache.group = dc->dtype == KVD_DTYPE_KIVI2 || dc->dtype == KVD_DTYPE_KIVI4 ? 8 : 32;
    c.cache.residual = 8;
    c.ttl_seconds = 600;
    return c;
}

/* One entry of m tokens (k1 v1 k2 v2 random) and m_q block queries on layer 1. */
static int run_step(kvd_session *s, kvd_pool *pool, rng *r, size_t m, size_t m_q, const kvd_parallel *par,
                    kvd_step_output *out)
{
    const kvd_session_config *c = &s->config;
    const size_t row = (size_t)c->kv_heads * c->head_dim;
    float *k = m ? rng_tensor(r, m * row, -1, 1) : NULL, *v = m ? rng_tensor(r, m * row, -1, 1) : NULL;
    float *k2 = m ? rng_tensor(r, m * row, -1, 1) : NULL, *v2 = m ? rng_tensor(r, m * row, -1, 1) : NULL;
    float *q = m_q ? rng_tensor(r, m_q * (size_t)c->heads * c->head_dim, -2, 2) : NULL;
    kvd_step_entry e = {.layer = 1, .m = m, .m_q = m_q, .k = k, .v = v, .k2 = k2, .v2 = v2, .q = q,
                        .mask = KVD_MASK_BLOCK, .return_lse = true};
    const int rc = kvd_step_run_parallel(s, NULL, pool, &e, 1, par, out);
    free(k);
    free(v);
    free(k2);
    free(v2);
    free(q);
    return rc;
}

/* A pure query step (nothing appended, settled or evicted, so the streams
 * are what the step attended over) against kvd_tensor_four_view_lse over
 * the streams. Returns the largest difference seen (o or lse). */
static double check_queries(kvd_session *s, kvd_pool *pool, rng *r, size_t m_q, const kvd_parallel *par,
                            const char *what, bool *saw_residual)
{
    const kvd_session_config *c = &s->config;
    const size_t d = c->head_dim, group = c->heads / c->kv_heads;
    /* the queries are drawn inside run_step: draw them again from a copy */
    rng r0 = *r;
    kvd_step_output out;
    ck_assert_int_eq(run_step(s, pool, r, 0, m_q, par, &out), KVD_STEP_OK);
    float *q = rng_tensor(&r0, m_q * (size_t)c->heads * d, -2, 2);
    float *o = malloc(group * d * sizeof *o), *lse = malloc(group * sizeof *lse);
    float *o_flat = malloc(group * d * sizeof *o), *lse_flat = malloc(group * sizeof *lse);
    double worst = 0.0;
    for (uint32_t g = 0; g < c->kv_heads; g++) {
        const kvd_stream *a = kvd_session_stream(s, 1, g), *b = &s->tensor_b[c->kv_heads + g];
        const size_t n = a->n_tokens;
        kvd_tensor_view av, bv;
        av.n_seg = kvd_stream_segments(a, n, av.seg);
        bv.n_seg = kvd_stream_segments(b, n, bv.seg);
        if (av.n_seg == 2 && av.seg[0].n && av.seg[1].n)
            *saw_residual = true;
        /* the copy as one contiguous "page" per view, as before the rows
         * moved into pool pages: the SIMD kernel over it must give the same
         * bits (the kernel reads rows by pointer, page boundaries are not
         * in its arithmetic) */
        const size_t cap = (n + 15) / 16 * 16;
        float *flat = malloc(4 * cap * d * sizeof *flat);
        kvd_tensor_view_rows(&av, n, flat, flat + cap * d);
        kvd_tensor_view_rows(&bv, n, flat + 2 * cap * d, flat + 3 * cap * d);
        const unsigned char *flat_page[2] = {(const unsigned char *)flat,
                                             (const unsigned char *)(flat + 2 * cap * d)};
        const kvd_kv_pages fa = kvd_tensor_rows_pages(&flat_page[0], cap, d);
        const kvd_kv_pages fb = kvd_tensor_rows_pages(&flat_page[1], cap, d);
        for (size_t i = 0; i < m_q; i++) {
            const size_t off = (i * c->heads + (size_t)g * group) * d;
            kvd_tensor_kernels_get()->four_lse(&fa, &fb, n, c->window, q + off, group, c->scale, o_flat,
                                               lse_flat);
            ck_assert_msg(memcmp(out.results[0].o + off, o_flat, group * d * sizeof *o_flat) == 0,
                          "%s: n %zu stream %u query %zu: o differs from the contiguous copy's", what, n, g, i);
            for (size_t h = 0; h < group; h++)
                ck_assert_msg(memcmp(&out.results[0].lse[i * c->heads + g * group + h], &lse_flat[h],
                                     sizeof *lse_flat) == 0,
                              "%s: n %zu stream %u query %zu: lse differs from the contiguous copy's", what, n, g, i);
            kvd_tensor_four_view_lse(&av, &bv, n, c->window, q + off, group, c->scale, o, lse);
            for (size_t j = 0; j < group * d; j++) {
                const double diff = fabs((double)out.results[0].o[off + j] - o[j]);
                worst = diff > worst ? diff : worst;
                ck_assert_msg(diff <= TOL_SAME_ROWS, "%s: n %zu stream %u query %zu [%zu]: %.9g vs view %.9g",
                              what, n, g, i, j, out.results[0].o[off + j], o[j]);
            }
            for (size_t h = 0; h < group; h++) {
                const float got = out.results[0].lse[i * c->heads + g * group + h];
                const double diff = fabs((double)got - lse[h]);
                worst = diff > worst ? diff : worst;
                ck_assert_msg(diff <= TOL_SAME_ROWS * fmax(1.0, fabs(lse[h])), "%s: n %zu lse %.9g vs view %.9g",
                              what, n, got, lse[h]);
            }
        }
        free(flat);
    }
    free(q);
    free(o);
    free(lse);
    free(o_flat);
    free(lse_flat);
    kvd_step_output_free(&out);
    return worst;
}

/* _i: one dtype over every shape, unsplit and split; n grows 1, 3, 8, 17,
 * 30, 47, 67 (windowed: past the window, which then slides; the last
 * steps of the GQA shape are large enough to split into pieces). */
START_TEST(simd_rows_match_view_kernel)
{
    const dtype_case *dc = &dtypes[_i];
    static const size_t grow[] = {1, 2, 5, 9, 13, 17, 20};
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(4096 * PAGE, PAGE, &pool), 0);
    /* width 0: every kv head's rows at once; width 1: one round per head */
    const kvd_parallel serial[2] = {{.run = run_serial, .self = NULL, .width = 0},
                                    {.run = run_serial, .self = NULL, .width = 1}};
    bool saw_residual = false;
    double worst = 0.0;
    const bool kivi = dc->dtype == KVD_DTYPE_KIVI2 || dc->dtype == KVD_DTYPE_KIVI4;
    for (size_t si = 0; si < N_SHAPES; si++) {
        if (kivi && shapes[si].window) /* refused at create (api/create_body.c): no slide */
            continue;
        for (int split = 0; split < 3; split++) {
            const kvd_session_config c = tensor_config(dc, &shapes[si]);
            kvd_session *s;
            ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
            rng r;
            rng_seed(&r, 100 + 10 * si + (uint64_t)_i);
            for (size_t t = 0; t < sizeof grow / sizeof grow[0]; t++) {
                kvd_step_output out; /* a decode/prefill step: appends (and settles, slides) */
                const kvd_parallel *par = split ? &serial[split - 1] : NULL;
                ck_assert_int_eq(run_step(s, pool, &r, grow[t], 1, par, &out), KVD_STEP_OK);
                kvd_step_output_free(&out);
                char what[96];
                snprintf(what, sizeof what, "%s shape %zu%s", dc->name, si,
                         split == 2 ? " split, a head per round" : split ? " split" : "");
                const double w = check_queries(s, pool, &r, 3, par, what, &saw_residual);
                worst = w > worst ? w : worst;
            }
            kvd_session_destroy(s, pool);
        }
    }
    if (kivi)
        ck_assert_msg(saw_residual, "%s: no step saw quantized tokens and a residual together", dc->name);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}
END_TEST

/* Pages of the f32 copy for n tokens, `heads` kv heads at once: a page
 * holds PAGE / (2 d 4) tokens of one view, (k1, v1) and (k2, v2) are two
 * views per head. */
static size_t copy_pages(size_t n, size_t d, size_t heads)
{
    const size_t spp = PAGE / (2 * d * sizeof(float));
    return 2 * heads * ((n + spp - 1) / spp);
}

/* A query step refused for its copy: the answer, the pages named, and the
 * session and pool as they were. */
static void expect_refused(kvd_session *s, kvd_pool *pool, rng *r, const kvd_parallel *par, int want,
                           size_t want_rows, size_t tokens)
{
    const size_t free_before = kvd_pool_pages_free(pool), held = kvd_session_pages(s);
    kvd_step_output out;
    ck_assert_int_eq(run_step(s, pool, r, 0, 1, par, &out), want);
    ck_assert_uint_eq(out.row_pages, want_rows);
    ck_assert_uint_eq(out.need_pages, want_rows); /* a pure query: only the copy */
    ck_assert_ptr_null(out.results);
    ck_assert_uint_eq(kvd_pool_pages_free(pool), free_before);
    ck_assert_uint_eq(kvd_session_pages(s), held);
    for (uint32_t g = 0; g < s->config.kv_heads; g++)
        ck_assert_uint_eq(kvd_session_stream(s, 1, g)->n_tokens, tokens);
}

/* The copy is pool pages reserved with the step's others: a pool without
 * room for it refuses the step as full (503 upstream), one too small for it
 * ever refuses it as too big (413), nothing changed either way; a step that
 * gets them gives them all back. Unsplit it holds one kv head's rows, split
 * over an executor of width w, w heads' (0: all). */
START_TEST(copy_pages_counted_in_pool)
{
    const shape_case sc = {4, 2, 32, 0};
    const kvd_session_config c = tensor_config(&dtypes[2], &sc); /* int8 */
    const kvd_parallel all = {.run = run_serial, .self = NULL, .width = 0};
    const kvd_parallel one = {.run = run_serial, .self = NULL, .width = 1};
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(256 * PAGE, PAGE, &pool), 0);
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
    rng r;
    rng_seed(&r, 7);
    kvd_step_output out;
    ck_assert_int_eq(run_step(s, pool, &r, 40, 0, NULL, &out), KVD_STEP_OK); /* no query: no copy */
    ck_assert_uint_eq(out.row_pages, 0);
    kvd_step_output_free(&out);
    const size_t one_head = copy_pages(40, 32, 1), both = copy_pages(40, 32, 2);
    ck_assert_uint_eq(one_head, 6);

    /* leave one page too few for one head's copy */
    const size_t hold = kvd_pool_pages_free(pool) - (one_head - 1);
    void **held = malloc(hold * sizeof *held);
    ck_assert_int_eq(kvd_pool_alloc(pool, hold, held), 0);
    expect_refused(s, pool, &r, NULL, KVD_STEP_POOL_FULL, one_head, 40);
    expect_refused(s, pool, &r, &one, KVD_STEP_POOL_FULL, one_head, 40);
    expect_refused(s, pool, &r, &all, KVD_STEP_POOL_FULL, both, 40);

    /* one more page: a head at a time fits, both heads at once do not */
    kvd_pool_release(pool, held + hold - 1, 1);
    ck_assert_int_eq(run_step(s, pool, &r, 0, 1, NULL, &out), KVD_STEP_OK);
    ck_assert_uint_eq(out.row_pages, one_head);
    kvd_step_output_free(&out);
    ck_assert_uint_eq(kvd_pool_pages_free(pool), one_head); /* all given back */
    ck_assert_int_eq(run_step(s, pool, &r, 0, 1, &one, &out), KVD_STEP_OK);
    kvd_step_output_free(&out);
    expect_refused(s, pool, &r, &all, KVD_STEP_POOL_FULL, both, 40);
    kvd_pool_release(pool, held, hold - 1);
    free(held);
    kvd_session_destroy(s, pool);
    kvd_pool_destroy(pool);

    /* a pool that holds the session but never one head's copy of it */
    const size_t n = 400, rows = copy_pages(n, 32, 1);
    ck_assert_int_eq(kvd_pool_create((rows - 2) * PAGE, PAGE, &pool), 0);
    ck_assert_int_eq(kvd_session_create(&c, PAGE, &s), 0);
    ck_assert_int_eq(run_step(s, pool, &r, n, 0, NULL, &out), KVD_STEP_OK);
    kvd_step_output_free(&out);
    expect_refused(s, pool, &r, NULL, KVD_STEP_TOO_BIG, rows, n);
    expect_refused(s, pool, &r, &one, KVD_STEP_TOO_BIG, rows, n);
    kvd_session_destroy(s, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("tensor_rows");
    TCase *tc = tcase_create("simd");
    tcase_add_loop_test(tc, simd_rows_match_view_kernel, 0, (int)N_DTYPES);
    tcase_add_test(tc, copy_pages_counted_in_pool);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
