/* tests/attention/test_tensor.c — tensor attention (attention/tensor.c,
 * tensor_simd.h): the four-cache kernels of every tier and the two-cache as
 * production computes it (the standard kernels over the pair rows) against
 * an independent double-precision brute force over pairs, against the
 * oracles kvd_tensor_four_ref / kvd_tensor_two_ref and against each other,
 * windows, GQA groups, large scores, the pair rows a two-cache stores (order
 * and exact values) and their n^2 growth. Prints which tiers ran. Caches are
 * built here by hand over 64-byte-aligned pages, so this test depends on
 * attention/ only. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/tensor.h"
#include "tests/attention/tiers.h"
#include "tests/support/check_main.h"

/* Tolerances. An output is a convex combination of the rows v1_j ⊙ v2_k,
 * so errors are measured against maxv = max |v1_j,l v2_k,l| over visible
 * pairs:   |o - o_exact| <= maxv * (TENSOR_REL_TOL + TENSOR_SCORE_TOL * S),
 * S = |scale| * max_jk sum_l |q_l k1_jl k2_kl| (the largest score magnitude).
 * TENSOR_REL_TOL: f32 accumulation over at most 33^2 = 1089 pairs (worst
 * case 1089 * 2^-24 = 6.5e-5, typically sqrt of that count times 2^-24),
 * a few ulp per exp, one rounding of each v1 ⊙ v2 product: 1e-4.
 * TENSOR_SCORE_TOL: a score is a sum of d <= 64 triple products; f32 makes
 * it off by at most (d + 2) * 2^-24 * S = 3.9e-6 * S, and a score error delta
 * moves the output by at most 2 * delta * maxv (the weight changes by
 * e^(+-delta)): 7.9e-6 * S < 1e-5 * S. The wide-head cases (d up to 300)
 * use TENSOR_SCORE_TOL_WIDE = (300 + 2) * 2^-24 * 2 = 3.6e-5 -> 4e-5.
 * A real bug (a lost pair, a missed rescale, a wrong pair row) moves the
 * output by order 1e-2 * maxv or more. */
#define TENSOR_REL_TOL 1e-4
#define TENSOR_SCORE_TOL 1e-5
#define TENSOR_SCORE_TOL_WIDE 4e-5
/* Two kernels each within the bound of the exact answer are within twice
 * the bound of each other (triangle inequality). */
#define PAIR_FACTOR 2.0

#define PAGE_ALIGN 64
#define FILL 12345.0f /* o is pre-filled with this: every kernel must overwrite it */

/* ---- deterministic random numbers (xorshift64*) ---------------------------- */

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static float rng_uniform(float lo, float hi) /* [lo, hi) */
{
    return lo + (hi - lo) * (float)((rng_next() >> 40) * (1.0 / 16777216.0));
}

static float *random_floats(size_t count, float lo, float hi)
{
    float *x = malloc((count ? count : 1) * sizeof *x);
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < count; i++)
        x[i] = rng_uniform(lo, hi);
    return x;
}

/* Small integers in [-r, r]: products and sums stay exact in f32. */
static float *random_ints(size_t count, int r)
{
    float *x = malloc((count ? count : 1) * sizeof *x);
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < count; i++)
        x[i] = (float)((int)(rng_next() % (uint64_t)(2 * r + 1)) - r);
    return x;
}

/* ---- a hand-built paged f32 view ------------------------------------------- */

/* Pages laid out [pad 64][K spp x d f32][V spp x d f32], each page from
 * aligned_alloc(64). The K block starts 64 bytes in (a kernel that ignores
 * k_offset fails) and every slot past n is NaN (a kernel that reads past
 * the visible tokens fails). */
typedef struct test_view {
    unsigned char **pages; /* [n_pages] */
    size_t n_pages;
    kvd_kv_pages kv;
} test_view;

static size_t align64(size_t x)
{
    return (x + PAGE_ALIGN - 1) / PAGE_ALIGN * PAGE_ALIGN;
}

/* A view of n rows: K row j = k[j*d ..], V row j = v[j*d ..] (flat [n][d]). */
static void view_build(test_view *t, const float *k, const float *v, size_t n, size_t d,
                       size_t spp)
{
    const size_t block = align64(spp * d * sizeof(float));
    const size_t k_off = PAGE_ALIGN, v_off = k_off + block, page_bytes = v_off + block;
    t->n_pages = n == 0 ? 1 : (n + spp - 1) / spp;
    t->pages = calloc(t->n_pages, sizeof *t->pages);
    ck_assert_ptr_nonnull(t->pages);
    for (size_t p = 0; p < t->n_pages; p++) {
        t->pages[p] = aligned_alloc(PAGE_ALIGN, page_bytes);
        ck_assert_ptr_nonnull(t->pages[p]);
        float *f = (float *)t->pages[p];
        for (size_t i = 0; i < page_bytes / sizeof(float); i++)
            f[i] = NAN;
    }
    t->kv = (kvd_kv_pages){.pages = (const unsigned char *const *)t->pages,
                           .slots_per_page = spp, .head_dim = d,
                           .k_offset = k_off, .v_offset = v_off};
    for (size_t j = 0; j < n; j++) {
        memcpy(t->pages[j / spp] + k_off + (j % spp) * d * sizeof(float), k + j * d,
               d * sizeof(float));
        memcpy(t->pages[j / spp] + v_off + (j % spp) * d * sizeof(float), v + j * d,
               d * sizeof(float));
    }
}

static void view_free(test_view *t)
{
    for (size_t p = 0; p < t->n_pages; p++)
        free(t->pages[p]);
    free(t->pages);
}

/* A tensor stream of n tokens: flat k1, k2, v1, v2 [n][d] and the two views
 * a = (k1, v1), b = (k2, v2) with spp slots per page. */
typedef struct tensor_case {
    size_t n, d;
    float *k1, *k2, *v1, *v2;
    test_view a, b;
} tensor_case;

static void case_build(tensor_case *c, size_t n, size_t d, size_t spp, int integer)
{
    c->n = n;
    c->d = d;
    if (integer) { /* exact scores: |s| up to 8 * 8 * 8 * d */
        c->k1 = random_ints(n * d, 8);
        c->k2 = random_ints(n * d, 8);
    } else {
        c->k1 = random_floats(n * d, -1.0f, 1.0f);
        c->k2 = random_floats(n * d, -1.0f, 1.0f);
    }
    c->v1 = random_floats(n * d, -1.0f, 1.0f);
    c->v2 = random_floats(n * d, -1.0f, 1.0f);
    view_build(&c->a, c->k1, c->v1, n, d, spp);
    view_build(&c->b, c->k2, c->v2, n, d, spp);
}

static void case_free(tensor_case *c)
{
    view_free(&c->a);
    view_free(&c->b);
    free(c->k1);
    free(c->k2);
    free(c->v1);
    free(c->v2);
}

/* The two-cache of tokens lo..n-1 of c (as if they were tokens 0..w-1):
 * kvd_tensor_pair_rows appended token by token into flat [w*w][d] rows,
 * then paged with spp slots per page. */
static void pairs_build(test_view *t, const tensor_case *c, size_t lo, size_t spp)
{
    const size_t d = c->d, w = c->n - lo;
    test_view a, b;
    view_build(&a, c->k1 + lo * d, c->v1 + lo * d, w, d, 5);
    view_build(&b, c->k2 + lo * d, c->v2 + lo * d, w, d, 5);
    float *k = malloc((w * w * d + 1) * sizeof *k), *v = malloc((w * w * d + 1) * sizeof *v);
    ck_assert(k && v);
    size_t rows = 0;
    for (size_t tk = 0; tk < w; tk++) {
        kvd_tensor_pair_rows(&a.kv, &b.kv, tk, k + rows * d, v + rows * d);
        rows += kvd_tensor_pair_rows_added(tk);
    }
    ck_assert_uint_eq(rows, w * w);
    view_build(t, k, v, rows, d, spp);
    free(k);
    free(v);
    view_free(&a);
    view_free(&b);
}

/* ---- the oracle: brute force over pairs in double -------------------------- */

/* out: [d] for one query head over tokens lo..n-1; two passes (max, then
 * sum), no online softmax, no f32 anywhere. *bound gets the error bound. */
static void oracle(const tensor_case *c, size_t lo, const float *q, float scale, double score_tol,
                   int exact_scores, double *out, double *bound)
{
    const size_t d = c->d, n = c->n;
    for (size_t i = 0; i < d; i++)
        out[i] = 0.0;
    *bound = 0.0;
    if (lo >= n)
        return;
    double mx = -INFINITY, smax = 0.0, maxv = 0.0;
    for (size_t j = lo; j < n; j++)
        for (size_t k = lo; k < n; k++) {
            double s = 0.0, sabs = 0.0;
            for (size_t i = 0; i < d; i++) {
                const double t = (double)q[i] * c->k1[j * d + i] * c->k2[k * d + i];
                s += t;
                sabs += fabs(t);
                maxv = fmax(maxv, fabs((double)c->v1[j * d + i] * c->v2[k * d + i]));
            }
            mx = fmax(mx, (double)scale * s);
            smax = fmax(smax, fabs(scale) * sabs);
        }
    double sum = 0.0;
    for (size_t j = lo; j < n; j++)
        for (size_t k = lo; k < n; k++) {
            double s = 0.0;
            for (size_t i = 0; i < d; i++)
                s += (double)q[i] * c->k1[j * d + i] * c->k2[k * d + i];
            const double w = exp((double)scale * s - mx);
            sum += w;
            for (size_t i = 0; i < d; i++)
                out[i] += w * c->v1[j * d + i] * c->v2[k * d + i];
        }
    for (size_t i = 0; i < d; i++)
        out[i] /= sum;
    *bound = maxv * (TENSOR_REL_TOL + (exact_scores ? 0.0 : score_tol * smax));
}

/* got [n_q][d] against want [n_q][d] within bound[h] * factor. Asserts only
 * on failure (a ck_assert per element costs more than the kernels). */
static void check_close(const char *what, const tensor_case *c, size_t window, size_t n_q,
                        const float *got, const double *want, const double *bound, double factor)
{
    const size_t d = c->d;
    for (size_t h = 0; h < n_q; h++)
        for (size_t i = 0; i < d; i++) {
            const double g = got[h * d + i], wv = want[h * d + i], tol = bound[h] * factor;
            if (isfinite(g) && fabs(g - wv) <= tol)
                continue;
            ck_abort_msg("%s: n=%zu d=%zu window=%zu n_q=%zu: o[%zu][%zu] = %.9g, want %.9g "
                         "(|err| %.3g > tol %.3g)",
                         what, c->n, d, window, n_q, h, i, g, wv, fabs(g - wv), tol);
        }
}

static float *new_output(size_t n_q, size_t d)
{
    float *o = malloc((n_q * d + 1) * sizeof *o);
    ck_assert_ptr_nonnull(o);
    for (size_t i = 0; i < n_q * d; i++)
        o[i] = FILL;
    return o;
}

/* A copy of o [n_q][d] as doubles, the `want` of check_close. */
static double *as_doubles(const float *o, size_t n)
{
    double *x = malloc((n + 1) * sizeof *x);
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < n; i++)
        x[i] = o[i];
    return x;
}

/* The two-cache as production computes it: the standard kernel of tier t
 * over the first rows = w*w pair rows. */
static void two_by_standard(size_t t, const test_view *pairs, size_t w, const float *q,
                            size_t n_q, float scale, float *o)
{
    size_t n_std;
    const kvd_attention_kernels *std = kvd_attention_kernels_all(&n_std);
    ck_assert_uint_lt(t, n_std);
    const kvd_kv_segment seg = {.kv = pairs->kv, .n = w * w};
    std[t].attend(&seg, 1, q, n_q, scale, o);
}

/* On one case and window: the oracles kvd_tensor_four_ref and
 * kvd_tensor_two_ref, and every tier's four-cache kernel and standard
 * kernel over the pair rows, against the double-precision brute force and
 * each other (every tier's four against four_ref and against its own two,
 * every tier's two against two_ref). */
static void check_case(const tensor_case *c, size_t window, size_t n_q, float qlo, float qhi,
                       float scale, double score_tol, int exact_scores)
{
    const size_t d = c->d, n = c->n;
    const size_t lo = window > 0 && window < n ? n - window : 0;
    float *q = exact_scores ? random_ints(n_q * d, 8) : random_floats(n_q * d, qlo, qhi);
    double *want = malloc((n_q * d + 1) * sizeof *want);
    double *bound = malloc(n_q * sizeof *bound);
    ck_assert(want && bound);
    for (size_t h = 0; h < n_q; h++)
        oracle(c, lo, q + h * d, scale, score_tol, exact_scores, want + h * d, &bound[h]);

    test_view pairs;
    pairs_build(&pairs, c, lo, 7);
    float *ref4 = new_output(n_q, d), *ref2 = new_output(n_q, d);
    kvd_tensor_four_ref(&c->a.kv, &c->b.kv, n, window, q, n_q, scale, ref4);
    kvd_tensor_two_ref(&pairs.kv, n - lo, q, n_q, scale, ref2);
    check_close("four_ref", c, window, n_q, ref4, want, bound, 1.0);
    check_close("two_ref", c, window, n_q, ref2, want, bound, 1.0);
    double *ref4_d = as_doubles(ref4, n_q * d), *ref2_d = as_doubles(ref2, n_q * d);

    size_t n_tables;
    const kvd_tensor_kernels *tables = kvd_tensor_kernels_all(&n_tables);
    for (size_t t = 0; t < n_tables; t++) {
        char what[64];
        float *o4 = new_output(n_q, d), *o2 = new_output(n_q, d);
        tables[t].four(&c->a.kv, &c->b.kv, n, window, q, n_q, scale, o4);
        two_by_standard(t, &pairs, n - lo, q, n_q, scale, o2);
        snprintf(what, sizeof what, "%s four", tables[t].name);
        check_close(what, c, window, n_q, o4, want, bound, 1.0);
        snprintf(what, sizeof what, "%s two (standard kernel)", tables[t].name);
        check_close(what, c, window, n_q, o2, want, bound, 1.0);
        double *o2_d = as_doubles(o2, n_q * d);
        snprintf(what, sizeof what, "%s four vs two", tables[t].name);
        check_close(what, c, window, n_q, o4, o2_d, bound, PAIR_FACTOR);
        snprintf(what, sizeof what, "%s four vs four_ref", tables[t].name);
        check_close(what, c, window, n_q, o4, ref4_d, bound, PAIR_FACTOR);
        snprintf(what, sizeof what, "%s two vs two_ref", tables[t].name);
        check_close(what, c, window, n_q, o2, ref2_d, bound, PAIR_FACTOR);
        free(o2_d);
        free(o4);
        free(o2);
    }
    free(ref4_d);
    free(ref2_d);
    free(ref4);
    free(ref2);
    view_free(&pairs);
    free(q);
    free(want);
    free(bound);
}

/* ---- tests ----------------------------------------------------------------- */

/* The grid the issue names: n x d x window x GQA group, every level. */
START_TEST(test_grid_against_oracle)
{
    static const size_t ns[] = {0, 1, 2, 7, 33};
    static const size_t ds[] = {1, 3, 16, 64};
    static const size_t groups[] = {1, 2, 4};
    for (size_t in = 0; in < sizeof ns / sizeof *ns; in++)
        for (size_t id = 0; id < sizeof ds / sizeof *ds; id++) {
            const size_t n = ns[in], d = ds[id];
            tensor_case c;
            case_build(&c, n, d, 5, 0);
            const size_t windows[] = {0, 1, 3, n + 5};
            for (size_t iw = 0; iw < 4; iw++)
                for (size_t ig = 0; ig < 3; ig++)
                    check_case(&c, windows[iw], groups[ig], -1.0f, 1.0f,
                               1.0f / sqrtf((float)d), TENSOR_SCORE_TOL, 0);
            case_free(&c);
        }
}
END_TEST

/* Sharper softmax (scale 2 on [-2, 2] queries: scores up to ~4d), other
 * page sizes, wide heads (the SIMD chunking, d above the fast bound runs
 * kvd_tensor_four_view), odd groups and a group larger than KVD_TENSOR_MAX_GROUP. */
START_TEST(test_shapes_and_groups)
{
    static const struct {
        size_t n, d, spp, n_q, window;
    } cases[] = {
        {40, 128, 16, 5, 0},  {40, 100, 3, 3, 0},   {21, 256, 6, 2, 0}, {19, 300, 4, 2, 0},
        {23, 17, 1, 7, 9},    {18, 48, 64, 70, 0},  {50, 64, 32, 4, 17}, {17, 32, 16, 16, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        tensor_case c;
        case_build(&c, cases[i].n, cases[i].d, cases[i].spp, 0);
        check_case(&c, cases[i].window, cases[i].n_q, -2.0f, 2.0f, 2.0f / sqrtf((float)cases[i].d),
                   TENSOR_SCORE_TOL_WIDE, 0);
        case_free(&c);
    }
}
END_TEST

/* Scores up to ~1e4 in magnitude: e^s overflows f32 beyond s = 88, so only
 * a running max keeps the sums finite. Integer inputs make every score exact
 * in f32 and in double (|terms| <= 8^3, sums < 2^24), so the bound needs no
 * score term: only exp and accumulation error remain. */
START_TEST(test_large_scores_stay_finite)
{
    static const size_t ds[] = {1, 16, 20};
    for (size_t id = 0; id < 3; id++) {
        tensor_case c;
        case_build(&c, 12, ds[id], 5, 1);
        for (size_t w = 0; w <= 12; w += 4)
            for (size_t g = 1; g <= 4; g *= 2) {
                check_case(&c, w, g, 0, 0, 1.0f, 0.0, 1);
                check_case(&c, w, g, 0, 0, -0.5f, 0.0, 1); /* negative scale flips the max */
            }
        case_free(&c);
    }
}
END_TEST

/* n = 0 (and a window over nothing) writes zeros: no pairs, no mass. */
START_TEST(test_empty_writes_zeros)
{
    tensor_case c;
    case_build(&c, 0, 16, 5, 0);
    test_view pairs;
    pairs_build(&pairs, &c, 0, 7);
    float *q = random_floats(3 * 16, -1.0f, 1.0f);
    size_t n_tables;
    const kvd_tensor_kernels *tables = kvd_tensor_kernels_all(&n_tables);
    for (size_t t = 0; t < n_tables; t++)
        for (size_t w = 0; w < 3; w++) {
            float *o4 = new_output(3, 16), *o2 = new_output(3, 16);
            tables[t].four(&c.a.kv, &c.b.kv, 0, w, q, 3, 0.25f, o4);
            two_by_standard(t, &pairs, 0, q, 3, 0.25f, o2);
            for (size_t i = 0; i < 3 * 16; i++) {
                ck_assert_msg(o4[i] == 0.0f, "%s four: o[%zu] = %g", tables[t].name, i,
                              (double)o4[i]);
                ck_assert_msg(o2[i] == 0.0f, "%s two: o[%zu] = %g", tables[t].name, i,
                              (double)o2[i]);
            }
            free(o4);
            free(o2);
        }
    free(q);
    view_free(&pairs);
    case_free(&c);
}
END_TEST

/* Row order as the issue states it, worked by hand for t = 0, 1, 2. */
START_TEST(test_pair_row_order)
{
    /* t = 2 appends (2,0),(2,1),(2,2),(0,2),(1,2) as rows 4..8 */
    static const size_t want[9][2] = {{0, 0}, {1, 0}, {1, 1}, {0, 1}, {2, 0},
                                      {2, 1}, {2, 2}, {0, 2}, {1, 2}};
    for (size_t r = 0; r < 9; r++)
        ck_assert_uint_eq(kvd_tensor_pair_row(want[r][0], want[r][1]), r);
    /* A bijection from the pairs of tokens 0..n-1 onto rows 0..n^2-1. */
    const size_t n = 40;
    unsigned char *seen = calloc(n * n, 1);
    ck_assert_ptr_nonnull(seen);
    for (size_t j = 0; j < n; j++)
        for (size_t k = 0; k < n; k++) {
            const size_t r = kvd_tensor_pair_row(j, k);
            ck_assert_uint_lt(r, n * n);
            ck_assert_uint_eq(seen[r], 0);
            seen[r] = 1;
            /* the pair belongs to token max(j, k): rows max^2 .. max^2 + 2 max */
            const size_t t = j > k ? j : k;
            ck_assert(r >= t * t && r <= t * t + 2 * t);
        }
    free(seen);
}
END_TEST

/* kvd_tensor_pair_rows writes, for every token, exactly k1_j ⊙ k2_k and
 * v1_j ⊙ v2_k (bitwise: one f32 product each) of the pair of each row. */
START_TEST(test_pair_rows_exact)
{
    static const size_t ds[] = {1, 3, 16, 64};
    for (size_t id = 0; id < 4; id++) {
        const size_t n = 13, d = ds[id];
        tensor_case c;
        case_build(&c, n, d, 5, 0);
        const size_t cap = kvd_tensor_pair_rows_added(n - 1);
        float *k = malloc(cap * d * sizeof *k), *v = malloc(cap * d * sizeof *v);
        ck_assert(k && v);
        for (size_t t = 0; t < n; t++) {
            const size_t added = kvd_tensor_pair_rows_added(t);
            ck_assert_uint_eq(added, 2 * t + 1);
            kvd_tensor_pair_rows(&c.a.kv, &c.b.kv, t, k, v);
            for (size_t i = 0; i < added; i++) {
                /* the pair of row t^2 + i, found by searching, not by formula */
                size_t pj = n, pk = n;
                for (size_t j = 0; j <= t; j++)
                    for (size_t kk = 0; kk <= t; kk++)
                        if (kvd_tensor_pair_row(j, kk) == t * t + i) {
                            pj = j;
                            pk = kk;
                        }
                ck_assert_uint_lt(pj, n);
                ck_assert(pj == t || pk == t);
                for (size_t l = 0; l < d; l++) {
                    const float wk = c.k1[pj * d + l] * c.k2[pk * d + l];
                    const float wv = c.v1[pj * d + l] * c.v2[pk * d + l];
                    ck_assert_msg(memcmp(&k[i * d + l], &wk, sizeof wk) == 0,
                                  "t=%zu row %zu l=%zu", t, i, l);
                    ck_assert_msg(memcmp(&v[i * d + l], &wv, sizeof wv) == 0,
                                  "t=%zu row %zu l=%zu", t, i, l);
                }
            }
        }
        free(k);
        free(v);
        case_free(&c);
    }
}
END_TEST

/* The memory bound (Chen et al. 2025): a two-cache holds n^2 rows, so
 * doubling n from 32 to 64 quadruples it, while a four-cache (4n rows of
 * k1, k2, v1, v2) only doubles. Counted from what the pair-row helper
 * reports per appended token. */
static size_t two_cache_rows(size_t n)
{
    size_t rows = 0;
    for (size_t t = 0; t < n; t++)
        rows += kvd_tensor_pair_rows_added(t);
    return rows;
}

START_TEST(test_two_cache_grows_as_n_squared)
{
    ck_assert_uint_eq(two_cache_rows(32), 32 * 32);
    ck_assert_uint_eq(two_cache_rows(64), 64 * 64);
    ck_assert_uint_eq(two_cache_rows(64), 4 * two_cache_rows(32));
    ck_assert_uint_eq(4 * 64, 2 * (4 * 32)); /* four-cache rows: linear */
}
END_TEST

/* The dispatch picks the best level this CPU runs and it is in the list. */
START_TEST(test_dispatch)
{
    size_t n;
    const kvd_tensor_kernels *all = kvd_tensor_kernels_all(&n);
    const kvd_tensor_kernels *best = kvd_tensor_kernels_get();
    ck_assert_uint_ge(n, 1);
    ck_assert_ptr_eq(best, &all[n - 1]);
    ck_assert_str_eq(all[0].name, "scalar");
    ck_assert_ptr_eq(all[0].four, kvd__tensor_four_scalar);
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        ck_assert_uint_ge(n, 2);
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2")
        && __builtin_cpu_supports("fma"))
        ck_assert_str_eq(best->name, "avx512");
#endif
    printf("tensor kernels: %s (%zu levels)\n", best->name, n);
    tiers_print("attention/tensor");
}
END_TEST

static Suite *tensor_suite(void)
{
    Suite *s = suite_create("attention/tensor");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_grid_against_oracle);
    tcase_add_test(tc, test_shapes_and_groups);
    tcase_add_test(tc, test_large_scores_stay_finite);
    tcase_add_test(tc, test_empty_writes_zeros);
    tcase_add_test(tc, test_pair_row_order);
    tcase_add_test(tc, test_pair_rows_exact);
    tcase_add_test(tc, test_two_cache_grows_as_n_squared);
    tcase_add_test(tc, test_dispatch);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(tensor_suite)
