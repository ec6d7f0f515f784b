/* attention/formats.c — sizes of the cached row layouts, f16/bf16
 * conversions and the scalar reference dequantizer that defines what every
 * stored byte means (attention/formats.h has the layouts). */
#include "attention/formats.h"

#include <math.h>
#include <string.h>

static size_t round4(size_t x)
{
    return (x + 3) & ~(size_t)3;
}

size_t kvd_row_bytes(kvd_row_format f, size_t d, uint32_t group)
{
    size_t ng = group ? (d + group - 1) / group : 0;
    switch (f) {
    case KVD_ROW_F32: return 4 * d;
    case KVD_ROW_F16:
    case KVD_ROW_BF16: return round4(2 * d);
    case KVD_ROW_I8: return 4 + round4(d);
    case KVD_ROW_U4G: return 4 * ng + round4((d + 1) / 2);
    case KVD_ROW_U2G: return 4 * ng + round4((d + 3) / 4);
    case KVD_ROW_KIVI4_KEYS: return 4 * d + round4((size_t)group * ((d * 4 + 7) / 8));
    case KVD_ROW_KIVI2_KEYS: return 4 * d + round4((size_t)group * ((d * 2 + 7) / 8));
    }
    return 0;
}

static uint32_t f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

uint16_t kvd_f32_to_f16(float x)
{
    const uint32_t u = f32_bits(x);
    const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    const float a = fabsf(x);
    if (a != a) /* NaN never reaches the cache (the API refuses it); keep it NaN */
        return (uint16_t)(sign | 0x7e00u);
    /* Saturate rather than overflow: 65504 is the largest finite half, and a
     * cache that turned a large value into infinity would poison softmax. */
    if (a >= 65504.0f)
        return (uint16_t)(sign | 0x7bffu);
    if (a < 6.103515625e-05f) {
        /* Subnormal half: value = m * 2^-24. Rounding a * 2^24 to nearest
         * even integer is exact arithmetic in f32 here (a < 2^-14). */
        float m = a * 16777216.0f;
        float r = nearbyintf(m); /* default rounding mode: nearest even */
        return (uint16_t)(sign | (uint16_t)r); /* r <= 1024: 1024 is the smallest normal */
    }
    /* Normal: keep 10 of 23 mantissa bits, round to nearest even on the 13 dropped. */
    uint32_t e = ((u >> 23) & 0xffu) - 127 + 15;
    uint32_t mant = u & 0x7fffffu;
    uint32_t h = (e << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u)))
        h++; /* may carry into the exponent, which is still correct (< 65504 checked) */
    return (uint16_t)(sign | h);
}

float kvd_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) { /* zero or subnormal: m * 2^-24, exact in f32 */
        const float v = (float)m * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    if (e == 31)
        return bits_f32(sign | 0x7f800000u | (m << 13));
    return bits_f32(sign | ((e - 15 + 127) << 23) | (m << 13));
}

uint16_t kvd_f32_to_bf16(float x)
{
    uint32_t u = f32_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u); /* NaN stays a (quiet) NaN */
    /* Round to nearest even on the 16 dropped bits. A value that rounds past
     * the largest finite bfloat16 becomes infinity, as IEEE rounding says;
     * the API only admits finite f32, and bfloat16 has f32's range, so only
     * values within half a bf16 ulp of FLT_MAX can get there. */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float kvd_bf16_to_f32(uint16_t b)
{
    return bits_f32((uint32_t)b << 16);
}

static uint16_t load_u16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static float load_f32(const unsigned char *p)
{
    uint32_t u = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    return bits_f32(u);
}

/* Code of channel c in a packed array of B-bit codes. */
static unsigned code_at(const unsigned char *codes, size_t c, unsigned bits)
{
    if (bits == 4)
        return (codes[c / 2] >> (4 * (c % 2))) & 0xfu;
    return (codes[c / 4] >> (2 * (c % 4))) & 0x3u;
}

/* Channels [c0, c1) of row/token t, element by element from the bytes: the
 * definition every faster dequantizer is tested against. */
void kvd_dequant_range(kvd_row_format f, const unsigned char *unit, size_t t, size_t d,
                       uint32_t group, size_t c0, size_t c1, float *out)
{
    switch (f) {
    case KVD_ROW_F32:
        for (size_t c = c0; c < c1; c++)
            out[c - c0] = load_f32(unit + 4 * c);
        return;
    case KVD_ROW_F16:
        for (size_t c = c0; c < c1; c++)
            out[c - c0] = kvd_f16_to_f32(load_u16(unit + 2 * c));
        return;
    case KVD_ROW_BF16:
        for (size_t c = c0; c < c1; c++)
            out[c - c0] = kvd_bf16_to_f32(load_u16(unit + 2 * c));
        return;
    case KVD_ROW_I8: {
        const float s = load_f32(unit);
        for (size_t c = c0; c < c1; c++)
            out[c - c0] = s * (float)(int8_t)unit[4 + c];
        return;
    }
    case KVD_ROW_U4G:
    case KVD_ROW_U2G: {
        const unsigned bits = f == KVD_ROW_U4G ? 4 : 2;
        const size_t ng = (d + group - 1) / group;
        const unsigned char *codes = unit + 4 * ng;
        for (size_t c = c0; c < c1; c++) {
            const unsigned char *sz = unit + 4 * (c / group);
            const float s = kvd_f16_to_f32(load_u16(sz)), z = kvd_f16_to_f32(load_u16(sz + 2));
            out[c - c0] = z + s * (float)code_at(codes, c, bits);
        }
        return;
    }
    case KVD_ROW_KIVI4_KEYS:
    case KVD_ROW_KIVI2_KEYS: {
        const unsigned bits = f == KVD_ROW_KIVI4_KEYS ? 4 : 2;
        const unsigned char *codes = unit + 4 * d + t * ((d * bits + 7) / 8);
        for (size_t c = c0; c < c1; c++) {
            const float s = kvd_f16_to_f32(load_u16(unit + 4 * c));
            const float z = kvd_f16_to_f32(load_u16(unit + 4 * c + 2));
            out[c - c0] = z + s * (float)code_at(codes, c, bits);
        }
        return;
    }
    }
}

void kvd_dequant_row(kvd_row_format f, const unsigned char *unit, size_t t, size_t d,
                     uint32_t group, float *out)
{
    kvd_dequant_range(f, unit, t, d, group, 0, d, out);
}
