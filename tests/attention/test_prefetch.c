/* tests/attention/test_prefetch.c — the decode kernel's prefetch schedule
 * (simd_pf, attention/standard_simd.h). A prefetch changes no output, so no
 * other test would notice a schedule that stops asking (a block never
 * queued, a pace that never reaches the next block) or asks for bytes the
 * segment does not hold: only speed would suffer, silently. Here the
 * portable tier's v_prefetch is traced (KVD_PF_TRACE; the schedule is the
 * same code on every tier) while the kernel decodes a segment, for every
 * row format (both schedules: a block's rows dripped, or asked for at once),
 * head_dim 64-256, ragged last blocks and shuffled pages. It must hold that:
 * every address asked for lies in a row of the segment; rows are asked for
 * in the order the kernel reads them (a block's key rows, then its value
 * rows; KIVI block scales with the block's first token); every line of
 * every row is asked for; no row is asked for twice; and each block after
 * the first has at least half of its rows asked for before the kernel
 * starts reading it (the lead is three quarters of a block or all of it). */
#include <check.h>
#include <float.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RANDOM_UNITS_SEED 0x9f3c1e7a55d2b08dull
#include "tests/attention/random_units.h" /* first: it names a parameter vf */
#include "tests/support/check_main.h"

static void pf_trace(const void *p);
#define KVD_PF_TRACE(p) pf_trace(p)
#define KVD_PF_TRACE_BLOCK() pf_trace(NULL) /* a block starts */
#define KVD_SIMD_HELPERS_ONLY
#include "attention/simd_scalar.h"
#include "attention/standard_simd.h"

enum { TRACE_CAP = 1 << 20 };
static uintptr_t trace[TRACE_CAP];
static size_t n_trace;

static void pf_trace(const void *p)
{
    ck_assert_uint_lt(n_trace, TRACE_CAP);
    trace[n_trace++] = (uintptr_t)p;
}

/* One row's bytes and its place in the order the kernel reads rows. */
typedef struct row {
    uintptr_t lo, hi; /* [lo, hi) */
    size_t order;     /* block * 2 * KVD_ATTN_BLOCK + (key: slot, value: nb + slot) */
    size_t asked;     /* prefetches that fell in it */
} row;

static int row_cmp(const void *a, const void *b)
{
    const row *x = a, *y = b;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

static row *row_find(row *rows, size_t n, uintptr_t p)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (rows[mid].hi <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && rows[lo].lo <= p ? &rows[lo] : NULL;
}

/* The rows slots [0, n) of kv read, as the kernel reads them: per-token key
 * and value rows, and a KIVI key block's scales as part of its first
 * token's key row. */
static size_t rows_of(const kvd_kv_pages *kv, size_t n, row *out)
{
    const size_t d = kv->head_dim, ks = kvd__kv_k_stride(kv), vs = kvd__kv_v_stride(kv);
    const int k_block = kvd_row_is_block(kv->k_format);
    const size_t k_codes = k_block ? (d * (kv->k_format == KVD_ROW_KIVI4_KEYS ? 4 : 2) + 7) / 8 : 0;
    size_t m = 0;
    for (size_t j = 0; j < n; j++) {
        const size_t blk = j / KVD_ATTN_BLOCK, b = j % KVD_ATTN_BLOCK;
        const size_t nb = n - blk * KVD_ATTN_BLOCK < KVD_ATTN_BLOCK ? n - blk * KVD_ATTN_BLOCK
                                                                    : KVD_ATTN_BLOCK;
        const size_t base = blk * 2 * KVD_ATTN_BLOCK;
        size_t t;
        const unsigned char *k = kvd__kv_unit(kv, kv->k_offset, kv->k_format, ks, j, &t);
        if (k_block) {
            if (t == 0)
                out[m++] = (row){(uintptr_t)k, (uintptr_t)(k + 4 * d), base + b, 0};
            const unsigned char *c = k + 4 * d + t * k_codes;
            out[m++] = (row){(uintptr_t)c, (uintptr_t)(c + k_codes), base + b, 0};
        } else {
            out[m++] = (row){(uintptr_t)k, (uintptr_t)(k + ks), base + b, 0};
        }
        const unsigned char *v = kvd__kv_unit(kv, kv->v_offset, kv->v_format, vs, j, &t);
        out[m++] = (row){(uintptr_t)v, (uintptr_t)(v + vs), base + nb + b, 0};
    }
    return m;
}

/* Decodes n slots of (kf, vfm) rows with the portable tier, tracing, and
 * checks the trace against the rows. Returns 1 when the rows were dripped. */
static int check_schedule(kvd_row_format kf, kvd_row_format vfm, size_t d, size_t n, size_t spp)
{
    const uint32_t group = 32;
    pages p;
    pages_build(&p, kf, vfm, n, d, group, spp, false);
    const size_t g = 4;
    float *q = malloc(g * d * sizeof *q), *o = calloc(g * d, sizeof *o);
    simd_state *st = aligned_alloc(64, (sizeof *st + 63) / 64 * 64);
    row *rows = malloc(3 * n * sizeof *rows);
    ck_assert(q && o && st && rows);
    for (size_t i = 0; i < g * d; i++)
        q[i] = (float)(2.0 * rng_unit() - 1.0);
    st->od_on = 1;
    memset(st->od, 0, g * d * sizeof *st->od);
    st->since_fold = 0;
    for (size_t h = 0; h < g; h++) {
        st->m[h] = -FLT_MAX;
        st->l[h] = 0.0;
        st->od_scale[h] = 1.0;
    }

    n_trace = 0;
    simd_segment(&p.kv, n, q, g, 0.1f, o, st, NULL, 0);
    const int dripped = st->pf.drip;

    const size_t m = rows_of(&p.kv, n, rows);
    qsort(rows, m, sizeof *rows, row_cmp);
    size_t last = 0, block = 0;
    size_t early[(16 * 23 + 7) / KVD_ATTN_BLOCK + 2] = {0}; /* rows of a block asked before it */
    ck_assert_uint_le(n, 16 * 23 + 7);
    for (size_t i = 0; i < n_trace; i++) {
        if (trace[i] == 0) {
            block++; /* blocks start in order: marker k starts block k - 1 */
            continue;
        }
        row *r = row_find(rows, m, trace[i]);
        ck_assert_msg(r != NULL, "formats %d/%d d %zu n %zu: prefetch %zu outside every row",
                      (int)kf, (int)vfm, d, n, i);
        ck_assert_msg(r->order >= last,
                      "formats %d/%d d %zu n %zu: row %zu asked for after row %zu", (int)kf,
                      (int)vfm, d, n, r->order, last);
        last = r->order;
        if (r->asked++ == 0 && r->order / (2 * KVD_ATTN_BLOCK) >= block)
            early[r->order / (2 * KVD_ATTN_BLOCK)]++;
    }
    for (size_t j = 1; j * KVD_ATTN_BLOCK < n; j++) {
        const size_t nb = n - j * KVD_ATTN_BLOCK < KVD_ATTN_BLOCK ? n - j * KVD_ATTN_BLOCK
                                                                  : KVD_ATTN_BLOCK;
        const size_t rows_j = 2 * nb + (kvd_row_is_block(kf) ? (j % 2 == 0) : 0);
        ck_assert_msg(2 * early[j] >= rows_j,
                      "formats %d/%d d %zu n %zu: block %zu had %zu of %zu rows asked for ahead",
                      (int)kf, (int)vfm, d, n, j, early[j], rows_j);
    }
    for (size_t i = 0; i < m; i++) {
        /* every line of the row: simd_prefetch asks for lo + 64 k and hi - 1 */
        const size_t lines = (rows[i].hi - rows[i].lo + 63) / 64;
        ck_assert_msg(rows[i].asked >= lines && rows[i].asked <= lines + 1,
                      "formats %d/%d d %zu n %zu: row %zu (%zu lines) asked for %zu times",
                      (int)kf, (int)vfm, d, n, rows[i].order, lines, rows[i].asked);
    }
    free(rows);
    free(st);
    free(q);
    free(o);
    pages_free(&p);
    return dripped;
}

START_TEST(test_every_row_asked_in_order)
{
    static const kvd_row_format fmts[][2] = {
        {KVD_ROW_F32, KVD_ROW_F32},        {KVD_ROW_F16, KVD_ROW_F16},
        {KVD_ROW_BF16, KVD_ROW_BF16},      {KVD_ROW_I8, KVD_ROW_I8},
        {KVD_ROW_U4G, KVD_ROW_U4G},        {KVD_ROW_U2G, KVD_ROW_U2G},
        {KVD_ROW_KIVI4_KEYS, KVD_ROW_U4G}, {KVD_ROW_KIVI2_KEYS, KVD_ROW_U2G},
        {KVD_ROW_F16, KVD_ROW_U4G},
    };
    static const size_t dims[] = {64, 128, 256};
    static const size_t lens[] = {1, 15, 16, 37, 16 * 23 + 7};
    size_t dripped = 0, burst = 0;
    for (size_t f = 0; f < sizeof fmts / sizeof fmts[0]; f++)
        for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
            for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++)
                for (size_t spp = 32; spp <= 96; spp += 64) {
                    const int dr = check_schedule(fmts[f][0], fmts[f][1], dims[i], lens[l], spp);
                    dripped += dr;
                    burst += !dr;
                }
    /* both schedules ran */
    ck_assert_uint_gt(dripped, 0);
    ck_assert_uint_gt(burst, 0);
}
END_TEST

static Suite *prefetch_suite(void)
{
    Suite *s = suite_create("prefetch");
    TCase *tc = tcase_create("schedule");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_every_row_asked_in_order);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(prefetch_suite)
