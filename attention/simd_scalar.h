/* attention/simd_scalar.h — the portable vector layer: the names of
 * simd_avx2.h (read its comments) in plain C11 over 8-float arrays, so the
 * kernel bodies also compile for any CPU (arm64, an x86-64 without AVX2)
 * as the "scalar" production tier. The compiler may vectorize the lane
 * loops for the build's baseline ISA; nothing here needs more. Same
 * algorithms and exp polynomial as the SIMD layers, without FMA (a
 * software fmaf would be slow): separate multiply and add. */
#ifndef KVD_SIMD_LAYER
#define KVD_SIMD_LAYER "scalar"

#include <stdint.h>
#include <string.h>

#include "attention/formats.h"

#define KVD_SIMD_ATTR
#define KVD_SIMD_W 8
#define KVD_SIMD_NAME(prefix) prefix##scalar

typedef struct vf {
    float x[KVD_SIMD_W];
} vf;

typedef struct vmask {
    size_t n; /* lanes 0..n-1 are in (every mask here is a row's tail) */
} vmask;

#define V_LANES for (int i_ = 0; i_ < KVD_SIMD_W; i_++)

static inline vf v_zero(void) { vf r; V_LANES r.x[i_] = 0.0f; return r; }
static inline vf v_set1(float x) { vf r; V_LANES r.x[i_] = x; return r; }
static inline vf v_load(const float *p) { vf r; memcpy(r.x, p, sizeof r.x); return r; }
static inline void v_store(float *p, vf x) { memcpy(p, x.x, sizeof x.x); }
static inline vf v_add(vf a, vf b) { V_LANES a.x[i_] += b.x[i_]; return a; }
static inline vf v_sub(vf a, vf b) { V_LANES a.x[i_] -= b.x[i_]; return a; }
static inline vf v_mul(vf a, vf b) { V_LANES a.x[i_] *= b.x[i_]; return a; }
static inline vf v_fma(vf a, vf b, vf c) { V_LANES c.x[i_] += a.x[i_] * b.x[i_]; return c; }
static inline vf v_max(vf a, vf b) { V_LANES a.x[i_] = b.x[i_] > a.x[i_] ? b.x[i_] : a.x[i_]; return a; }

static inline vmask v_tail_mask(size_t c, size_t d)
{
    return (vmask){c >= d ? 0 : d - c >= KVD_SIMD_W ? KVD_SIMD_W : d - c};
}

static inline vf v_load_mask(const float *p, vmask m)
{
    vf r = v_zero();
    memcpy(r.x, p, m.n * sizeof *p);
    return r;
}

static inline void v_store_mask(float *p, vmask m, vf x)
{
    memcpy(p, x.x, m.n * sizeof *p);
}

static inline int v_any_gt(vf a, vf b)
{
    int any = 0;
    V_LANES any |= a.x[i_] > b.x[i_];
    return any;
}

static inline float v_hmax(vf x)
{
    float m = x.x[0];
    V_LANES m = x.x[i_] > m ? x.x[i_] : m;
    return m;
}

static inline float v_hsum(vf x)
{
    float s = 0.0f;
    V_LANES s += x.x[i_];
    return s;
}

static inline vf v_sum_lanes(const vf *a)
{
    vf r;
    V_LANES r.x[i_] = v_hsum(a[i_]);
    return r;
}

static inline void v_transpose(const vf *r, float *out)
{
    for (int i = 0; i < KVD_SIMD_W; i++)
        V_LANES out[i * KVD_SIMD_W + i_] = r[i_].x[i];
}

/* exp(x) for x <= 0: simd_avx2.h's reduction and degree-7 Taylor series
 * per lane; n = ceil(y - 1/2) (round to nearest but for ties, which only
 * moves r to the other end of [-ln2/2, ln2/2]) needs no rintf, which is a
 * libm call without SSE4.1. */
#define KVD_SIMD_EXP_MIN (-87.0f)

static inline float v_exp1(float x)
{
    if (!(x >= KVD_SIMD_EXP_MIN))
        return 0.0f; /* below the normal range, -inf, NaN */
    x = x < 0.0f ? x : 0.0f;
    const int n = (int)(x * 1.44269504088896341f - 0.5f); /* truncation: ceil for < 0 */
    const float nf = (float)n;
    float r = x - nf * 0.693359375f;
    r = r - nf * -2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const uint32_t bits = (uint32_t)(n + 127) << 23; /* n in [-126, 0]: a normal 2^n */
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return p * two_n;
}

static inline vf v_exp(vf x)
{
    V_LANES x.x[i_] = v_exp1(x.x[i_]);
    return x;
}

/* KVD_PF_TRACE(p), when a test defines it, sees every address the kernel
 * asks for (tests/attention/test_prefetch.c). */
static inline void v_prefetch(const void *p)
{
#ifdef KVD_PF_TRACE
    KVD_PF_TRACE(p);
#endif
    __builtin_prefetch(p, 0, 3);
}

/* ---- decoders: W values of a row format from bytes (attention/formats.h) -- */

static inline vf v_f16(const unsigned char *p)
{
    vf r;
    V_LANES r.x[i_] = kvd_f16_to_f32((uint16_t)(p[2 * i_] | (p[2 * i_ + 1] << 8)));
    return r;
}

static inline void v_halves(const unsigned char *restrict p, size_t n, float *restrict out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = kvd_f16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
}

static inline vf v_bf16(const unsigned char *p)
{
    vf r;
    V_LANES r.x[i_] = kvd_bf16_to_f32((uint16_t)(p[2 * i_] | (p[2 * i_ + 1] << 8)));
    return r;
}

static inline vf v_i8(const unsigned char *p)
{
    vf r;
    V_LANES r.x[i_] = (float)(int8_t)p[i_];
    return r;
}

/* 8 codes of 4 bits in 4 bytes, channel i in bits 4i..4i+3 (low nibble first). */
static inline vf v_u4(const unsigned char *p)
{
    vf r;
    V_LANES r.x[i_] = (float)((p[i_ / 2] >> (4 * (i_ % 2))) & 0xf);
    return r;
}

/* 8 codes of 2 bits in 2 bytes, channel i in bits 2i..2i+1. */
static inline vf v_u2(const unsigned char *p)
{
    vf r;
    V_LANES r.x[i_] = (float)((p[i_ / 4] >> (2 * (i_ % 4))) & 0x3);
    return r;
}

/* z + s*q: s*q is exact (attention/formats.h), so one rounding, as in
 * kvd_dequant_range. */
typedef struct vgroup {
    float s, z;
} vgroup;

static inline vgroup v_group4(float s, float z) { return (vgroup){s, z}; }
static inline vgroup v_group2(float s, float z) { return (vgroup){s, z}; }

static inline vf v_dq4(const unsigned char *p, const vgroup *g)
{
    vf r = v_u4(p);
    V_LANES r.x[i_] = g->z + g->s * r.x[i_];
    return r;
}

static inline vf v_dq2(const unsigned char *p, const vgroup *g)
{
    vf r = v_u2(p);
    V_LANES r.x[i_] = g->z + g->s * r.x[i_];
    return r;
}

/* ---- codes as integers (attention/standard_codes.h) ----------------------- */

typedef struct vi {
    uint32_t x[KVD_SIMD_W];
} vi;

/* 8 little-endian units of packed codes, one per lane: 32-bit words
 * (bits = 4: 8 codes each) or 16-bit halves (bits = 2: 8 codes). */
static inline vi v_units(const unsigned char *p, unsigned bits)
{
    vi r;
    if (bits == 4)
        V_LANES r.x[i_] = (uint32_t)p[4 * i_] | (uint32_t)p[4 * i_ + 1] << 8
                          | (uint32_t)p[4 * i_ + 2] << 16 | (uint32_t)p[4 * i_ + 3] << 24;
    else
        V_LANES r.x[i_] = (uint32_t)p[2 * i_] | (uint32_t)p[2 * i_ + 1] << 8;
    return r;
}

/* (lane >> shift) & mask as f32: exact, the caller keeps it below 2^31. */
static inline vf v_field(vi x, unsigned shift, uint32_t mask)
{
    vf r;
    V_LANES r.x[i_] = (float)(int32_t)((x.x[i_] >> shift) & mask);
    return r;
}

/* 8 little-endian halves at p as f32. */
static inline vf v_halves_w(const unsigned char *p)
{
    vf r;
    v_halves(p, KVD_SIMD_W, r.x);
    return r;
}

/* Lane i = lane idx[i] of tbl, idx[i] < 8. */
static inline vf v_lookup(vf tbl, const int32_t *idx)
{
    vf r;
    V_LANES r.x[i_] = tbl.x[idx[i_]];
    return r;
}

/* KIVI headers: lane i gets the {f16 s, f16 z} pair at p + 4 idx[i]. */
static inline void v_gather_sz(const unsigned char *p, const int32_t *idx, vf *s, vf *z)
{
    V_LANES {
        const unsigned char *e = p + 4 * (size_t)idx[i_];
        s->x[i_] = kvd_f16_to_f32((uint16_t)(e[0] | (e[1] << 8)));
        z->x[i_] = kvd_f16_to_f32((uint16_t)(e[2] | (e[3] << 8)));
    }
}

#endif
