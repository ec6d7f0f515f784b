/* tests/cache/test_stream.c — streams: slots-per-page arithmetic, page
 * layout, appends across page boundaries (one token at a time and in
 * batches, from strided rows), exact read-back of keys, values and metadata
 * through the kernels' view, pages_needed, block-table growth and release. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cache/pool.h"
#include "cache/stream.h"

/* Bytes one page needs for spp slots of head_dim: K and V blocks padded to
 * 64, then the metadata array (the layout documented in cache/stream.h). */
static size_t layout_bytes(size_t spp, size_t d)
{
    const size_t block = (spp * d * 4 + 63) / 64 * 64;
    return 2 * block + spp * sizeof(kvd_slot_meta);
}

START_TEST(test_slots_per_page)
{
    ck_assert_uint_eq(sizeof(kvd_slot_meta), 16);
    /* d = 64, 16 KiB: 512-byte K/V rows + 16 bytes meta = 528 per slot;
     * 31 slots = 2 * 7936 + 496 = 16368 <= 16384, 32 would be 16896. */
    ck_assert_uint_eq(kvd_stream_slots_per_page(16384, 64), 31);
    /* d = 128, 16 KiB: 15 slots (2 * 7680 + 240 = 15600; 16 -> 16640). */
    ck_assert_uint_eq(kvd_stream_slots_per_page(16384, 128), 15);
    /* d = 1: 24 bytes a slot, 16384 / 24 = 682, but padding makes 682 and
     * 681 overflow: 680 = 2 * 2752 + 10880 = 16384 exactly. */
    ck_assert_uint_eq(kvd_stream_slots_per_page(16384, 1), 680);
    /* A head_dim where not even one slot fits: 2 * 512 * 4 bytes > 1 KiB. */
    ck_assert_uint_eq(kvd_stream_slots_per_page(1024, 512), 0);
    ck_assert_uint_eq(kvd_stream_slots_per_page(1024, 0), 0);
    /* Exactly one slot: d = 120 at 1 KiB is 2 * 512 + 16 = 1040 > 1024 ->
     * 0; d = 112 is 2 * 448 + 16 = 912 -> 1. */
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
        double sq = 0.0;
        for (size_t i = 0; i < d; i++) {
            ck_assert_msg(key[i] == key_of(j, i), "key[%zu][%zu] = %g", j, i, (double)key[i]);
            ck_assert_msg(val[i] == val_of(j, i), "val[%zu][%zu] = %g", j, i, (double)val[i]);
            sq += (double)key_of(j, i) * key_of(j, i);
        }
        const kvd_slot_meta *meta = kvd_stream_meta(s, j);
        ck_assert_int_eq(meta->position, (int64_t)j);
        ck_assert_uint_eq(meta->reserved, 0);
        ck_assert_float_eq_tol(meta->key_norm, (float)sqrt(sq), 1e-6f * (float)sqrt(sq));
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
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(stream_suite());
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
