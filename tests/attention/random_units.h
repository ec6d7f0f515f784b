/* tests/attention/random_units.h — random bytes in kvd's row formats for
 * the kernel tests (test-only, header-only): a xorshift64* generator, an
 * f16 writer, and one random unit (a row, or a KIVI key block) of any format
 * with sane scales, written byte by byte from attention/formats.h's layouts
 * rather than through kvd's quantizer, and segments of pages of them. A
 * test defines RANDOM_UNITS_SEED
 * before including it, so each keeps its own data (Check runs every test in
 * a fresh process, which starts from the seed). */
#ifndef KVD_TESTS_ATTENTION_RANDOM_UNITS_H
#define KVD_TESTS_ATTENTION_RANDOM_UNITS_H

#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/formats.h"

#ifndef RANDOM_UNITS_SEED
#error "define RANDOM_UNITS_SEED (a nonzero u64) before including random_units.h"
#endif

static uint64_t rng_state = RANDOM_UNITS_SEED;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static double rng_unit(void) /* [0, 1) */
{
    return (double)(rng_next() >> 11) * 0x1p-53;
}

static void put_half(unsigned char *p, float x)
{
    const uint16_t h = kvd_f32_to_f16(x);
    p[0] = (unsigned char)(h & 0xff);
    p[1] = (unsigned char)(h >> 8);
}

/* Random bytes for one unit of format f (a row, or a KIVI key block): codes
 * uniform, numbers in [-2, 2), scales in a range that keeps scores O(1). */
static void fill_unit(kvd_row_format f, size_t d, uint32_t group, unsigned char *u)
{
    const size_t bytes = kvd_row_bytes(f, d, group);
    for (size_t i = 0; i < bytes; i++)
        u[i] = (unsigned char)(rng_next() >> 56);
    switch (f) {
    case KVD_ROW_F32:
        for (size_t c = 0; c < d; c++) {
            const float x = (float)(4.0 * rng_unit() - 2.0);
            memcpy(u + 4 * c, &x, sizeof x);
        }
        break;
    case KVD_ROW_F16:
    case KVD_ROW_BF16:
        for (size_t c = 0; c < d; c++) {
            const float x = (float)(4.0 * rng_unit() - 2.0);
            const uint16_t h = f == KVD_ROW_F16 ? kvd_f32_to_f16(x) : kvd_f32_to_bf16(x);
            u[2 * c] = (unsigned char)(h & 0xff);
            u[2 * c + 1] = (unsigned char)(h >> 8);
        }
        break;
    case KVD_ROW_I8: {
        const float s = (float)(0.002 + 0.05 * rng_unit());
        memcpy(u, &s, sizeof s);
        break;
    }
    case KVD_ROW_U4G:
    case KVD_ROW_U2G:
        for (size_t g = 0; g < (d + group - 1) / group; g++) {
            put_half(u + 4 * g, (float)(0.01 + 0.3 * rng_unit()));
            put_half(u + 4 * g + 2, (float)(2.0 * rng_unit() - 1.0));
        }
        break;
    case KVD_ROW_KIVI4_KEYS:
    case KVD_ROW_KIVI2_KEYS:
        for (size_t c = 0; c < d; c++) {
            put_half(u + 4 * c, (float)(0.01 + 0.3 * rng_unit()));
            put_half(u + 4 * c + 2, (float)(2.0 * rng_unit() - 1.0));
        }
        break;
    }
}

/* One segment's pages (allocated one by one, 64-byte aligned, keys then
 * values per page), the block table shuffled so slot order is not address
 * order, as after eviction and re-paging. Values: random rows of vf, or,
 * with values_nan, NaN bytes that poison any result that reads them. */
typedef struct pages {
    unsigned char **page;
    size_t n_pages;
    kvd_kv_pages kv;
} pages;

static inline void pages_build(pages *p, kvd_row_format kf, kvd_row_format vf, size_t n, size_t d,
                               uint32_t group, size_t spp, bool values_nan)
{
    const size_t krb = kvd_row_bytes(kf, d, group), vrb = kvd_row_bytes(vf, d, group);
    const size_t kunits = kvd_row_is_block(kf) ? spp / group : spp;
    const size_t k_bytes = (kunits * krb + 63) / 64 * 64, v_bytes = (spp * vrb + 63) / 64 * 64;
    p->n_pages = (n + spp - 1) / spp;
    p->page = calloc(p->n_pages ? p->n_pages : 1, sizeof *p->page);
    ck_assert_ptr_nonnull(p->page);
    for (size_t i = 0; i < p->n_pages; i++) {
        p->page[i] = aligned_alloc(64, k_bytes + v_bytes);
        ck_assert_ptr_nonnull(p->page[i]);
        for (size_t u = 0; u < kunits; u++)
            fill_unit(kf, d, group, p->page[i] + u * krb);
        if (values_nan) {
            const float nan = NAN;
            for (size_t b = 0; b + 4 <= v_bytes; b += 4)
                memcpy(p->page[i] + k_bytes + b, &nan, 4);
        } else {
            for (size_t u = 0; u < spp; u++)
                fill_unit(vf, d, group, p->page[i] + k_bytes + u * vrb);
        }
    }
    for (size_t i = p->n_pages; i > 1; i--) { /* Fisher-Yates over the table */
        const size_t j = rng_next() % i;
        unsigned char *t = p->page[i - 1];
        p->page[i - 1] = p->page[j];
        p->page[j] = t;
    }
    p->kv = (kvd_kv_pages){.pages = (const unsigned char *const *)p->page,
                           .slots_per_page = spp, .head_dim = d, .k_offset = 0,
                           .v_offset = k_bytes, .k_format = kf, .v_format = vf,
                           .k_row_bytes = (uint32_t)krb, .v_row_bytes = (uint32_t)vrb,
                           .group = group};
}

static inline void pages_free(pages *p)
{
    for (size_t i = 0; i < p->n_pages; i++)
        free(p->page[i]);
    free(p->page);
}

#endif
