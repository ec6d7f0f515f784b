/* tests/attention/test_hadamard.c — the Walsh–Hadamard butterfly
 * (attention/hadamard.c) against its definition W[i][j] = (-1)^popcount(i & j)
 * exactly, W / sqrt(d) orthonormal and its own inverse (checked in double on
 * every basis vector), and the f32 transform against its double twin. */
#include <math.h>
#include <stdlib.h>

#include <check.h>

#include "attention/hadamard.h"
#include "tests/support/check_main.h"
#include "tests/support/kvd_data.h"

/* f32 against double on uniform [-1, 1) rows: log2(d) rounded adds, each
 * within 2^-24 of a sum bounded by d. */
#define TOL_F32_VS_F64 1e-6

START_TEST(sizes)
{
    ck_assert(!kvd_hadamard_size_ok(0));
    ck_assert(kvd_hadamard_size_ok(1) && kvd_hadamard_size_ok(2) && kvd_hadamard_size_ok(64));
    ck_assert(kvd_hadamard_size_ok(4096));
    ck_assert(!kvd_hadamard_size_ok(3) && !kvd_hadamard_size_ok(48) && !kvd_hadamard_size_ok(96));
}
END_TEST

/* Column j of W is W e_j; entries are +-1 so f32 holds them exactly. */
START_TEST(matches_definition_and_is_orthonormal)
{
    for (size_t d = 1; d <= 256; d *= 2) {
        float *w = malloc(d * d * sizeof *w); /* w[j * d + i] = (W e_j)_i */
        for (size_t j = 0; j < d; j++) {
            float *col = w + j * d;
            for (size_t i = 0; i < d; i++)
                col[i] = i == j ? 1.0f : 0.0f;
            kvd_hadamard(col, d);
            for (size_t i = 0; i < d; i++) {
                const float want = __builtin_popcountll(i & j) % 2 ? -1.0f : 1.0f;
                ck_assert_msg(col[i] == want, "d %zu: W[%zu][%zu] = %g", d, i, j, (double)col[i]);
            }
        }
        /* (W/sqrt d)^T (W/sqrt d) = I, exactly in double */
        for (size_t a = 0; a < d; a++)
            for (size_t b = 0; b < d; b++) {
                double dot = 0;
                for (size_t i = 0; i < d; i++)
                    dot += (double)w[a * d + i] * w[b * d + i];
                ck_assert_msg(dot / (double)d == (a == b ? 1.0 : 0.0), "d %zu: <col %zu, col %zu> = %g", d, a,
                              b, dot);
            }
        free(w);
    }
}
END_TEST

/* Applying W twice gives d x: W / sqrt(d) is its own inverse. Integer
 * inputs keep every sum exact in double. */
START_TEST(own_inverse)
{
    rng r;
    rng_seed(&r, 7);
    for (size_t d = 1; d <= 4096; d *= 2) {
        double *x = malloc(d * sizeof *x), *y = malloc(d * sizeof *y);
        for (size_t i = 0; i < d; i++)
            x[i] = y[i] = (double)(int)rng_uniform(&r, -1000, 1000);
        kvd_hadamard_f64(y, d);
        kvd_hadamard_f64(y, d);
        for (size_t i = 0; i < d; i++)
            ck_assert_msg(y[i] == (double)d * x[i], "d %zu, i %zu: %g vs %g", d, i, y[i], (double)d * x[i]);
        free(x);
        free(y);
    }
}
END_TEST

START_TEST(f32_twin)
{
    rng r;
    rng_seed(&r, 11);
    for (size_t d = 1; d <= 1024; d *= 2) {
        float *x = rng_tensor(&r, d, -1, 1);
        double *y = malloc(d * sizeof *y);
        for (size_t i = 0; i < d; i++)
            y[i] = x[i];
        kvd_hadamard(x, d);
        kvd_hadamard_f64(y, d);
        for (size_t i = 0; i < d; i++)
            ck_assert_msg(fabs(x[i] - y[i]) <= TOL_F32_VS_F64 * (double)d, "d %zu, i %zu: %g vs %g", d, i,
                          (double)x[i], y[i]);
        free(x);
        free(y);
    }
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("hadamard");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, sizes);
    tcase_add_test(tc, matches_definition_and_is_orthonormal);
    tcase_add_test(tc, own_inverse);
    tcase_add_test(tc, f32_twin);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
