/* attention/standard_codes.h — keys scored straight from their codes, part
 * of the standard kernel body (standard_simd.h includes it; same vector
 * layer): I8, U4G/U2G, KIVI, f16 and bf16 key rows are never dequantized
 * into the tile. Per key, per query head h and group g (attention/formats.h):
 *   F16/BF16: <q, k> converted 16 (8) channels at a time in registers
 *   I8:       <q, k> = s * <q, c>
 *   U4G/U2G:  <q, k> = sum_g ( s_g <q_g, c_g> + z_g * sum(q_g) )
 *   KIVI:     <q, k> = <q * s, c> + <q, z>   (s, z per channel of a block:
 *             q * s and <q, z> worked out once per block and head)
 * Packed codes are taken 8 per lane (a 32-bit word of 4-bit codes, a 16-bit
 * half of 2-bit codes): code k of every lane is (unit & (mask << b*k)) as
 * f32, which is the code times 2^(b*k), so the query is stored permuted
 * ([v][k][lane] instead of channel order) and prescaled by 2^-(b*k) once per
 * segment; no shift per vector and no per-group table. Numerics: q * 2^-e
 * and 2^e * c are exact (no underflow for |q| >= 2^-98), so each product
 * q_c * c_c is the one the tile path multiplies; only the order of the f32
 * sums and where s and z are applied differ, which keeps every score within
 * the f32 dot-product bound the tests name (ATTN_SCORE_TOL). */
#ifndef KVD_SIMD_LAYER
#error "include a vector layer before attention/standard_codes.h"
#endif

/* Query heads per pass the code path takes (its permuted queries live in
 * the kernel's stack state); a larger group uses the tile path. */
#define CODES_MAX_HEADS 16
/* Channels per lane of packed codes, and per "span" of 8 code vectors. */
#define CODES_LANE 8
#define CODES_SPAN (CODES_LANE * KVD_SIMD_W)
#define CODES_MAX_V (KVD_ATTN_CHUNK / CODES_SPAN)

_Static_assert(KVD_ATTN_CHUNK % CODES_SPAN == 0, "a chunk is whole spans");
_Static_assert(CODES_MAX_HEADS * KVD_ATTN_BLOCK * KVD_SIMD_W <= KVD_ATTN_BLOCK * KVD_ATTN_CHUNK,
               "the per-key accumulators fit in the kernel's tile");

enum { CODES_OFF = 0, CODES_I8, CODES_GROUPS, CODES_KIVI, CODES_F16, CODES_BF16 };

typedef struct codes_prep {
    int mode;      /* CODES_OFF: keys go through the tile */
    unsigned bits; /* 4 or 2 (GROUPS, KIVI) */
    size_t d, nv;  /* head_dim, spans */
    size_t ng;     /* GROUPS: groups per row */
    size_t g;      /* query heads */
    const float *q;                    /* [g][d] the heads' queries */
    size_t gb[CODES_MAX_V];            /* GROUPS: first group of span v */
    _Alignas(64) int32_t idx_s[CODES_MAX_V][KVD_SIMD_W]; /* GROUPS: lane -> its {s, z} */
    _Alignas(64) int32_t idx_z[CODES_MAX_V][KVD_SIMD_W];
    _Alignas(64) float qp[CODES_MAX_HEADS][KVD_ATTN_CHUNK]; /* permuted, prescaled */
    _Alignas(64) float ql[CODES_MAX_HEADS][KVD_ATTN_CHUNK / CODES_LANE]; /* lane sums of q */
    const unsigned char *kunit;        /* KIVI: the block qs and qz are for */
    _Alignas(64) float qs[CODES_MAX_HEADS][KVD_ATTN_CHUNK]; /* KIVI: qp * s (permuted) */
    float qz[CODES_MAX_HEADS];         /* KIVI: <q, z> */
    _Alignas(64) int32_t kidx[CODES_LANE][KVD_SIMD_W]; /* KIVI: lane w -> channel 8w + k */
    _Alignas(64) float post[CODES_MAX_HEADS][KVD_ATTN_BLOCK]; /* I8: scales; KIVI: <q, z> */
} codes_prep;

/* Code k of a lane sits at bit b*k; the top code of a 4-bit word is shifted
 * down by 4 first so the f32 conversion of the (signed) lane stays exact. */
static inline unsigned codes_exp(unsigned bits, unsigned k)
{
    return bits * (k + 1) <= 31 ? bits * k : bits * (k - 1);
}

/* Position of channel c (relative to its span) in the permuted order. */
static inline size_t codes_perm(size_t c)
{
    return (c % CODES_LANE) * KVD_SIMD_W + c / CODES_LANE;
}

/* Chooses the path for keys of format f and prepares the queries
 * q[0..g) ([g][d]) for it; mode CODES_OFF when the shape does not fit
 * (head_dim not whole spans or above one chunk, groups that are not whole
 * lanes, too many heads). */
static void codes_prepare(codes_prep *cp, kvd_row_format f, size_t d, uint32_t group,
                          const float *q, size_t g)
{
    cp->mode = CODES_OFF;
    if (g == 0 || g > CODES_MAX_HEADS || d == 0 || d % CODES_SPAN != 0 || d > KVD_ATTN_CHUNK)
        return;
    cp->d = d;
    cp->nv = d / CODES_SPAN;
    cp->g = g;
    cp->q = q;
    cp->kunit = NULL;
    memset(cp->post, 0, sizeof cp->post);
    switch (f) {
    case KVD_ROW_I8:
    case KVD_ROW_F16:
    case KVD_ROW_BF16:
        for (size_t h = 0; h < g; h++)
            memcpy(cp->qp[h], q + h * d, d * sizeof *q);
        cp->mode = f == KVD_ROW_I8 ? CODES_I8 : f == KVD_ROW_F16 ? CODES_F16 : CODES_BF16;
        return;
    case KVD_ROW_U4G:
    case KVD_ROW_U2G:
        if (group == 0 || group % CODES_LANE != 0)
            return;
        cp->ng = (d + group - 1) / group;
        for (size_t v = 0; v < cp->nv; v++) {
            cp->gb[v] = v * CODES_SPAN / group;
            for (size_t w = 0; w < KVD_SIMD_W; w++) {
                const size_t rel = (v * CODES_SPAN + w * CODES_LANE) / group - cp->gb[v];
                if (2 * rel + 1 >= KVD_SIMD_W)
                    return; /* more groups in a span than one table holds */
                cp->idx_s[v][w] = (int32_t)(2 * rel);
                cp->idx_z[v][w] = (int32_t)(2 * rel + 1);
            }
        }
        cp->bits = f == KVD_ROW_U4G ? 4 : 2;
        cp->mode = CODES_GROUPS;
        break;
    case KVD_ROW_KIVI4_KEYS:
    case KVD_ROW_KIVI2_KEYS:
        cp->bits = f == KVD_ROW_KIVI4_KEYS ? 4 : 2;
        for (size_t k = 0; k < CODES_LANE; k++)
            for (size_t w = 0; w < KVD_SIMD_W; w++)
                cp->kidx[k][w] = (int32_t)(w * CODES_LANE + k);
        cp->mode = CODES_KIVI;
        break;
    default:
        return;
    }
    for (size_t h = 0; h < g; h++) {
        const float *qh = q + h * d;
        for (size_t c = 0; c < d; c++) {
            const size_t v = c / CODES_SPAN, k = c % CODES_LANE;
            const float pre = 1.0f / (float)(1u << codes_exp(cp->bits, (unsigned)k));
            cp->qp[h][v * CODES_SPAN + codes_perm(c % CODES_SPAN)] = qh[c] * pre;
        }
        for (size_t l = 0; l < d / CODES_LANE; l++) {
            float s = 0.0f;
            for (size_t k = 0; k < CODES_LANE; k++)
                s += qh[l * CODES_LANE + k];
            cp->ql[h][l] = s;
        }
    }
}

/* KIVI: the block at `unit` becomes the current one: qs = qp * s, qz = <q, z>.
 * s and z come in the permuted order with one gather per code position k
 * (lane w: channel 8w + k of the span); <q, z> is summed in that order from
 * qp, whose prescale 2^-e is undone exactly per k. */
KVD_SIMD_ATTR static void codes_kivi_block(codes_prep *cp, const unsigned char *unit)
{
    const size_t g = cp->g;
    vf qz[CODES_MAX_HEADS];
    for (size_t h = 0; h < g; h++)
        qz[h] = v_zero();
    for (size_t v = 0; v < cp->nv; v++)
        for (unsigned k = 0; k < CODES_LANE; k++) {
            vf sv, zv;
            v_gather_sz(unit + 4 * v * CODES_SPAN, cp->kidx[k], &sv, &zv);
            zv = v_mul(zv, v_set1((float)(1u << codes_exp(cp->bits, k))));
            const size_t i = v * CODES_SPAN + k * KVD_SIMD_W;
            for (size_t h = 0; h < g; h++) {
                const vf qv = v_load(cp->qp[h] + i);
                v_store(cp->qs[h] + i, v_mul(qv, sv));
                qz[h] = v_fma(qv, zv, qz[h]);
            }
        }
    for (size_t h = 0; h < g; h++)
        cp->qz[h] = v_hsum(qz[h]);
    cp->kunit = unit;
}

/* The 8 code vectors of span v of a key: c[r] holds channels in the order
 * of qp (I8: channel order; packed: code r of every lane, times 2^e). */
SIMD_INLINE void codes_decode(const unsigned char *restrict codes, int mode, unsigned bits,
                              vf *c)
{
    if (mode == CODES_I8 || mode == CODES_F16 || mode == CODES_BF16) {
        SIMD_UNROLL
        for (unsigned r = 0; r < CODES_LANE; r++)
            c[r] = mode == CODES_I8    ? v_i8(codes + r * KVD_SIMD_W)
                   : mode == CODES_F16 ? v_f16(codes + 2 * r * KVD_SIMD_W)
                                       : v_bf16(codes + 2 * r * KVD_SIMD_W);
        return;
    }
    const vi x = v_units(codes, bits);
    SIMD_UNROLL
    for (unsigned k = 0; k < CODES_LANE; k++) {
        const unsigned e = codes_exp(bits, k);
        c[k] = v_field(x, bits * k - e, ((1u << bits) - 1u) << e);
    }
}

/* Heads [h0, h0 + nh) (nh a constant) for span v of key b: acc[h][b] gets
 * (or adds) the head's lanes of <q, code vectors c>, with s and z applied
 * per lane for U4G/U2G. */
SIMD_INLINE void codes_heads(const codes_prep *restrict cp, const float *restrict Q, const vf *c,
                             vf sl, vf zl, size_t v, size_t b, size_t h0, size_t nh,
                             float *restrict acc, int mode)
{
    vf a[4];
    SIMD_UNROLL
    for (size_t i = 0; i < nh; i++)
        a[i] = v_mul(v_load(Q + (h0 + i) * KVD_ATTN_CHUNK + v * CODES_SPAN), c[0]);
    SIMD_UNROLL
    for (unsigned r = 1; r < CODES_LANE; r++) {
        SIMD_UNROLL
        for (size_t i = 0; i < nh; i++)
            a[i] = v_fma(v_load(Q + (h0 + i) * KVD_ATTN_CHUNK + v * CODES_SPAN + r * KVD_SIMD_W),
                         c[r], a[i]);
    }
    SIMD_UNROLL
    for (size_t i = 0; i < nh; i++) {
        float *restrict t = acc + ((h0 + i) * KVD_ATTN_BLOCK + b) * KVD_SIMD_W;
        if (mode == CODES_GROUPS) {
            const vf zq = v_mul(zl, v_load(cp->ql[h0 + i] + v * KVD_SIMD_W));
            a[i] = v_fma(a[i], sl, v == 0 ? zq : v_add(v_load(t), zq));
        } else if (v > 0) {
            a[i] = v_add(v_load(t), a[i]);
        }
        v_store(t, a[i]);
    }
}

/* Scores of the block's keys ku[0..nb) (KIVI: tokens kt[]) for every head,
 * unscaled, into s[h][0..KVD_ATTN_BLOCK) (lanes past nb: 0). acc is
 * scratch of g * KVD_ATTN_BLOCK vectors. mode and bits are constants at
 * every call, so each format gets its own loop. */
SIMD_INLINE void codes_scores_fmt(codes_prep *restrict cp, const unsigned char *const *ku,
                                  const size_t *kt, size_t nb, float *restrict acc,
                                  float (*restrict s)[KVD_ATTN_BLOCK], int mode, unsigned bits,
                                  simd_pf *pf)
{
    const size_t g = cp->g, d = cp->d, nv = cp->nv;
    const size_t span_bytes = CODES_SPAN * bits / 8;
    for (size_t b = 0; b < nb; b++) {
        const unsigned char *row = ku[b], *codes;
        const float *Q = &cp->qp[0][0];
        if (mode == CODES_I8) {
            memcpy(&cp->post[0][b], row, sizeof(float));
            codes = row + 4;
        } else if (mode == CODES_F16 || mode == CODES_BF16) {
            codes = row;
        } else if (mode == CODES_GROUPS) {
            codes = row + 4 * cp->ng;
        } else {
            if (row != cp->kunit)
                codes_kivi_block(cp, row);
            for (size_t h = 0; h < g; h++)
                cp->post[h][b] = cp->qz[h];
            Q = &cp->qs[0][0];
            codes = row + 4 * d + kt[b] * (d * bits / 8);
        }
        for (size_t v = 0; v < nv; v++) {
            vf c[CODES_LANE];
            codes_decode(codes + v * span_bytes, mode, bits, c);
            vf sl = v_zero(), zl = v_zero();
            if (mode == CODES_GROUPS) {
                /* W halves from the span's first {s, z}: within the row
                 * (a span's codes alone are >= 2W bytes) */
                const vf sz = v_halves_w(row + 4 * cp->gb[v]);
                sl = v_lookup(sz, cp->idx_s[v]);
                zl = v_lookup(sz, cp->idx_z[v]);
            }
            /* Four heads at a time: four independent FMA chains side by
             * side (one chain alone would wait on FMA latency). */
            size_t h = 0;
            for (; h + 4 <= g; h += 4)
                codes_heads(cp, Q, c, sl, zl, v, b, h, 4, acc, mode);
            for (; h < g; h++)
                codes_heads(cp, Q, c, sl, zl, v, b, h, 1, acc, mode);
        }
        simd_pf_drip(pf);
    }
    for (size_t b = nb; b < KVD_ATTN_BLOCK; b++) /* a short last block: defined lanes */
        for (size_t h = 0; h < g; h++) {
            v_store(acc + (h * KVD_ATTN_BLOCK + b) * KVD_SIMD_W, v_zero());
            cp->post[h][b] = 0.0f;
        }
    for (size_t h = 0; h < g; h++)
        for (size_t b0 = 0; b0 < KVD_ATTN_BLOCK; b0 += KVD_SIMD_W) {
            vf r[KVD_SIMD_W];
            SIMD_UNROLL
            for (size_t b = 0; b < KVD_SIMD_W; b++)
                r[b] = v_load(acc + (h * KVD_ATTN_BLOCK + b0 + b) * KVD_SIMD_W);
            vf sum = v_sum_lanes(r);
            if (mode == CODES_I8)
                sum = v_mul(sum, v_load(&cp->post[0][b0]));
            else if (mode == CODES_KIVI)
                sum = v_add(sum, v_load(&cp->post[h][b0]));
            v_store(s[h] + b0, sum);
        }
}

/* codes_scores_fmt with the format a constant. */
KVD_SIMD_ATTR static void codes_scores(codes_prep *restrict cp, const unsigned char *const *ku,
                                       const size_t *kt, size_t nb, float *restrict acc,
                                       float (*restrict s)[KVD_ATTN_BLOCK], simd_pf *pf)
{
    switch (cp->mode) {
    case CODES_I8: codes_scores_fmt(cp, ku, kt, nb, acc, s, CODES_I8, 8, pf); break;
    case CODES_F16: codes_scores_fmt(cp, ku, kt, nb, acc, s, CODES_F16, 16, pf); break;
    case CODES_BF16: codes_scores_fmt(cp, ku, kt, nb, acc, s, CODES_BF16, 16, pf); break;
    case CODES_GROUPS:
        if (cp->bits == 4)
            codes_scores_fmt(cp, ku, kt, nb, acc, s, CODES_GROUPS, 4, pf);
        else
            codes_scores_fmt(cp, ku, kt, nb, acc, s, CODES_GROUPS, 2, pf);
        break;
    case CODES_KIVI:
        if (cp->bits == 4)
            codes_scores_fmt(cp, ku, kt, nb, acc, s, CODES_KIVI, 4, pf);
        else
            codes_scores_fmt(cp, ku, kt, nb, acc, s, CODES_KIVI, 2, pf);
        break;
    }
}
