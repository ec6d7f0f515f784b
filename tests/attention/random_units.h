/* tests/attention/random_units.h — random bytes in kvd's row formats for
 * the kernel tests (test-only, header-only): a xorshift64* generator, an
 * f16 writer, and one random unit (a row, or a KIVI key block) of any format
 * with sane scales, written byte by byte from attention/formats.h's layouts
 * rather than through kvd's quantizer. A test defines RANDOM_UNITS_SEED
 * before including it, so each keeps its own data (Check runs every test in
 * a fresh process, which starts from the seed). */
#ifndef KVD_TESTS_ATTENTION_RANDOM_UNITS_H
#define KVD_TESTS_ATTENTION_RANDOM_UNITS_H

#include <stdint.h>
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

#endif
