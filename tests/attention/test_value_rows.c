/* tests/attention/test_value_rows.c — value rows decoded in registers
 * (simd_values, attention/standard_simd.h). For f16, bf16, U4G and U2G
 * values, every kernel tier must give, bit for bit, what it gives on a twin
 * cache that holds the same numbers as f32 values (read in place and summed
 * by simd_accumulate): the decode is exact and the products, and their order
 * per head, are the same, so any difference is a wrong table, group, lane,
 * head or pass. The shapes cover both paths: chunks of whole register passes,
 * and those left to the tile (head_dim not whole passes, groups that are
 * not whole vectors), 1-9 heads (passes of 4, 2 and 1), ragged blocks, and
 * pages in shuffled order. The outputs themselves are checked against the
 * oracle by tests/cache/test_quant_attention.c. */
#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/formats.h"
#include "attention/kernels.h"
#define RANDOM_UNITS_SEED 0x7a1e5d1ec7ull
#include "tests/attention/random_units.h"
#include "tests/attention/tiers.h"
#include "tests/support/check_main.h"

/* The twin of q: the same page table order and f32 keys, and each value
 * row as the f32 numbers kvd_dequant_row gives for it. */
static void twin_build(const pages *q, pages *t)
{
    const kvd_kv_pages *kv = &q->kv;
    const size_t d = kv->head_dim, spp = kv->slots_per_page;
    const size_t v_bytes = (spp * d * 4 + 63) / 64 * 64;
    t->n_pages = q->n_pages;
    t->page = calloc(t->n_pages ? t->n_pages : 1, sizeof *t->page);
    ck_assert_ptr_nonnull(t->page);
    for (size_t i = 0; i < t->n_pages; i++) {
        t->page[i] = aligned_alloc(64, kv->v_offset + v_bytes);
        ck_assert_ptr_nonnull(t->page[i]);
        memcpy(t->page[i], q->page[i], kv->v_offset); /* the f32 keys */
        for (size_t s = 0; s < spp; s++)
            kvd_dequant_row(kv->v_format, q->page[i] + kv->v_offset + s * kv->v_row_bytes, 0, d,
                            kv->group, (float *)(void *)(t->page[i] + kv->v_offset) + s * d);
    }
    t->kv = *kv;
    t->kv.pages = (const unsigned char *const *)t->page;
    t->kv.v_format = KVD_ROW_F32;
    t->kv.v_row_bytes = (uint32_t)(4 * d);
}

START_TEST(test_values_match_f32_twin)
{
    static const kvd_row_format fmts[] = {KVD_ROW_F16, KVD_ROW_BF16, KVD_ROW_U4G, KVD_ROW_U2G};
    /* whole passes on AVX-512 (64 channels) or AVX2 (16), a tail, several
     * chunks of 256 */
    static const size_t dims[] = {16, 48, 64, 96, 128, 200, 256, 320, 576};
    /* whole vectors on both tiers (16, 32, 48, 64), on AVX2 only (8, 24),
     * on neither (12) */
    static const uint32_t groups[] = {16, 32, 48, 64, 8, 24, 12};
    static const size_t counts[] = {1, 15, 16, 17, 100, 300};
    size_t n_all;
    const kvd_attention_kernels *all = kvd_attention_kernels_all(&n_all);
    size_t compared = 0;
    for (size_t fi = 0; fi < sizeof fmts / sizeof *fmts; fi++)
        for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
            for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++) {
                const int grouped = fmts[fi] == KVD_ROW_U4G || fmts[fi] == KVD_ROW_U2G;
                if (!grouped && gi > 0)
                    break; /* f16/bf16: the group is not read */
                const size_t d = dims[di], n_q = 1 + rng_next() % 9;
                const size_t n = counts[rng_next() % (sizeof counts / sizeof *counts)];
                const size_t spp = 5 + rng_next() % 56;
                const uint32_t group = groups[gi];
                pages qp, tp;
                pages_build(&qp, KVD_ROW_F32, fmts[fi], n, d, group, spp, false);
                twin_build(&qp, &tp);
                float *q = malloc(n_q * d * sizeof *q), *oq = malloc(n_q * d * sizeof *oq);
                float *ot = malloc(n_q * d * sizeof *ot);
                ck_assert(q && oq && ot);
                for (size_t i = 0; i < n_q * d; i++)
                    q[i] = (float)(2.0 * rng_unit() - 1.0);
                const float scale = 1.0f / sqrtf((float)d);
                const kvd_kv_segment sq = {.kv = qp.kv, .n = n}, st = {.kv = tp.kv, .n = n};
                for (size_t k = 0; k < n_all; k++) {
                    all[k].attend(&sq, 1, q, n_q, scale, oq);
                    all[k].attend(&st, 1, q, n_q, scale, ot);
                    double mag = 0.0;
                    for (size_t i = 0; i < n_q * d; i++) {
                        ck_assert_msg(memcmp(&oq[i], &ot[i], sizeof *oq) == 0,
                                      "%s: format %d d=%zu group=%u n=%zu heads=%zu spp=%zu: "
                                      "o[%zu] = %.9g, the f32 twin gives %.9g",
                                      all[k].name, (int)fmts[fi], d, group, n, n_q, spp, i,
                                      (double)oq[i], (double)ot[i]);
                        mag += fabs(oq[i]);
                    }
                    ck_assert_msg(isfinite(mag) && mag > 0.0, "%s: format %d d=%zu: no output",
                                  all[k].name, (int)fmts[fi], d);
                    compared++;
                }
                free(q);
                free(oq);
                free(ot);
                pages_free(&qp);
                pages_free(&tp);
            }
    ck_assert_uint_gt(compared, 0);
}
END_TEST

static Suite *make_suite(void)
{
    tiers_print("value_rows");
    Suite *s = suite_create("value_rows");
    TCase *tc = tcase_create("values");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_values_match_f32_twin);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
