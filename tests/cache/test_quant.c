/* tests/cache/test_quant.c — cache/quant.c and the conversions of
 * attention/formats.c: f16/bf16 exhaustively (every half and bfloat16 value
 * round-trips, ties go to even, f16 saturates), then every row format's
 * round-trip error within its analytic bound (DESIGN.md §4) on random,
 * constant, zero, huge, tiny and ragged (head_dim not a multiple of group)
 * vectors, read back through kvd_dequant_row. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/formats.h"
#include "cache/quant.h"
#include "tests/support/check_main.h"

/* ---- named tolerances ------------------------------------------------------
 * f16 (11 significant bits) and bf16 (8) round to nearest: half an ulp,
 * at most 2^-11 |x| resp. 2^-8 |x| relative, and below the smallest normal
 * half (2^-14) the absolute half-ulp of the subnormals, 2^-25. */
#define F16_HALF_ULP_REL 0x1p-11
#define F16_SUBNORMAL_HALF_ULP 0x1p-25
#define BF16_HALF_ULP_REL 0x1p-8
/* Stored scales and minimums of U4G/U2G/KIVI are halves rounded in a
 * direction (z down, s up) so the group stays representable: each is off
 * from its ideal by less than one f16 ulp, at most 2^-10 relative or the
 * subnormal step 2^-24 absolute. With z = min - dz and s the smallest half
 * >= (max - z)/Q, the error is <= s/2, hence
 *   |x - x^| <= ((max - min + dz) (1 + 2^-10) / Q + 2^-24) / 2,
 *   dz <= 2^-10 |min| + 2^-24,
 * i.e. the ideal (max - min)/(2Q) plus F16_STORE_REL of it and of |min|/Q,
 * plus F16_STORE_ABS. */
#define F16_STORE_REL 0x1p-10
#define F16_STORE_ABS 0x1p-24
/* f32 arithmetic in quantizing ((x - z)/s, x/s: a near-tie may pick the
 * other code) and dequantizing (z + s q, s q): a few roundings of 2^-24
 * relative to the magnitudes involved. Far below any quantization step. */
#define QUANT_EVAL_REL 0x1p-20

#define MAX_D 4096

/* ---- deterministic random numbers (xorshift64*) ---------------------------- */

static uint64_t rng_state = 0x853c49e6748fea9bull;

static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static double rng_unit(void) /* (0, 1) */
{
    return ((double)(rng_next() >> 11) + 0.5) * 0x1p-53;
}

static float rng_normal(void)
{
    return (float)(sqrt(-2.0 * log(rng_unit())) * cos(6.283185307179586 * rng_unit()));
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

/* ---- f16 and bf16 ------------------------------------------------------------ */

/* Every one of the 65536 halves: decoding is exact and encoding gives it
 * back (the two infinities saturate to +-65504, NaNs stay NaN). */
START_TEST(test_f16_all_values_round_trip)
{
    for (uint32_t h = 0; h < 65536; h++) {
        const float x = kvd_f16_to_f32((uint16_t)h);
        const uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
        if (e == 31 && m != 0) {
            ck_assert_msg(isnan(x), "%04x", h);
            ck_assert(isnan(kvd_f16_to_f32(kvd_f32_to_f16(x))));
            continue;
        }
        if (e == 31) {
            ck_assert(isinf(x));
            ck_assert_uint_eq(kvd_f32_to_f16(x), (h & 0x8000u) | 0x7bffu);
            continue;
        }
        /* value from the definition: (-1)^s 2^(e-15) (1 + m/1024), subnormal m 2^-24 */
        const double want = (h & 0x8000u ? -1.0 : 1.0)
                            * (e == 0 ? ldexp((double)m, -24) : ldexp(1024.0 + m, (int)e - 25));
        ck_assert_msg((double)x == want, "%04x -> %g, want %g", h, (double)x, want);
        ck_assert_msg(kvd_f32_to_f16(x) == h, "%04x -> %g -> %04x", h, (double)x,
                      kvd_f32_to_f16(x));
    }
}
END_TEST

/* Between every two neighbouring finite halves a < b (subnormals, the
 * subnormal/normal boundary, every binade): the midpoint is a tie and goes
 * to the one with an even code; one f32 step either side of it goes to the
 * nearer. The midpoint of two halves is exact in f32 (12 bits). */
START_TEST(test_f16_ties_to_even)
{
    for (uint32_t h = 0; h < 0x7bff; h++) {
        for (int sign = 0; sign < 2; sign++) {
            const uint16_t lo = (uint16_t)(h | (sign ? 0x8000u : 0)), hi = (uint16_t)(lo + 1);
            const float a = kvd_f16_to_f32(lo), b = kvd_f16_to_f32(hi);
            const float mid = (a + b) * 0.5f;
            ck_assert((double)mid == ((double)a + (double)b) * 0.5);
            const uint16_t even = (lo & 1u) ? hi : lo;
            ck_assert_msg(kvd_f32_to_f16(mid) == even, "tie %04x/%04x -> %04x", lo, hi,
                          kvd_f32_to_f16(mid));
            const float toward_a = nextafterf(mid, a), toward_b = nextafterf(mid, b);
            ck_assert_msg(kvd_f32_to_f16(toward_a) == lo, "%04x", lo);
            ck_assert_msg(kvd_f32_to_f16(toward_b) == hi, "%04x", hi);
        }
    }
    /* below half the smallest subnormal: zero; exactly half: tie -> 0 (even) */
    ck_assert_uint_eq(kvd_f32_to_f16(0x1p-25f), 0);
    ck_assert_uint_eq(kvd_f32_to_f16(nextafterf(0x1p-25f, 1.0f)), 1);
    ck_assert_uint_eq(kvd_f32_to_f16(1e-30f), 0);
    ck_assert_uint_eq(kvd_f32_to_f16(-1e-30f), 0x8000u);
    ck_assert_uint_eq(kvd_f32_to_f16(FLT_MIN / 4), 0); /* f32 subnormal input */
}
END_TEST

/* Saturation: |x| >= 65504 encodes as +-65504, never infinity (IEEE would
 * give infinity from 65520 up). */
START_TEST(test_f16_saturates)
{
    const float big[] = {65504.0f, 65519.0f, 65520.0f, 65536.0f, 1e6f, 3e38f, FLT_MAX, INFINITY};
    for (size_t i = 0; i < sizeof big / sizeof *big; i++) {
        ck_assert_uint_eq(kvd_f32_to_f16(big[i]), 0x7bffu);
        ck_assert_uint_eq(kvd_f32_to_f16(-big[i]), 0xfbffu);
    }
    ck_assert_uint_eq(kvd_f32_to_f16(65503.0f), 0x7bffu); /* rounds to 65504 */
    ck_assert_uint_eq(kvd_f32_to_f16(65487.0f), 0x7bfeu); /* below the tie at 65488 */
}
END_TEST

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float x)
{
    return (uint16_t)_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT);
}

/* Against the CPU's own conversion (F16C, round to nearest even) on 2^22
 * random f32 bit patterns of the f16 range and beyond its subnormals. */
START_TEST(test_f16_matches_f16c)
{
    unsigned a, b, c, d; /* F16C: CPUID leaf 1, ECX bit 29 */
    if (!(__get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C)))
        return;
    for (int i = 0; i < (1 << 22); i++) {
        /* exponents 2^-30 .. 2^16, either sign, any mantissa */
        const uint32_t exp = 97 + (uint32_t)(rng_next() % 46);
        const uint32_t u = (uint32_t)(rng_next() & 0x807fffffu) | (exp << 23);
        const float x = bits_f32(u);
        if (fabsf(x) >= 65504.0f)
            continue; /* F16C gives infinity past the tie at 65520; we saturate */
        ck_assert_msg(kvd_f32_to_f16(x) == hw_f32_to_f16(x), "%a: %04x vs f16c %04x",
                      (double)x, kvd_f32_to_f16(x), hw_f32_to_f16(x));
    }
}
END_TEST
#endif

/* Every bfloat16 value round-trips; ties between neighbours go to even;
 * NaN stays NaN. */
START_TEST(test_bf16_exhaustive)
{
    for (uint32_t b = 0; b < 65536; b++) {
        const float x = kvd_bf16_to_f32((uint16_t)b);
        ck_assert(f32_bits(x) == b << 16);
        if (isnan(x)) {
            ck_assert(isnan(kvd_bf16_to_f32(kvd_f32_to_bf16(x))));
            continue;
        }
        ck_assert_uint_eq(kvd_f32_to_bf16(x), b);
        if ((b & 0x7fffu) < 0x7f7fu) { /* b and b + 1 both finite */
            const uint32_t mid = (b << 16) | 0x8000u; /* exactly between b and b + 1 */
            const uint16_t even = (b & 1u) ? (uint16_t)(b + 1) : (uint16_t)b;
            ck_assert_uint_eq(kvd_f32_to_bf16(bits_f32(mid)), even);
            ck_assert_uint_eq(kvd_f32_to_bf16(bits_f32(mid - 1)), b);
            ck_assert_uint_eq(kvd_f32_to_bf16(bits_f32(mid + 1)), b + 1);
        }
    }
}
END_TEST

/* ---- row formats --------------------------------------------------------- */

static uint16_t load_u16(const unsigned char *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static double clampf16(double x)
{
    return x > 65504.0 ? 65504.0 : x < -65504.0 ? -65504.0 : x;
}

/* The bound of a group with minimum mn, maximum mx (clamped) and Q levels. */
static double group_tol(double mn, double mx, unsigned levels, double x)
{
    if (mx == mn) /* s = 0, z = nearest half: half an f16 ulp */
        return fmax(F16_HALF_ULP_REL * fabs(mn), F16_SUBNORMAL_HALF_ULP);
    const double dz = F16_STORE_REL * fabs(mn) + F16_STORE_ABS;
    return ((mx - mn + dz) * (1.0 + F16_STORE_REL) / levels + F16_STORE_ABS) / 2.0
           + QUANT_EVAL_REL * (fabs(x) + fabs(mn) + (mx - mn));
}

/* Checks the stored invariant of one {s, z} pair: z <= min and z + Q s >= max
 * in exact arithmetic (every value representable), and s = 0 only for an
 * all-equal group. */
static void check_params(const unsigned char *sz, double mn, double mx, unsigned levels,
                         const char *what)
{
    const double s = kvd_f16_to_f32(load_u16(sz)), z = kvd_f16_to_f32(load_u16(sz + 2));
    if (mx == mn) {
        ck_assert_msg(s == 0.0, "%s: all-equal group stores s = %g", what, s);
        return;
    }
    ck_assert_msg(s > 0.0 && z <= mn && z + levels * s >= mx,
                  "%s: s=%a z=%a min=%a max=%a", what, s, z, mn, mx);
}

/* Quantizes one row of format f and checks every element against its bound. */
static void check_row(kvd_row_format f, const float *x, size_t d, uint32_t group,
                      const char *what)
{
    const size_t bytes = kvd_row_bytes(f, d, group);
    unsigned char *row = malloc(bytes + 1), *again = malloc(bytes);
    float *y = malloc(d * sizeof *y);
    ck_assert(row && again && y);
    row[bytes] = 0xa5; /* canary: the row must not be overrun */
    kvd_quant_row(f, x, d, group, row);
    ck_assert_uint_eq(row[bytes], 0xa5);
    kvd_quant_row(f, x, d, group, again);
    ck_assert_msg(memcmp(row, again, bytes) == 0, "%s: not deterministic", what);
    kvd_dequant_row(f, row, 0, d, group, y);

    double amax = 0.0;
    for (size_t c = 0; c < d; c++)
        amax = fmax(amax, fabs(x[c]));
    const unsigned levels = f == KVD_ROW_U4G ? 15 : 3;
    for (size_t c = 0; c < d; c++) {
        const double xc = x[c], err = fabs(xc - (double)y[c]);
        double tol = 0.0;
        switch (f) {
        case KVD_ROW_F32:
            tol = 0.0;
            break;
        case KVD_ROW_F16:
            tol = fmax(F16_HALF_ULP_REL * fabs(clampf16(xc)), F16_SUBNORMAL_HALF_ULP)
                  + fabs(xc - clampf16(xc)); /* documented saturation */
            break;
        case KVD_ROW_BF16:
            tol = BF16_HALF_ULP_REL * fabs(xc);
            break;
        case KVD_ROW_I8: {
            float s;
            memcpy(&s, row, sizeof s);
            ck_assert(s == (float)amax / 127.0f); /* DESIGN.md §4: s = max|x| / 127 */
            tol = s / 2.0 + QUANT_EVAL_REL * fabs(xc);
            break;
        }
        case KVD_ROW_U4G:
        case KVD_ROW_U2G: {
            const size_t g0 = c / group * group, g1 = g0 + group < d ? g0 + group : d;
            double mn = INFINITY, mx = -INFINITY;
            for (size_t i = g0; i < g1; i++) {
                mn = fmin(mn, clampf16(x[i]));
                mx = fmax(mx, clampf16(x[i]));
            }
            if (c == g0)
                check_params(row + 4 * (c / group), mn, mx, levels, what);
            tol = group_tol(mn, mx, levels, xc) + fabs(xc - clampf16(xc));
            break;
        }
        default:
            ck_abort_msg("not a row format");
        }
        if (!(err <= tol))
            ck_abort_msg("%s: format %d d=%zu group=%u: x[%zu] = %.9g -> %.9g, |err| %.3g > %.3g",
                         what, (int)f, d, group, c, xc, (double)y[c], err, tol);
    }
    free(row);
    free(again);
    free(y);
}

/* count key rows (stride d) as one KIVI block, every element checked. */
static void check_key_block(kvd_row_format f, const float *x, size_t count, size_t d,
                            uint32_t group, const char *what)
{
    const size_t bytes = kvd_row_bytes(f, d, group);
    const unsigned levels = f == KVD_ROW_KIVI4_KEYS ? 15 : 3;
    unsigned char *blk = malloc(bytes + 1);
    float *y = malloc(d * sizeof *y);
    ck_assert(blk && y);
    blk[bytes] = 0x5a;
    kvd_quant_key_block(f, x, d, count, d, group, blk);
    ck_assert_uint_eq(blk[bytes], 0x5a);
    for (size_t c = 0; c < d; c++) {
        double mn = INFINITY, mx = -INFINITY;
        for (size_t t = 0; t < count; t++) {
            mn = fmin(mn, clampf16(x[t * d + c]));
            mx = fmax(mx, clampf16(x[t * d + c]));
        }
        check_params(blk + 4 * c, mn, mx, levels, what);
    }
    for (size_t t = 0; t < count; t++) {
        kvd_dequant_row(f, blk, t, d, group, y);
        for (size_t c = 0; c < d; c++) {
            double mn = INFINITY, mx = -INFINITY;
            for (size_t u = 0; u < count; u++) {
                mn = fmin(mn, clampf16(x[u * d + c]));
                mx = fmax(mx, clampf16(x[u * d + c]));
            }
            const double xc = x[t * d + c], err = fabs(xc - (double)y[c]);
            const double tol = group_tol(mn, mx, levels, xc) + fabs(xc - clampf16(xc));
            if (!(err <= tol))
                ck_abort_msg("%s: format %d d=%zu group=%u count=%zu: x[%zu][%zu] = %.9g -> "
                             "%.9g, |err| %.3g > %.3g",
                             what, (int)f, d, group, count, t, c, xc, (double)y[c], err, tol);
        }
    }
    /* the codes of tokens past count are zero (deterministic pages) */
    const size_t tb = (d * (levels == 15 ? 4 : 2) + 7) / 8;
    for (size_t i = 4 * d + count * tb; i < bytes; i++)
        ck_assert_uint_eq(blk[i], 0);
    free(blk);
    free(y);
}

typedef enum { V_RANDOM, V_NORMAL_OUTLIERS, V_CONST, V_ZERO, V_HUGE, V_HUGE_F16, V_TINY,
               V_MIXED_SIGN_TINY, V_N } vec_kind;

static const char *const kind_names[V_N] = {"random", "normal+outliers", "constant", "zero",
                                            "huge", "huge(f16 range)", "tiny", "tiny+-"};

/* Fills x[0..n) with a vector of the given kind. "huge" goes to 1e30 (only
 * int8 and bf16 keep that range; f16, int4 and KIVI clamp to +-65504, which
 * the bounds include as a separate term); "huge(f16 range)" stays within
 * +-60000, where the f16-scaled formats' bounds hold without clamping.
 * "tiny" is 1e-30: f16-scaled formats cannot resolve it (their smallest
 * step is the f16 subnormal 2^-24), so for them only the absolute bound
 * holds; int8 (f32 scale) and bf16 keep it relative. */
static void fill(float *x, size_t n, vec_kind k)
{
    for (size_t i = 0; i < n; i++) {
        switch (k) {
        case V_RANDOM: x[i] = (float)(rng_unit() * 4.0 - 2.0); break;
        case V_NORMAL_OUTLIERS: x[i] = rng_normal() * (i % 37 == 5 ? 20.0f : 1.0f); break;
        case V_CONST: x[i] = 0.7316f; break;
        case V_ZERO: x[i] = 0.0f; break;
        case V_HUGE: x[i] = (float)((rng_unit() * 2.0 - 1.0) * 1e30); break;
        case V_HUGE_F16: x[i] = (float)((rng_unit() * 2.0 - 1.0) * 60000.0); break;
        case V_TINY: x[i] = (float)(rng_unit() * 1e-30); break;
        case V_MIXED_SIGN_TINY: x[i] = (float)((rng_unit() * 2.0 - 1.0) * 1e-30); break;
        default: break;
        }
    }
}

static const kvd_row_format row_formats[] = {KVD_ROW_F32, KVD_ROW_F16, KVD_ROW_BF16,
                                             KVD_ROW_I8, KVD_ROW_U4G, KVD_ROW_U2G};

START_TEST(test_rows_within_bounds)
{
    static const size_t dims[] = {1, 2, 3, 7, 31, 32, 33, 50, 64, 128, 130, 4096};
    static const uint32_t groups[] = {1, 3, 8, 16, 32, 50, 64, 128};
    float *x = malloc(MAX_D * sizeof *x);
    ck_assert(x);
    char what[96];
    for (size_t fi = 0; fi < sizeof row_formats / sizeof *row_formats; fi++)
        for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
            for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++)
                for (int k = 0; k < V_N; k++)
                    for (int rep = 0; rep < 3; rep++) {
                        fill(x, dims[di], (vec_kind)k);
                        snprintf(what, sizeof what, "%s #%d", kind_names[k], rep);
                        check_row(row_formats[fi], x, dims[di], groups[gi], what);
                    }
    free(x);
}
END_TEST

START_TEST(test_key_blocks_within_bounds)
{
    static const size_t dims[] = {1, 3, 16, 50, 128, 130};
    static const uint32_t groups[] = {1, 4, 16, 32, 64};
    const kvd_row_format fmts[] = {KVD_ROW_KIVI4_KEYS, KVD_ROW_KIVI2_KEYS};
    float *x = malloc(64 * 130 * sizeof *x);
    ck_assert(x);
    char what[96];
    for (size_t fi = 0; fi < 2; fi++)
        for (size_t di = 0; di < sizeof dims / sizeof *dims; di++)
            for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++)
                for (int k = 0; k < V_N; k++) {
                    const size_t g = groups[gi];
                    const size_t counts[] = {1, g > 1 ? g - 1 : 1, g};
                    for (size_t ci = 0; ci < 3; ci++) {
                        fill(x, counts[ci] * dims[di], (vec_kind)k);
                        snprintf(what, sizeof what, "%s count %zu", kind_names[k], counts[ci]);
                        check_key_block(fmts[fi], x, counts[ci], dims[di], (uint32_t)g, what);
                    }
                }
    free(x);
}
END_TEST

/* The analytic bounds are tight in the sense that matters: the ideal step
 * (max - min)/(2Q) is the error scale (the f16 terms add < 0.2 %), and a
 * value at the group's max or min is reproduced within half a step. */
START_TEST(test_group_endpoints_and_constants)
{
    float x[50];
    for (size_t i = 0; i < 50; i++)
        x[i] = (float)i - 20.0f; /* group 32: [-20, 11] then [12, 29] */
    unsigned char row[64];
    float y[50];
    ck_assert_uint_le(kvd_row_bytes(KVD_ROW_U4G, 50, 32), sizeof row);
    kvd_quant_row(KVD_ROW_U4G, x, 50, 32, row);
    kvd_dequant_row(KVD_ROW_U4G, row, 0, 50, 32, y);
    /* integers with step (11 - -20)/15 = 2.0667 and 17/15: min exact (f16) */
    ck_assert_float_eq(y[0], -20.0f);
    ck_assert_float_eq(y[32], 12.0f);
    ck_assert(fabsf(y[31] - 11.0f) <= 2.0667f / 2);
    ck_assert(fabsf(y[49] - 29.0f) <= 17.0f / 30.0f);

    /* all-equal groups store s = 0 and code 0 and give back the nearest half */
    for (size_t i = 0; i < 50; i++)
        x[i] = i < 32 ? 1.0f / 3.0f : -7.0f;
    kvd_quant_row(KVD_ROW_U2G, x, 50, 32, row);
    ck_assert_uint_eq(load_u16(row), 0);
    ck_assert_uint_eq(load_u16(row + 4), 0);
    for (size_t i = 8; i < kvd_row_bytes(KVD_ROW_U2G, 50, 32); i++)
        ck_assert_uint_eq(row[i], 0);
    kvd_dequant_row(KVD_ROW_U2G, row, 0, 50, 32, y);
    ck_assert_float_eq(y[0], kvd_f16_to_f32(kvd_f32_to_f16(1.0f / 3.0f)));
    ck_assert_float_eq(y[40], -7.0f);

    /* an all-zero row is all zero bytes, whatever the format */
    memset(x, 0, sizeof x);
    for (size_t fi = 0; fi < sizeof row_formats / sizeof *row_formats; fi++) {
        unsigned char r[256];
        memset(r, 0xff, sizeof r);
        kvd_quant_row(row_formats[fi], x, 50, 32, r);
        for (size_t i = 0; i < kvd_row_bytes(row_formats[fi], 50, 32); i++)
            ck_assert_uint_eq(r[i], 0);
    }

    /* int8: the largest magnitude is exact up to f32 rounding, q = +-127 */
    const float v[5] = {-3.0f, 0.1f, 2.5f, 0.0f, 1.0f};
    unsigned char r8[12];
    float y8[5];
    kvd_quant_row(KVD_ROW_I8, v, 5, 32, r8);
    ck_assert_int_eq((int8_t)r8[4], -127);
    kvd_dequant_row(KVD_ROW_I8, r8, 0, 5, 32, y8);
    ck_assert(fabsf(y8[0] + 3.0f) <= 3.0f * 0x1p-22f);
    ck_assert_float_eq(y8[3], 0.0f);
}
END_TEST

/* Sizes at d = 128, group 32 (the README's table): f32 512+512, int4 80+80,
 * KIVI4 keys (4*128 + 32*64)/32 = 80 per token. */
START_TEST(test_row_sizes)
{
    ck_assert_uint_eq(kvd_row_bytes(KVD_ROW_F32, 128, 32), 512);
    ck_assert_uint_eq(kvd_row_bytes(KVD_ROW_F16, 128, 32), 256);
    ck_assert_uint_eq(kvd_row_bytes(KVD_ROW_BF16, 128, 32), 256);
    ck_assert_uint_eq(kvd_row_bytes(KVD_ROW_I8, 128, 32), 132);
    ck_assert_uint_eq(kvd_row_bytes(KVD_ROW_U4G, 128, 32), 80);
    ck_assert_uint_eq(kvd_row_bytes(KVD_ROW_U2G, 128, 32), 48);
    ck_assert_uint_eq(kvd_row_bytes(KVD_ROW_KIVI4_KEYS, 128, 32), 512 + 32 * 64);
    ck_assert_uint_eq(kvd_row_bytes(KVD_ROW_KIVI2_KEYS, 128, 32), 512 + 32 * 32);
    /* ragged: d = 50, group 32 -> 2 groups; odd sizes round up to 4 */
    ck_assert_uint_eq(kvd_row_bytes(KVD_ROW_U4G, 50, 32), 8 + 28);
    ck_assert_uint_eq(kvd_row_bytes(KVD_ROW_U2G, 1, 32), 4 + 4);
    ck_assert_uint_eq(kvd_row_bytes(KVD_ROW_F16, 3, 32), 8);
    for (size_t d = 1; d < 300; d++)
        for (uint32_t g = 1; g < 70; g += 7)
            for (int f = KVD_ROW_F32; f <= KVD_ROW_KIVI2_KEYS; f++)
                ck_assert_uint_eq(kvd_row_bytes((kvd_row_format)f, d, g) % 4, 0);
}
END_TEST

START_TEST(test_dtype_formats)
{
    ck_assert_int_eq(kvd_dtype_key_format(KVD_DTYPE_F32), KVD_ROW_F32);
    ck_assert_int_eq(kvd_dtype_value_format(KVD_DTYPE_F32), KVD_ROW_F32);
    ck_assert_int_eq(kvd_dtype_key_format(KVD_DTYPE_F16), KVD_ROW_F16);
    ck_assert_int_eq(kvd_dtype_value_format(KVD_DTYPE_F16), KVD_ROW_F16);
    ck_assert_int_eq(kvd_dtype_key_format(KVD_DTYPE_BF16), KVD_ROW_BF16);
    ck_assert_int_eq(kvd_dtype_value_format(KVD_DTYPE_BF16), KVD_ROW_BF16);
    ck_assert_int_eq(kvd_dtype_key_format(KVD_DTYPE_INT8), KVD_ROW_I8);
    ck_assert_int_eq(kvd_dtype_value_format(KVD_DTYPE_INT8), KVD_ROW_I8);
    ck_assert_int_eq(kvd_dtype_key_format(KVD_DTYPE_INT4), KVD_ROW_U4G);
    ck_assert_int_eq(kvd_dtype_value_format(KVD_DTYPE_INT4), KVD_ROW_U4G);
    ck_assert_int_eq(kvd_dtype_key_format(KVD_DTYPE_KIVI4), KVD_ROW_KIVI4_KEYS);
    ck_assert_int_eq(kvd_dtype_value_format(KVD_DTYPE_KIVI4), KVD_ROW_U4G);
    ck_assert_int_eq(kvd_dtype_key_format(KVD_DTYPE_KIVI2), KVD_ROW_KIVI2_KEYS);
    ck_assert_int_eq(kvd_dtype_value_format(KVD_DTYPE_KIVI2), KVD_ROW_U2G);
}
END_TEST

static Suite *quant_suite(void)
{
    Suite *s = suite_create("cache/quant");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_f16_all_values_round_trip);
    tcase_add_test(tc, test_f16_ties_to_even);
    tcase_add_test(tc, test_f16_saturates);
#if defined(__x86_64__)
    tcase_add_test(tc, test_f16_matches_f16c);
#endif
    tcase_add_test(tc, test_bf16_exhaustive);
    tcase_add_test(tc, test_rows_within_bounds);
    tcase_add_test(tc, test_key_blocks_within_bounds);
    tcase_add_test(tc, test_group_endpoints_and_constants);
    tcase_add_test(tc, test_row_sizes);
    tcase_add_test(tc, test_dtype_formats);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(quant_suite)
