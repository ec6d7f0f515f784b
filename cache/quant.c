/* cache/quant.c — writes K/V rows in the cache dtypes' byte layouts
 * (attention/formats.h) with DESIGN.md §4's formulas: int8 symmetric per
 * token, int4/KIVI values asymmetric per group of channels, KIVI keys
 * asymmetric per channel over a block of tokens. Also maps each cache dtype
 * to the row formats of its keys and values. Runs on the append path, so it
 * is scalar and allocation-free; every byte of a row (padding included) is
 * written, so equal inputs give equal pages (snapshots, checksums). */
#include "cache/quant.h"

#include <math.h>
#include <string.h>

/* Largest finite IEEE half. f16 rows and the f16 scales/minimums of the
 * int4/KIVI formats cannot represent more, so those caches clamp |x| to it
 * (a value that overflowed to infinity would poison every softmax after it).
 * int8 keeps an f32 scale and bf16 has f32's range: neither clamps. */
#define F16_MAX 65504.0f

static float clamp_f16_range(float x)
{
    return x > F16_MAX ? F16_MAX : x < -F16_MAX ? -F16_MAX : x;
}

static void store_u16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v & 0xffu);
    p[1] = (unsigned char)(v >> 8);
}

static void store_f32(unsigned char *p, float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    p[0] = (unsigned char)(u & 0xffu);
    p[1] = (unsigned char)((u >> 8) & 0xffu);
    p[2] = (unsigned char)((u >> 16) & 0xffu);
    p[3] = (unsigned char)(u >> 24);
}

/* The half next to h in the direction of -inf (h finite, not -65504). */
static uint16_t f16_next_down(uint16_t h)
{
    if (h == 0x0000u)
        return 0x8001u;                   /* +0 -> smallest negative subnormal */
    if (h & 0x8000u)
        return (uint16_t)(h + 1u);        /* negative: one step larger magnitude */
    return (uint16_t)(h - 1u);            /* positive: one step smaller */
}

static uint16_t f16_next_up(uint16_t h)
{
    if (h == 0x8000u || h == 0x0000u)
        return 0x0001u;
    if (h & 0x8000u)
        return (uint16_t)(h - 1u);
    return (uint16_t)(h + 1u);
}

/* The largest half <= x (x in the f16 range): the nearest half is within one
 * step of x, so when it lies above x its lower neighbour is the answer. */
static uint16_t f16_round_down(float x)
{
    uint16_t h = kvd_f32_to_f16(x);
    if (kvd_f16_to_f32(h) > x)
        h = f16_next_down(h);
    return h;
}

/* The asymmetric B-bit quantizer of DESIGN.md §4 for one group (a run of
 * channels of a row, or one channel over a block's tokens): min mn and max
 * mx of the group (already clamped to the f16 range) give the stored
 * minimum z <= mn and scale s with z + s*(2^B-1) >= mx, both f16. Then every
 * x of the group satisfies 0 <= x - z <= s*(2^B-1), so q = round((x-z)/s)
 * needs no clamping in exact arithmetic and |x - (z + s q)| <= s/2.
 * Rounding z down and s up costs at most one f16 ulp each over the ideal
 * z = mn, s = (mx-mn)/(2^B-1) (tests/cache/test_quant.c bounds it).
 * All-equal groups (mx == mn) store s = 0, z = the nearest half to mn and
 * q = 0: no step to reach, so the error is half an f16 ulp of the value. */
typedef struct group_params {
    uint16_t s16, z16; /* as stored */
    float s, z;        /* the same values in f32 */
} group_params;

static group_params group_params_for(float mn, float mx, unsigned levels)
{
    group_params g;
    if (!(mx > mn)) {
        g.z16 = kvd_f32_to_f16(mn);
        g.s16 = 0;
    } else {
        g.z16 = f16_round_down(mn);
        const double z = kvd_f16_to_f32(g.z16);
        /* Ideal step from the stored minimum, in double: mx - z is exact
         * (both are floats of f16 range), the division rounds once. */
        const double t = ((double)mx - z) / levels;
        uint16_t s16 = kvd_f32_to_f16((float)t);
        /* Round up until the top code reaches mx. s*levels is exact in
         * double (11 + 2 bits), so this test is exact. t <= 131008/3 so s
         * never approaches the saturation at 65504. */
        while (z + (double)kvd_f16_to_f32(s16) * levels < (double)mx)
            s16 = f16_next_up(s16);
        g.s16 = s16;
    }
    g.s = kvd_f16_to_f32(g.s16);
    g.z = kvd_f16_to_f32(g.z16);
    return g;
}

/* The code of x under g: round((x - z) / s) clamped to [0, levels]. The
 * clamp only matters for f32 rounding at the ends (and keeps a NaN, which the
 * API never admits, from reaching an integer conversion). */
static unsigned group_code(const group_params *g, float x, unsigned levels)
{
    if (g->s16 == 0)
        return 0;
    float r = nearbyintf((x - g->z) / g->s);
    if (!(r > 0.0f))
        return 0;
    if (r > (float)levels)
        return levels;
    return (unsigned)r;
}

static void put_code(unsigned char *codes, size_t c, unsigned bits, unsigned q)
{
    if (bits == 4)
        codes[c / 2] |= (unsigned char)(q << (4 * (c % 2)));
    else
        codes[c / 4] |= (unsigned char)(q << (2 * (c % 4)));
}

/* int8 (DESIGN.md §4): s = max|x| / 127 stored as f32, q = round(x / s) in
 * [-127, 127]; |x - s q| <= s/2 plus f32 rounding. All zeros store s = 0. */
static void quant_i8(const float *x, size_t d, unsigned char *dst)
{
    float amax = 0.0f;
    for (size_t c = 0; c < d; c++)
        amax = fabsf(x[c]) > amax ? fabsf(x[c]) : amax;
    const float s = amax / 127.0f;
    store_f32(dst, s);
    for (size_t c = 0; c < d; c++) {
        float r = s > 0.0f ? nearbyintf(x[c] / s) : 0.0f;
        /* x/s may round to 127.00001: the clamp keeps q in int8. */
        r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
        dst[4 + c] = (unsigned char)(int8_t)(r == r ? r : 0.0f);
    }
}

static void quant_groups(const float *x, size_t d, uint32_t group, unsigned bits,
                         unsigned char *dst)
{
    const unsigned levels = (1u << bits) - 1u;
    const size_t ng = (d + group - 1) / group;
    unsigned char *codes = dst + 4 * ng;
    for (size_t g0 = 0, gi = 0; g0 < d; g0 += group, gi++) {
        /* The last group is partial when group does not divide head_dim. */
        const size_t g1 = d - g0 < group ? d : g0 + group;
        float mn = clamp_f16_range(x[g0]), mx = mn;
        for (size_t c = g0 + 1; c < g1; c++) {
            const float v = clamp_f16_range(x[c]);
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
        const group_params p = group_params_for(mn, mx, levels);
        store_u16(dst + 4 * gi, p.s16);
        store_u16(dst + 4 * gi + 2, p.z16);
        for (size_t c = g0; c < g1; c++)
            put_code(codes, c, bits, group_code(&p, clamp_f16_range(x[c]), levels));
    }
}

/* group >= 1 for U4G/U2G and the KIVI formats (the API bounds it). */
void kvd_quant_row(kvd_row_format f, const float *restrict x, size_t d, uint32_t group,
                   unsigned char *restrict dst)
{
    /* Zero first: padding and the bits OR-ed in by put_code start clean. */
    memset(dst, 0, kvd_row_bytes(f, d, group));
    switch (f) {
    case KVD_ROW_F32:
        memcpy(dst, x, d * sizeof *x); /* little endian, as formats.h says */
        return;
    case KVD_ROW_F16: /* kvd_f32_to_f16 saturates at +-65504 */
        for (size_t c = 0; c < d; c++)
            store_u16(dst + 2 * c, kvd_f32_to_f16(x[c]));
        return;
    case KVD_ROW_BF16:
        for (size_t c = 0; c < d; c++)
            store_u16(dst + 2 * c, kvd_f32_to_bf16(x[c]));
        return;
    case KVD_ROW_I8:
        quant_i8(x, d, dst);
        return;
    case KVD_ROW_U4G:
        quant_groups(x, d, group, 4, dst);
        return;
    case KVD_ROW_U2G:
        quant_groups(x, d, group, 2, dst);
        return;
    case KVD_ROW_KIVI4_KEYS:
    case KVD_ROW_KIVI2_KEYS:
        return; /* blocks, not rows: kvd_quant_key_block (left zeroed) */
    }
}

void kvd_quant_key_block(kvd_row_format f, const float *restrict x, size_t stride, size_t count,
                         size_t d, uint32_t group, unsigned char *restrict dst)
{
    const unsigned bits = f == KVD_ROW_KIVI2_KEYS ? 2 : 4;
    const unsigned levels = (1u << bits) - 1u;
    const size_t token_bytes = (d * bits + 7) / 8;
    /* Tokens count..group-1 of a partial block are never read; zeroing the
     * whole block keeps their bytes (and the padding) deterministic. */
    memset(dst, 0, kvd_row_bytes(f, d, group));
    if (count == 0)
        return;
    for (size_t c = 0; c < d; c++) {
        /* KIVI (Liu et al. 2024, §3): keys have outlier channels, so each
         * channel gets its own min and scale over the block's tokens. */
        float mn = clamp_f16_range(x[c]), mx = mn;
        for (size_t t = 1; t < count; t++) {
            const float v = clamp_f16_range(x[t * stride + c]);
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
        const group_params p = group_params_for(mn, mx, levels);
        store_u16(dst + 4 * c, p.s16);
        store_u16(dst + 4 * c + 2, p.z16);
        for (size_t t = 0; t < count; t++)
            put_code(dst + 4 * d + t * token_bytes, c, bits,
                     group_code(&p, clamp_f16_range(x[t * stride + c]), levels));
    }
}

kvd_row_format kvd_dtype_key_format(kvd_dtype dt)
{
    switch (dt) {
    case KVD_DTYPE_F32: return KVD_ROW_F32;
    case KVD_DTYPE_F16: return KVD_ROW_F16;
    case KVD_DTYPE_BF16: return KVD_ROW_BF16;
    case KVD_DTYPE_INT8: return KVD_ROW_I8;
    case KVD_DTYPE_INT4: return KVD_ROW_U4G;
    case KVD_DTYPE_KIVI4: return KVD_ROW_KIVI4_KEYS;
    case KVD_DTYPE_KIVI2: return KVD_ROW_KIVI2_KEYS;
    }
    return KVD_ROW_F32;
}

kvd_row_format kvd_dtype_value_format(kvd_dtype dt)
{
    switch (dt) {
    case KVD_DTYPE_F32: return KVD_ROW_F32;
    case KVD_DTYPE_F16: return KVD_ROW_F16;
    case KVD_DTYPE_BF16: return KVD_ROW_BF16;
    case KVD_DTYPE_INT8: return KVD_ROW_I8;
    case KVD_DTYPE_INT4: return KVD_ROW_U4G;
    case KVD_DTYPE_KIVI4: return KVD_ROW_U4G;
    case KVD_DTYPE_KIVI2: return KVD_ROW_U2G;
    }
    return KVD_ROW_F32;
}
