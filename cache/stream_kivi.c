/* cache/stream_kivi.c — the KIVI half of a stream (cache/stream.h): its
 * f32 residual of the newest tokens, the settling of whole key groups out of
 * it into quantized key blocks, and the row moves eviction makes inside a
 * KIVI stream (re-quantizing the key block a moved token lands in). The
 * layout, append and views of every dtype are cache/stream.c's. */
#include <assert.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "cache/quant.h"
#include "cache/stream.h"

static size_t div_up(size_t a, size_t b)
{
    return a / b + (a % b != 0);
}

/* KIVI: tokens in the quantized part once kvd_stream_settle has run on a
 * stream of nq quantized and nr residual tokens. Settle first completes a
 * partial last key block (left by eviction, cache/evict.c) with the oldest
 * G - nq % G residual tokens, then moves whole groups, always keeping at
 * least `residual` tokens in f32; so the quantized part ends at the largest
 * multiple of G that is <= nq + nr - residual, or stays at nq when that is
 * below nq (not enough residual tokens to complete the partial block).
 * Non-decreasing in nq and in nr, so evicting never raises it. */
size_t kvd__stream_kivi_settled(const kvd_stream *s, size_t nq, size_t nr)
{
    const size_t R = s->fmt.residual, G = s->fmt.group;
    if (nr <= R)
        return nq;
    const size_t whole = (nq + (nr - R)) / G * G;
    return whole > nq ? whole : nq;
}

/* Residual slot j's f32 key and value rows. */
static float *res_key(const kvd_stream *r, size_t j)
{
    return (float *)kvd__stream_key(r, j);
}

static float *res_value(const kvd_stream *r, size_t j)
{
    return (float *)kvd__stream_value(r, j);
}

/* KIVI: gives back the pages neither part needs: residual pages past its
 * tokens, and quantized pages past those the next settle fills
 * (settled_quantized: after a settle, the quantized tokens themselves).
 * Keeping the latter is what lets a step evict between append and settle
 * without the settle needing pages the plan did not count. */
/* Gives pages keep.. of st back, clearing their shared flags. */
static void release_tail(kvd_stream *st, kvd_pool *pool, size_t keep)
{
    if (st->n_pages <= keep)
        return;
    kvd_pool_release(pool, st->pages + keep, st->n_pages - keep);
    for (size_t i = keep; st->n_shared > 0 && i < st->n_pages; i++)
        if (st->shared[i]) {
            st->shared[i] = 0;
            st->n_shared--;
        }
    st->n_pages = keep;
}

void kvd__stream_kivi_trim(kvd_stream *s, kvd_pool *pool)
{
    kvd_stream *r = s->residual;
    const size_t nr = r->n_tokens, nq = s->n_tokens - nr;
    release_tail(r, pool, div_up(nr, r->slots_per_page));
    release_tail(s, pool, div_up(kvd__stream_kivi_settled(s, nq, nr), s->slots_per_page));
}

/* The quantized page the next settle writes first (the partial last key
 * block's, or the one the next block starts), if the stream holds it. */
static size_t settle_page(const kvd_stream *s)
{
    const size_t nq = s->n_tokens - s->residual->n_tokens;
    return (nq - nq % s->fmt.group) / s->slots_per_page;
}

size_t kvd__stream_kivi_unshare_bound(const kvd_stream *s)
{
    if (!kvd__stream_is_kivi(s) || s->residual == NULL)
        return 0;
    const size_t pg = settle_page(s);
    return s->residual->n_shared + (pg < s->n_pages && s->shared[pg]);
}

size_t kvd__stream_kivi_unshare(kvd_stream *s, kvd_pool *pool, void *const *spare, size_t n_spare)
{
    if (kvd__stream_kivi_unshare_bound(s) == 0)
        return 0;
    size_t used = kvd__stream_unshare_all(s->residual, pool, spare, n_spare);
    const size_t pg = settle_page(s);
    if (pg < s->n_pages && s->shared[pg]) {
        const int r = kvd__stream_unshare(s, pool, pg, used < n_spare ? spare[used] : NULL);
        assert(r >= 0 && "the caller planned a page for every shared one");
        used += r > 0;
    }
    return used;
}

void kvd_stream_settle(kvd_stream *s, kvd_pool *pool, void *const *spare, size_t n_spare,
                       size_t *spare_used)
{
    if (!kvd__stream_is_kivi(s) || s->residual == NULL)
        return;
    kvd_stream *r = s->residual;
    size_t nq = s->n_tokens - r->n_tokens, used = 0, moved = 0;
    const size_t target = kvd__stream_kivi_settled(s, nq, r->n_tokens);
    const size_t G = s->fmt.group, d = s->head_dim, spp = s->slots_per_page;
    const kvd_row_format kf = kvd_dtype_key_format(s->fmt.dtype);
    const kvd_row_format vf = kvd_dtype_value_format(s->fmt.dtype);
    float *gather = kvd__stream_kivi_gather(s); /* [G][d] */

    /* A partial last key block (eviction moved its last token away, see
     * kvd__stream_kivi_move_rows) is completed first with the oldest
     * residual tokens: its existing keys are read back through the
     * reference dequantizer, the new ones added in f32, and the whole block
     * quantized again (its older tokens take one more rounding step, as in
     * eviction). It already has its page. Only once the residual can give
     * all G - nq % G tokens and still keep `residual` (target > nq). */
    if (target > nq && nq % G != 0) {
        const size_t have = nq % G, fill = G - have, b0 = nq - have;
        unsigned char *block = kvd__stream_key(s, b0);
        for (size_t t = 0; t < have; t++)
            kvd_dequant_row(kf, block, t, d, s->fmt.group, gather + t * d);
        for (size_t t = 0; t < fill; t++)
            memcpy(gather + (have + t) * d, res_key(r, t), d * sizeof *gather);
        kvd_quant_key_block(kf, gather, d, G, d, s->fmt.group, block);
        for (size_t t = 0; t < fill; t++) {
            kvd_quant_row(vf, res_value(r, t), d, s->fmt.group, kvd__stream_value(s, nq + t));
            *kvd__stream_page_meta(s, nq + t) = *kvd__stream_page_meta(r, t);
        }
        nq += fill;
        moved = fill;
    }

    /* Then whole groups of the oldest residual tokens, one key block at a
     * time. nq is a multiple of G here and spp of G, so a block starts a
     * page or fits in the current one. */
    for (; nq < target; nq += G, moved += G) {
        if (nq / spp >= s->n_pages) { /* normally attached by append already */
            assert(used < n_spare && "kvd_stream_pages_needed undercounted");
            if (used >= n_spare || s->n_pages >= s->cap_pages)
                break; /* no page or table room: the rest stays in f32 */
            kvd__stream_attach_pages(s, spare + used, 1);
            used++;
        }
        const size_t first = moved; /* residual slot of the block's oldest token */
        for (size_t t = 0; t < G; t++)
            memcpy(gather + t * d, res_key(r, first + t), d * sizeof *gather);
        kvd_quant_key_block(kf, gather, d, G, d, s->fmt.group, kvd__stream_key(s, nq));
        for (size_t t = 0; t < G; t++) {
            kvd_quant_row(vf, res_value(r, first + t), d, s->fmt.group,
                          kvd__stream_value(s, nq + t));
            *kvd__stream_page_meta(s, nq + t) = *kvd__stream_page_meta(r, first + t);
        }
    }

    /* Shift the remaining residual rows down to slot 0 (oldest first).
     * Slot j takes slot j + moved; going up, every source is read before
     * anything overwrites it, and distinct slots never overlap. O(residual
     * * d) per settle, the same order as the quantization above. Unified
     * slot numbers (quantized first) do not change, so the eviction index
     * needs no update. */
    if (moved > 0) {
        const size_t left = r->n_tokens - moved;
        for (size_t j = 0; j < left; j++) {
            memcpy(res_key(r, j), res_key(r, j + moved), d * sizeof(float));
            memcpy(res_value(r, j), res_value(r, j + moved), d * sizeof(float));
            *kvd__stream_page_meta(r, j) = *kvd__stream_page_meta(r, j + moved);
        }
        r->n_tokens = left;
    }
    /* Emptied residual pages, and quantized pages a step's eviction left
     * unneeded, go back at once. */
    kvd__stream_kivi_trim(s, pool);
    *spare_used += used;
}

/* KIVI eviction: moving the last slot `from` into the hole `to`.
 *  - Both in the residual: an f32 row move inside the residual.
 *  - `to` in the quantized part: its value row is quantized again from the
 *    moved token's f32 value (per token, kvd_quant_row), or copied byte for
 *    byte when the moved token is itself quantized (a value row carries its
 *    own scales, so it means the same in any slot: no new error). Its key
 *    block b = to / group is quantized again: its tokens are read back
 *    (kvd_dequant_row) into the residual's gather buffer [group][d]
 *    (allocated with the stream: eviction never allocates), row to % group
 *    is overwritten with the moved token's key (in f32 from the residual,
 *    else read back from its own block first), and kvd_quant_key_block
 *    runs over the block's count. Re-quantizing compounds the error of the
 *    block's other tokens by at most one more rounding step: each read-back
 *    value is rounded again on the new per-channel grid, within half its
 *    step, i.e. within (new range of the channel over the block) /
 *    (2 (2^B - 1)) of what it read before (plus f16 rounding of the stored
 *    scale, which is rounded up so that the bound holds). A moved
 *    quantized token likewise takes one more step.
 *  - `from` in the quantized part (the residual is empty): it leaves its
 *    block, which becomes a partial LAST block (nq no longer a multiple of
 *    group). That block is not re-quantized: its scales still cover its
 *    remaining tokens, whose codes are unchanged; kernels read only the
 *    first n tokens of a segment, so a partial last block reads like a
 *    partly filled one, and kvd_stream_settle completes it later.
 * Metadata and index back-pointers are cache/evict.c's (unified slots). */
void kvd__stream_kivi_move_rows(kvd_stream *s, size_t from, size_t to)
{
    kvd_stream *r = s->residual;
    const size_t nq = s->n_tokens - r->n_tokens, d = s->head_dim, G = s->fmt.group;
    assert(from + 1 == s->n_tokens && to < from);
    if (to >= nq) {
        memcpy(res_key(r, to - nq), res_key(r, from - nq), d * sizeof(float));
        memcpy(res_value(r, to - nq), res_value(r, from - nq), d * sizeof(float));
        return;
    }
    const kvd_row_format kf = kvd_dtype_key_format(s->fmt.dtype);
    const kvd_row_format vf = kvd_dtype_value_format(s->fmt.dtype);
    float *scratch = kvd__stream_kivi_gather(s); /* [G][d] */
    const size_t b0 = to - to % G;
    /* Quantized tokens once `from` has left: the block's count excludes it
     * when it was the block's own last token. */
    const size_t nq_after = from >= nq ? nq : nq - 1;
    const size_t count = nq_after - b0 < G ? nq_after - b0 : G;
    unsigned char *block = kvd__stream_key(s, to);
    for (size_t t = 0; t < count; t++)
        kvd_dequant_row(kf, block, t, d, s->fmt.group, scratch + t * d);
    float *row = scratch + (to - b0) * d;
    if (from >= nq) {
        memcpy(row, res_key(r, from - nq), d * sizeof *row);
        kvd_quant_row(vf, res_value(r, from - nq), d, s->fmt.group, kvd__stream_value(s, to));
    } else {
        kvd_dequant_row(kf, kvd__stream_key(s, from), from % G, d, s->fmt.group, row);
        memcpy(kvd__stream_value(s, to), kvd__stream_value(s, from), s->v_row_bytes);
    }
    kvd_quant_key_block(kf, scratch, d, count, d, s->fmt.group, block);
}

void kvd__stream_kivi_drop_last(kvd_stream *s, kvd_pool *pool)
{
    kvd_stream *r = s->residual;
    if (r->n_tokens > 0)
        r->n_tokens--;
    s->n_tokens--;
    kvd__stream_kivi_trim(s, pool);
}
