/* tests/cache/test_stream.c — streams: slots-per-page arithmetic and page
 * layout for every dtype, appends across page boundaries (one token at a
 * time and in batches, from strided rows), exact read-back of keys, values
 * and metadata through the kernels' view (quantized rows: the quantizer's
 * exact bytes, within the format's error bound of the f32 input through the
 * reference dequantizer), quantized rows under eviction, pages_needed,
 * block-table growth and release. KIVI's residual and settle:
 * tests/cache/test_kivi.c.
 * Over 600 lines: one suite per stream operation, sharing the fixture that
 * builds a stream in every dtype. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/formats.h"
#include "cache/evict.h"
#include "cache/pool.h"
#include "cache/quant.h"
#include "cache/stream.h"
#include "tests/support/check_main.h"

/* Bytes one page needs for spp slots of head_dim: K and V blocks padded to
 * 64, then the metadata array (the layout documented in cache/stream.h). */
static size_t layout_bytes(size_t spp, size_t d)
{
    const size_t block = (spp * d * 4 + 63) / 64 * 64;
    return 2 * block + spp * sizeof(kvd_slot_meta);
}

START_TEST(test_slots_per_page)
{
    ck_assert_uint_eq(sizeof(kvd_slot_meta), 8);
    /* d = 64, 16 KiB: 512-byte K/V rows + 8 bytes meta = 520 per slot;
     * 31 slots = 2 * 7936 + 248 = 16120 <= 16384, 32 would be 16640. */
    ck_assert_uint_eq(kvd_stream_slots_per_page(16384, 64), 31);
    /* d = 128, 16 KiB: 15 slots (2 * 7680 + 120 = 15480; 16 -> 16512). */
    ck_assert_uint_eq(kvd_stream_slots_per_page(16384, 128), 15);
    /* d = 1: 16 bytes a slot, 1024 = 2 * 4096 + 8192 = 16384 exactly. */
    ck_assert_uint_eq(kvd_stream_slots_per_page(16384, 1), 1024);
    /* A head_dim where not even one slot fits: 2 * 512 * 4 bytes > 1 KiB. */
    ck_assert_uint_eq(kvd_stream_slots_per_page(1024, 512), 0);
    ck_assert_uint_eq(kvd_stream_slots_per_page(1024, 0), 0);
    /* Exactly one slot: d = 120 at 1 KiB is 2 * 512 + 8 = 1032 > 1024 ->
     * 0; d = 112 is 2 * 448 + 8 = 904 -> 1. */
    ck_assert_uint_eq(kvd_stream_slots_per_page(1024, 120), 0);
    ck_assert_uint_eq(kvd_stream_slots_per_page(1024, 112), 1);

    /* For many shapes: spp fits and spp + 1 does not (the largest). */
    const size_t pages[] = {1024, 4096, 16384, 65536, 1000};
    for (size_t pi = 0; pi < sizeof pages / sizeof *pages; pi++)
        for (uint32_t d = 1; d <= 300; d += 7) {
            const uint32_t spp = kvd_stream_slots_per_page(pages[pi], d);
            if (spp > 0)
                ck_assert_uint_le(layout_bytes(spp, d), pages[pi]);
            ck_assert_uint_gt(layout_bytes(spp + 1, d), pages[pi]);
        }
}
END_TEST

START_TEST(test_init_layout)
{
    const size_t page_bytes = 16384;
    const uint32_t dims[] = {1, 3, 17, 64, 128, 130};
    for (size_t i = 0; i < sizeof dims / sizeof *dims; i++) {
        kvd_stream s;
        kvd_stream_init(&s, page_bytes, dims[i]);
        ck_assert_uint_eq(s.slots_per_page, kvd_stream_slots_per_page(page_bytes, dims[i]));
        ck_assert_uint_eq(s.head_dim, dims[i]);
        ck_assert_uint_eq(s.n_tokens, 0);
        ck_assert_uint_eq(s.n_pages, 0);
        ck_assert_uint_eq(s.k_offset % 64, 0);
        ck_assert_uint_eq(s.v_offset % 64, 0);
        ck_assert_uint_eq(s.meta_offset % 64, 0);
        /* blocks in order, no overlap, inside the page */
        ck_assert_uint_ge(s.v_offset, s.k_offset + (size_t)s.slots_per_page * dims[i] * 4);
        ck_assert_uint_ge(s.meta_offset, s.v_offset + (size_t)s.slots_per_page * dims[i] * 4);
        ck_assert_uint_le(s.meta_offset + s.slots_per_page * sizeof(kvd_slot_meta), page_bytes);
        ck_assert_uint_eq(kvd_stream_pages_needed(&s, 0), 0);
    }
}
END_TEST

/* Token t's key element i and value element i (distinct and exact in f32). */
static float key_of(size_t t, size_t i) { return (float)t * 1000.0f + (float)i + 0.25f; }
static float val_of(size_t t, size_t i) { return -(float)t * 1000.0f - (float)i - 0.5f; }

/* Rows [t0, t0 + m) in a [m][stride] buffer, head_dim columns used, the rest
 * of each row poison (must never be copied). */
static void fill_rows(float *k, float *v, size_t t0, size_t m, size_t d, size_t stride)
{
    for (size_t t = 0; t < m; t++)
        for (size_t i = 0; i < stride; i++) {
            k[t * stride + i] = i < d ? key_of(t0 + t, i) : NAN;
            v[t * stride + i] = i < d ? val_of(t0 + t, i) : NAN;
        }
}

/* Takes pages_needed(m) pages and appends m rows starting at token t0. */
static void append_rows(kvd_stream *s, kvd_pool *pool, size_t t0, size_t m, size_t stride)
{
    const size_t need = kvd_stream_pages_needed(s, m);
    const size_t slots_after = s->n_tokens + m;
    const size_t pages_after = (slots_after + s->slots_per_page - 1) / s->slots_per_page;
    ck_assert_uint_eq(s->n_pages + need, pages_after); /* exactly enough */
    void **pages = malloc((need ? need : 1) * sizeof *pages);
    float *k = malloc((m ? m : 1) * stride * sizeof *k);
    float *v = malloc((m ? m : 1) * stride * sizeof *v);
    ck_assert(pages && k && v);
    fill_rows(k, v, t0, m, s->head_dim, stride);
    ck_assert_int_eq(kvd_stream_reserve_table(s, need), 0);
    ck_assert_uint_ge(s->cap_pages, s->n_pages + need);
    ck_assert_int_eq(kvd_pool_alloc(pool, need, pages), 0);
    const size_t used = kvd_pool_pages_used(pool);
    kvd_stream_append(s, pool, m, k, v, stride, pages);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), used); /* append takes nothing itself */
    ck_assert_uint_eq(s->n_pages, pages_after);
    ck_assert_uint_eq(kvd_stream_pages_needed(s, 0), 0);
    free(pages);
    free(k);
    free(v);
}

/* Every slot reads back exactly through the view and kvd_stream_meta. */
static void check_contents(const kvd_stream *s, size_t n)
{
    ck_assert_uint_eq(s->n_tokens, n);
    ck_assert_uint_eq(s->appended, n);
    const kvd_kv_pages kv = kvd_stream_view(s);
    ck_assert_uint_eq(kv.slots_per_page, s->slots_per_page);
    ck_assert_uint_eq(kv.head_dim, s->head_dim);
    const size_t d = s->head_dim;
    for (size_t j = 0; j < n; j++) {
        const float *key = kvd_kv_key(&kv, j), *val = kvd_kv_value(&kv, j);
        ck_assert_uint_eq((uintptr_t)kv.pages[j / kv.slots_per_page] % 64, 0);
        for (size_t i = 0; i < d; i++) {
            ck_assert_msg(key[i] == key_of(j, i), "key[%zu][%zu] = %g", j, i, (double)key[i]);
            ck_assert_msg(val[i] == val_of(j, i), "val[%zu][%zu] = %g", j, i, (double)val[i]);
        }
        const kvd_slot_meta *meta = kvd_stream_meta(s, j);
        ck_assert_int_eq(meta->position, (int64_t)j);
    }
}

START_TEST(test_append_one_at_a_time)
{
    const uint32_t dims[] = {1, 17, 64, 112}; /* 112: one slot per 1 KiB page */
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
        kvd_pool *pool;
        ck_assert_int_eq(kvd_pool_create(256 * 1024, 1024, &pool), 0);
        kvd_stream s;
        kvd_stream_init(&s, 1024, dims[di]);
        ck_assert_uint_ge(s.slots_per_page, 1);
        /* five and a half pages, one token per step: needs 1 exactly when a
         * page is full, else 0 */
        const size_t n = 5 * s.slots_per_page + s.slots_per_page / 2 + 1;
        for (size_t t = 0; t < n; t++) {
            ck_assert_uint_eq(kvd_stream_pages_needed(&s, 1), t % s.slots_per_page == 0);
            append_rows(&s, pool, t, 1, dims[di] + 3);
        }
        check_contents(&s, n);
        ck_assert_uint_eq(kvd_pool_pages_used(pool), s.n_pages);
        kvd_stream_release(&s, pool);
        ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
        ck_assert_uint_eq(s.n_pages, 0);
        ck_assert_uint_eq(s.n_tokens, 0);
        ck_assert_ptr_null(s.pages);
        kvd_pool_destroy(pool);
    }
}
END_TEST

START_TEST(test_append_batches)
{
    const uint32_t dims[] = {3, 8, 64, 128};
    const size_t batches[] = {0, 1, 7, 40, 3, 100, 1, 0, 64};
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
        kvd_pool *pool;
        ck_assert_int_eq(kvd_pool_create(4 << 20, 4096, &pool), 0);
        kvd_stream s;
        kvd_stream_init(&s, 4096, dims[di]);
        size_t n = 0;
        for (size_t b = 0; b < sizeof batches / sizeof *batches; b++) {
            /* row_stride = 4 kv heads of a [m][kv_heads][d] tensor */
            append_rows(&s, pool, n, batches[b], 4 * (size_t)dims[di]);
            n += batches[b];
            check_contents(&s, n);
        }
        ck_assert_uint_eq(kvd_pool_pages_used(pool), s.n_pages);
        kvd_stream_release(&s, pool);
        ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
        /* reusable after release: positions start over */
        append_rows(&s, pool, 0, 10, dims[di]);
        check_contents(&s, 10);
        kvd_stream_release(&s, pool);
        ck_assert_uint_eq(kvd_pool_pages_free(pool), kvd_pool_pages_total(pool));
        kvd_pool_destroy(pool);
    }
}
END_TEST

/* pages_needed after eviction-like shrinking: pages held already cover
 * n_pages * spp slots, so only what is beyond them is needed. */
START_TEST(test_pages_needed_exact)
{
    kvd_stream s;
    kvd_stream_init(&s, 4096, 64);
    const size_t spp = s.slots_per_page;
    ck_assert_uint_eq(kvd_stream_pages_needed(&s, 1), 1);
    ck_assert_uint_eq(kvd_stream_pages_needed(&s, spp), 1);
    ck_assert_uint_eq(kvd_stream_pages_needed(&s, spp + 1), 2);
    ck_assert_uint_eq(kvd_stream_pages_needed(&s, 3 * spp), 3);
    /* pretend: 2 pages held, 1 token in use (the others evicted) */
    s.n_pages = 2;
    s.n_tokens = 1;
    ck_assert_uint_eq(kvd_stream_pages_needed(&s, 2 * spp - 1), 0);
    ck_assert_uint_eq(kvd_stream_pages_needed(&s, 2 * spp), 1);
    ck_assert_uint_eq(kvd_stream_pages_needed(&s, SIZE_MAX), SIZE_MAX); /* overflow */
}
END_TEST

START_TEST(test_reserve_table_growth)
{
    kvd_stream s;
    kvd_stream_init(&s, 4096, 16);
    ck_assert_int_eq(kvd_stream_reserve_table(&s, 0), 0);
    size_t last_cap = 0, reallocs = 0;
    for (size_t n = 1; n <= 1000; n++) {
        ck_assert_int_eq(kvd_stream_reserve_table(&s, n), 0);
        ck_assert_uint_ge(s.cap_pages, n);
        ck_assert_ptr_nonnull(s.shared); /* the copy-on-write flags grow alongside */
        if (s.cap_pages != last_cap) {
            for (size_t i = 0; i < s.cap_pages; i++)
                ck_assert_uint_eq(s.shared[i], 0);
            reallocs++;
            last_cap = s.cap_pages;
        }
    }
    ck_assert_uint_le(reallocs, 12); /* geometric: ~log2(1000) growths */
    /* impossible sizes fail with nothing changed */
    void **pages = s.pages;
    const size_t cap = s.cap_pages;
    ck_assert_int_eq(kvd_stream_reserve_table(&s, SIZE_MAX), -ENOMEM);
    ck_assert_int_eq(kvd_stream_reserve_table(&s, SIZE_MAX / 4), -ENOMEM);
    ck_assert_ptr_eq(s.pages, pages);
    ck_assert_uint_eq(s.cap_pages, cap);
    free(s.pages); /* no pages were appended: the table and its flags alone */
    free(s.shared);
}
END_TEST

/* ---- quantized dtypes -------------------------------------------------------- */

static const kvd_dtype all_dtypes[] = {KVD_DTYPE_F32,  KVD_DTYPE_F16,   KVD_DTYPE_BF16,
                                       KVD_DTYPE_INT8, KVD_DTYPE_INT4,  KVD_DTYPE_KIVI2,
                                       KVD_DTYPE_KIVI4};
static const kvd_dtype token_dtypes[] = {KVD_DTYPE_F32, KVD_DTYPE_F16, KVD_DTYPE_BF16,
                                         KVD_DTYPE_INT8, KVD_DTYPE_INT4};
#define N_ALL (sizeof all_dtypes / sizeof *all_dtypes)
#define N_TOKEN (sizeof token_dtypes / sizeof *token_dtypes)

static bool is_kivi(kvd_dtype d)
{
    return d == KVD_DTYPE_KIVI2 || d == KVD_DTYPE_KIVI4;
}

/* The documented layout for any dtype: K region (KIVI: spp / group key
 * blocks), V region, each padded to 64, then spp x 8 bytes of metadata. */
static size_t layout_bytes_fmt(size_t spp, size_t d, const kvd_stream_format *f)
{
    const size_t k_row = kvd_row_bytes(kvd_dtype_key_format(f->dtype), d, f->group);
    const size_t v_row = kvd_row_bytes(kvd_dtype_value_format(f->dtype), d, f->group);
    const size_t k_units = is_kivi(f->dtype) ? spp / f->group : spp;
    return (k_units * k_row + 63) / 64 * 64 + (spp * v_row + 63) / 64 * 64 + spp * 8;
}

START_TEST(test_format_slots_per_page)
{
    /* d = 128 at 16 KiB, worked out by hand: f16 rows of 256 bytes -> 31;
     * int8 rows of 132 -> 60 (2 * 7936 + 480 = 16352); int4 with group 32:
     * rows of 4 * 4 + 64 = 80 bytes -> 96 (97 would pad to 16392); kivi4:
     * key blocks of 4 * 128 + 32 * 64 = 2560 bytes and 80-byte value rows,
     * 3 blocks = 96 slots (7680 + 7680 + 768 = 16128). */
    const kvd_stream_format f16 = {KVD_DTYPE_F16, 32, 0}, i8 = {KVD_DTYPE_INT8, 32, 0},
                            i4 = {KVD_DTYPE_INT4, 32, 0}, kv4 = {KVD_DTYPE_KIVI4, 32, 64};
    ck_assert_uint_eq(kvd_stream_slots_per_page_format(16384, 128, &f16), 31);
    ck_assert_uint_eq(kvd_stream_slots_per_page_format(16384, 128, &i8), 60);
    ck_assert_uint_eq(kvd_stream_slots_per_page_format(16384, 128, &i4), 96);
    ck_assert_uint_eq(kvd_stream_slots_per_page_format(16384, 128, &kv4), 96);
    /* int4 stores >= 6x the tokens of f32 in the same pages */
    const uint32_t spp_f32 = kvd_stream_slots_per_page(16384, 128);
    const double ratio = (double)kvd_stream_slots_per_page_format(16384, 128, &i4) / spp_f32;
    printf("cache/stream: d=128, 16 KiB pages: f32 %u slots, int4 (group 32) %u: %.2fx\n",
           spp_f32, kvd_stream_slots_per_page_format(16384, 128, &i4), ratio);
    ck_assert_double_ge(ratio, 6.0);
    /* grouped formats need a group; unknown dtypes fit nothing */
    const kvd_stream_format i4_0 = {KVD_DTYPE_INT4, 0, 0}, kv2_0 = {KVD_DTYPE_KIVI2, 0, 0},
                            bad = {(kvd_dtype)99, 32, 0};
    ck_assert_uint_eq(kvd_stream_slots_per_page_format(16384, 128, &i4_0), 0);
    ck_assert_uint_eq(kvd_stream_slots_per_page_format(16384, 128, &kv2_0), 0);
    ck_assert_uint_eq(kvd_stream_slots_per_page_format(16384, 128, &bad), 0);
    kvd_stream s;
    ck_assert_int_eq(kvd_stream_init_format(&s, 16384, 128, &i4_0), -EINVAL);
    /* a KIVI block bigger than the page: nothing fits */
    const kvd_stream_format kv4_big = {KVD_DTYPE_KIVI4, 256, 0};
    ck_assert_uint_eq(kvd_stream_slots_per_page_format(4096, 128, &kv4_big), 0);
    ck_assert_int_eq(kvd_stream_init_format(&s, 4096, 128, &kv4_big), -EINVAL);

    /* For many shapes: spp fits, one more unit does not, KIVI whole blocks. */
    const size_t pages[] = {1024, 4096, 16384, 1000};
    const uint32_t groups[] = {1, 5, 32, 64};
    for (size_t di = 0; di < N_ALL; di++)
        for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++)
            for (size_t pi = 0; pi < sizeof pages / sizeof *pages; pi++)
                for (uint32_t d = 1; d <= 300; d += 7) {
                    const kvd_stream_format f = {all_dtypes[di], groups[gi], 2 * groups[gi]};
                    const uint32_t spp = kvd_stream_slots_per_page_format(pages[pi], d, &f);
                    const size_t unit = is_kivi(f.dtype) ? f.group : 1;
                    ck_assert_uint_eq(spp % unit, 0);
                    if (spp > 0)
                        ck_assert_uint_le(layout_bytes_fmt(spp, d, &f), pages[pi]);
                    ck_assert_uint_gt(layout_bytes_fmt(spp + unit, d, &f), pages[pi]);
                    if (f.dtype == KVD_DTYPE_F32)
                        ck_assert_uint_eq(spp, kvd_stream_slots_per_page(pages[pi], d));
                    const int rc = kvd_stream_init_format(&s, pages[pi], d, &f);
                    if (spp == 0 || (is_kivi(f.dtype) && kvd_stream_slots_per_page(pages[pi], d) == 0)) {
                        ck_assert_int_eq(rc, -EINVAL);
                        continue;
                    }
                    ck_assert_int_eq(rc, 0);
                    ck_assert_uint_eq(s.slots_per_page, spp);
                    ck_assert_uint_eq(s.k_row_bytes,
                                      kvd_row_bytes(kvd_dtype_key_format(f.dtype), d, f.group));
                    ck_assert_uint_eq(s.v_row_bytes,
                                      kvd_row_bytes(kvd_dtype_value_format(f.dtype), d, f.group));
                    ck_assert_uint_eq(s.k_offset, 0);
                    ck_assert_uint_eq(s.v_offset % 64, 0);
                    ck_assert_uint_eq(s.meta_offset % 64, 0);
                    const size_t k_units = is_kivi(f.dtype) ? spp / f.group : spp;
                    ck_assert_uint_ge(s.v_offset, k_units * s.k_row_bytes);
                    ck_assert_uint_ge(s.meta_offset, s.v_offset + (size_t)spp * s.v_row_bytes);
                    ck_assert_uint_le(s.meta_offset + (size_t)spp * 8, pages[pi]);
                    ck_assert(s.fmt.dtype == f.dtype);
                    ck_assert_int_eq(s.residual == NULL, !is_kivi(f.dtype));
                    if (s.residual != NULL) {
                        ck_assert_uint_eq(s.residual->slots_per_page,
                                          kvd_stream_slots_per_page(pages[pi], d));
                        ck_assert(s.residual->fmt.dtype == KVD_DTYPE_F32);
                    }
                    const kvd_kv_pages kv = kvd_stream_view(&s);
                    ck_assert(kv.k_format == kvd_dtype_key_format(f.dtype));
                    ck_assert(kv.v_format == kvd_dtype_value_format(f.dtype));
                    ck_assert_uint_eq(kv.k_row_bytes, s.k_row_bytes);
                    ck_assert_uint_eq(kv.v_row_bytes, s.v_row_bytes);
                    ck_assert_uint_eq(kv.group, f.group);
                    ck_assert_uint_eq(kv.v_offset, s.v_offset);
                    ck_assert_uint_eq(kvd_stream_payload_bytes(&s), 0);
                    kvd_stream_release(&s, NULL); /* no pages: the pool is not touched */
                    ck_assert_ptr_null(s.residual);
                }
}
END_TEST

static uint64_t mix(uint64_t x) /* splitmix64 finalizer */
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Key / value element i of position p: values in [-8, 8] with an outlier
 * channel (every 13th, x8) as real keys have; a third of the rows shifted
 * so that groups see both tight and wide ranges. */
static float qkey(uint64_t p, size_t i)
{
    const uint64_t h = mix(p * 0x100000001b3ull + i);
    float x = (float)((int64_t)(h % 20001) - 10000) / 1250.0f;
    if (i % 13 == 0)
        x *= 8.0f;
    return p % 3 == 0 ? x * 0.01f + 3.0f : x;
}

static float qval(uint64_t p, size_t i)
{
    return qkey(p ^ 0x5555, i + 7) * 0.5f;
}

/* Largest error the format may leave on element c of x (a conservative
 * restatement of DESIGN.md §4's bounds): f16 half an ulp (2^-11 relative),
 * bf16 2^-8 relative, int8 s/2 with s = max|x|/127, int4/int2 groups half a
 * step (max-min)/(2 levels) with one f16 ulp of slack on scale and minimum. */
static double elem_bound(kvd_row_format f, const float *x, size_t d, uint32_t group, size_t c)
{
    double amax = 0.0, mn = x[c], mx = x[c];
    size_t g0 = 0, g1 = d;
    if (f == KVD_ROW_U4G || f == KVD_ROW_U2G) {
        g0 = c / group * group;
        g1 = g0 + group < d ? g0 + group : d;
    }
    for (size_t i = g0; i < g1; i++) {
        amax = fabs((double)x[i]) > amax ? fabs((double)x[i]) : amax;
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    switch (f) {
    case KVD_ROW_F32: return 0.0;
    case KVD_ROW_F16: return fabs((double)x[c]) * 0x1p-11 + 0x1p-25;
    case KVD_ROW_BF16: return fabs((double)x[c]) * 0x1p-8 + 1e-38;
    case KVD_ROW_I8: return amax / 127.0 / 2.0 * (1.0 + 1e-5) + amax * 1e-6;
    case KVD_ROW_U4G: return (mx - mn) / 30.0 * (1.0 + 0x1p-9) + amax * 0x1p-10 + 0x1p-24;
    case KVD_ROW_U2G: return (mx - mn) / 6.0 * (1.0 + 0x1p-9) + amax * 0x1p-10 + 0x1p-24;
    default: break;
    }
    ck_abort_msg("no bound for format %d", (int)f);
    return 0.0;
}

/* Start of slot j's key row / value row in a per-token view. */
static const unsigned char *view_key(const kvd_kv_pages *kv, size_t j)
{
    return kv->pages[j / kv->slots_per_page] + kv->k_offset + (j % kv->slots_per_page) * kv->k_row_bytes;
}

static const unsigned char *view_value(const kvd_kv_pages *kv, size_t j)
{
    return kv->pages[j / kv->slots_per_page] + kv->v_offset + (j % kv->slots_per_page) * kv->v_row_bytes;
}

/* Slot j holds position p's key and value: byte for byte what the quantizer
 * writes for those f32 rows, and within the format's bound of them read back
 * through the reference dequantizer. scratch: 2 * row bytes + 3 * d floats. */
static void check_token(const kvd_stream *s, size_t j, uint64_t p)
{
    const size_t d = s->head_dim;
    const kvd_kv_pages kv = kvd_stream_view(s);
    const kvd_row_format kf = kv.k_format, vf = kv.v_format;
    unsigned char *want = malloc(kv.k_row_bytes + kv.v_row_bytes);
    float *x = malloc(3 * d * sizeof *x);
    ck_assert(want && x);
    float *y = x + d, *back = x + 2 * d;
    for (size_t i = 0; i < d; i++) {
        x[i] = qkey(p, i);
        y[i] = qval(p, i);
    }
    kvd_quant_row(kf, x, d, kv.group, want);
    kvd_quant_row(vf, y, d, kv.group, want + kv.k_row_bytes);
    if (memcmp(view_key(&kv, j), want, kv.k_row_bytes) != 0)
        ck_abort_msg("slot %zu (position %llu): key bytes differ", j, (unsigned long long)p);
    if (memcmp(view_value(&kv, j), want + kv.k_row_bytes, kv.v_row_bytes) != 0)
        ck_abort_msg("slot %zu (position %llu): value bytes differ", j, (unsigned long long)p);
    kvd_dequant_row(kf, view_key(&kv, j), 0, d, kv.group, back);
    for (size_t i = 0; i < d; i++)
        if (!(fabs((double)back[i] - x[i]) <= elem_bound(kf, x, d, kv.group, i)))
            ck_abort_msg("slot %zu key[%zu]: %.9g read back as %.9g", j, i, (double)x[i],
                         (double)back[i]);
    kvd_dequant_row(vf, view_value(&kv, j), 0, d, kv.group, back);
    for (size_t i = 0; i < d; i++)
        if (!(fabs((double)back[i] - y[i]) <= elem_bound(vf, y, d, kv.group, i)))
            ck_abort_msg("slot %zu value[%zu]: %.9g read back as %.9g", j, i, (double)y[i],
                         (double)back[i]);
    if (kvd_stream_meta(s, j)->position != (int64_t)p)
        ck_abort_msg("slot %zu: position %lld, want %llu", j,
                     (long long)kvd_stream_meta(s, j)->position, (unsigned long long)p);
    free(want);
    free(x);
}

/* Appends the next m positions (qkey/qval rows at row_stride) the way a
 * step does; checks pages_needed is exact and append takes nothing else. */
static void append_q(kvd_stream *s, kvd_pool *pool, size_t m, size_t row_stride)
{
    const size_t d = s->head_dim, need = kvd_stream_pages_needed(s, m);
    void **pages = malloc((need ? need : 1) * sizeof *pages);
    float *k = malloc((m ? m : 1) * row_stride * sizeof *k);
    float *v = malloc((m ? m : 1) * row_stride * sizeof *v);
    ck_assert(pages && k && v);
    for (size_t t = 0; t < m; t++)
        for (size_t i = 0; i < row_stride; i++) {
            k[t * row_stride + i] = i < d ? qkey(s->appended + t, i) : NAN;
            v[t * row_stride + i] = i < d ? qval(s->appended + t, i) : NAN;
        }
    const size_t slots = s->n_tokens + m;
    if (s->n_pages + need != (slots + s->slots_per_page - 1) / s->slots_per_page)
        ck_abort_msg("pages_needed(%zu) = %zu with %zu pages held", m, need, s->n_pages);
    if (kvd_stream_reserve_table(s, need) != 0 || kvd_stream_evict_reserve(s, m) != 0 ||
        kvd_pool_alloc(pool, need, pages) != 0)
        ck_abort_msg("reserve or alloc failed");
    const size_t used = kvd_pool_pages_used(pool);
    kvd_stream_append(s, pool, m, k, v, row_stride, pages);
    if (kvd_pool_pages_used(pool) != used || kvd_stream_pages_needed(s, 0) != 0)
        ck_abort_msg("append took pages of its own");
    free(pages);
    free(k);
    free(v);
}

/* Every per-token dtype: appends in batches across page boundaries (strided
 * rows), then every slot holds exactly the quantizer's bytes for its
 * position, reads back within the format's bound, and views, segments and
 * payload bytes describe it. */
START_TEST(test_append_quantized_roundtrip)
{
    const uint32_t dims[] = {1, 7, 64, 130};
    const uint32_t groups[] = {32, 5};
    const size_t batches[] = {1, 3, 20, 0, 45, 1, 1, 64, 7};
    for (size_t di = 0; di < N_TOKEN; di++)
        for (size_t gi = 0; gi < 2; gi++) {
            if (gi > 0 && token_dtypes[di] != KVD_DTYPE_INT4)
                continue; /* only int4 has a group */
            for (size_t ki = 0; ki < sizeof dims / sizeof *dims; ki++) {
                const uint32_t d = dims[ki];
                const size_t page = d < 64 ? 1024 : 4096; /* several pages for every d */
                kvd_pool *pool;
                ck_assert_int_eq(kvd_pool_create(512 * page, page, &pool), 0);
                kvd_stream s;
                const kvd_stream_format f = {token_dtypes[di], groups[gi], 0};
                ck_assert_int_eq(kvd_stream_init_format(&s, page, d, &f), 0);
                ck_assert_ptr_null(s.residual);
                size_t n = 0;
                for (size_t b = 0; b < sizeof batches / sizeof *batches; b++) {
                    append_q(&s, pool, batches[b], (size_t)d + 3);
                    n += batches[b];
                    ck_assert_uint_eq(s.n_tokens, n);
                    ck_assert_uint_eq(s.appended, n);
                    for (size_t j = 0; j < n; j++)
                        check_token(&s, j, j);
                    ck_assert_uint_eq(kvd_stream_payload_bytes(&s),
                                      n * ((size_t)s.k_row_bytes + s.v_row_bytes));
                    ck_assert_uint_eq(kvd_pool_pages_used(pool), s.n_pages);
                    kvd_kv_segment seg[2];
                    for (size_t vis = 0; vis <= n; vis += n / 3 + 1) {
                        ck_assert_uint_eq(kvd_stream_segments(&s, vis, seg), 1);
                        ck_assert_uint_eq(seg[0].n, vis);
                        ck_assert_ptr_eq(seg[0].kv.pages, kvd_stream_view(&s).pages);
                        ck_assert(seg[0].kv.k_format == kvd_dtype_key_format(f.dtype));
                    }
                }
                ck_assert_uint_gt(s.n_pages, 2); /* crossed page boundaries */
                kvd_stream_release(&s, pool);
                ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
                kvd_pool_destroy(pool);
            }
        }
}
END_TEST

static double qnorm(uint64_t p, size_t d)
{
    double sq = 0.0;
    for (size_t i = 0; i < d; i++)
        sq += (double)qkey(p, i) * qkey(p, i);
    return sqrt(sq);
}

static int cmp_pos_by_norm_d; /* head_dim for the comparison below */

static int cmp_pos_by_norm(const void *a, const void *b)
{
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    const double nx = qnorm((uint64_t)x, (size_t)cmp_pos_by_norm_d);
    const double ny = qnorm((uint64_t)y, (size_t)cmp_pos_by_norm_d);
    if (nx != ny)
        return nx < ny ? -1 : 1;
    return (x > y) - (x < y);
}

/* Eviction moves quantized rows byte for byte: after every step each kept
 * slot still holds exactly what was written for its position, and pages
 * follow the tokens. l2norm ranks by the norm of the f32 key as received. */
START_TEST(test_evict_quantized_exact_bytes)
{
    const kvd_eviction policies[] = {KVD_EVICT_RECENCY, KVD_EVICT_L2NORM, KVD_EVICT_H2O};
    const uint32_t d = 20;
    for (size_t di = 0; di < N_TOKEN; di++)
        for (size_t pi = 0; pi < 3; pi++) {
            kvd_pool *pool;
            ck_assert_int_eq(kvd_pool_create(256 * 1024, 1024, &pool), 0);
            kvd_stream s;
            const kvd_stream_format f = {token_dtypes[di], 8, 0}; /* int4: groups 8, 8, 4 */
            ck_assert_int_eq(kvd_stream_init_format(&s, 1024, d, &f), 0);
            const kvd_evict_config cfg = {.policy = policies[pi], .sink = 2, .recent = 3};
            ck_assert_int_eq(kvd_stream_evict_init(&s, &cfg), 0);
            for (uint64_t step = 0; step < 200; step++) {
                append_q(&s, pool, step % 5, d);
                if (policies[pi] == KVD_EVICT_H2O) {
                    float *w = malloc((s.n_tokens + 1) * sizeof *w);
                    ck_assert_ptr_nonnull(w);
                    for (size_t j = 0; j < s.n_tokens; j++)
                        w[j] = (float)(mix(step * 1000 + (uint64_t)kvd_stream_meta(&s, j)->position) % 9) / 8.0f;
                    kvd_stream_add_weights(&s, w, s.n_tokens);
                    free(w);
                }
                size_t used = 0;
                kvd_stream_evict(&s, pool, 25, NULL, 0, &used);
                if (s.n_tokens > 25 || used != 0)
                    ck_abort_msg("over budget");
                for (size_t j = 0; j < s.n_tokens; j++)
                    check_token(&s, j, (uint64_t)kvd_stream_meta(&s, j)->position);
                if (s.n_pages != (s.n_tokens + s.slots_per_page - 1) / s.slots_per_page ||
                    kvd_pool_pages_used(pool) != s.n_pages)
                    ck_abort_msg("pages do not follow tokens");
            }
            ck_assert_uint_gt(s.evicted, 100);
            kvd_stream_release(&s, pool);

            /* One-shot l2norm without protection keeps exactly the lowest
             * norms of the keys as received (not as quantized). */
            if (policies[pi] == KVD_EVICT_L2NORM) {
                ck_assert_int_eq(kvd_stream_init_format(&s, 1024, d, &f), 0);
                const kvd_evict_config none = {.policy = KVD_EVICT_L2NORM};
                ck_assert_int_eq(kvd_stream_evict_init(&s, &none), 0);
                append_q(&s, pool, 100, d);
                size_t used = 0;
                ck_assert_uint_eq(kvd_stream_evict(&s, pool, 30, NULL, 0, &used), 70);
                int64_t all[100], kept[30];
                for (size_t j = 0; j < 100; j++)
                    all[j] = (int64_t)j;
                cmp_pos_by_norm_d = (int)d;
                qsort(all, 100, sizeof *all, cmp_pos_by_norm);
                for (size_t j = 0; j < 30; j++)
                    kept[j] = kvd_stream_meta(&s, j)->position;
                qsort(kept, 30, sizeof *kept, cmp_pos_by_norm);
                for (size_t j = 0; j < 30; j++)
                    ck_assert_int_eq(kept[j], all[j]);
                kvd_stream_release(&s, pool);
            }
            ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
            kvd_pool_destroy(pool);
        }
}
END_TEST

/* KIVI streams take an eviction index (cache/evict.h; eviction itself:
 * tests/cache/test_kivi_evict.c) and fork with their residual. */
START_TEST(test_kivi_evicts_but_refuses_fork)
{
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(64 * 4096, 4096, &pool), 0);
    kvd_stream s, c;
    const kvd_stream_format f = {KVD_DTYPE_KIVI2, 4, 4};
    ck_assert_int_eq(kvd_stream_init_format(&s, 4096, 16, &f), 0);
    append_q(&s, pool, 3, 16);
    const kvd_evict_config cfg = {.policy = KVD_EVICT_RECENCY, .sink = 1, .recent = 1};
    ck_assert_int_eq(kvd_stream_evict_init(&s, &cfg), 0);
    ck_assert_ptr_nonnull(s.evict);
    ck_assert_uint_eq(kvd_stream_evictable(&s), 1); /* position 1: not a sink, not recent */
    const kvd_evict_config none = {.policy = KVD_EVICT_NONE};
    ck_assert_int_eq(kvd_stream_evict_init(&s, &none), 0);
    ck_assert_ptr_null(s.evict);
    const size_t used = kvd_pool_pages_used(pool);
    ck_assert_int_eq(kvd_stream_fork(&s, &c, pool), 0); /* KIVI forks now: residual shared too */
    ck_assert_uint_eq(kvd_pool_pages_used(pool), used);
    ck_assert_ptr_nonnull(c.residual);
    ck_assert_ptr_ne(c.residual, s.residual);
    ck_assert_uint_eq(c.residual->n_tokens, s.residual->n_tokens);
    ck_assert_uint_eq(c.residual->n_shared, s.residual->n_pages);
    kvd_stream_release(&c, pool);
    kvd_stream_release(&s, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);
    kvd_pool_destroy(pool);
}
END_TEST

static Suite *stream_suite(void)
{
    Suite *s = suite_create("cache/stream");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_slots_per_page);
    tcase_add_test(tc, test_init_layout);
    tcase_add_test(tc, test_append_one_at_a_time);
    tcase_add_test(tc, test_append_batches);
    tcase_add_test(tc, test_pages_needed_exact);
    tcase_add_test(tc, test_reserve_table_growth);
    tcase_add_test(tc, test_format_slots_per_page);
    tcase_add_test(tc, test_append_quantized_roundtrip);
    tcase_add_test(tc, test_evict_quantized_exact_bytes);
    tcase_add_test(tc, test_kivi_evicts_but_refuses_fork);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(stream_suite)
