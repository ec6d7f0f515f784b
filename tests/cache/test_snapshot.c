/* tests/cache/test_snapshot.c — cache/snapshot.c: for every dtype, policy and
 * tensor layout (and a shadow copy), a session stepped until it evicts is
 * snapshotted, restored into another pool (same and different page size),
 * and both are stepped with the same input: the outputs must be equal bit
 * for bit, and so must a second snapshot; subgen sessions (standard and
 * SubGen4Cache) the same, sketch and all. Every truncation and every single
 * flipped byte of a snapshot is refused with the pool untouched, and so is
 * each forged field of a sketch (its cluster cap too; version 3 restores
 * uncapped); foreign bytes, another version, an unknown
 * kind and a pool too small are refused cleanly. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cache/snapshot.h"
#include "cache/step.h"
#include "tests/support/check_main.h"

typedef struct lcg {
    uint64_t s;
} lcg;

static float rnd(lcg *r)
{
    r->s = r->s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((r->s >> 40) / (double)(1u << 24)) * 2.0f - 1.0f;
}

static float *rand_buf(lcg *r, size_t n)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    ck_assert_ptr_nonnull(x);
    for (size_t i = 0; i < n; i++)
        x[i] = rnd(r);
    return x;
}

/* Runs one step of m tokens and m queries on every layer; returns the
 * concatenated outputs (caller frees) of *n floats. */
static float *step(kvd_session *s, kvd_session *shadow, kvd_pool *pool, uint64_t seed, size_t m, size_t *n)
{
    const kvd_session_config *c = &s->config;
    lcg r = {seed};
    const size_t kv = m * c->kv_heads * c->head_dim, q = m * c->heads * c->head_dim;
    kvd_step_entry e[4];
    float *bufs[4][5] = {{0}};
    ck_assert_uint_le(c->layers, 4);
    for (uint32_t l = 0; l < c->layers; l++) {
        for (int b = 0; b < 5; b++)
            bufs[l][b] = rand_buf(&r, b == 4 ? q : kv);
        const bool t = c->attention == KVD_ATTN_TENSOR;
        e[l] = (kvd_step_entry){.layer = l, .m = m, .m_q = m, .k = bufs[l][0], .v = bufs[l][1],
                                .k2 = t ? bufs[l][2] : NULL, .v2 = t ? bufs[l][3] : NULL, .q = bufs[l][4],
                                .mask = KVD_MASK_CAUSAL};
    }
    kvd_step_output out;
    ck_assert_int_eq(kvd_step_run(s, shadow, pool, e, c->layers, &out), KVD_STEP_OK);
    float *o = malloc(c->layers * q * sizeof *o);
    for (uint32_t l = 0; l < c->layers; l++)
        memcpy(o + l * q, out.results[l].o, q * sizeof *o);
    *n = c->layers * q;
    kvd_step_output_free(&out);
    for (uint32_t l = 0; l < c->layers; l++)
        for (int b = 0; b < 5; b++)
            free(bufs[l][b]);
    return o;
}

static kvd_session_config base_config(void)
{
    kvd_session_config c = {.layers = 2, .heads = 4, .kv_heads = 2, .head_dim = 16, .scale = 0.25f,
                            .ttl_seconds = 600, .seed = 7};
    c.cache.group = 8;
    c.cache.residual = 8;
    return c;
}

static kvd_snapshot_meta meta_of(const char *id)
{
    kvd_snapshot_meta m = {.created_at = 1.5, .last_used_at = 2.5, .steps = 9, .shadow_steps = 3,
                           .shadow_last_rel = 0.25};
    strcpy(m.id, id);
    m.owner_digest[0] = 0xab;
    return m;
}

/* Makes a session, steps it `steps` times, snapshots, restores into a pool
 * of page size pb2, steps both once more and compares bytes. */
static void roundtrip(kvd_session_config c, size_t pb2, int steps, size_t m)
{
    kvd_pool *p1, *p2;
    ck_assert_int_eq(kvd_pool_create(4 << 20, 4096, &p1), 0);
    ck_assert_int_eq(kvd_pool_create(4 << 20, pb2, &p2), 0);
    kvd_session *a, *ash = NULL;
    ck_assert_int_eq(kvd_session_create(&c, 4096, &a), 0);
    if (c.shadow) {
        const kvd_session_config x = kvd_session_shadow_config(&c);
        ck_assert_int_eq(kvd_session_create(&x, 4096, &ash), 0);
    }
    size_t n;
    for (int i = 0; i < steps; i++)
        free(step(a, ash, p1, 100 + (uint64_t)i, m, &n));
    const kvd_snapshot_meta meta = meta_of("0123456789abcdef0123456789abcdef");
    void *bytes;
    size_t len;
    ck_assert_int_eq(kvd_session_snapshot(a, ash, &meta, 4096, &bytes, &len), 0);
    const size_t free_before = kvd_pool_pages_free(p2);
    kvd_session *b, *bsh;
    kvd_snapshot_meta got;
    ck_assert_int_eq(kvd_session_restore(bytes, len, p2, &got, &b, &bsh), 0);
    ck_assert_mem_eq(&got, &meta, sizeof got);
    ck_assert_uint_eq(kvd_session_tokens(b), kvd_session_tokens(a));
    ck_assert_uint_eq(kvd_session_appended(b), kvd_session_appended(a));
    ck_assert_uint_eq(kvd_session_evicted(b), kvd_session_evicted(a));
    ck_assert_uint_eq(kvd_pool_pages_free(p2), free_before - kvd_session_pages(b) - (bsh ? kvd_session_pages(bsh) : 0));
    ck_assert(c.shadow == (bsh != NULL));
    if (pb2 == 4096) { /* same page size: same pages and a byte-identical second snapshot */
        ck_assert_uint_eq(kvd_session_pages(b), kvd_session_pages(a));
        void *again;
        size_t len2;
        ck_assert_int_eq(kvd_session_snapshot(b, bsh, &meta, 4096, &again, &len2), 0);
        ck_assert_uint_eq(len2, len);
        ck_assert_mem_eq(again, bytes, len);
        free(again);
    }
    for (int i = 0; i < 2; i++) { /* the next steps, bit for bit */
        size_t na, nb;
        float *oa = step(a, ash, p1, 900 + (uint64_t)i, m, &na);
        float *ob = step(b, bsh, p2, 900 + (uint64_t)i, m, &nb);
        ck_assert_uint_eq(na, nb);
        ck_assert_mem_eq(oa, ob, na * sizeof *oa);
        free(oa);
        free(ob);
    }
    ck_assert_uint_eq(kvd_session_evicted(b), kvd_session_evicted(a));
    free(bytes);
    kvd_session_destroy(a, p1);
    kvd_session_destroy(ash, p1);
    kvd_session_destroy(b, p2);
    kvd_session_destroy(bsh, p2);
    ck_assert_uint_eq(kvd_pool_pages_free(p2), kvd_pool_pages_total(p2));
    kvd_pool_destroy(p1);
    kvd_pool_destroy(p2);
}

static const kvd_dtype dtypes[] = {KVD_DTYPE_F32, KVD_DTYPE_F16, KVD_DTYPE_BF16, KVD_DTYPE_INT8,
                                   KVD_DTYPE_INT4, KVD_DTYPE_KIVI2, KVD_DTYPE_KIVI4};
static const kvd_eviction policies[] = {KVD_EVICT_NONE, KVD_EVICT_RECENCY, KVD_EVICT_L2NORM, KVD_EVICT_H2O};

START_TEST(standard_every_dtype_and_policy)
{
    const kvd_dtype d = dtypes[_i % 7];
    const kvd_eviction e = policies[_i / 7];
    kvd_session_config c = base_config();
    c.cache.dtype = d;
    c.cache.eviction = e;
    if (e != KVD_EVICT_NONE) {
        c.cache.budget = 40;
        c.cache.sink = 2;
        c.cache.recent = e == KVD_EVICT_H2O ? 20 : 6;
    }
    c.shadow = _i % 3 == 0;
    roundtrip(c, 4096, 7, 9);  /* 63 tokens: pages, evictions, a partial KIVI block */
    roundtrip(c, 8192, 5, 11); /* re-paged into bigger pages */
}
END_TEST

START_TEST(tensor_layouts)
{
    kvd_session_config c = base_config();
    c.layers = 1;
    c.head_dim = 8;
    c.attention = KVD_ATTN_TENSOR;
    c.tensor_cache = _i & 1 ? KVD_TENSOR_CACHE_TWO : KVD_TENSOR_CACHE_FOUR;
    c.cache.dtype = _i & 2 ? KVD_DTYPE_F16 : KVD_DTYPE_F32;
    if (_i & 4) {
        c.cache.eviction = KVD_EVICT_L2NORM;
        c.cache.budget = 10;
        c.cache.sink = 1;
        c.cache.recent = 2;
    } else {
        c.window = 9;
    }
    c.shadow = _i % 3 == 0; /* an exact four-cache copy (also of a two-cache) */
    roundtrip(c, 4096, 4, 4);
    roundtrip(c, 2048, 4, 3);
}
END_TEST

/* SubGen sessions (standard, with and without a shadow copy, and
 * SubGen4Cache): the sketch (centres, counts, reservoirs, samples, F, the
 * random state, items) travels whole, so the next steps are bit-identical,
 * re-paged or not. delta 1.0 on keys in [-1, 1]^16 at scale 0.25 puts most
 * tokens in a few clusters whose reservoirs overflow (random draws). */
START_TEST(subgen_sessions)
{
    kvd_session_config c = base_config();
    c.cache.eviction = KVD_EVICT_SUBGEN;
    c.cache.group = c.cache.residual = 0;
    c.cache.delta = _i == 1 ? 0.7 : 1.0;
    c.cache.cluster_samples = _i == 1 ? 1 : 4;
    c.cache.value_samples = _i == 1 ? 1 : 16;
    c.cache.sink = _i == 1 ? 0 : 2;
    c.cache.recent = _i == 1 ? 0 : 6;
    c.shadow = _i == 0;
    if (_i >= 2) { /* SubGen4Cache */
        c.layers = 1;
        c.head_dim = 8;
        c.scale = 0.35f;
        c.attention = KVD_ATTN_TENSOR;
        c.tensor_cache = KVD_TENSOR_CACHE_FOUR;
        c.cache.sink = _i == 2 ? 1 : 0;
        c.cache.recent = _i == 2 ? 2 : 0;
    }
    roundtrip(c, 4096, 7, 9);
    roundtrip(c, 8192, 5, 11);
    roundtrip(c, 2048, 3, 4);
}
END_TEST

/* The config of a small subgen session: one layer and head, head_dim 4,
 * delta 0.5, t = 2, s = 3, sink 1, recent 1. */
static kvd_session_config small_subgen_config(void)
{
    kvd_session_config c = base_config();
    c.layers = 1;
    c.heads = c.kv_heads = 1;
    c.head_dim = 4;
    c.cache.group = c.cache.residual = 0;
    c.cache.eviction = KVD_EVICT_SUBGEN;
    c.cache.delta = 0.5;
    c.cache.cluster_samples = 2;
    c.cache.value_samples = 3;
    c.cache.sink = c.cache.recent = 1;
    return c;
}

/* A small subgen session (small_subgen_config) fed `m` tokens of one key
 * (one cluster) and varied values: its sketch is the snapshot's last
 * record, of a known layout. */
static void subgen_snapshot(void **bytes, size_t *len, size_t m, size_t *sketch_at)
{
    const kvd_session_config c = small_subgen_config();
    kvd_pool *p;
    ck_assert_int_eq(kvd_pool_create(1 << 20, 4096, &p), 0);
    kvd_session *a;
    ck_assert_int_eq(kvd_session_create(&c, 4096, &a), 0);
    float k[64], v[64], q[4] = {1, 0, 0, 0};
    ck_assert_uint_le(m, 16);
    for (size_t i = 0; i < 4 * m; i++) {
        k[i] = (float)(i % 4) * 0.5f;
        v[i] = 1.0f + (float)i * 0.25f;
    }
    const kvd_step_entry e = {.m = m, .m_q = 1, .k = k, .v = v, .q = q, .mask = KVD_MASK_BLOCK};
    kvd_step_output out;
    ck_assert_int_eq(kvd_step_run(a, NULL, p, &e, 1, &out), KVD_STEP_OK);
    kvd_step_output_free(&out);
    ck_assert_uint_eq(a->subgen[0].n_clusters, 1);
    ck_assert_uint_eq(a->subgen[0].items, m - 2);
    const kvd_snapshot_meta meta = meta_of("0123456789abcdef0123456789abcdef");
    ck_assert_int_eq(kvd_session_snapshot(a, NULL, &meta, 4096, bytes, len), 0);
    /* items, n_clusters, F, rng; centre; count; min(n, t) reservoir rows; s samples */
    const size_t sketch = 32 + 16 + 8 + (m - 2 < 2 ? m - 2 : 2) * 16 + 3 * 32;
    *sketch_at = *len - 4 - sketch;
    kvd_session_destroy(a, p);
    kvd_pool_destroy(p);
}

static void put64(uint8_t *at, uint64_t v)
{
    memcpy(at, &v, 8); /* little-endian host, as the format */
}

/* Each forged field of a subgen sketch (checksum recomputed) is refused
 * with EFORMAT and the pool untouched; the unforged bytes restore. */
START_TEST(subgen_sketch_forgeries_refused)
{
    void *bytes;
    size_t len, at;
    subgen_snapshot(&bytes, &len, 9, &at);
    uint8_t *b = bytes, *keep = malloc(len);
    memcpy(keep, b, len);
    kvd_pool *p;
    ck_assert_int_eq(kvd_pool_create(1 << 20, 4096, &p), 0);
    const size_t total = kvd_pool_pages_total(p);
    kvd_session *s, *sh;
    ck_assert_int_eq(kvd_session_restore(bytes, len, p, NULL, &s, &sh), 0);
    ck_assert_uint_eq(s->subgen[0].items, 7);
    kvd_session_destroy(s, p);
    const size_t items = at, clusters = at + 8, f = at + 16, centre = at + 32, count = centre + 16;
    const size_t res = count + 8, samples = res + 2 * 16;
    double dv;
    for (int forgery = 0; forgery < 11; forgery++) {
        memcpy(b, keep, len);
        switch (forgery) {
        case 0: put64(b + items, 8); break;                       /* counts sum to 7 */
        case 1: put64(b + clusters, 2); break;                    /* a cluster whose bytes are not there */
        case 2: put64(b + clusters, 0); break;                    /* items but no cluster */
        case 3: dv = -1; memcpy(b + f, &dv, 8); break;            /* F < 0 */
        case 4: dv = NAN; memcpy(b + f, &dv, 8); break;           /* F not finite */
        case 5: dv = 1e-3; memcpy(b + f, &dv, 8); break;          /* a sample's ||v||^2 above F */
        case 6: put64(b + count, 0); break;                       /* an empty cluster */
        case 7: put64(b + items, 8); put64(b + count, 8); break;  /* items != tokens evicted */
        case 8: memset(b + samples + 16, 0, 16); break;           /* a zero value picked with F > 0 */
        case 9: { const float nan = NAN; memcpy(b + centre, &nan, 4); } break;
        case 10: { const float inf = INFINITY; memcpy(b + res + 4, &inf, 4); } break;
        }
        const uint32_t crc = kvd_crc32c(0, b, len - 4);
        memcpy(b + len - 4, &crc, 4);
        const int rc = kvd_session_restore(bytes, len, p, NULL, &s, &sh);
        ck_assert_msg(rc == KVD_SNAPSHOT_EFORMAT, "forgery %d: %d", forgery, rc);
        ck_assert_ptr_null(s);
        ck_assert_uint_eq(kvd_pool_pages_free(p), total);
    }
    free(keep);
    free(bytes);
    kvd_pool_destroy(p);
}
END_TEST

/* A small h2o session's snapshot (or, with subgen, subgen_snapshot's) for
 * the corruption cases. */
static void small_snapshot_of(bool subgen, void **bytes, size_t *len)
{
    if (subgen) {
        size_t at;
        subgen_snapshot(bytes, len, 6, &at);
        return;
    }
    kvd_session_config c = base_config();
    c.layers = 1;
    c.head_dim = 4;
    c.cache.dtype = KVD_DTYPE_INT8;
    c.cache.eviction = KVD_EVICT_H2O;
    c.cache.budget = 6;
    c.cache.sink = 1;
    c.cache.recent = 2;
    c.shadow = true;
    kvd_pool *p;
    ck_assert_int_eq(kvd_pool_create(1 << 20, 4096, &p), 0);
    kvd_session *a, *sh;
    ck_assert_int_eq(kvd_session_create(&c, 4096, &a), 0);
    const kvd_session_config x = kvd_session_shadow_config(&c);
    ck_assert_int_eq(kvd_session_create(&x, 4096, &sh), 0);
    size_t n;
    for (int i = 0; i < 3; i++)
        free(step(a, sh, p, 5 + (uint64_t)i, 3, &n));
    const kvd_snapshot_meta meta = meta_of("abc-0123456789abcdef0123456789abcdef");
    ck_assert_int_eq(kvd_session_snapshot(a, sh, &meta, 4096, bytes, len), 0);
    kvd_session_destroy(a, p);
    kvd_session_destroy(sh, p);
    kvd_pool_destroy(p);
}

START_TEST(every_flip_and_truncation_refused)
{
    void *bytes;
    size_t len;
    small_snapshot_of(_i, &bytes, &len);
    kvd_pool *p;
    ck_assert_int_eq(kvd_pool_create(1 << 20, 4096, &p), 0);
    const size_t total = kvd_pool_pages_total(p);
    kvd_session *s, *sh;
    ck_assert_int_eq(kvd_session_restore(bytes, len, p, NULL, &s, &sh), 0);
    kvd_session_destroy(s, p);
    kvd_session_destroy(sh, p);
    uint8_t *b = bytes;
    for (size_t i = 0; i < len; i++) {
        for (int bit = 0; bit < 8; bit += 3) {
            b[i] ^= (uint8_t)(1u << bit);
            const int rc = kvd_session_restore(bytes, len, p, NULL, &s, &sh);
            ck_assert_msg(rc < 0, "flip of byte %zu bit %d accepted", i, bit);
            ck_assert_ptr_null(s);
            ck_assert_uint_eq(kvd_pool_pages_free(p), total);
            b[i] ^= (uint8_t)(1u << bit);
        }
    }
    for (size_t n = 0; n < len; n++) {
        const int rc = kvd_session_restore(bytes, n, p, NULL, &s, &sh);
        ck_assert_msg(rc == KVD_SNAPSHOT_ETRUNC, "truncated to %zu: %d", n, rc);
        ck_assert_uint_eq(kvd_pool_pages_free(p), total);
    }
    ck_assert_int_eq(kvd_session_restore("GIF89a..", 8, p, NULL, &s, &sh), KVD_SNAPSHOT_EMAGIC);
    /* Another version, with a valid checksum: refused for its version. */
    b[8] = KVD_SNAPSHOT_VERSION + 1;
    const uint32_t crc = kvd_crc32c(0, b, len - 4);
    memcpy(b + len - 4, &crc, 4);
    ck_assert_int_eq(kvd_session_restore(bytes, len, p, NULL, &s, &sh), KVD_SNAPSHOT_EVERSION);
    ck_assert_int_eq(kvd_snapshot_peek(bytes, len, NULL, NULL), KVD_SNAPSHOT_EVERSION);
    free(bytes);
    kvd_pool_destroy(p);
}
END_TEST

/* Corruption with a recomputed checksum (what a fuzzer makes): the structure
 * checks alone must refuse or accept without harm, and leave the pool whole. */
START_TEST(forged_checksums_are_safe)
{
    void *bytes;
    size_t len;
    small_snapshot_of(_i, &bytes, &len);
    kvd_pool *p;
    ck_assert_int_eq(kvd_pool_create(1 << 20, 4096, &p), 0);
    const size_t total = kvd_pool_pages_total(p);
    uint8_t *b = bytes;
    for (size_t i = KVD_SNAPSHOT_HEADER_BYTES; i < len - 4; i++) {
        static const uint8_t vals[] = {0x00, 0xff, 0x01, 0x80, 0x7f};
        for (size_t k = 0; k < sizeof vals; k++) {
            const uint8_t old = b[i];
            b[i] = vals[k];
            const uint32_t crc = kvd_crc32c(0, b, len - 4);
            memcpy(b + len - 4, &crc, 4);
            kvd_session *s, *sh;
            if (kvd_session_restore(bytes, len, p, NULL, &s, &sh) == 0) {
                kvd_session_destroy(s, p);
                kvd_session_destroy(sh, p);
            }
            ck_assert_uint_eq(kvd_pool_pages_free(p), total);
            b[i] = old;
        }
    }
    free(bytes);
    kvd_pool_destroy(p);
}
END_TEST

START_TEST(pool_too_small_and_subgen)
{
    kvd_session_config c = base_config();
    kvd_pool *p, *tiny;
    ck_assert_int_eq(kvd_pool_create(1 << 20, 4096, &p), 0);
    ck_assert_int_eq(kvd_pool_create(4096 * 3, 4096, &tiny), 0);
    kvd_session *a;
    ck_assert_int_eq(kvd_session_create(&c, 4096, &a), 0);
    size_t n;
    free(step(a, NULL, p, 1, 40, &n));
    const kvd_snapshot_meta meta = meta_of("0123456789abcdef0123456789abcdef");
    void *bytes;
    size_t len;
    ck_assert_int_eq(kvd_session_snapshot(a, NULL, &meta, 4096, &bytes, &len), 0);
    kvd_session *b, *bsh;
    ck_assert_int_eq(kvd_session_restore(bytes, len, tiny, NULL, &b, &bsh), KVD_SNAPSHOT_ENOSPC);
    ck_assert_uint_eq(kvd_pool_pages_free(tiny), 3);
    /* A page too small for one slot of head_dim 16 is named as such. */
    free(bytes);
    /* An eviction kind past subgen cannot be written; one claimed by a
     * snapshot cannot be read, nor subgen in a version 2 snapshot. */
    a->config.cache.eviction = (kvd_eviction)(KVD_EVICT_SUBGEN + 1);
    ck_assert_int_eq(kvd_session_snapshot(a, NULL, &meta, 4096, &bytes, &len), -ENOTSUP);
    a->config.cache.eviction = KVD_EVICT_NONE;
    ck_assert_int_eq(kvd_session_snapshot(a, NULL, &meta, 4096, &bytes, &len), 0);
    /* config's eviction field: header, id length byte, id, digest, 4 f64 + 2 u64 ... */
    const size_t ev = KVD_SNAPSHOT_HEADER_BYTES + 1 + 32 + 32 + 7 * 8 + 10 * 4;
    uint8_t *u = bytes;
    ck_assert_uint_eq(u[8], KVD_SNAPSHOT_VERSION);
    /* Without a sketch, versions 2 and 3 are the same bytes: version 2 still reads. */
    u[8] = 2;
    uint32_t crc = kvd_crc32c(0, u, len - 4);
    memcpy(u + len - 4, &crc, 4);
    ck_assert_int_eq(kvd_session_restore(bytes, len, p, NULL, &b, &bsh), 0);
    ck_assert_uint_eq(kvd_session_tokens(b), kvd_session_tokens(a));
    kvd_session_destroy(b, p);
    u[8] = KVD_SNAPSHOT_VERSION;
    ck_assert_uint_eq(u[ev], KVD_EVICT_NONE);
    u[ev] = KVD_EVICT_SUBGEN + 1;
    crc = kvd_crc32c(0, u, len - 4);
    memcpy(u + len - 4, &crc, 4);
    ck_assert_int_eq(kvd_session_restore(bytes, len, p, NULL, &b, &bsh), KVD_SNAPSHOT_EKIND);
    u[ev] = KVD_EVICT_SUBGEN;
    u[8] = 2; /* version 2 knew no sketch */
    crc = kvd_crc32c(0, u, len - 4);
    memcpy(u + len - 4, &crc, 4);
    ck_assert_int_eq(kvd_session_restore(bytes, len, p, NULL, &b, &bsh), KVD_SNAPSHOT_EKIND);
    free(bytes);
    kvd_session_destroy(a, p);
    ck_assert_uint_eq(kvd_pool_pages_free(p), kvd_pool_pages_total(p));
    kvd_pool_destroy(p);
    kvd_pool_destroy(tiny);
}
END_TEST

/* cache.max_clusters in the snapshot (version 4, subgen's config only): a
 * capped session at its cap restores with the cap; a forged cap below the
 * stored cluster count, or past KVD_SUBGEN_CLUSTERS_MAX, is EFORMAT with
 * nothing taken; the same bytes without the field, labelled version 3,
 * restore uncapped (0), as version 3's sketches grew. */
START_TEST(subgen_max_clusters_versions)
{
    kvd_session_config c = small_subgen_config();
    c.cache.max_clusters = 2;
    kvd_pool *p;
    ck_assert_int_eq(kvd_pool_create(1 << 20, 4096, &p), 0);
    const size_t total = kvd_pool_pages_total(p);
    kvd_session *a;
    ck_assert_int_eq(kvd_session_create(&c, 4096, &a), 0);
    float k[40] = {0}, v[40], q[4] = {1, 0, 0, 0};
    for (int i = 0; i < 10; i++) /* far apart: each would open a cluster */
        k[4 * i] = 10.0f * (float)i;
    for (int i = 0; i < 40; i++)
        v[i] = 1.0f + (float)i * 0.25f;
    const kvd_step_entry e = {.m = 10, .m_q = 1, .k = k, .v = v, .q = q, .mask = KVD_MASK_BLOCK};
    kvd_step_output out;
    ck_assert_int_eq(kvd_step_run(a, NULL, p, &e, 1, &out), KVD_STEP_OK);
    kvd_step_output_free(&out);
    ck_assert_uint_eq(a->subgen[0].n_clusters, 2);
    const kvd_snapshot_meta meta = meta_of("0123456789abcdef0123456789abcdef");
    void *bytes;
    size_t len;
    ck_assert_int_eq(kvd_session_snapshot(a, NULL, &meta, 4096, &bytes, &len), 0);
    kvd_session_destroy(a, p);
    uint8_t *b = bytes;
    /* config's max_clusters: the eviction field (as in pool_too_small_and_subgen)
     * + 54 (sink .. residual, delta, the samples, shadow, seed, ttl, rotate) */
    const size_t mc = KVD_SNAPSHOT_HEADER_BYTES + 1 + 32 + 32 + 7 * 8 + 10 * 4 + 54;
    uint32_t x;
    memcpy(&x, b + mc, 4);
    ck_assert_uint_eq(x, 2);
    kvd_session *s, *sh;
    ck_assert_int_eq(kvd_session_restore(bytes, len, p, NULL, &s, &sh), 0);
    ck_assert_uint_eq(s->config.cache.max_clusters, 2);
    ck_assert_uint_eq(s->subgen[0].max_clusters, 2);
    ck_assert_uint_eq(s->subgen[0].n_clusters, 2);
    kvd_session_destroy(s, p);
    /* a cap below the 2 clusters or past the limit: refused; none, or one the sketch is within: restored */
    static const struct { uint32_t cap; int rc; } forged[] = {
        {1, KVD_SNAPSHOT_EFORMAT}, {KVD_SUBGEN_CLUSTERS_MAX + 1, KVD_SNAPSHOT_EFORMAT}, {0, 0}, {3, 0}};
    for (size_t i = 0; i < sizeof forged / sizeof *forged; i++) {
        memcpy(b + mc, &forged[i].cap, 4);
        const uint32_t crc = kvd_crc32c(0, b, len - 4);
        memcpy(b + len - 4, &crc, 4);
        const int rc = kvd_session_restore(bytes, len, p, NULL, &s, &sh);
        ck_assert_msg(rc == forged[i].rc, "cap %u: %d", forged[i].cap, rc);
        if (rc == 0) {
            ck_assert_uint_eq(s->config.cache.max_clusters, forged[i].cap);
            kvd_session_destroy(s, p);
        } else {
            ck_assert_ptr_null(s);
        }
        ck_assert_uint_eq(kvd_pool_pages_free(p), total);
    }
    /* version 3: the field's 4 bytes gone, total length and checksum fixed */
    memcpy(b + mc, &(uint32_t){2}, 4);
    memmove(b + mc, b + mc + 4, len - mc - 4);
    len -= 4;
    b[8] = 3;
    const uint64_t total_len = len;
    memcpy(b + 16, &total_len, 8);
    uint32_t crc = kvd_crc32c(0, b, len - 4);
    memcpy(b + len - 4, &crc, 4);
    ck_assert_int_eq(kvd_session_restore(bytes, len, p, NULL, &s, &sh), 0);
    ck_assert_uint_eq(s->config.cache.max_clusters, 0);
    ck_assert_uint_eq(s->subgen[0].max_clusters, 0);
    ck_assert_uint_eq(s->subgen[0].n_clusters, 2);
    kvd_session_destroy(s, p);
    /* labelled version 4 again, the same bytes read one field short: refused */
    b[8] = 4;
    crc = kvd_crc32c(0, b, len - 4);
    memcpy(b + len - 4, &crc, 4);
    ck_assert_int_lt(kvd_session_restore(bytes, len, p, NULL, &s, &sh), 0);
    ck_assert_uint_eq(kvd_pool_pages_free(p), total);
    free(bytes);
    kvd_pool_destroy(p);
}
END_TEST

START_TEST(crc32c_known_answer)
{
    /* RFC 3720 B.4: 32 bytes of zeros -> 0x8a9136aa; "123456789" -> 0xe3069283. */
    uint8_t z[32] = {0};
    ck_assert_uint_eq(kvd_crc32c(0, z, sizeof z), 0x8a9136aau);
    ck_assert_uint_eq(kvd_crc32c(0, "123456789", 9), 0xe3069283u);
    ck_assert_uint_eq(kvd_crc32c(kvd_crc32c(0, "1234", 4), "56789", 5), 0xe3069283u);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("snapshot");
    TCase *tc = tcase_create("snapshot");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, standard_every_dtype_and_policy, 0, 28);
    tcase_add_loop_test(tc, tensor_layouts, 0, 8);
    tcase_add_loop_test(tc, subgen_sessions, 0, 4);
    tcase_add_test(tc, subgen_sketch_forgeries_refused);
    tcase_add_test(tc, subgen_max_clusters_versions);
    tcase_add_loop_test(tc, every_flip_and_truncation_refused, 0, 2);
    tcase_add_loop_test(tc, forged_checksums_are_safe, 0, 2);
    tcase_add_test(tc, pool_too_small_and_subgen);
    tcase_add_test(tc, crc32c_known_answer);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
