/* attention/standard_simd.h — the body of the standard (softmax) attend
 * kernel, written once over the vector layer (simd_avx2.h, simd_avx512.h,
 * simd_scalar.h) and included by one thin .c file per layer (standard_avx2.c,
 * standard_avx512.c, standard_scalar.c), which names it
 * KVD_SIMD_NAME(kvd__attend_). Private to attention/. Keys and values are
 * taken 16 tokens at a time; f32 rows are read in place, quantized keys of
 * most shapes are scored from their codes (standard_codes.h) and values of
 * most shapes decoded in registers (simd_values), the rest is dequantized
 * into an L1 tile of 16 x KVD_ATTN_CHUNK f32 (a slice of one block, never a
 * copy of the cache) for the same f32 block math. Over 600
 * lines: the decode, the block math and the f64 sums are one kernel body over
 * one vector layer, included once per tier. */
#ifndef KVD_SIMD_LAYER
#error "include a vector layer (attention/simd_*.h) before attention/standard_simd.h"
#endif

#include <float.h>
#include <math.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/kernels.h"
#include "attention/simd_rows.h"

_Static_assert(KVD_ATTN_BLOCK % KVD_SIMD_W == 0, "a block of scores is whole vectors");
_Static_assert(KVD_ATTN_CHUNK % KVD_SIMD_W == 0, "chunks start on whole vectors");

/* Complete unrolling of constant-count loops over register arrays (GCC at
 * -O2 would otherwise keep such arrays on the stack). */
#define SIMD_UNROLL _Pragma("GCC unroll 16")

/* Hides how a pointer was computed, so that row + constant offsets stay
 * constant displacements of one register (GCC otherwise hoists eight
 * "i + r * W" offsets out of the loop, keeps them in vector registers for
 * lack of general ones and moves one back per load). */
#define SIMD_OPAQUE(ptr) __asm__("" : "+r"(ptr))

/* One block's rows as the kernel reads them: unit (KIVI keys: the
 * 32-token block) and token within it of each slot's key and value row. */
typedef struct simd_blk {
    const unsigned char *ku[KVD_ATTN_BLOCK], *vu[KVD_ATTN_BLOCK];
    size_t kt[KVD_ATTN_BLOCK], vt[KVD_ATTN_BLOCK];
    size_t nb; /* slots in the block; 0 past the segment's end */
} simd_blk;

/* The rows the kernel will read, asked for ahead of it (into L1; the
 * prefetch never faults). An item is one row, in the order the kernel
 * reads them: a block's key rows (KIVI: a token's codes, and the block's
 * scales with its first token), then its value rows. Two schedules:
 *  - paced (blocks of many lines): a lead of most of a block is kept asked
 *    for, and the rest follows a few items per tick of drips called from
 *    the inner loops, so that by a block's end its rows and the next
 *    block's lead are asked for;
 *  - at once (blocks of few lines): all of the next block's rows at the
 *    start of each block, keys then values, no drips at all.
 * Why, measured cold at n = 32k on a VM with ~264 ns DRAM latency: a core
 * keeps ~16 L1 misses in flight, ~4 GB/s at that latency, so a decode
 * keeps up with memory only while the L2 streamer runs ahead of it, and
 * the streamer starts again at every 4 KiB page. It kept up when each
 * stream's rows were asked for in address order (keys, then values: the
 * old per-slot order, key and value rows interleaved, cost int4 27% from
 * DRAM), and when a large block's rows came paced a lead ahead rather
 * than in one burst (f16 -13%). The drips cost a decrement each in the
 * inner loops, and their pace is set per block, not per drip. */
typedef struct simd_pf {
    const simd_blk *cur, *nxt; /* the block being computed, the next one */
    const simd_blk *at;        /* the block of the next item: cur or nxt */
    size_t item;               /* the next item to ask for, in *at */
    size_t ks, vs, k_codes, k_head; /* row bytes (KIVI keys: codes, scales) */
    size_t lead_min;           /* SIMD_PF_LEAD lines, in items */
    int k_block;
    int drip;       /* rows dripped (else each next block asked for at once) */
    uint32_t every; /* the pace: drips per tick */
    uint32_t per;   /* and items per tick */
    uint32_t wait;  /* drips until the next tick */
    uint32_t ticks; /* ticks so far in this block */
} simd_pf;

/* The least lead, in lines (simd_pf_lead). */
#define SIMD_PF_LEAD 64

/* Lines of one block (16 slots, each row rounded up to whole lines) up to
 * which the next block is asked for at once (simd_pf). At d = 128: f32
 * (256), f16/bf16 (128) and int8 (96) are paced; int4 and KIVI-4 (64) and
 * KIVI-2 (32) go at once. Measured (bench_quant_decode, built side by side
 * and alternated, AVX-512): paced, int8 was 15% faster from DRAM (at +10%
 * in L2: the drips' cost in its tight loops); int4 was 5% slower from DRAM
 * and 8% in L2; KIVI-2 10% slower from DRAM. */
#define SIMD_PF_BURST 64

/* Asks for bytes [p, p + n) in L1 ahead of use, all at once. */
KVD_SIMD_ATTR static inline void simd_prefetch(const unsigned char *p, size_t n)
{
    for (size_t o = 0; o < n; o += 64)
        v_prefetch(p + o);
    v_prefetch(p + n - 1); /* a row may end in one more line */
}

/* Asks for the next item; returns 0 when none is left (the next block's
 * all asked for). */
KVD_SIMD_ATTR static inline int simd_pf_item(simd_pf *pf)
{
    const simd_blk *k = pf->at;
    const size_t i = pf->item;
    if (i == 2 * k->nb)
        return 0;
    if (i >= k->nb) {
        simd_prefetch(k->vu[i - k->nb], pf->vs);
    } else if (pf->k_block) {
        if (k->kt[i] == 0)
            simd_prefetch(k->ku[i], pf->k_head);
        simd_prefetch(k->ku[i] + pf->k_head + k->kt[i] * pf->k_codes, pf->k_codes);
    } else {
        simd_prefetch(k->ku[i], pf->ks);
    }
    if (++pf->item == 2 * k->nb && k == pf->cur) {
        pf->at = pf->nxt;
        pf->item = 0;
    }
    return 1;
}

/* A tick of the pace: asks for `per` items, and waits `every` drips for
 * the next. */
KVD_SIMD_ATTR static inline __attribute__((always_inline)) void simd_pf_tick(simd_pf *pf)
{
    pf->wait = pf->every;
    pf->ticks++;
    for (uint32_t k = 0; k < pf->per && simd_pf_item(pf); k++)
        ;
}

/* A drip, called from the inner loops of the kernel, about evenly through
 * a block's work (nothing when pf is NULL): between ticks it costs one
 * decrement. */
KVD_SIMD_ATTR static inline void simd_pf_drip(simd_pf *pf)
{
    if (pf != NULL && --pf->wait == 0)
        simd_pf_tick(pf);
}

/* <a, b> over d floats: two vector accumulators to hide FMA latency, then an
 * explicit scalar tail so any head_dim works (d = 1, 3, 17, 130 ...). */
KVD_SIMD_ATTR static inline float simd_dot(const float *restrict a, const float *restrict b,
                                           size_t d)
{
    vf acc0 = v_zero(), acc1 = v_zero();
    size_t i = 0;
    for (; i + 2 * KVD_SIMD_W <= d; i += 2 * KVD_SIMD_W) {
        acc0 = v_fma(v_load(a + i), v_load(b + i), acc0);
        acc1 = v_fma(v_load(a + i + KVD_SIMD_W), v_load(b + i + KVD_SIMD_W), acc1);
    }
    for (; i + KVD_SIMD_W <= d; i += KVD_SIMD_W)
        acc0 = v_fma(v_load(a + i), v_load(b + i), acc0);
    float s = v_hsum(v_add(acc0, acc1));
    for (; i < d; i++)
        s += a[i] * b[i];
    return s;
}

/* Query vectors held in registers while a block's keys stream past them:
 * 8 x 16 lanes = 128 channels (AVX-512: 8 of 32 registers beside 16 key
 * accumulators), 4 x 8 lanes = 32 channels (AVX2: 4 + 8 of 16). */
#define SIMD_QREG (KVD_SIMD_W == 16 ? 8 : 4)

/* <q, k_b> for the W keys rows[0..W) as one vector (lane b = key b).
 * Each key gets its own accumulator vector: W independent FMA chains, q
 * loaded once per SIMD_QREG vectors for all W keys (one load per FMA: the
 * key's), and no horizontal sum per key: v_sum_lanes reduces all W
 * accumulators at once (a transpose-and-add tree, ~3 ops per key instead of
 * ~8 for a horizontal sum each). Scalar tail for any head_dim. */
KVD_SIMD_ATTR static inline vf simd_dot_w(const float *restrict q,
                                          const float *const *restrict rows, size_t d,
                                          simd_pf *pf)
{
    /* The loops over keys and query registers have constant trip counts and
     * are unrolled completely so that acc[] and qr[] live in registers. */
    vf acc[KVD_SIMD_W];
    SIMD_UNROLL
    for (size_t b = 0; b < KVD_SIMD_W; b++)
        acc[b] = v_zero();
    size_t c = 0;
    for (; c + SIMD_QREG * KVD_SIMD_W <= d; c += SIMD_QREG * KVD_SIMD_W) {
        vf qr[SIMD_QREG];
        SIMD_UNROLL
        for (size_t r = 0; r < SIMD_QREG; r++)
            qr[r] = v_load(q + c + r * KVD_SIMD_W);
        SIMD_UNROLL
        for (size_t b = 0; b < KVD_SIMD_W; b++) {
            const float *restrict k = rows[b] + c;
            SIMD_UNROLL
            for (size_t r = 0; r < SIMD_QREG; r++)
                acc[b] = v_fma(qr[r], v_load(k + r * KVD_SIMD_W), acc[b]);
            if (b % (32 / SIMD_QREG) == 0) /* once per 32 FMAs (of 16 lanes) */
                simd_pf_drip(pf);
        }
    }
    for (; c + KVD_SIMD_W <= d; c += KVD_SIMD_W) {
        const vf qi = v_load(q + c);
        SIMD_UNROLL
        for (size_t b = 0; b < KVD_SIMD_W; b++)
            acc[b] = v_fma(qi, v_load(rows[b] + c), acc[b]);
    }
    vf sum = v_sum_lanes(acc);
    if (c < d) {
        _Alignas(64) float t[KVD_SIMD_W];
        v_store(t, sum);
        for (size_t b = 0; b < KVD_SIMD_W; b++)
            for (size_t i = c; i < d; i++)
                t[b] += q[i] * rows[b][i];
        sum = v_load(t);
    }
    return sum;
}

/* out[b] = <q, rows[b]> for b < nb (<= KVD_ATTN_BLOCK): whole vectors of
 * keys through simd_dot_w, a ragged last few (end of a segment) one by one.
 * pf (may be NULL) is dripped once per key. */
KVD_SIMD_ATTR static inline void simd_dot_block(const float *restrict q,
                                                const float *const *restrict rows, size_t nb,
                                                size_t d, float *restrict out, simd_pf *pf)
{
    size_t b = 0;
    for (; b + KVD_SIMD_W <= nb; b += KVD_SIMD_W)
        v_store(out + b, simd_dot_w(q, rows + b, d, pf));
    for (; b < nb; b++)
        out[b] = simd_dot(q, rows[b], d);
}

/* acc[0..d) *= alpha */
KVD_SIMD_ATTR static inline void simd_scale(float *restrict acc, float alpha, size_t d)
{
    const vf va = v_set1(alpha);
    size_t i = 0;
    for (; i + KVD_SIMD_W <= d; i += KVD_SIMD_W)
        v_store(acc + i, v_mul(v_load(acc + i), va));
    for (; i < d; i++)
        acc[i] *= alpha;
}

/* acc[0..d) += sum_b p[b] * v[b][0..d): acc is loaded and stored once per
 * block. Eight vector columns at a time (all of d = 128 on AVX-512) give
 * eight independent FMA chains per weight, enough to cover FMA latency on
 * two ports (four chains would wait on it for every key of the block).
 * pf (may be NULL) is dripped once per row and 8 vectors. */
KVD_SIMD_ATTR static inline void simd_accumulate(float *restrict acc, const float *restrict p,
                                                 const float *const *restrict v, size_t nb,
                                                 size_t d, simd_pf *pf)
{
    size_t i = 0;
    for (; i + 8 * KVD_SIMD_W <= d; i += 8 * KVD_SIMD_W) {
        vf a[8];
        SIMD_UNROLL
        for (size_t r = 0; r < 8; r++)
            a[r] = v_load(acc + i + r * KVD_SIMD_W);
        for (size_t b = 0; b < nb; b++) {
            const vf pb = v_set1(p[b]);
            const float *vb = v[b] + i;
            SIMD_OPAQUE(vb);
            SIMD_UNROLL
            for (size_t r = 0; r < 8; r++)
                a[r] = v_fma(pb, v_load(vb + r * KVD_SIMD_W), a[r]);
            simd_pf_drip(pf);
        }
        SIMD_UNROLL
        for (size_t r = 0; r < 8; r++)
            v_store(acc + i + r * KVD_SIMD_W, a[r]);
    }
    for (; i + 2 * KVD_SIMD_W <= d; i += 2 * KVD_SIMD_W) {
        vf a0 = v_load(acc + i), a1 = v_load(acc + i + KVD_SIMD_W);
        for (size_t b = 0; b < nb; b++) {
            const vf pb = v_set1(p[b]);
            a0 = v_fma(pb, v_load(v[b] + i), a0);
            a1 = v_fma(pb, v_load(v[b] + i + KVD_SIMD_W), a1);
        }
        v_store(acc + i, a0);
        v_store(acc + i + KVD_SIMD_W, a1);
    }
    for (; i + KVD_SIMD_W <= d; i += KVD_SIMD_W) {
        vf a = v_load(acc + i);
        for (size_t b = 0; b < nb; b++)
            a = v_fma(v_set1(p[b]), v_load(v[b] + i), a);
        v_store(acc + i, a);
    }
    for (; i < d; i++) {
        float a = acc[i];
        for (size_t b = 0; b < nb; b++)
            a += p[b] * v[b][i];
        acc[i] = a;
    }
}

/* ---- dequantization into the tile --------------------------------------- */

#define SIMD_INLINE KVD_SIMD_ATTR static inline __attribute__((always_inline))

/* Groups of a U4G/U2G row one chunk may touch, vector path (group is a
 * multiple of W >= 8): KVD_ATTN_CHUNK / 8 plus one partial at each end. */
#define SIMD_MAX_CHUNK_GROUPS (KVD_ATTN_CHUNK / 8 + 2)

/* What one channel chunk decodes with: the format's fixed geometry, worked
 * out once per segment and chunk (divisions stay out of the rows). */
typedef struct simd_chunk {
    kvd_row_format f;
    size_t d, c0, c1;
    uint32_t group;
    size_t g0, g1;       /* U4G/U2G: groups [g0, g1) overlap channels [c0, c1) */
    size_t codes;        /* U4G/U2G: byte offset of the codes in a row;
                            KIVI: bytes of one token's codes */
    int vector_groups;   /* U4G/U2G: group is whole vectors (else scalar) */
} simd_chunk;

/* Channels [c0, c1) of row/token t of `unit` -> out[0..c1-c0), bit for bit
 * what kvd_dequant_range gives: the f16/bf16/int8 decodes are exact,
 * and z + s*q rounds once either way because s*q (an 11-bit half times a
 * code of <= 4 bits) is exact in f32. c0 is a multiple of KVD_ATTN_CHUNK, so
 * vectors start on whole bytes of packed codes. Vector paths need U4G/U2G
 * groups of whole vectors; other groups and the tail of an odd head_dim
 * take the scalar reference. Always inlined into a loop over one format,
 * so the switch folds away. */
SIMD_INLINE void simd_dequant(const simd_chunk *ch, const unsigned char *restrict unit, size_t t,
                              simd_kivi_cache *restrict kc, const float *restrict sz,
                              float *restrict out)
{
    const size_t c0 = ch->c0, c1 = ch->c1;
    size_t c = c0;
    switch (ch->f) {
    case KVD_ROW_F32:
        memcpy(out, unit + 4 * c0, (c1 - c0) * sizeof *out);
        return;
    case KVD_ROW_F16:
    case KVD_ROW_BF16:
    case KVD_ROW_I8:
        c = simd_decode_plain(ch->f, unit, c0, c1, out);
        break;
    case KVD_ROW_U4G:
    case KVD_ROW_U2G: {
        if (!ch->vector_groups)
            break; /* a vector would straddle two groups: scalar */
        /* sz: {s, z} of the chunk's groups as f32, decoded beforehand for
         * the whole block (simd_rows). Running pointers and counts, no
         * index arithmetic per vector: the chunk's whole vectors, group by
         * group (the first group of a chunk past the first may have
         * started in the previous chunk). */
        const int four = ch->f == KVD_ROW_U4G;
        const unsigned char *restrict pc = unit + ch->codes + (four ? c0 / 2 : c0 / 4);
        const size_t step = four ? KVD_SIMD_W / 2 : KVD_SIMD_W / 4; /* code bytes per vector */
        float *restrict po = out;
        size_t left = (c1 - c0) / KVD_SIMD_W;
        size_t in_group = ((ch->g0 + 1) * ch->group - c0) / KVD_SIMD_W;
        const size_t per_group = ch->group / KVD_SIMD_W;
        for (size_t gi = 0; left > 0; gi++, in_group = per_group) {
            const size_t nv = in_group < left ? in_group : left;
            left -= nv;
            if (four) {
                const vgroup vg = v_group4(sz[2 * gi], sz[2 * gi + 1]);
                for (size_t k = 0; k < nv; k++, po += KVD_SIMD_W, pc += step)
                    v_store(po, v_dq4(pc, &vg));
            } else {
                const vgroup vg = v_group2(sz[2 * gi], sz[2 * gi + 1]);
                for (size_t k = 0; k < nv; k++, po += KVD_SIMD_W, pc += step)
                    v_store(po, v_dq2(pc, &vg));
            }
        }
        c = c0 + (size_t)(po - out); /* the tail of an odd head_dim: scalar */
        break;
    }
    case KVD_ROW_KIVI4_KEYS:
    case KVD_ROW_KIVI2_KEYS:
        /* channel c's scale and minimum hold for every token of the block */
        c = simd_decode_kivi_keys(ch->f == KVD_ROW_KIVI4_KEYS, unit,
                                  unit + 4 * ch->d + t * ch->codes, c0, c1, kc, out);
        break;
    }
    if (c < c1)
        kvd_dequant_range(ch->f, unit, t, ch->d, ch->group, c, c1, out + (c - c0));
}

#include "attention/standard_codes.h" /* keys scored from their codes */

/* ---- the kernel ----------------------------------------------------------- */

/* Chunk descriptors worked out once per segment: head_dim up to 4096 (the
 * API's limit); beyond, they are worked out per block. */
#define SIMD_CHUNKS (4096 / KVD_ATTN_CHUNK)

/* Online softmax state and scratch of one chunk of heads (on the stack of
 * the kernel: ~100 KiB, no allocation; worker threads have MiB stacks). */
typedef struct simd_state {
    float m[KVD_ATTN_MAX_GROUP];  /* running max per head */
    double l[KVD_ATTN_MAX_GROUP]; /* running sum of exp(s - m) per head: f64 (kernels.h) */
    /* The f64 output sums (kernels.h, KVD_ATTN_FOLD_BLOCKS): o holds the
     * f32 sum of the blocks since the last fold; od [g][d] the f64 sum
     * before them, still to be multiplied by od_scale (the product of the
     * rescale factors since that fold). od_on = 0: d too large for od. */
    double od_scale[KVD_ATTN_MAX_GROUP];
    size_t since_fold; /* blocks in o since the last fold */
    int od_on;
    _Alignas(64) float s[KVD_ATTN_MAX_GROUP][KVD_ATTN_BLOCK]; /* scores, then weights */
    _Alignas(64) float tile[KVD_ATTN_BLOCK * KVD_ATTN_CHUNK]; /* [nb][chunk] f32 */
    simd_kivi_cache kc, vc;      /* KIVI block headers for keys / values */
    simd_chunk kch[SIMD_CHUNKS], vch[SIMD_CHUNKS]; /* per channel chunk, per segment */
    codes_prep cp;               /* keys from codes (standard_codes.h), per segment */
    simd_blk blk[2];             /* this block's rows and the next one's */
    simd_pf pf;                  /* the rows ahead, dripped */
    _Alignas(64) double od[KVD_ATTN_ACC_DOUBLES]; /* last: the hot fields stay together */
} simd_state;

/* The decode of one chunk [c0, c1) of format f (division-free afterwards). */
static inline simd_chunk simd_chunk_of(kvd_row_format f, size_t d, uint32_t group, size_t c0,
                                       size_t c1)
{
    simd_chunk ch = {.f = f, .d = d, .c0 = c0, .c1 = c1, .group = group};
    if (f == KVD_ROW_U4G || f == KVD_ROW_U2G) {
        ch.g0 = c0 / group;
        ch.g1 = (c1 + group - 1) / group;
        ch.codes = 4 * ((d + group - 1) / group);
        ch.vector_groups = group % KVD_SIMD_W == 0;
    } else if (kvd_row_is_block(f)) {
        ch.codes = (d * (f == KVD_ROW_KIVI4_KEYS ? 4 : 2) + 7) / 8;
    }
    return ch;
}

/* One case of simd_rows: decodes rows unit[0..nb) (tokens t[]) into the
 * tile ([nb][c1 - c0]) with the format a constant, so the inlined decode is
 * that format's loop alone (the switch on the format stays outside the
 * loop over rows). */
#define SIMD_DECODE_ROWS(fmt)                                                          \
    case fmt: {                                                                        \
        simd_chunk ch = ch0;                                                           \
        ch.f = fmt;                                                                    \
        for (size_t b = 0; b < nb; b++) {                                              \
            simd_dequant(&ch, unit[b], t[b], kc, sz + b * SIMD_SZ_STRIDE,              \
                         tile + b * (c1 - c0));                                        \
            simd_pf_drip(pf);                                                          \
        }                                                                              \
        break;                                                                         \
    }

/* Floats of decoded {s, z} per row of a block (U4G/U2G). */
#define SIMD_SZ_STRIDE (2 * SIMD_MAX_CHUNK_GROUPS)

/* Every U4G/U2G row's group scales and minimums for chunk ch's groups, as
 * f32 into sz (row b at b * SIMD_SZ_STRIDE): one F16C conversion per row,
 * then the rows' codes broadcast s and z from this small array (simd_rows,
 * simd_values). */
SIMD_INLINE void simd_block_sz(const simd_chunk *ch, const unsigned char *const *unit, size_t nb,
                               float *restrict sz)
{
    for (size_t b = 0; b < nb; b++)
        v_halves(unit[b] + 4 * ch->g0, 2 * (ch->g1 - ch->g0), sz + b * SIMD_SZ_STRIDE);
}

/* Points rows[0..nb) at channels [ch0->c0, ch0->c1) of the block's rows:
 * in place for f32, else dequantized into the tile. */
KVD_SIMD_ATTR static void simd_rows(const simd_chunk *ch0p, const unsigned char *const *unit,
                                    const size_t *t, size_t nb, simd_kivi_cache *kc,
                                    float *restrict tile, const float **rows, simd_pf *pf)
{
    const simd_chunk ch0 = *ch0p;
    const size_t c0 = ch0.c0, c1 = ch0.c1;
    if (ch0.f == KVD_ROW_F32) {
        for (size_t b = 0; b < nb; b++)
            rows[b] = (const float *)unit[b] + c0;
        return;
    }
    for (size_t b = 0; b < nb; b++)
        rows[b] = tile + b * (c1 - c0);
    _Alignas(64) float sz[KVD_ATTN_BLOCK * SIMD_SZ_STRIDE];
    if ((ch0.f == KVD_ROW_U4G || ch0.f == KVD_ROW_U2G) && ch0.vector_groups)
        simd_block_sz(&ch0, unit, nb, sz);
    switch (ch0.f) {
        SIMD_DECODE_ROWS(KVD_ROW_F16)
        SIMD_DECODE_ROWS(KVD_ROW_BF16)
        SIMD_DECODE_ROWS(KVD_ROW_I8)
        SIMD_DECODE_ROWS(KVD_ROW_U4G)
        SIMD_DECODE_ROWS(KVD_ROW_U2G)
        SIMD_DECODE_ROWS(KVD_ROW_KIVI4_KEYS)
        SIMD_DECODE_ROWS(KVD_ROW_KIVI2_KEYS)
    case KVD_ROW_F32:
        break;
    }
}

/* ---- values straight from their rows ------------------------------------- */

/* Vectors of channels per pass of simd_values_heads: with 4 heads, 4 x VD
 * accumulators plus VD decoded vectors stay in registers (AVX-512 has 32;
 * AVX2 and the portable layer 16). */
#define SIMD_VD (KVD_SIMD_W >= 16 ? 4 : 2)

/* True when simd_values takes the value chunk ch: f16, bf16 and U4G/U2G
 * groups of whole vectors (KIVI values are U4G/U2G rows), over whole passes
 * of SIMD_VD vectors. Others go through the tile; so does int8, whose rows
 * (4 + d bytes, off the line grid) measured ~5% slower from DRAM this way
 * (bench_quant_decode, 3 of 4 alternated pairs) though 12-15% faster in L2. */
static inline int simd_values_direct(const simd_chunk *ch)
{
    const int fmt = ch->f == KVD_ROW_F16 || ch->f == KVD_ROW_BF16
                    || ((ch->f == KVD_ROW_U4G || ch->f == KVD_ROW_U2G) && ch->vector_groups);
    return fmt && (ch->c1 - ch->c0) % (SIMD_VD * KVD_SIMD_W) == 0;
}

/* Vectors [c, c + SIMD_VD W) of value row `row` as f32, bit for bit what
 * simd_dequant writes to the tile. sz: the row's {s, z} per group of the
 * chunk, the chunk's first group at sz[0] (U4G/U2G). */
SIMD_INLINE void simd_value_vecs(const simd_chunk *ch, const unsigned char *restrict row,
                                 const float *restrict sz, size_t c, vf *x)
{
    const kvd_row_format f = ch->f;
    if (f == KVD_ROW_U4G || f == KVD_ROW_U2G) {
        /* a group is whole vectors: its table (z + s * code for every code)
         * is built at the vector that starts it */
        const int four = f == KVD_ROW_U4G;
        const unsigned char *pc = row + ch->codes + (four ? c / 2 : c / 4);
        vgroup vg;
        SIMD_UNROLL
        for (size_t r = 0; r < SIMD_VD; r++) {
            const size_t cr = c + r * KVD_SIMD_W, gr = cr / ch->group - ch->g0;
            if (r == 0 || cr % ch->group == 0)
                vg = four ? v_group4(sz[2 * gr], sz[2 * gr + 1]) : v_group2(sz[2 * gr], sz[2 * gr + 1]);
            x[r] = four ? v_dq4(pc + r * (KVD_SIMD_W / 2), &vg) : v_dq2(pc + r * (KVD_SIMD_W / 4), &vg);
        }
        return;
    }
    SIMD_UNROLL
    for (size_t r = 0; r < SIMD_VD; r++) {
        const size_t cr = c + r * KVD_SIMD_W;
        x[r] = f == KVD_ROW_F16 ? v_f16(row + 2 * cr) : v_bf16(row + 2 * cr);
    }
}

/* o[i][c0, c1) += sum_b w[i][b] * row_b[c0, c1) for i < nh (<= 4, a
 * constant): each row's vectors are decoded in registers once for the nh
 * heads, instead of stored to the tile and loaded back by every head. The
 * products and their order per head are the tile path's (simd_accumulate),
 * so the output is bit for bit the same (tests/attention/test_value_rows.c). */
SIMD_INLINE void simd_values_heads(const simd_chunk *ch, const unsigned char *const *vu, size_t nb,
                                   const float *restrict sz, const float (*w)[KVD_ATTN_BLOCK],
                                   size_t nh, float *restrict o, size_t d, simd_pf *pf)
{
    for (size_t c = ch->c0; c < ch->c1; c += SIMD_VD * KVD_SIMD_W) {
        vf a[4][SIMD_VD];
        SIMD_UNROLL
        for (size_t i = 0; i < nh; i++)
            SIMD_UNROLL
            for (size_t r = 0; r < SIMD_VD; r++)
                a[i][r] = v_load(o + i * d + c + r * KVD_SIMD_W);
        for (size_t b = 0; b < nb; b++) {
            vf x[SIMD_VD];
            simd_value_vecs(ch, vu[b], sz + b * SIMD_SZ_STRIDE, c, x);
            SIMD_UNROLL
            for (size_t i = 0; i < nh; i++) {
                const vf wb = v_set1(w[i][b]);
                SIMD_UNROLL
                for (size_t r = 0; r < SIMD_VD; r++)
                    a[i][r] = v_fma(wb, x[r], a[i][r]);
            }
            simd_pf_drip(pf);
        }
        SIMD_UNROLL
        for (size_t i = 0; i < nh; i++)
            SIMD_UNROLL
            for (size_t r = 0; r < SIMD_VD; r++)
                v_store(o + i * d + c + r * KVD_SIMD_W, a[i][r]);
    }
}

/* One case of simd_values: the format a constant, heads in passes of 4,
 * then 2, then 1 (register blocking). */
#define SIMD_VALUES_FMT(fmt)                                                               \
    case fmt: {                                                                            \
        simd_chunk ch = *ch0;                                                              \
        ch.f = fmt;                                                                        \
        for (size_t h = 0; h < g;) {                                                       \
            const size_t nh = g - h >= 4 ? 4 : g - h >= 2 ? 2 : 1;                         \
            if (nh == 4)                                                                   \
                simd_values_heads(&ch, vu, nb, sz, w + h, 4, o + h * d, d, pf);            \
            else if (nh == 2)                                                              \
                simd_values_heads(&ch, vu, nb, sz, w + h, 2, o + h * d, d, pf);            \
            else                                                                           \
                simd_values_heads(&ch, vu, nb, sz, w + h, 1, o + h * d, d, pf);            \
            h += nh;                                                                       \
        }                                                                                  \
        break;                                                                             \
    }

/* o[h][c0, c1) += sum_b w[h][b] * v_b[c0, c1) for every head h < g, the
 * value rows vu[0..nb) of chunk ch0 decoded in registers (simd_values_direct
 * says which chunks). */
KVD_SIMD_ATTR static void simd_values(const simd_chunk *ch0, const unsigned char *const *vu,
                                      size_t nb, const float (*w)[KVD_ATTN_BLOCK], size_t g,
                                      float *restrict o, size_t d, simd_pf *pf)
{
    _Alignas(64) float sz[KVD_ATTN_BLOCK * SIMD_SZ_STRIDE];
    if (ch0->f == KVD_ROW_U4G || ch0->f == KVD_ROW_U2G)
        simd_block_sz(ch0, vu, nb, sz);
    switch (ch0->f) {
        SIMD_VALUES_FMT(KVD_ROW_F16)
        SIMD_VALUES_FMT(KVD_ROW_BF16)
        SIMD_VALUES_FMT(KVD_ROW_U4G)
        SIMD_VALUES_FMT(KVD_ROW_U2G)
    default:
        break;
    }
}
#undef SIMD_VALUES_FMT

/* Walks the slots of a view in order without a division per slot: page p,
 * index i in it and, for KIVI key blocks, block kb and token kt in it
 * (attention.h: slots_per_page is a multiple of group for KIVI views, so
 * blocks restart with pages). */
typedef struct simd_cursor {
    size_t p, i, kb, kt;
} simd_cursor;

KVD_SIMD_ATTR static inline void simd_cursor_next(simd_cursor *c, size_t spp, uint32_t group)
{
    if (++c->kt == group) {
        c->kt = 0;
        c->kb++;
    }
    if (++c->i == spp) {
        c->p++;
        c->i = c->kb = c->kt = 0;
    }
}

/* Fills *bk with the nb slots from cursor *c on; leaves *c past them. */
KVD_SIMD_ATTR static inline void simd_blk_fill(simd_blk *bk, const kvd_kv_pages *kv, simd_cursor *c,
                                               size_t nb, size_t ks, size_t vs, int k_block)
{
    const size_t spp = kv->slots_per_page;
    simd_cursor at = *c;
    for (size_t b = 0; b < nb; b++) {
        const unsigned char *page = kv->pages[at.p];
        bk->ku[b] = page + kv->k_offset + (k_block ? at.kb : at.i) * ks;
        bk->kt[b] = k_block ? at.kt : 0;
        bk->vu[b] = page + kv->v_offset + at.i * vs; /* values are per-token rows */
        bk->vt[b] = 0;
        simd_cursor_next(&at, spp, kv->group);
    }
    bk->nb = nb;
    *c = at;
}

/* How far ahead of the reads a block is asked for, in items: three
 * quarters of it, at least SIMD_PF_LEAD lines, at most all of it.
 * Measured cold at n = 32k, d = 128, in ns per kv-head token from DRAM:
 * f32 (256 lines a block) 85 with a lead of 192 or 256 lines, 110 with
 * 24 or 64; f16 (128) 48-49 with 32 to 96 lines, 51 with 16 or all 128;
 * int8 (~66) 45 with 64 or more, 49 with 48. */
static inline size_t simd_pf_lead(const simd_pf *pf, const simd_blk *bk)
{
    const size_t items = 2 * bk->nb, lead = items / 4 * 3;
    const size_t least = lead > pf->lead_min ? lead : pf->lead_min;
    return least < items ? least : items;
}

/* At the start of block cur (nxt the next, nb 0 past the end): asks at
 * once for what is missing of cur's lead (all of it for a segment's first
 * block, or what a short pace left behind), and sets the pace so that by
 * cur's end every row of it and nxt's lead are asked for, counting on as
 * many drips as the last block made (blocks of one segment drip alike;
 * the first guesses 64). */
KVD_SIMD_ATTR static inline void simd_pf_block(simd_pf *pf, const simd_blk *cur,
                                               const simd_blk *nxt, int drip)
{
#ifdef KVD_PF_TRACE_BLOCK /* tests/attention/test_prefetch.c: cur is about to be read */
    KVD_PF_TRACE_BLOCK();
#endif
    if (pf->at != cur) { /* the pace fell short: the rest of the last block is read */
        pf->at = cur;
        pf->item = 0;
    }
    pf->cur = cur;
    pf->nxt = nxt;
    if (pf->item == 2 * cur->nb) { /* all of cur asked for: on to nxt */
        pf->at = nxt;
        pf->item = 0;
    }
    const size_t lead = simd_pf_lead(pf, cur);
    while (pf->at == cur && pf->item < lead)
        simd_pf_item(pf);
    if (nxt->nb == 0) { /* the segment's last block: its rest at once */
        while (simd_pf_item(pf))
            ;
        return;
    }
    if (!drip) {
        /* The whole next block at once. Written out rather than through
         * simd_pf_item: a key-row helper shared by both measured int8 5%
         * slower from DRAM in 8 of 8 alternated runs (inlining, even with
         * always_inline), so the three lines of the key row stand twice. */
        for (size_t b = 0; b < nxt->nb; b++)
            if (!pf->k_block)
                simd_prefetch(nxt->ku[b], pf->ks);
            else if (nxt->kt[b] == 0)
                simd_prefetch(nxt->ku[b], pf->k_head + pf->k_codes);
            else
                simd_prefetch(nxt->ku[b] + pf->k_head + nxt->kt[b] * pf->k_codes, pf->k_codes);
        for (size_t b = 0; b < nxt->nb; b++)
            simd_prefetch(nxt->vu[b], pf->vs);
        pf->at = nxt;
        pf->item = 2 * nxt->nb;
        return;
    }
    const size_t asked = pf->at == cur ? pf->item : 2 * cur->nb;
    const size_t owed = (2 * cur->nb - asked) + simd_pf_lead(pf, nxt);
    /* drips the last block made: whole intervals, and the one it was in
     * (blocks before the last are whole, and drip alike) */
    const size_t made = (size_t)pf->ticks * pf->every + (pf->every - pf->wait);
    const size_t drips = made > 4 ? made : 64;
    if (owed == 0) {
        pf->every = UINT32_MAX; /* nothing to ask for: never tick */
        pf->per = 0;
    } else if (owed >= drips) {
        pf->every = 1;
        pf->per = (uint32_t)((owed + drips - 1) / drips);
    } else {
        pf->every = (uint32_t)(drips / owed);
        pf->per = 1;
    }
    pf->wait = pf->every;
    pf->ticks = 0;
}

/* od = od * od_scale + o, then o = 0: the f32 output sum of the last blocks
 * moves into the f64 one (both relative to the current max). */
KVD_SIMD_ATTR static void simd_fold(simd_state *restrict st, float *restrict o, size_t g, size_t d)
{
    st->since_fold = 0;
    if (!st->od_on)
        return;
    for (size_t h = 0; h < g; h++) {
        double *restrict od = st->od + h * d;
        float *restrict oh = o + h * d;
        const double c = st->od_scale[h];
        for (size_t i = 0; i < d; i++)
            od[i] = od[i] * c + (double)oh[i];
        memset(oh, 0, d * sizeof *oh);
        st->od_scale[h] = 1.0;
    }
}

/* Folds the first n slots of kv into the state of heads q[0..g) with
 * un-normalized accumulators o[0..g) ([g][d]). sc, unless NULL, gets each
 * head's scaled scores as the softmax below uses them: sc[h * sc_stride + j]
 * for slot j < n (one copy of the block's scores per head and block). */
KVD_SIMD_ATTR static void simd_segment(const kvd_kv_pages *kv, size_t n, const float *restrict q,
                                       size_t g, float scale, float *restrict o,
                                       simd_state *restrict st, float *restrict sc,
                                       size_t sc_stride)
{
    const size_t d = kv->head_dim;
    const size_t ks = kvd__kv_k_stride(kv), vs = kvd__kv_v_stride(kv);
    const int k_block = kvd_row_is_block(kv->k_format);
    st->kc.unit = NULL; /* block headers of another segment are stale */
    st->vc.unit = NULL;
    for (size_t c0 = 0, ci = 0; c0 < d && ci < SIMD_CHUNKS; c0 += KVD_ATTN_CHUNK, ci++) {
        const size_t c1 = d - c0 < KVD_ATTN_CHUNK ? d : c0 + KVD_ATTN_CHUNK;
        st->kch[ci] = simd_chunk_of(kv->k_format, d, kv->group, c0, c1);
        st->vch[ci] = simd_chunk_of(kv->v_format, d, kv->group, c0, c1);
    }
    codes_prepare(&st->cp, kv->k_format, d, kv->group, q, g);
    simd_cursor cur = {0, 0, 0, 0};
    simd_pf *const pf = &st->pf;
    pf->ks = ks;
    pf->vs = vs;
    pf->k_block = k_block;
    /* KIVI: bytes of one token's key codes, and of the block's scales */
    pf->k_codes = k_block ? (d * (kv->k_format == KVD_ROW_KIVI4_KEYS ? 4 : 2) + 7) / 8 : 0;
    pf->k_head = k_block ? 4 * d : 0;
    const size_t k_lines = ((k_block ? pf->k_codes + pf->k_head / kv->group : ks) + 63) / 64;
    const size_t v_lines = (vs + 63) / 64;
    pf->lead_min = (2 * SIMD_PF_LEAD + k_lines + v_lines - 1) / (k_lines + v_lines);
    const int drip = pf->drip = KVD_ATTN_BLOCK * (k_lines + v_lines) > SIMD_PF_BURST;
    simd_pf *const dpf = drip ? pf : NULL; /* what the loops below drip */
    simd_blk_fill(&st->blk[0], kv, &cur, n < KVD_ATTN_BLOCK ? n : KVD_ATTN_BLOCK, ks, vs, k_block);
    pf->at = &st->blk[0];
    pf->item = 0;
    pf->ticks = 0; /* the first block guesses how often it drips */
    pf->every = pf->wait = 1;
    pf->per = 0;

    for (size_t j0 = 0, bi = 0; j0 < n; j0 += KVD_ATTN_BLOCK, bi ^= 1) {
        const simd_blk *const bk = &st->blk[bi];
        const size_t nb = bk->nb;
        const unsigned char *const *ku = bk->ku, *const *vu = bk->vu;
        const size_t *kt = bk->kt, *vt = bk->vt;
        const float *rows[KVD_ATTN_BLOCK];
        const size_t nb_next = n - j0 - nb < KVD_ATTN_BLOCK ? n - j0 - nb : KVD_ATTN_BLOCK;
        simd_blk_fill(&st->blk[bi ^ 1], kv, &cur, nb_next, ks, vs, k_block);
        simd_pf_block(pf, bk, &st->blk[bi ^ 1], drip);

        /* Scores. Heads inner: the block's keys are read (and decoded) once
         * and reused from L1 by every head of the group; a head_dim above
         * one chunk sums the scores over the chunks (or standard_codes.h). */
        if (st->cp.mode != CODES_OFF)
            codes_scores(&st->cp, ku, kt, nb, st->tile, st->s, dpf);
        for (size_t c0 = 0, ci = 0; !st->cp.mode && c0 < d; c0 += KVD_ATTN_CHUNK, ci++) {
            const size_t c1 = d - c0 < KVD_ATTN_CHUNK ? d : c0 + KVD_ATTN_CHUNK;
            const simd_chunk kch = ci < SIMD_CHUNKS ? st->kch[ci]
                                                    : simd_chunk_of(kv->k_format, d, kv->group, c0, c1);
            simd_rows(&kch, ku, kt, nb, &st->kc, st->tile, rows, dpf);
            for (size_t h = 0; h < g; h++) {
                const float *restrict qh = q + h * d + c0;
                if (c0 == 0) {
                    simd_dot_block(qh, rows, nb, c1 - c0, st->s[h], dpf);
                    continue;
                }
                _Alignas(64) float part[KVD_ATTN_BLOCK];
                simd_dot_block(qh, rows, nb, c1 - c0, part, dpf);
                for (size_t b = 0; b < nb; b++)
                    st->s[h][b] += part[b];
            }
        }

        /* Online softmax: moving the reference point from m to a larger
         * block max multiplies what was accumulated by exp(m - max) <= 1;
         * every exponent below is <= 0, so huge scores stay finite. */
        for (size_t h = 0; h < g; h++) {
            float *restrict s = st->s[h];
            const vf vscale = v_set1(scale);
            for (size_t b = nb; b < KVD_ATTN_BLOCK; b++)
                s[b] = 0.0f; /* a short last block: defined lanes to scale */
            for (size_t b = 0; b < KVD_ATTN_BLOCK; b += KVD_SIMD_W)
                v_store(s + b, v_mul(v_load(s + b), vscale));
            if (sc) { /* h2o: the scores exactly as the softmax takes them */
                float *restrict dst = sc + h * sc_stride + j0;
                if (nb == KVD_ATTN_BLOCK)
                    for (size_t b = 0; b < KVD_ATTN_BLOCK; b += KVD_SIMD_W)
                        v_store(dst + b, v_load(s + b));
                else
                    memcpy(dst, s, nb * sizeof *s);
            }
            /* Padding after scaling (a negative scale would turn -inf into
             * +inf): weight exactly 0. */
            for (size_t b = nb; b < KVD_ATTN_BLOCK; b++)
                s[b] = -INFINITY;
            vf vmax = v_load(s);
            for (size_t b = KVD_SIMD_W; b < KVD_ATTN_BLOCK; b += KVD_SIMD_W)
                vmax = v_max(vmax, v_load(s + b));
            const float bmax = v_hmax(vmax);
            if (bmax > st->m[h]) {
                const float alpha = expf(st->m[h] - bmax);
                simd_scale(o + h * d, alpha, d);
                st->l[h] *= alpha;
                st->od_scale[h] *= alpha;
                st->m[h] = bmax;
            }
            const vf vm = v_set1(st->m[h]);
            vf vsum = v_zero();
            for (size_t b = 0; b < KVD_ATTN_BLOCK; b += KVD_SIMD_W) {
                const vf p = v_exp(v_sub(v_load(s + b), vm));
                v_store(s + b, p);
                vsum = v_add(vsum, p);
            }
            st->l[h] += (double)v_hsum(vsum);
        }

        /* Values: f16/bf16 and whole-vector U4G/U2G chunks decoded in
         * registers once for every head (simd_values); the rest decoded
         * once per chunk into the same tile, then every head adds its
         * weighted rows. */
        for (size_t c0 = 0, ci = 0; c0 < d; c0 += KVD_ATTN_CHUNK, ci++) {
            const size_t c1 = d - c0 < KVD_ATTN_CHUNK ? d : c0 + KVD_ATTN_CHUNK;
            const simd_chunk vch = ci < SIMD_CHUNKS ? st->vch[ci]
                                                    : simd_chunk_of(kv->v_format, d, kv->group, c0, c1);
            if (simd_values_direct(&vch)) {
                simd_values(&vch, vu, nb, (const float (*)[KVD_ATTN_BLOCK])st->s, g, o, d, dpf);
                continue;
            }
            simd_rows(&vch, vu, vt, nb, &st->vc, st->tile, rows, dpf);
            for (size_t h = 0; h < g; h++)
                simd_accumulate(o + h * d + c0, st->s[h], rows, nb, c1 - c0, dpf);
        }
        if (++st->since_fold == KVD_ATTN_FOLD_BLOCKS)
            simd_fold(st, o, g, d);
    }
}

#ifndef KVD_SIMD_HELPERS_ONLY /* attention/weights_*.c take the helpers above alone */
KVD_SIMD_ATTR void KVD_SIMD_NAME(kvd__attend_lse_scores_)(const kvd_kv_segment *seg, size_t n_seg,
                                                         const float *restrict q, size_t n_q,
                                                         float scale, float *restrict o,
                                                         float *restrict lse,
                                                         float *restrict scores,
                                                         size_t scores_stride)
{
    if (lse) /* overwritten below for every head that sees a token */
        for (size_t h = 0; h < n_q; h++)
            lse[h] = -INFINITY;
    if (n_seg == 0 || n_q == 0)
        return; /* no view names head_dim: nothing to write */
    const size_t d = seg[0].kv.head_dim;

    /* o doubles as the un-normalized accumulator: o[h] = sum_j p_j * v_j. */
    memset(o, 0, n_q * d * sizeof *o);
    size_t total = 0;
    for (size_t s = 0; s < n_seg; s++)
        total += seg[s].n;
    if (total == 0)
        return; /* a softmax over no tokens has no mass to spread: zeros */

    simd_state st;
    /* heads per pass: as many as od holds (all of a group at d <= 128) */
    st.od_on = d <= KVD_ATTN_ACC_DOUBLES;
    size_t per_pass = st.od_on ? KVD_ATTN_ACC_DOUBLES / d : KVD_ATTN_MAX_GROUP;
    if (per_pass > KVD_ATTN_MAX_GROUP)
        per_pass = KVD_ATTN_MAX_GROUP;
    for (size_t h0 = 0; h0 < n_q; h0 += per_pass) {
        const size_t g = n_q - h0 < per_pass ? n_q - h0 : per_pass;
        /* -FLT_MAX rather than -inf: the first block's rescale factor
         * exp(-FLT_MAX - max) is then an ordinary 0, no special case. */
        for (size_t h = 0; h < g; h++) {
            st.m[h] = -FLT_MAX;
            st.l[h] = 0.0;
            st.od_scale[h] = 1.0;
        }
        if (st.od_on)
            memset(st.od, 0, g * d * sizeof *st.od);
        st.since_fold = 0;
        /* One softmax over the segments in order, as if concatenated. */
        for (size_t s = 0, j0 = 0; s < n_seg; j0 += seg[s].n, s++)
            if (seg[s].n > 0)
                simd_segment(&seg[s].kv, seg[s].n, q + h0 * d, g, scale, o + h0 * d, &st,
                             scores ? scores + h0 * scores_stride + j0 : NULL, scores_stride);

        /* l >= 1: the key that set the final max contributed exp(0).
         * One rounding to f32 per output, from the f64 sums. */
        simd_fold(&st, o + h0 * d, g, d);
        for (size_t h = 0; h < g; h++) {
            float *restrict oh = o + (h0 + h) * d;
            if (st.od_on) {
                const double *restrict od = st.od + h * d, inv = 1.0 / st.l[h];
                for (size_t i = 0; i < d; i++)
                    oh[i] = (float)(od[i] * inv);
            } else {
                simd_scale(oh, (float)(1.0 / st.l[h]), d);
            }
        }
        if (lse) /* log of the denominator, the running max folded in */
            for (size_t h = 0; h < g; h++)
                lse[h0 + h] = (float)((double)st.m[h] + log(st.l[h]));
    }
}

KVD_SIMD_ATTR void KVD_SIMD_NAME(kvd__attend_lse_)(const kvd_kv_segment *seg, size_t n_seg,
                                                  const float *restrict q, size_t n_q, float scale,
                                                  float *restrict o, float *restrict lse)
{
    KVD_SIMD_NAME(kvd__attend_lse_scores_)(seg, n_seg, q, n_q, scale, o, lse, NULL, 0);
}

KVD_SIMD_ATTR void KVD_SIMD_NAME(kvd__attend_)(const kvd_kv_segment *seg, size_t n_seg,
                                              const float *restrict q, size_t n_q, float scale,
                                              float *restrict o)
{
    KVD_SIMD_NAME(kvd__attend_lse_scores_)(seg, n_seg, q, n_q, scale, o, NULL, NULL, 0);
}
#endif /* KVD_SIMD_HELPERS_ONLY */
