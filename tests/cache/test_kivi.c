/* tests/cache/test_kivi.c — KIVI streams (cache/stream.c): tokens enter an
 * f32 residual; kvd_stream_settle moves exactly the oldest whole key groups
 * into the quantized part once the residual holds residual + group tokens,
 * in order. Checked against a plain model after every operation: token
 * order (positions), the quantized bytes (exactly what the quantizer writes
 * for those f32 rows, and within the format's bound of them read back), the
 * f32 residual rows, page accounting (pool = quantized + residual pages),
 * kvd_stream_pages_needed (exactly the pages the step holds at its peak),
 * segments that concatenate to the right rows, and payload bytes. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attention/formats.h"
#include "cache/evict.h"
#include "cache/pool.h"
#include "cache/quant.h"
#include "cache/session.h"
#include "cache/stream.h"
#include "tests/support/check_main.h"

/* Check logs every passing assertion, so the per-step checks assert only on
 * failure. */
#define REQUIRE(cond, ...)                                                                 \
    do {                                                                                   \
        if (!(cond))                                                                       \
            ck_abort_msg(__VA_ARGS__);                                                     \
    } while (0)

static uint64_t mix(uint64_t x) /* splitmix64 finalizer */
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Key / value element i of position p: [-8, 8] with an outlier channel
 * (every 13th, x8), a third of the tokens nearly constant, so key blocks
 * see both tight and wide per-channel ranges. */
static float qkey(uint64_t p, size_t i)
{
    const uint64_t h = mix(p * 0x100000001b3ull + i);
    float x = (float)((int64_t)(h % 20001) - 10000) / 1250.0f;
    if (i % 13 == 0)
        x *= 8.0f;
    return p % 3 == 0 ? x * 0.01f + 3.0f : x;
}

static float qval(uint64_t p, size_t i)
{
    return qkey(p ^ 0x5555, i + 7) * 0.5f;
}

static size_t ceil_div(size_t a, size_t b)
{
    return (a + b - 1) / b;
}

/* Half a quantization step over [mn, mx] with `levels` codes, plus one f16
 * ulp of slack on the stored scale and minimum (cache/quant.h). */
static double step_bound(double mn, double mx, double amax, unsigned levels)
{
    return (mx - mn) / (2.0 * levels) * (1.0 + 0x1p-9) + amax * 0x1p-10 + 0x1p-24;
}

/* ---- a stream and its model --------------------------------------------------- */

typedef struct run {
    kvd_stream s;
    kvd_pool *pool;
    size_t d, page;
    kvd_stream_format f;
    size_t nq, nr; /* model: quantized and residual tokens */
} run;

static void run_init(run *r, kvd_dtype dt, uint32_t group, uint32_t residual, size_t d,
                     size_t page)
{
    memset(r, 0, sizeof *r);
    r->d = d;
    r->page = page;
    r->f = (kvd_stream_format){dt, group, residual};
    ck_assert_int_eq(kvd_pool_create(4096 * page, page, &r->pool), 0);
    ck_assert_int_eq(kvd_stream_init_format(&r->s, page, (uint32_t)d, &r->f), 0);
    ck_assert_ptr_nonnull(r->s.residual);
    ck_assert_uint_eq(r->s.slots_per_page % group, 0);
}

static void run_free(run *r)
{
    kvd_stream_release(&r->s, r->pool);
    ck_assert_ptr_null(r->s.residual);
    ck_assert_uint_eq(kvd_pool_pages_used(r->pool), 0);
    kvd_pool_destroy(r->pool);
}

static bool is_block_slot_ok(const kvd_kv_pages *kv)
{
    return kv->group > 0 && kv->slots_per_page % kv->group == 0;
}

/* Slot j's key in the view, dequantized (KIVI keys: token j % group of its
 * block), and its value, as an attention kernel addresses them. */
static void read_slot(const kvd_kv_pages *kv, size_t j, float *key, float *val)
{
    const unsigned char *page = kv->pages[j / kv->slots_per_page];
    const size_t i = j % kv->slots_per_page;
    const size_t k_row = kv->k_row_bytes ? kv->k_row_bytes : kv->head_dim * 4;
    const size_t v_row = kv->v_row_bytes ? kv->v_row_bytes : kv->head_dim * 4;
    if (kvd_row_is_block(kv->k_format)) {
        REQUIRE(is_block_slot_ok(kv), "blocks straddle pages");
        kvd_dequant_row(kv->k_format, page + kv->k_offset + i / kv->group * k_row,
                            i % kv->group, kv->head_dim, kv->group, key);
    } else {
        kvd_dequant_row(kv->k_format, page + kv->k_offset + i * k_row, 0, kv->head_dim,
                            kv->group, key);
    }
    kvd_dequant_row(kv->v_format, page + kv->v_offset + i * v_row, 0, kv->head_dim, kv->group,
                        val);
}

/* What slot j must read back as: the quantized part's bytes re-made from
 * the f32 rows of its key block (exact equality of bytes is checked
 * separately), the residual's rows as they were sent. */
typedef struct expect {
    unsigned char *block, *vrow;
    float *rows;   /* [group][d] keys of one block */
    size_t cached; /* first position of the block in `block`, SIZE_MAX: none */
} expect;

static void expected_slot(const run *r, expect *e, size_t j, float *key, float *val)
{
    const size_t d = r->d, G = r->f.group;
    if (j >= r->nq) {
        for (size_t i = 0; i < d; i++) {
            key[i] = qkey(j, i);
            val[i] = qval(j, i);
        }
        return;
    }
    const size_t b0 = j / G * G;
    const kvd_row_format kf = kvd_dtype_key_format(r->f.dtype), vf = kvd_dtype_value_format(r->f.dtype);
    if (e->cached != b0) {
        for (size_t t = 0; t < G; t++)
            for (size_t i = 0; i < d; i++)
                e->rows[t * d + i] = qkey(b0 + t, i);
        kvd_quant_key_block(kf, e->rows, d, G, d, r->f.group, e->block);
        e->cached = b0;
    }
    kvd_dequant_row(kf, e->block, j - b0, d, r->f.group, key);
    for (size_t i = 0; i < d; i++)
        e->rows[i] = qval(j, i);
    kvd_quant_row(vf, e->rows, d, r->f.group, e->vrow);
    kvd_dequant_row(vf, e->vrow, 0, d, r->f.group, val);
}

/* Everything the stream holds against the model. */
static void check_run(run *r)
{
    const kvd_stream *s = &r->s, *res = s->residual;
    const size_t d = r->d, G = r->f.group, n = r->nq + r->nr;
    const kvd_row_format kf = kvd_dtype_key_format(r->f.dtype), vf = kvd_dtype_value_format(r->f.dtype);
    const unsigned levels = r->f.dtype == KVD_DTYPE_KIVI4 ? 15 : 3;

    /* counts and pages */
    REQUIRE(s->n_tokens == n && s->appended == n, "n_tokens %zu, model %zu", s->n_tokens, n);
    REQUIRE(res->n_tokens == r->nr && res->appended == n, "residual %zu, model %zu",
            res->n_tokens, r->nr);
    REQUIRE(r->nq % G == 0, "partial key block");
    REQUIRE(s->n_pages == ceil_div(r->nq, s->slots_per_page), "quantized pages %zu for %zu",
            s->n_pages, r->nq);
    REQUIRE(res->n_pages == ceil_div(r->nr, res->slots_per_page), "residual pages %zu for %zu",
            res->n_pages, r->nr);
    REQUIRE(kvd_pool_pages_used(r->pool) == s->n_pages + res->n_pages, "pool %zu, stream %zu + %zu",
            kvd_pool_pages_used(r->pool), s->n_pages, res->n_pages);
    REQUIRE(kvd_stream_payload_bytes(s) ==
                r->nq / G * s->k_row_bytes + r->nq * (size_t)s->v_row_bytes + r->nr * 8 * d,
            "payload bytes");

    /* order: positions 0..n-1 in slot order across both parts */
    for (size_t j = 0; j < n; j++)
        REQUIRE(kvd_stream_meta(s, j)->position == (int64_t)j, "slot %zu holds position %lld", j,
                (long long)kvd_stream_meta(s, j)->position);

    /* bytes: each key block and value row is exactly the quantizer's output
     * for the f32 rows of its positions, and reads back within the bound */
    expect e = {malloc(s->k_row_bytes), malloc(s->v_row_bytes), malloc(G * d * sizeof(float)),
                SIZE_MAX};
    float *back = malloc(2 * d * sizeof *back), *x = malloc(d * sizeof *x);
    float *kback = malloc(G * d * sizeof *kback); /* [G][d] one block read back */
    REQUIRE(e.block && e.vrow && e.rows && back && x && kback, "out of memory");
    const kvd_kv_pages q = kvd_stream_view(s);
    for (size_t b0 = 0; b0 < r->nq; b0 += G) {
        for (size_t t = 0; t < G; t++)
            for (size_t i = 0; i < d; i++)
                e.rows[t * d + i] = qkey(b0 + t, i);
        kvd_quant_key_block(kf, e.rows, d, G, d, r->f.group, e.block);
        const unsigned char *got = q.pages[b0 / q.slots_per_page] + q.k_offset +
                                   b0 % q.slots_per_page / G * q.k_row_bytes;
        REQUIRE(memcmp(got, e.block, q.k_row_bytes) == 0, "key block at %zu differs", b0);
        for (size_t t = 0; t < G; t++)
            kvd_dequant_row(kf, got, t, d, r->f.group, kback + t * d);
        for (size_t c = 0; c < d; c++) {
            double mn = e.rows[c], mx = mn, amax = 0.0;
            for (size_t t = 0; t < G; t++) {
                const double kx = e.rows[t * d + c];
                mn = kx < mn ? kx : mn;
                mx = kx > mx ? kx : mx;
                amax = fabs(kx) > amax ? fabs(kx) : amax;
            }
            for (size_t t = 0; t < G; t++)
                REQUIRE(fabs((double)kback[t * d + c] - e.rows[t * d + c]) <=
                            step_bound(mn, mx, amax, levels),
                        "key %zu channel %zu: %.9g read back as %.9g", b0 + t, c,
                        (double)e.rows[t * d + c], (double)kback[t * d + c]);
        }
        for (size_t t = 0; t < G; t++) {
            const size_t j = b0 + t;
            for (size_t i = 0; i < d; i++)
                x[i] = qval(j, i);
            kvd_quant_row(vf, x, d, r->f.group, e.vrow);
            const unsigned char *vgot = q.pages[j / q.slots_per_page] + q.v_offset +
                                        j % q.slots_per_page * q.v_row_bytes;
            REQUIRE(memcmp(vgot, e.vrow, q.v_row_bytes) == 0, "value row %zu differs", j);
            kvd_dequant_row(vf, vgot, 0, d, r->f.group, back);
            for (size_t c = 0; c < d; c++) {
                /* value groups run over channels: c's group is [g0, g1) */
                const size_t g0 = c / G * G, g1 = g0 + G < d ? g0 + G : d;
                double mn = x[g0], mx = mn, amax = 0.0;
                for (size_t i = g0; i < g1; i++) {
                    mn = x[i] < mn ? x[i] : mn;
                    mx = x[i] > mx ? x[i] : mx;
                    amax = fabs((double)x[i]) > amax ? fabs((double)x[i]) : amax;
                }
                REQUIRE(fabs((double)back[c] - x[c]) <= step_bound(mn, mx, amax, levels),
                        "value %zu channel %zu: %.9g read back as %.9g", j, c, (double)x[c],
                        (double)back[c]);
            }
        }
    }
    /* the residual: the newest tokens exactly as sent */
    const kvd_kv_pages rv = kvd_stream_view(res);
    REQUIRE(rv.k_format == KVD_ROW_F32 && rv.v_format == KVD_ROW_F32, "residual not f32");
    for (size_t j = 0; j < r->nr; j++) {
        const float *k = kvd_kv_key(&rv, j), *v = kvd_kv_value(&rv, j);
        for (size_t i = 0; i < d; i++)
            REQUIRE(k[i] == qkey(r->nq + j, i) && v[i] == qval(r->nq + j, i),
                    "residual slot %zu (position %zu) element %zu", j, r->nq + j, i);
    }

    /* segments: quantized first, then the residual, concatenating to the
     * first n_visible tokens in order */
    const size_t vis_list[] = {0, 1, r->nq ? r->nq - 1 : 0, r->nq, r->nq + 1, n ? n - 1 : 0, n};
    float *want = malloc(2 * d * sizeof *want);
    REQUIRE(want != NULL, "out of memory");
    for (size_t vi = 0; vi < sizeof vis_list / sizeof *vis_list; vi++) {
        const size_t vis = vis_list[vi];
        if (vis > n)
            continue;
        kvd_kv_segment seg[2];
        REQUIRE(kvd_stream_segments(s, vis, seg) == 2, "KIVI: two segments");
        REQUIRE(seg[0].n == (vis < r->nq ? vis : r->nq) && seg[0].n + seg[1].n == vis,
                "segments %zu + %zu for %zu visible", seg[0].n, seg[1].n, vis);
        REQUIRE(seg[0].kv.k_format == kf && seg[0].kv.v_format == vf && seg[0].kv.group == G,
                "quantized segment format");
        REQUIRE(seg[1].kv.k_format == KVD_ROW_F32 && seg[1].kv.pages ==
                (const unsigned char *const *)res->pages, "residual segment");
        /* every row for all n; the last visible row for the shorter views */
        size_t j = 0;
        for (size_t sg = 0; sg < 2; sg++)
            for (size_t i = 0; i < seg[sg].n; i++, j++) {
                if (vis != n && j + 1 != vis)
                    continue;
                read_slot(&seg[sg].kv, i, back, back + d);
                expected_slot(r, &e, j, want, want + d);
                REQUIRE(memcmp(back, want, 2 * d * sizeof *back) == 0,
                        "segment %zu slot %zu (token %zu) reads wrong rows", sg, i, j);
            }
    }
    free(want);
    free(back);
    free(x);
    free(kback);
    free(e.block);
    free(e.vrow);
    free(e.rows);
}

/* One step: append m tokens (pages_needed exactly, as a step plans), then
 * settle. pages_needed must equal the model's peak growth: the residual
 * holding all its tokens plus the quantized pages the settle fills. */
static void step(run *r, size_t m, bool check)
{
    kvd_stream *s = &r->s;
    const size_t Rr = r->f.residual, G = r->f.group;
    /* the model's plan */
    size_t nr = r->nr + m, nq = r->nq;
    const size_t peak_res = ceil_div(nr, s->residual->slots_per_page);
    while (nr >= Rr + G) {
        nr -= G;
        nq += G;
    }
    const size_t want_need = (peak_res - s->residual->n_pages) +
                             (ceil_div(nq, s->slots_per_page) - s->n_pages);

    const size_t need = kvd_stream_pages_needed(s, m);
    REQUIRE(need == want_need, "pages_needed(%zu) = %zu, model %zu", m, need, want_need);
    void **pages = malloc((need ? need : 1) * sizeof *pages);
    float *k = malloc((m ? m : 1) * r->d * sizeof *k), *v = malloc((m ? m : 1) * r->d * sizeof *v);
    REQUIRE(pages && k && v, "out of memory");
    for (size_t t = 0; t < m; t++)
        for (size_t i = 0; i < r->d; i++) {
            k[t * r->d + i] = qkey(s->appended + t, i);
            v[t * r->d + i] = qval(s->appended + t, i);
        }
    REQUIRE(kvd_stream_reserve_table(s, need) == 0, "reserve_table");
    const size_t before = kvd_pool_pages_used(r->pool);
    REQUIRE(kvd_pool_alloc(r->pool, need, pages) == 0, "pool_alloc");
    kvd_stream_append(s, r->pool, m, k, v, r->d, pages);
    /* append took every page it was given: pool = both tables */
    REQUIRE(kvd_pool_pages_used(r->pool) == before + need &&
                kvd_pool_pages_used(r->pool) == s->n_pages + s->residual->n_pages,
            "after append: pool %zu, stream %zu + %zu", kvd_pool_pages_used(r->pool), s->n_pages,
            s->residual->n_pages);
    REQUIRE(s->residual->n_tokens == r->nr + m && s->n_tokens == r->nq + r->nr + m,
            "append goes to the residual");
    REQUIRE(kvd_stream_pages_needed(s, 0) == 0, "settle's pages already held");
    size_t used = 0;
    kvd_stream_settle(s, r->pool, NULL, 0, &used);
    REQUIRE(used == 0, "settle took spare pages");
    r->nq = nq;
    r->nr = nr;
    /* a second settle has nothing to move */
    kvd_stream_settle(s, r->pool, NULL, 0, &used);
    REQUIRE(used == 0 && s->residual->n_tokens == nr, "settle twice");
    free(pages);
    free(k);
    free(v);
    if (check)
        check_run(r);
    else
        REQUIRE(kvd_pool_pages_used(r->pool) == s->n_pages + s->residual->n_pages, "pool");
}

/* ---- tests ------------------------------------------------------------------------ */

/* Exactly the oldest group moves, and only once the residual holds
 * residual + group tokens. */
START_TEST(test_settle_threshold)
{
    run r;
    run_init(&r, KVD_DTYPE_KIVI4, 4, 8, 16, 4096);
    for (size_t t = 1; t <= 11; t++) {
        step(&r, 1, true);
        ck_assert_uint_eq(r.s.residual->n_tokens, t); /* below 8 + 4: nothing moves */
        ck_assert_uint_eq(r.s.n_pages, 0);
    }
    step(&r, 1, true); /* 12 = 8 + 4: positions 0..3 leave the residual */
    ck_assert_uint_eq(r.s.residual->n_tokens, 8);
    ck_assert_uint_eq(r.s.n_tokens, 12);
    ck_assert_uint_eq(kvd_stream_meta(r.s.residual, 0)->position, 4);
    ck_assert_uint_eq(r.s.n_pages, 1);
    for (size_t t = 0; t < 3; t++) {
        step(&r, 1, true);
        ck_assert_uint_eq(r.s.residual->n_tokens, 9 + t);
    }
    step(&r, 1, true);
    ck_assert_uint_eq(r.s.residual->n_tokens, 8);
    /* 3 * 4 + 1 at once: three more groups move in one settle */
    step(&r, 13, true);
    ck_assert_uint_eq(r.s.residual->n_tokens, 9);
    ck_assert_uint_eq(r.s.n_tokens - r.s.residual->n_tokens, 20);
    /* m = 0 needs nothing and moves nothing */
    ck_assert_uint_eq(kvd_stream_pages_needed(&r.s, 0), 0);
    step(&r, 0, true);
    /* spare pages offered to settle stay unused (append attached its own) */
    void *spare[2];
    ck_assert_int_eq(kvd_pool_alloc(r.pool, 2, spare), 0);
    size_t used = 0;
    kvd_stream_settle(&r.s, r.pool, spare, 2, &used);
    ck_assert_uint_eq(used, 0);
    kvd_pool_release(r.pool, spare, 2);
    check_run(&r);
    run_free(&r);
}
END_TEST

/* Many shapes, decode and bursts, checked after every step. */
START_TEST(test_kivi_shapes)
{
    static const struct {
        kvd_dtype dt;
        uint32_t group, residual, d;
        size_t page;
    } shapes[] = {
        {KVD_DTYPE_KIVI4, 8, 16, 20, 2048},   /* residual 2 groups; d % group != 0 */
        {KVD_DTYPE_KIVI2, 8, 0, 20, 2048},    /* residual 0 */
        {KVD_DTYPE_KIVI2, 4, 8, 64, 4096},
        {KVD_DTYPE_KIVI4, 1, 2, 5, 1024},     /* one-token blocks */
        {KVD_DTYPE_KIVI4, 16, 32, 30, 8192},  /* values: groups of 16 and 14 */
        {KVD_DTYPE_KIVI2, 32, 64, 128, 16384},/* realistic */
        {KVD_DTYPE_KIVI4, 32, 0, 128, 16384},
    };
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        run r;
        run_init(&r, shapes[si].dt, shapes[si].group, shapes[si].residual, shapes[si].d,
                 shapes[si].page);
        /* decode: one token a step, past several quantized and residual pages */
        const size_t decode = 3 * r.s.slots_per_page + 2 * r.s.residual->slots_per_page + 5;
        const bool big = shapes[si].d >= 128;
        for (size_t t = 0; t < decode; t++)
            step(&r, 1, !big || t % 16 == 0);
        check_run(&r);
        /* bursts, prefill-sized and empty */
        const size_t bursts[] = {0, 5, 17, 3 * shapes[si].group + 1, 0, 1,
                                 r.s.slots_per_page + 2, 2, 64, 1};
        for (size_t b = 0; b < sizeof bursts / sizeof *bursts; b++)
            step(&r, bursts[b], true);
        run_free(&r);
    }
}
END_TEST

/* A prefill first (the residual spans many pages, then settles at once),
 * then decode: the common case where pages_needed(s, 1) is 0 or 1 per part. */
START_TEST(test_prefill_then_decode)
{
    run r;
    run_init(&r, KVD_DTYPE_KIVI2, 8, 16, 24, 2048);
    step(&r, 500, true);
    ck_assert_uint_lt(r.s.residual->n_tokens, 16 + 8);
    ck_assert_uint_ge(r.s.residual->n_tokens, 16);
    for (size_t t = 0; t < 400; t++) {
        const size_t need = kvd_stream_pages_needed(&r.s, 1);
        ck_assert_uint_le(need, 2);
        step(&r, 1, t % 7 == 0);
    }
    check_run(&r);
    run_free(&r);
}
END_TEST

/* Sessions build KIVI streams from the config; they refuse eviction. */
START_TEST(test_kivi_session)
{
    kvd_session_config c;
    memset(&c, 0, sizeof c);
    c.layers = 2;
    c.heads = 4;
    c.kv_heads = 2;
    c.head_dim = 32;
    c.scale = 0.125f;
    c.cache.dtype = KVD_DTYPE_KIVI4;
    c.cache.group = 8;
    c.cache.residual = 16;
    kvd_pool *pool;
    ck_assert_int_eq(kvd_pool_create(256 * 4096, 4096, &pool), 0);
    kvd_session *s;
    ck_assert_int_eq(kvd_session_create(&c, 4096, &s), 0);
    for (size_t i = 0; i < s->n_streams; i++) {
        kvd_stream *st = &s->streams[i];
        ck_assert_ptr_nonnull(st->residual);
        ck_assert_uint_eq(st->fmt.group, 8);
        ck_assert_uint_eq(st->fmt.residual, 16);
        const size_t m = 40 + i, need = kvd_stream_pages_needed(st, m);
        void *pages[16];
        float *k = calloc(m * 32, sizeof *k);
        ck_assert_ptr_nonnull(k);
        ck_assert_uint_le(need, 16);
        ck_assert_int_eq(kvd_stream_reserve_table(st, need), 0);
        ck_assert_int_eq(kvd_pool_alloc(pool, need, pages), 0);
        kvd_stream_append(st, pool, m, k, k, 32, pages);
        size_t used = 0;
        kvd_stream_settle(st, pool, NULL, 0, &used);
        free(k);
    }
    ck_assert_uint_eq(kvd_session_tokens(s), 4 * 40 + 6);
    ck_assert_uint_eq(kvd_session_pages(s), kvd_pool_pages_used(pool)); /* residuals too */
    ck_assert_uint_gt(s->streams[0].residual->n_pages, 0);
    kvd_session *f; /* KIVI forks share residual pages too (tests/cache/test_fork.c) */
    ck_assert_int_eq(kvd_session_fork(s, pool, &f), 0);
    ck_assert_ptr_ne(f->streams[0].residual, s->streams[0].residual);
    ck_assert_uint_eq(f->streams[0].residual->n_shared, s->streams[0].residual->n_pages);
    ck_assert_uint_eq(kvd_session_pages(s), kvd_pool_pages_used(pool)); /* no page taken */
    kvd_session_destroy(f, pool);
    kvd_session_destroy(s, pool);
    ck_assert_uint_eq(kvd_pool_pages_used(pool), 0);

    /* KIVI sessions evict (tests/cache/test_kivi_evict.c) */
    c.cache.eviction = KVD_EVICT_RECENCY;
    c.cache.budget = 100;
    ck_assert_int_eq(kvd_session_create(&c, 4096, &s), 0);
    ck_assert_ptr_nonnull(s->streams[0].evict);
    kvd_session_destroy(s, pool);
    c.cache.eviction = KVD_EVICT_NONE;
    c.cache.group = 0;
    ck_assert_int_eq(kvd_session_create(&c, 4096, &s), -EINVAL);
    c.cache.group = 512; /* one key block of 512 tokens cannot fit a 4 KiB page */
    ck_assert_int_eq(kvd_session_create(&c, 4096, &s), -EINVAL);
    kvd_pool_destroy(pool);
}
END_TEST

static Suite *kivi_suite(void)
{
    Suite *s = suite_create("cache/kivi");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_settle_threshold);
    tcase_add_test(tc, test_kivi_shapes);
    tcase_add_test(tc, test_prefill_then_decode);
    tcase_add_test(tc, test_kivi_session);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(kivi_suite)
