/* tests/cache/test_kivi_evict.c — eviction on KIVI streams (cache/evict.c,
 * cache/stream.c: kvd__stream_kivi_move_rows, the settle of a partial last
 * key block). Long random runs drive a stream the way a step does (append,
 * h2o weights, evict to budget, settle) for every ranking policy, both KIVI
 * widths, two group sizes and residual 0 and 2 * group, and check after
 * every operation (each single eviction included):
 *  - the kept position set equals the policy's reference simulation (the
 *    same plain model as tests/cache/test_evict.c, tests/cache/policy_model.h);
 *  - the residual holds its tokens' f32 rows exactly; every quantized value
 *    row is byte for byte the quantizer's output for its token's f32 value
 *    (re-quantized from f32 or copied, never re-rounded);
 *  - every quantized key reads back within an error budget tracked per
 *    (position, channel): half a step of its block's stored per-channel
 *    scale when it was quantized from f32, plus one more half step (of the
 *    block's new scale) each time its block is re-quantized or it moves
 *    into another block, plus float slack (see key_step). That is the
 *    design's claim — each re-quantization adds at most one rounding step
 *    bounded by the new range / (2 (2^B - 1)) — checked cumulatively;
 *  - pages: pool = quantized + residual pages, the residual holds exactly
 *    ceil(tokens / spp), the quantized part exactly the pages its next
 *    settle fills, pages_needed(m) equals the re-derived bound with a
 *    partial last block, settle never takes a spare page and afterwards
 *    nothing is left to settle;
 *  - attention (reference and the dispatched kernel) over
 *    kvd_stream_segments equals a double-precision softmax over the
 *    dequantized kept rows. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/formats.h"
#include "cache/evict.h"
#include "cache/pool.h"
#include "cache/quant.h"
#include "cache/session.h"
#include "cache/stream.h"

#include "tests/cache/policy_model.h"
#include "tests/support/check_main.h"

#define D 16
#define PAGE 1024
#define MAX_POS 8192

/* Key element i of position p: a quarter of the tokens one of four constant
 * rows (equal norms: l2norm ties), some nearly constant, the rest in
 * [-8, 8] with an outlier channel (x4): tight and wide block ranges. */
static float key_of(uint64_t salt, uint64_t p, size_t i)
{
    const uint64_t h = mix(salt * 0x100000001b3ull ^ p);
    if (h % 4 == 0)
        return (float)(1 + (h >> 8) % 4) * 0.5f * (((h >> 16) >> i) & 1 ? -1.0f : 1.0f);
    float x = (float)((int64_t)(mix(h + i) % 20001) - 10000) / 1250.0f;
    if (i % 7 == 3)
        x *= 4.0f;
    return h % 4 == 1 ? x * 0.01f + 2.0f : x;
}

static float val_of(uint64_t salt, uint64_t p, size_t i)
{
    return key_of(salt ^ 0x5555, p, i + 5) * 0.5f;
}

static double norm_of(uint64_t salt, uint64_t p)
{
    double sq = 0.0;
    for (size_t i = 0; i < D; i++) {
        const float k = key_of(salt, p, i);
        sq += (double)k * k;
    }
    return sqrt(sq);
}

static float weight_of(uint64_t salt, uint64_t step, uint64_t p)
{
    return (float)(mix(mix(salt ^ step) + p) % 9) / 8.0f;
}

static size_t ceil_div(size_t a, size_t b)
{
    return (a + b - 1) / b;
}

/* ---- a KIVI stream under eviction and what the test knows of it ------------ */

typedef struct run {
    kvd_stream s;
    kvd_pool *pool;
    kvd_stream_format f;
    ref_model ref;
    unsigned levels;
    /* per position: error budget of each key channel (quantized keys) */
    double *allow; /* [MAX_POS][D] */
    /* snapshot before an operation, per position: slot (SIZE_MAX: absent),
     * whether quantized, and its key block's bytes */
    size_t *snap_slot;
    bool *snap_quant;
    unsigned char *snap_block; /* [MAX_POS][k_row_bytes] */
    float *q, *o, *o2;         /* attention check buffers */
} run;

static void run_init(run *r, kvd_dtype dt, uint32_t group, uint32_t residual,
                     kvd_eviction policy, uint32_t sink, uint32_t recent, uint64_t salt)
{
    memset(r, 0, sizeof *r);
    r->f = (kvd_stream_format){dt, group, residual};
    r->levels = dt == KVD_DTYPE_KIVI4 ? 15 : 3;
    ck_assert_int_eq(kvd_pool_create(512 * PAGE, PAGE, &r->pool), 0);
    ck_assert_int_eq(kvd_stream_init_format(&r->s, PAGE, D, &r->f), 0);
    ck_assert_uint_ge(r->s.slots_per_page, 2 * group); /* several blocks a page */
    const kvd_evict_config cfg = {.policy = policy, .sink = sink, .recent = recent};
    ck_assert_int_eq(kvd_stream_evict_init(&r->s, &cfg), 0);
    r->ref = (ref_model){.policy = policy, .sink = sink, .recent = recent, .salt = salt};
    r->allow = calloc((size_t)MAX_POS * D, sizeof *r->allow);
    r->snap_slot = malloc(MAX_POS * sizeof *r->snap_slot);
    r->snap_quant = calloc(MAX_POS, sizeof *r->snap_quant);
    r->snap_block = malloc((size_t)MAX_POS * r->s.k_row_bytes);
    r->q = malloc(2 * D * sizeof *r->q);
    r->o = malloc(2 * D * sizeof *r->o);
    r->o2 = malloc(2 * D * sizeof *r->o2);
    ck_assert(r->allow && r->snap_slot && r->snap_quant && r->snap_block && r->q && r->o && r->o2);
    for (size_t p = 0; p < MAX_POS; p++)
        r->snap_slot[p] = SIZE_MAX;
}

static void run_free(run *r)
{
    kvd_stream_release(&r->s, r->pool);
    ck_assert_uint_eq(kvd_pool_pages_used(r->pool), 0);
    kvd_pool_destroy(r->pool);
    free(r->ref.t);
    free(r->allow);
    free(r->snap_slot);
    free(r->snap_quant);
    free(r->snap_block);
    free(r->q);
    free(r->o);
    free(r->o2);
}

static size_t quantized(const kvd_stream *s)
{
    return s->n_tokens - s->residual->n_tokens;
}

/* The quantized tokens after the next settle (cache/stream.c's rule,
 * re-derived): complete a partial last block, then whole groups, keeping
 * `residual` tokens in f32. */
static size_t model_settled(const run *r, size_t nq, size_t nr)
{
    const size_t R = r->f.residual, G = r->f.group;
    size_t q = nq;
    if (nq % G != 0 && nr >= R + (G - nq % G)) {
        nr -= G - nq % G;
        q += G - nq % G;
    }
    if (q % G == 0)
        while (nr >= R + G) {
            nr -= G;
            q += G;
        }
    return q;
}

static const unsigned char *key_block(const kvd_stream *s, size_t j)
{
    const unsigned char *page = s->pages[j / s->slots_per_page];
    return page + s->k_offset + j % s->slots_per_page / s->fmt.group * s->k_row_bytes;
}

static const unsigned char *value_row(const kvd_stream *s, size_t j)
{
    const unsigned char *page = s->pages[j / s->slots_per_page];
    return page + s->v_offset + j % s->slots_per_page * s->v_row_bytes;
}

/* One rounding step's worst error on channel c of a key block: half its
 * stored scale (the quantizer rounds the f16 scale up and minimum down so
 * the grid covers the block's range), plus float rounding of x = z + s q and
 * of (x - z) / s, a few ulps of the magnitudes involved. A channel constant
 * over the block (always so in a block of one token) is stored as its f16
 * value with scale 0 (cache/quant.c): half an f16 ulp instead. */
static double key_step(const unsigned char *block, size_t c, unsigned levels)
{
    const double s = kvd_f16_to_f32((uint16_t)(block[4 * c] | block[4 * c + 1] << 8));
    const double z = kvd_f16_to_f32((uint16_t)(block[4 * c + 2] | block[4 * c + 3] << 8));
    const double f16_half_ulp = s == 0.0 ? fabs(z) * 0x1p-11 + 0x1p-25 : 0.0;
    return s / 2.0 + f16_half_ulp + (fabs(z) + s * levels) * 0x1p-20 + 0x1p-30;
}

static void snapshot(run *r)
{
    const kvd_stream *s = &r->s;
    const size_t nq = quantized(s);
    for (size_t j = 0; j < s->n_tokens; j++) {
        const size_t p = (size_t)kvd_stream_meta(s, j)->position;
        r->snap_slot[p] = j;
        r->snap_quant[p] = j < nq;
        if (j < nq)
            memcpy(r->snap_block + p * s->k_row_bytes, key_block(s, j), s->k_row_bytes);
    }
}

/* Reads slot i of a segment's view back in f32 (key and value). */
static void read_slot(const kvd_kv_pages *kv, size_t i, float *key, float *val)
{
    const unsigned char *page = kv->pages[i / kv->slots_per_page];
    const size_t in = i % kv->slots_per_page;
    if (kvd_row_is_block(kv->k_format))
        kvd_dequant_row(kv->k_format, page + kv->k_offset + in / kv->group * kv->k_row_bytes,
                            in % kv->group, kv->head_dim, kv->group, key);
    else
        kvd_dequant_row(kv->k_format, page + kv->k_offset + in * (kv->k_row_bytes ? kv->k_row_bytes : kv->head_dim * 4), 0,
                            kv->head_dim, kv->group, key);
    kvd_dequant_row(kv->v_format, page + kv->v_offset + in * (kv->v_row_bytes ? kv->v_row_bytes : kv->head_dim * 4), 0,
                        kv->head_dim, kv->group, val);
}

/* Attention over the stream's segments against a double softmax over the
 * rows read back. */
static void check_attention(run *r, uint64_t step)
{
    const kvd_stream *s = &r->s;
    const size_t n = s->n_tokens;
    if (n == 0)
        return;
    for (size_t i = 0; i < 2 * D; i++)
        r->q[i] = (float)((int64_t)(mix(step * 131 + i) % 2001) - 1000) / 4000.0f;
    kvd_kv_segment seg[2];
    const size_t n_seg = kvd_stream_segments(s, n, seg);
    REQUIRE(n_seg == 2 && seg[0].n == quantized(s) && seg[1].n == s->residual->n_tokens,
            "segments");
    const float scale = 0.25f;
    kvd_attend_ref(seg, n_seg, r->q, 2, scale, r->o);
    kvd_attention_kernels_get()->attend(seg, n_seg, r->q, 2, scale, r->o2);
    double *sc = malloc(2 * n * sizeof *sc);
    float *rows = malloc(2 * n * D * sizeof *rows); /* [n][key D | value D] */
    REQUIRE(sc && rows, "out of memory");
    size_t j = 0;
    for (size_t g = 0; g < n_seg; g++)
        for (size_t i = 0; i < seg[g].n; i++, j++)
            read_slot(&seg[g].kv, i, rows + j * 2 * D, rows + j * 2 * D + D);
    for (size_t h = 0; h < 2; h++) {
        double mx = -INFINITY, sum = 0.0;
        for (j = 0; j < n; j++) {
            double dot = 0.0;
            for (size_t c = 0; c < D; c++)
                dot += (double)r->q[h * D + c] * rows[j * 2 * D + c];
            sc[j] = scale * dot;
            mx = sc[j] > mx ? sc[j] : mx;
        }
        for (j = 0; j < n; j++) {
            sc[j] = exp(sc[j] - mx);
            sum += sc[j];
        }
        for (size_t c = 0; c < D; c++) {
            double want = 0.0;
            for (j = 0; j < n; j++)
                want += sc[j] / sum * rows[j * 2 * D + D + c];
            REQUIRE(fabs(r->o[h * D + c] - want) <= 1e-4 * (1.0 + fabs(want)),
                    "attend_ref head %zu ch %zu: %.9g, want %.9g", h, c, (double)r->o[h * D + c],
                    want);
            REQUIRE(fabs(r->o2[h * D + c] - want) <= 1e-4 * (1.0 + fabs(want)),
                    "%s kernel head %zu ch %zu: %.9g, want %.9g", kvd_attention_kernels_get()->name,
                    h, c, (double)r->o2[h * D + c], want);
        }
    }
    free(sc);
    free(rows);
}

static size_t partial_checks; /* coverage: checks that saw a partial last block */

/* Everything after one operation; `settled`: right after a settle. */
static void check(run *r, bool settled)
{
    kvd_stream *s = &r->s;
    const kvd_stream *res = s->residual;
    const ref_model *m = &r->ref;
    const size_t n = s->n_tokens, nr = res->n_tokens, nq = n - nr, G = r->f.group;
    const kvd_row_format kf = kvd_dtype_key_format(r->f.dtype), vf = kvd_dtype_value_format(r->f.dtype);
    partial_checks += nq % G != 0;

    /* counts and pages */
    REQUIRE(n == m->n && s->appended == m->appended && s->evicted == m->evicted,
            "n %zu / %zu, evicted %llu / %llu", n, m->n, (unsigned long long)s->evicted,
            (unsigned long long)m->evicted);
    REQUIRE(kvd_stream_evictable(s) == ref_evictable(m), "evictable %zu, model %zu",
            kvd_stream_evictable(s), ref_evictable(m));
    REQUIRE(kvd_pool_pages_used(r->pool) == s->n_pages + res->n_pages, "pool %zu, stream %zu + %zu",
            kvd_pool_pages_used(r->pool), s->n_pages, res->n_pages);
    REQUIRE(res->n_pages == ceil_div(nr, res->slots_per_page), "residual pages %zu for %zu",
            res->n_pages, nr);
    const size_t next = model_settled(r, nq, nr);
    REQUIRE(s->n_pages == ceil_div(next, s->slots_per_page), "quantized pages %zu for %zu (%zu)",
            s->n_pages, nq, next);
    REQUIRE(!settled || next == nq, "settle left %zu to move", next - nq);
    REQUIRE(kvd_stream_pages_needed(s, 0) == 0, "pages_needed(0) after append");
    REQUIRE(kvd_stream_payload_bytes(s) == ceil_div(nq, G) * s->k_row_bytes +
                                               nq * (size_t)s->v_row_bytes + nr * 8 * D,
            "payload bytes");

    /* the kept set */
    int64_t *got = calloc(m->appended ? m->appended : 1, sizeof *got);
    REQUIRE(got != NULL, "out of memory");
    for (size_t j = 0; j < n; j++) {
        const int64_t p = kvd_stream_meta(s, j)->position;
        REQUIRE(p >= 0 && (uint64_t)p < m->appended && !got[p], "slot %zu: position %lld", j,
                (long long)p);
        got[p] = 1;
    }
    for (size_t i = 0; i < m->n; i++)
        REQUIRE(got[m->t[i].position], "position %lld kept by the model, not the stream",
                (long long)m->t[i].position);
    free(got);

    /* rows */
    float key[D], x[D];
    unsigned char *vrow = malloc(s->v_row_bytes);
    REQUIRE(vrow != NULL, "out of memory");
    for (size_t j = 0; j < n; j++) {
        const size_t p = (size_t)kvd_stream_meta(s, j)->position;
        if (j >= nq) { /* the residual: exact */
            const kvd_kv_pages rv = kvd_stream_view(res);
            const float *k = kvd_kv_key(&rv, j - nq), *v = kvd_kv_value(&rv, j - nq);
            for (size_t c = 0; c < D; c++)
                REQUIRE(k[c] == key_of(m->salt, p, c) && v[c] == val_of(m->salt, p, c),
                        "residual slot %zu (position %zu) channel %zu", j - nq, p, c);
            continue;
        }
        for (size_t c = 0; c < D; c++)
            x[c] = val_of(m->salt, p, c);
        kvd_quant_row(vf, x, D, G, vrow);
        REQUIRE(memcmp(vrow, value_row(s, j), s->v_row_bytes) == 0,
                "value row of slot %zu (position %zu) is not its quantized value", j, p);
        const unsigned char *block = key_block(s, j);
        kvd_dequant_row(kf, block, j % G, D, G, key);
        /* the budget: fresh from f32, unchanged, or one more step */
        const bool fresh = r->snap_slot[p] == SIZE_MAX || !r->snap_quant[p];
        const bool same = !fresh && r->snap_slot[p] == j &&
                          memcmp(r->snap_block + p * s->k_row_bytes, block, s->k_row_bytes) == 0;
        for (size_t c = 0; c < D; c++) {
            double *a = &r->allow[p * D + c];
            if (fresh)
                *a = key_step(block, c, r->levels);
            else if (!same)
                *a += key_step(block, c, r->levels);
            const double err = fabs((double)key[c] - key_of(m->salt, p, c));
            REQUIRE(err <= *a,
                    "key of position %zu (slot %zu, was %zu, %s) channel %zu: error %.9g > %.9g "
                    "(nq %zu, nr %zu, group %zu, %s)",
                    p, j, r->snap_slot[p], fresh ? "fresh" : same ? "same" : "re-quantized", c,
                    err, *a, nq, nr, G, settled ? "settled" : "");
        }
    }
    free(vrow);
    snapshot(r);
}

/* Appends m tokens the way a step does, checking pages_needed against the
 * bound re-derived here (residual peak + quantized pages the settle fills,
 * a partial last block included). */
static void do_append(run *r, size_t m)
{
    kvd_stream *s = &r->s;
    const size_t nr = s->residual->n_tokens, nq = quantized(s);
    const size_t want =
        (ceil_div(nr + m, s->residual->slots_per_page) > s->residual->n_pages
             ? ceil_div(nr + m, s->residual->slots_per_page) - s->residual->n_pages
             : 0) +
        (ceil_div(model_settled(r, nq, nr + m), s->slots_per_page) - s->n_pages);
    const size_t need = kvd_stream_pages_needed(s, m);
    REQUIRE(need == want, "pages_needed(%zu) = %zu, model %zu", m, need, want);
    void **pages = malloc((need ? need : 1) * sizeof *pages);
    float *k = malloc((m ? m : 1) * D * sizeof *k), *v = malloc((m ? m : 1) * D * sizeof *v);
    REQUIRE(pages && k && v, "out of memory");
    for (size_t t = 0; t < m; t++)
        for (size_t i = 0; i < D; i++) {
            k[t * D + i] = key_of(r->ref.salt, s->appended + t, i);
            v[t * D + i] = val_of(r->ref.salt, s->appended + t, i);
        }
    REQUIRE(kvd_stream_reserve_table(s, need) == 0, "reserve_table");
    REQUIRE(kvd_stream_evict_reserve(s, m) == 0, "evict_reserve");
    REQUIRE(kvd_pool_alloc(r->pool, need, pages) == 0, "pool_alloc");
    kvd_stream_append(s, r->pool, m, k, v, D, pages);
    free(pages);
    free(k);
    free(v);
    ref_append(&r->ref, m);
}

/* One step: append, (h2o) weights, evict to budget one token at a time
 * (the same victims as one call: the heap pops one at a time either way),
 * settle; checks after each. A step evicts at most the tokens it appended,
 * which all sit in the residual, so the last slot is never quantized then;
 * `budget` below the tokens held before the step (as memory pressure's
 * reclaim does, cache/reclaim.c: down to the protected tokens) empties the
 * residual and then moves quantized tokens, leaving partial last blocks. */
static void step(run *r, size_t m, size_t budget, uint64_t step_no, bool attention)
{
    kvd_stream *s = &r->s;
    do_append(r, m);
    check(r, false);
    if (r->ref.policy == KVD_EVICT_H2O) {
        float *w = malloc((s->n_tokens ? s->n_tokens : 1) * sizeof *w);
        REQUIRE(w != NULL, "out of memory");
        for (size_t j = 0; j < s->n_tokens; j++)
            w[j] = weight_of(r->ref.salt, step_no, (uint64_t)kvd_stream_meta(s, j)->position);
        kvd_stream_add_weights(s, w, s->n_tokens);
        free(w);
        ref_add_weights(&r->ref, step_no);
    }
    while (s->n_tokens > budget) {
        REQUIRE(kvd_stream_evict_pages_bound(s, 1) == 0, "KIVI streams are never shared");
        size_t used = 0;
        const size_t target = s->n_tokens - 1;
        const size_t got = kvd_stream_evict(s, r->pool, target, NULL, 0, &used);
        const size_t want = ref_evict(&r->ref, target);
        REQUIRE(got == want && used == 0, "evicted %zu, model %zu, spare %zu", got, want, used);
        check(r, false);
        if (got == 0)
            break;
    }
    size_t used = 0;
    kvd_stream_settle(s, r->pool, NULL, 0, &used);
    REQUIRE(used == 0, "settle took %zu spare pages", used);
    check(r, true);
    if (attention)
        check_attention(r, step_no);
}

static const kvd_eviction policies[] = {KVD_EVICT_RECENCY, KVD_EVICT_L2NORM, KVD_EVICT_H2O};

/* Long random runs over every combination; partial last blocks come from
 * evictions while the residual is empty (residual 0: often). */
START_TEST(test_kivi_evict_random_runs)
{
    static const struct {
        uint32_t sink, recent;
        size_t budget;
    } shapes[] = {{2, 4, 21}, {0, 0, 13}, {3, 9, 37}, {0, 1, 3}};
    static const kvd_dtype dtypes[] = {KVD_DTYPE_KIVI4, KVD_DTYPE_KIVI2};
    static const uint32_t groups[] = {4, 8};
    size_t partial_seen = 0, moves_into_blocks = 0;
    for (size_t di = 0; di < 2; di++)
        for (size_t gi = 0; gi < 2; gi++)
            for (uint32_t rmul = 0; rmul <= 2; rmul += 2)
                for (size_t pi = 0; pi < 3; pi++)
                    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
                        run r;
                        const uint32_t G = groups[gi];
                        const uint64_t salt = 1 + di * 1000 + gi * 100 + rmul * 10 + pi * 3 + si;
                        run_init(&r, dtypes[di], G, rmul * G, policies[pi], shapes[si].sink,
                                 shapes[si].recent, salt);
                        rng_state = salt * 7919;
                        for (uint64_t t = 0; t < 400; t++) {
                            const size_t before_evicted = r.s.evicted;
                            /* now and then a shrink below the budget */
                            const size_t budget = rng_next() % 8 == 0
                                                      ? rng_next() % (shapes[si].budget + 1)
                                                      : shapes[si].budget;
                            step(&r, rng_next() % 6, budget, t, t % 7 == 0);
                            partial_seen += quantized(&r.s) % G != 0;
                            moves_into_blocks += r.s.evicted != before_evicted;
                        }
                        if (shapes[si].budget > 10)
                            ck_assert_uint_gt(r.s.evicted, 300);
                        run_free(&r);
                    }
    /* the runs did exercise what they are for */
    ck_assert_uint_gt(partial_seen, 100);     /* partial last blocks after settle */
    ck_assert_uint_gt(partial_checks, 1000);  /* ... and between operations */
    ck_assert_uint_gt(moves_into_blocks, 1000);
}
END_TEST

/* evict_init on a populated KIVI stream (quantized part and residual):
 * l2norm ranks by the norms of the keys as stored, read back from blocks
 * and residual rows; eviction then runs like on a fresh index. */
START_TEST(test_kivi_evict_init_populated)
{
    run r;
    run_init(&r, KVD_DTYPE_KIVI4, 4, 8, KVD_EVICT_NONE, 0, 0, 77);
    ck_assert_ptr_null(r.s.evict);
    for (size_t t = 0; t < 6; t++) {
        do_append(&r, 5);
        size_t used = 0;
        kvd_stream_settle(&r.s, r.pool, NULL, 0, &used);
    }
    ck_assert_uint_gt(quantized(&r.s), 0);
    ck_assert_uint_gt(r.s.residual->n_tokens, 0);
    const kvd_evict_config cfg = {.policy = KVD_EVICT_L2NORM, .sink = 2, .recent = 3};
    ck_assert_int_eq(kvd_stream_evict_init(&r.s, &cfg), 0);
    ck_assert_uint_eq(kvd_stream_evictable(&r.s), 30 - 5);
    size_t used = 0;
    ck_assert_uint_eq(kvd_stream_evict(&r.s, r.pool, 10, NULL, 0, &used), 20);
    ck_assert_uint_eq(r.s.n_tokens, 10);
    /* the protected ones survive */
    bool seen[30] = {false};
    for (size_t j = 0; j < r.s.n_tokens; j++)
        seen[kvd_stream_meta(&r.s, j)->position] = true;
    ck_assert(seen[0] && seen[1] && seen[27] && seen[28] && seen[29]);
    ck_assert_uint_eq(kvd_pool_pages_used(r.pool), r.s.n_pages + r.s.residual->n_pages);
    kvd_stream_settle(&r.s, r.pool, NULL, 0, &used);
    ck_assert_uint_eq(used, 0);
    ck_assert_uint_eq(kvd_pool_pages_used(r.pool), r.s.n_pages + r.s.residual->n_pages);
    kvd_stream fork;
    ck_assert_int_eq(kvd_stream_fork(&r.s, &fork, r.pool), 0); /* forks share, residual too */
    ck_assert_uint_eq(fork.n_shared + fork.residual->n_shared, r.s.n_pages + r.s.residual->n_pages);
    kvd_stream_release(&fork, r.pool);
    run_free(&r);
}
END_TEST

static Suite *kivi_evict_suite(void)
{
    Suite *s = suite_create("cache/kivi_evict");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_kivi_evict_random_runs);
    tcase_add_test(tc, test_kivi_evict_init_populated);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(kivi_evict_suite)
