/* cache/snapshot.c — a session as bytes and back (cache/snapshot.h; the
 * layout is the README's "Snapshot format"): a 64-byte header, metadata,
 * config, then every stream's counters, its rows as stored (f32, f16, bf16,
 * int8, int4 rows; KIVI key blocks, value rows and f32 residual), positions
 * and eviction index, and a subgen stream's sketch(es); a CRC-32C trailer. Everything little-endian, written
 * field by field (no struct is dumped), so the format is the same whatever
 * the compiler's padding. Restoring validates every count against the bytes
 * left before it allocates, and every index entry before the index is used.
 * Over 600 lines on purpose: writer and reader of one format side by side,
 * so that a field added to one is seen to be missing from the other. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cache/evict.h"
#include "cache/policy.h"
#include "cache/snapshot.h"
#include "cache/subgen.h"

#define F_SHADOW 1u

/* ---- CRC-32C, slice-by-8 (software, ~1 byte per cycle over 8 tables) ----
 * CRC-32C rather than a 64-bit FNV: it detects every burst of up to 32 bits
 * (so any single changed byte) by construction, has Hamming distance >= 4 on
 * messages below ~16 KiB, and has a hardware instruction on x86 (SSE4.2) and
 * ARMv8 that a later build can use without changing the format. */
static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

uint32_t kvd_crc32c(uint32_t crc, const void *data, size_t n)
{
    pthread_once(&crc_once, crc_init);
    const uint8_t *p = data;
    crc = ~crc;
    while (n >= 8) {
        const uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^ crc_table[5][(lo >> 16) & 0xff] ^
              crc_table[4][lo >> 24] ^ crc_table[3][p[4]] ^ crc_table[2][p[5]] ^ crc_table[1][p[6]] ^
              crc_table[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
    return ~crc;
}

const char *kvd_snapshot_strerror(int code)
{
    switch (code) {
    case KVD_SNAPSHOT_ETRUNC: return "truncated: its length differs from the one its header states";
    case KVD_SNAPSHOT_EMAGIC: return "not a kvd snapshot (bad magic)";
    case KVD_SNAPSHOT_EVERSION: return "a snapshot format version this kvd does not read";
    case KVD_SNAPSHOT_ECHECK: return "corrupted: checksum mismatch";
    case KVD_SNAPSHOT_EFORMAT: return "corrupted: a field is out of range";
    case KVD_SNAPSHOT_EKIND: return "a cache kind this snapshot format does not support";
    case KVD_SNAPSHOT_ENOSPC: return "not enough free pages in the pool";
    case KVD_SNAPSHOT_ENOMEM: return "out of memory";
    case KVD_SNAPSHOT_EPAGE: return "one slot of this session does not fit this server's --page-bytes";
    }
    return "unknown error";
}

/* ---- writing: one pass counts (buf NULL), a second writes ---- */

typedef struct wbuf {
    uint8_t *buf;
    size_t len;
} wbuf;

static void put(wbuf *w, const void *src, size_t n)
{
    if (w->buf && n)
        memcpy(w->buf + w->len, src, n);
    w->len += n;
}

static void put_u8(wbuf *w, uint8_t v) { put(w, &v, 1); }

static void put_u32(wbuf *w, uint32_t v)
{
    const uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(w, b, 4);
}

static void put_u64(wbuf *w, uint64_t v)
{
    put_u32(w, (uint32_t)v);
    put_u32(w, (uint32_t)(v >> 32));
}

static void put_f64(wbuf *w, double d)
{
    uint64_t v;
    memcpy(&v, &d, sizeof v);
    put_u64(w, v);
}

static void put_f32(wbuf *w, float f)
{
    uint32_t v;
    memcpy(&v, &f, sizeof v);
    put_u32(w, v);
}

static size_t div_up(size_t a, size_t b)
{
    return a / b + (a % b != 0);
}

/* Rows and positions of a per-token stream part (slots 0..n). The rows are
 * the stored bytes: f32 rows are host floats, and kvd runs on little-endian
 * hosts only (the b64 wire format already assumes it). */
static void put_rows(wbuf *w, const kvd_stream *s, size_t n)
{
    for (size_t j = 0; j < n; j++)
        put(w, kvd__stream_key(s, j), s->k_row_bytes);
    for (size_t j = 0; j < n; j++)
        put(w, kvd__stream_value(s, j), s->v_row_bytes);
    for (size_t j = 0; j < n; j++)
        put_u64(w, (uint64_t)kvd__stream_page_meta(s, j)->position);
}

static void put_index(wbuf *w, const kvd_stream *s)
{
    const kvd_evict_index *ix = s->evict;
    put_u8(w, ix->stale);
    put_u64(w, ix->n_heap);
    for (size_t i = 0; i < ix->n_heap; i++) {
        put_f64(w, ix->heap[i].key);
        put_u64(w, (uint64_t)ix->heap[i].position);
        put_u64(w, ix->heap[i].slot);
    }
    put_u8(w, ix->score != NULL);
    for (size_t j = 0; ix->score && j < s->n_tokens; j++)
        put_f64(w, ix->score[j]);
    put_u64(w, ix->ring_n);
    for (size_t i = 0; i < ix->ring_n; i++) /* oldest first */
        put_u64(w, ix->ring[(ix->ring_head + i) % ix->ring_cap]);
}

static void put_stream(wbuf *w, const kvd_stream *s)
{
    const kvd_stream *r = s->residual;
    const size_t nr = r ? r->n_tokens : 0, nq = s->n_tokens - nr;
    put_u64(w, s->n_tokens);
    put_u64(w, s->appended);
    put_u64(w, s->evicted);
    put_u64(w, nr);
    if (r) {
        put_u64(w, r->appended);
        put_u64(w, r->evicted);
        for (size_t b = 0; b < div_up(nq, s->fmt.group); b++) /* whole key blocks, partial last too */
            put(w, kvd__stream_key(s, b * s->fmt.group), s->k_row_bytes);
        for (size_t j = 0; j < nq; j++)
            put(w, kvd__stream_value(s, j), s->v_row_bytes);
        for (size_t j = 0; j < nq; j++)
            put_u64(w, (uint64_t)kvd__stream_page_meta(s, j)->position);
        put_rows(w, r, nr);
    } else {
        put_rows(w, s, nq);
    }
    if (s->evict)
        put_index(w, s);
}

/* A SubGen sketch (version 3 on): counters, centres, counts, each
 * cluster's used reservoir rows (min(n_c, t)), the s sample rows. */
static void put_sketch(wbuf *w, const kvd_subgen *g)
{
    const size_t key = (size_t)g->head_dim * sizeof(float);
    put_u64(w, g->items);
    put_u64(w, g->n_clusters);
    put_f64(w, g->f);
    put_u64(w, g->rng);
    for (size_t c = 0; c < g->n_clusters; c++)
        put(w, kvd__subgen_row(&g->centres, c), key);
    for (size_t c = 0; c < g->n_clusters; c++)
        put_u64(w, *(const uint64_t *)kvd__subgen_row(&g->counts, c));
    for (size_t c = 0; c < g->n_clusters; c++) {
        const uint64_t n = *(const uint64_t *)kvd__subgen_row(&g->counts, c);
        for (size_t j = 0; j < (n < g->t ? n : g->t); j++)
            put(w, kvd__subgen_row(&g->reservoir, c * g->t + j), key);
    }
    for (size_t i = 0; i < g->samples.n_rows; i++)
        put(w, kvd__subgen_row(&g->samples, i), 2 * key);
}

static void put_session(wbuf *w, const kvd_session *s)
{
    for (size_t i = 0; i < s->n_streams; i++) {
        put_stream(w, &s->streams[i]);
        if (s->tensor_b)
            put_stream(w, &s->tensor_b[i]);
        if (s->pairs)
            put_stream(w, &s->pairs[i]);
        if (s->subgen)
            put_sketch(w, &s->subgen[i]);
        if (s->subgen_b)
            put_sketch(w, &s->subgen_b[i]);
    }
}

static void put_config(wbuf *w, const kvd_session_config *c)
{
    put_u32(w, c->layers);
    put_u32(w, c->heads);
    put_u32(w, c->kv_heads);
    put_u32(w, c->head_dim);
    put_u32(w, (uint32_t)c->attention);
    put_f32(w, c->scale);
    put_u32(w, (uint32_t)c->tensor_cache);
    put_u32(w, c->window);
    put_u32(w, (uint32_t)c->cache.dtype);
    put_u32(w, c->cache.budget);
    put_u32(w, (uint32_t)c->cache.eviction);
    put_u32(w, c->cache.sink);
    put_u32(w, c->cache.recent);
    put_u32(w, c->cache.group);
    put_u32(w, c->cache.residual);
    put_f64(w, c->cache.delta);
    put_u32(w, c->cache.cluster_samples);
    put_u32(w, c->cache.value_samples);
    put_u8(w, c->shadow);
    put_u64(w, c->seed);
    put_f64(w, c->ttl_seconds);
    put_u8(w, (uint8_t)c->cache.rotate); /* version 2 on */
    if (c->cache.eviction == KVD_EVICT_SUBGEN)
        put_u32(w, c->cache.max_clusters); /* version 4 on, subgen only: other sessions' bytes stay version 2's */
}

static void put_all(wbuf *w, const kvd_session *s, const kvd_session *shadow, const kvd_snapshot_meta *m,
                    size_t page_bytes, size_t total)
{
    /* Header: 64 bytes. */
    put(w, KVD_SNAPSHOT_MAGIC, 8);
    put_u32(w, KVD_SNAPSHOT_VERSION);
    put_u32(w, KVD_SNAPSHOT_HEADER_BYTES);
    put_u64(w, total);
    char version[16] = {0};
    strncpy(version, KVD_VERSION, sizeof version - 1);
    put(w, version, sizeof version);
    put_u64(w, page_bytes);
    put_u32(w, shadow ? F_SHADOW : 0);
    put_u32(w, 0);
    put_u64(w, 0);
    /* Metadata. */
    const size_t id_len = strnlen(m->id, KVD_SNAPSHOT_ID_MAX);
    put_u8(w, (uint8_t)id_len);
    put(w, m->id, id_len);
    put(w, m->owner_digest, sizeof m->owner_digest);
    put_f64(w, m->created_at);
    put_f64(w, m->last_used_at);
    put_u64(w, m->steps);
    put_u64(w, m->shadow_steps);
    put_f64(w, m->shadow_last_rel);
    put_f64(w, m->shadow_sum_rel);
    put_f64(w, m->shadow_max_abs);
    put_config(w, &s->config);
    put_session(w, s);
    if (shadow)
        put_session(w, shadow);
}

int kvd_session_snapshot(const kvd_session *s, const kvd_session *shadow, const kvd_snapshot_meta *meta,
                         size_t page_bytes, void **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (s->config.cache.eviction > KVD_EVICT_SUBGEN)
        return -ENOTSUP; /* a kind this format has no record for */
    wbuf w = {0};
    put_all(&w, s, shadow, meta, page_bytes, 0);
    const size_t total = w.len + 4;
    w.buf = malloc(total);
    if (!w.buf)
        return -ENOMEM;
    w.len = 0;
    put_all(&w, s, shadow, meta, page_bytes, total);
    put_u32(&w, kvd_crc32c(0, w.buf, total - 4));
    *out = w.buf;
    *out_len = total;
    return 0;
}

/* ---- reading ---- */

typedef struct rbuf {
    const uint8_t *p;
    size_t len, at;
    bool bad; /* a read past the end: every later read gives zeros */
    uint32_t version; /* the snapshot's format version (get_header) */
} rbuf;

static const uint8_t *take(rbuf *r, size_t n)
{
    if (r->bad || n > r->len - r->at) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->p + r->at;
    r->at += n;
    return p;
}

static uint8_t get_u8(rbuf *r)
{
    const uint8_t *p = take(r, 1);
    return p ? p[0] : 0;
}

static uint32_t get_u32(rbuf *r)
{
    const uint8_t *p = take(r, 4);
    return p ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24 : 0;
}

static uint64_t get_u64(rbuf *r)
{
    const uint64_t lo = get_u32(r);
    return lo | (uint64_t)get_u32(r) << 32;
}

static double get_f64(rbuf *r)
{
    const uint64_t v = get_u64(r);
    double d;
    memcpy(&d, &v, sizeof d);
    return d;
}

static float get_f32(rbuf *r)
{
    const uint32_t v = get_u32(r);
    float f;
    memcpy(&f, &v, sizeof f);
    return f;
}

static size_t left(const rbuf *r)
{
    return r->bad ? 0 : r->len - r->at;
}

static bool id_char_ok(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '-' || c == '_';
}

static int get_meta(rbuf *r, kvd_snapshot_meta *m)
{
    memset(m, 0, sizeof *m);
    const size_t id_len = get_u8(r);
    const uint8_t *id = take(r, id_len);
    if (!id || id_len == 0 || id_len > KVD_SNAPSHOT_ID_MAX)
        return KVD_SNAPSHOT_EFORMAT;
    for (size_t i = 0; i < id_len; i++)
        if (!id_char_ok((char)id[i]))
            return KVD_SNAPSHOT_EFORMAT;
    memcpy(m->id, id, id_len);
    const uint8_t *d = take(r, sizeof m->owner_digest);
    if (d)
        memcpy(m->owner_digest, d, sizeof m->owner_digest);
    m->created_at = get_f64(r);
    m->last_used_at = get_f64(r);
    m->steps = get_u64(r);
    m->shadow_steps = get_u64(r);
    m->shadow_last_rel = get_f64(r);
    m->shadow_sum_rel = get_f64(r);
    m->shadow_max_abs = get_f64(r);
    return r->bad ? KVD_SNAPSHOT_EFORMAT : 0;
}

static int get_config(rbuf *r, kvd_session_config *c)
{
    memset(c, 0, sizeof *c);
    c->layers = get_u32(r);
    c->heads = get_u32(r);
    c->kv_heads = get_u32(r);
    c->head_dim = get_u32(r);
    const uint32_t attention = get_u32(r);
    c->scale = get_f32(r);
    const uint32_t tensor_cache = get_u32(r);
    c->window = get_u32(r);
    const uint32_t dtype = get_u32(r);
    c->cache.budget = get_u32(r);
    const uint32_t eviction = get_u32(r);
    c->cache.sink = get_u32(r);
    c->cache.recent = get_u32(r);
    c->cache.group = get_u32(r);
    c->cache.residual = get_u32(r);
    c->cache.delta = get_f64(r);
    c->cache.cluster_samples = get_u32(r);
    c->cache.value_samples = get_u32(r);
    const uint8_t shadow = get_u8(r);
    c->seed = get_u64(r);
    c->ttl_seconds = get_f64(r);
    const uint8_t rotate = r->version >= 2 ? get_u8(r) : KVD_ROTATE_NONE; /* version 1: not rotated */
    /* Version 3's sketches had no cap: they restore uncapped (0), as they grew. */
    c->cache.max_clusters = r->version >= 4 && eviction == KVD_EVICT_SUBGEN ? get_u32(r) : 0;
    if (r->bad || attention > KVD_ATTN_TENSOR || tensor_cache > KVD_TENSOR_CACHE_TWO || shadow > 1)
        return KVD_SNAPSHOT_EFORMAT;
    if (dtype > KVD_DTYPE_KIVI4 || eviction > (r->version >= 3 ? KVD_EVICT_SUBGEN : KVD_EVICT_H2O))
        return KVD_SNAPSHOT_EKIND; /* subgen (4) before version 3, or a kind from a later build */
    c->attention = (kvd_attention_kind)attention;
    c->tensor_cache = (kvd_tensor_cache)tensor_cache;
    c->cache.dtype = (kvd_dtype)dtype;
    c->cache.eviction = (kvd_eviction)eviction;
    c->shadow = shadow;
    if (rotate > KVD_ROTATE_HADAMARD)
        return KVD_SNAPSHOT_EKIND; /* a rotation from a later build */
    c->cache.rotate = (kvd_rotate)rotate;
    if (kvd_session_check_rotate(c) != 0)
        return KVD_SNAPSHOT_EFORMAT;
    if (c->layers == 0 || c->kv_heads == 0 || c->head_dim == 0 || c->heads == 0 || c->heads % c->kv_heads ||
        !isfinite(c->scale) || !isfinite(c->ttl_seconds) || !(c->ttl_seconds > 0))
        return KVD_SNAPSHOT_EFORMAT;
    /* subgen: only the combinations a create accepts (api/create_body.c),
     * its parameters in range (a sketch's rows are sized by them). */
    if (c->cache.eviction == KVD_EVICT_SUBGEN &&
        ((c->attention == KVD_ATTN_TENSOR && c->tensor_cache != KVD_TENSOR_CACHE_FOUR) || c->window ||
         c->cache.dtype != KVD_DTYPE_F32 || c->cache.budget || !isfinite(c->cache.delta) || !(c->cache.delta > 0) ||
         c->cache.cluster_samples == 0 || c->cache.cluster_samples > KVD_SUBGEN_SAMPLES_MAX ||
         c->cache.value_samples == 0 || c->cache.value_samples > KVD_SUBGEN_SAMPLES_MAX ||
         c->cache.max_clusters > KVD_SUBGEN_CLUSTERS_MAX))
        return KVD_SNAPSHOT_EFORMAT;
    return 0;
}

/* Header, length, version and checksum; leaves r after the header. */
static int get_header(const void *bytes, size_t len, rbuf *r, uint32_t *flags)
{
    *r = (rbuf){.p = bytes, .len = len};
    if (len < 8 || memcmp(bytes, KVD_SNAPSHOT_MAGIC, 8) != 0)
        return len < 8 && memcmp(bytes, KVD_SNAPSHOT_MAGIC, len) == 0 ? KVD_SNAPSHOT_ETRUNC
                                                                     : KVD_SNAPSHOT_EMAGIC;
    if (len < KVD_SNAPSHOT_HEADER_BYTES + 4)
        return KVD_SNAPSHOT_ETRUNC;
    take(r, 8);
    const uint32_t version = get_u32(r);
    const uint32_t header_bytes = get_u32(r);
    const uint64_t total = get_u64(r);
    if (version < KVD_SNAPSHOT_VERSION_MIN || version > KVD_SNAPSHOT_VERSION)
        return KVD_SNAPSHOT_EVERSION;
    r->version = version;
    if (total != len)
        return KVD_SNAPSHOT_ETRUNC;
    if (header_bytes != KVD_SNAPSHOT_HEADER_BYTES)
        return KVD_SNAPSHOT_EFORMAT;
    const uint8_t *t = r->p + len - 4;
    const uint32_t want = (uint32_t)t[0] | (uint32_t)t[1] << 8 | (uint32_t)t[2] << 16 | (uint32_t)t[3] << 24;
    if (kvd_crc32c(0, bytes, len - 4) != want)
        return KVD_SNAPSHOT_ECHECK;
    take(r, 16);      /* kvd version: informative */
    get_u64(r);       /* writer's page size: slots are re-paged, so any restores */
    *flags = get_u32(r);
    if (get_u32(r) != 0 || get_u64(r) != 0 || (*flags & ~F_SHADOW))
        return KVD_SNAPSHOT_EFORMAT;
    r->len = len - 4; /* the trailer is not a record */
    return 0;
}

int kvd_snapshot_peek(const void *bytes, size_t len, kvd_snapshot_meta *meta, kvd_session_config *cfg)
{
    rbuf r;
    uint32_t flags;
    kvd_snapshot_meta m;
    kvd_session_config c;
    int rc = get_header(bytes, len, &r, &flags);
    if (rc == 0)
        rc = get_meta(&r, &m);
    if (rc == 0)
        rc = get_config(&r, &c);
    if (rc == 0 && c.shadow != ((flags & F_SHADOW) != 0))
        rc = KVD_SNAPSHOT_EFORMAT;
    if (rc == 0 && meta)
        *meta = m;
    if (rc == 0 && cfg)
        *cfg = c;
    return rc;
}


/* ---- restoring: pass 1 (fill false) checks sizes and counts pages, pass 2
 * (fill true) copies into the pages taken ---- */

typedef struct pages_cursor {
    void **pages;   /* pass 2: the pages taken, handed out in order */
    size_t at;      /* pass 1: pages needed; pass 2: pages attached */
} pages_cursor;

static bool entry_before(const kvd__evict_entry *a, const kvd__evict_entry *b)
{
    if (a->key != b->key)
        return a->key < b->key;
    return a->position < b->position;
}

/* The index of a filled stream: every entry checked against the slots, so
 * that the state is one kvd itself could have reached. */
static int read_index(rbuf *r, kvd_stream *st, size_t n, bool fill)
{
    kvd_evict_index *ix = st->evict;
    const uint8_t stale = get_u8(r);
    const uint64_t n_heap = get_u64(r);
    if (r->bad || stale > 1 || n_heap > n)
        return KVD_SNAPSHOT_EFORMAT;
    const uint8_t *heap = take(r, (size_t)n_heap * 24); /* n_heap <= n <= len / 8: no overflow */
    const uint8_t has_score = get_u8(r);
    if (r->bad || has_score != (ix->score != NULL))
        return KVD_SNAPSHOT_EFORMAT;
    const uint8_t *scores = has_score ? take(r, n * 8) : NULL;
    const uint64_t ring_n = get_u64(r);
    if (r->bad || ring_n > n)
        return KVD_SNAPSHOT_EFORMAT;
    const uint8_t *ring = take(r, (size_t)ring_n * 8);
    if (r->bad)
        return KVD_SNAPSHOT_EFORMAT;
    if (!fill)
        return 0;
    const uint64_t appended = st->appended;
    if (ring_n != (ix->recent < appended ? ix->recent : appended) || ring_n > ix->ring_cap)
        return KVD_SNAPSHOT_EFORMAT;
    for (size_t j = 0; j < n; j++)
        ix->heap_pos[j] = KVD__NOT_IN_HEAP;
    rbuf h = {.p = heap, .len = (size_t)n_heap * 24};
    for (size_t i = 0; i < n_heap; i++) {
        kvd__evict_entry e;
        e.key = get_f64(&h);
        e.position = (int64_t)get_u64(&h);
        const uint64_t slot = get_u64(&h);
        if (slot >= n || ix->heap_pos[slot] != KVD__NOT_IN_HEAP || !isfinite(e.key) ||
            e.position != kvd_stream_meta(st, (size_t)slot)->position)
            return KVD_SNAPSHOT_EFORMAT;
        e.slot = (size_t)slot;
        if (i > 0 && entry_before(&e, &ix->heap[(i - 1) / 2]))
            return KVD_SNAPSHOT_EFORMAT; /* not a heap */
        ix->heap[i] = e;
        ix->heap_pos[slot] = i;
    }
    ix->n_heap = (size_t)n_heap;
    ix->stale = stale;
    rbuf sc = {.p = scores, .len = scores ? n * 8 : 0};
    for (size_t j = 0; scores && j < n; j++)
        if (!isfinite(ix->score[j] = get_f64(&sc)))
            return KVD_SNAPSHOT_EFORMAT;
    rbuf rg = {.p = ring, .len = (size_t)ring_n * 8};
    const uint64_t first_recent = appended - ring_n;
    for (size_t i = 0; i < ring_n; i++) {
        const uint64_t slot = get_u64(&rg);
        /* Positions first_recent + i are distinct, so the slots are too. */
        if (slot >= n || (uint64_t)kvd_stream_meta(st, (size_t)slot)->position != first_recent + i)
            return KVD_SNAPSHOT_EFORMAT;
        ix->ring[i] = (size_t)slot;
    }
    ix->ring_head = 0;
    ix->ring_n = (size_t)ring_n;
    /* Candidates are exactly the unprotected tokens (cache/evict.h). */
    for (size_t j = 0; j < n; j++) {
        const uint64_t p = (uint64_t)kvd_stream_meta(st, j)->position;
        const bool prot = p < ix->sink || p >= first_recent;
        if (prot == (ix->heap_pos[j] != KVD__NOT_IN_HEAP))
            return KVD_SNAPSHOT_EFORMAT;
    }
    return 0;
}

/* Rows and positions of n slots of a per-token part, into its pages. */
static int read_rows(rbuf *r, kvd_stream *s, size_t n, uint64_t appended, bool fill)
{
    size_t kb, vb;
    if (__builtin_mul_overflow(n, (size_t)s->k_row_bytes, &kb) || __builtin_mul_overflow(n, (size_t)s->v_row_bytes, &vb))
        return KVD_SNAPSHOT_EFORMAT;
    const uint8_t *k = take(r, kb), *v = take(r, vb), *pos = take(r, n * 8);
    if (r->bad)
        return KVD_SNAPSHOT_EFORMAT;
    for (size_t j = 0; fill && j < n; j++) {
        memcpy(kvd__stream_key(s, j), k + j * s->k_row_bytes, s->k_row_bytes);
        memcpy(kvd__stream_value(s, j), v + j * s->v_row_bytes, s->v_row_bytes);
        rbuf p = {.p = pos + j * 8, .len = 8};
        const uint64_t position = get_u64(&p);
        if (position >= appended)
            return KVD_SNAPSHOT_EFORMAT;
        kvd__stream_page_meta(s, j)->position = (int64_t)position;
    }
    return 0;
}

static int read_stream(rbuf *r, kvd_stream *st, pages_cursor *pc, bool fill)
{
    kvd_stream *res = st->residual;
    const uint64_t n = get_u64(r), appended = get_u64(r), evicted = get_u64(r), nr = get_u64(r);
    const uint64_t r_appended = res ? get_u64(r) : 0, r_evicted = res ? get_u64(r) : 0;
    /* Every slot costs at least its 8-byte position: n is bounded by the bytes. */
    if (r->bad || n > left(r) / 8 || n > appended || nr > n || (!res && nr) || nr > r_appended)
        return KVD_SNAPSHOT_EFORMAT;
    const size_t nq = (size_t)(n - nr);
    size_t q_pages, r_pages = 0;
    if (res) {
        q_pages = div_up(kvd__stream_kivi_settled(st, nq, (size_t)nr), st->slots_per_page);
        r_pages = div_up((size_t)nr, res->slots_per_page);
    } else {
        q_pages = div_up((size_t)n, st->slots_per_page);
    }
    if (fill) {
        const size_t most = q_pages > r_pages ? q_pages : r_pages;
        if (kvd_stream_reserve_table(st, most) != 0 || kvd_stream_evict_reserve(st, (size_t)n) != 0)
            return KVD_SNAPSHOT_ENOMEM;
        kvd__stream_attach_pages(st, pc->pages + pc->at, q_pages);
        pc->at += q_pages;
        if (res) {
            kvd__stream_attach_pages(res, pc->pages + pc->at, r_pages);
            pc->at += r_pages;
        }
    } else {
        pc->at += q_pages + r_pages;
    }
    int rc;
    if (res) {
        const size_t blocks = div_up(nq, st->fmt.group);
        size_t kb, vb;
        if (__builtin_mul_overflow(blocks, (size_t)st->k_row_bytes, &kb) ||
            __builtin_mul_overflow(nq, (size_t)st->v_row_bytes, &vb))
            return KVD_SNAPSHOT_EFORMAT;
        const uint8_t *k = take(r, kb), *v = take(r, vb), *pos = take(r, nq * 8);
        if (r->bad)
            return KVD_SNAPSHOT_EFORMAT;
        for (size_t b = 0; fill && b < blocks; b++)
            memcpy(kvd__stream_key(st, b * st->fmt.group), k + b * st->k_row_bytes, st->k_row_bytes);
        for (size_t j = 0; fill && j < nq; j++) {
            memcpy(kvd__stream_value(st, j), v + j * st->v_row_bytes, st->v_row_bytes);
            rbuf p = {.p = pos + j * 8, .len = 8};
            const uint64_t position = get_u64(&p);
            if (position >= appended)
                return KVD_SNAPSHOT_EFORMAT;
            kvd__stream_page_meta(st, j)->position = (int64_t)position;
        }
        if ((rc = read_rows(r, res, (size_t)nr, r_appended, fill)) != 0)
            return rc;
        if (fill) {
            res->n_tokens = (size_t)nr;
            res->appended = r_appended;
            res->evicted = r_evicted;
        }
    } else if ((rc = read_rows(r, st, (size_t)n, appended, fill)) != 0) {
        return rc;
    }
    if (fill) {
        st->n_tokens = (size_t)n;
        st->appended = appended;
        st->evicted = evicted;
    }
    return st->evict ? read_index(r, st, (size_t)n, fill) : 0;
}

static bool all_finite(const uint8_t *p, size_t n_floats)
{
    rbuf b = {.p = p, .len = n_floats * 4};
    for (size_t i = 0; i < n_floats; i++)
        if (!isfinite(get_f32(&b)))
            return false;
    return true;
}

/* Sum of squares in double, as kvd_subgen_insert weighs a value. */
static double norm_sq(const uint8_t *p, size_t d)
{
    rbuf b = {.p = p, .len = d * 4};
    double acc = 0;
    for (size_t i = 0; i < d; i++) {
        const double x = get_f32(&b);
        acc += x * x;
    }
    return acc;
}

/* A SubGen sketch (put_sketch). Everything is checked in both passes, before
 * a page is taken: counts >= 1 summing to items, one cluster at least once
 * anything was sketched, finite rows, F finite and >= 0, and with F > 0
 * every sample's value nonzero with ||v||^2 <= F (each sampler holds a
 * token already counted in F); with F = 0 no sample was taken (zero rows).
 * Pass 2 lays the sketch out in its pages and copies the rows. */
static int read_sketch(rbuf *r, kvd_subgen *g, pages_cursor *pc, bool fill)
{
    const size_t d = g->head_dim, key = d * 4;
    const uint64_t items = get_u64(r), n_clusters = get_u64(r);
    const double f = get_f64(r);
    const uint64_t rng = get_u64(r);
    /* Every cluster costs a centre and a count in the bytes: bounded. */
    if (r->bad || n_clusters > items || (items > 0) != (n_clusters > 0) || n_clusters > left(r) / (key + 8) ||
        (g->max_clusters && n_clusters > g->max_clusters) || /* more than the cap lets a sketch open */
        !isfinite(f) || f < 0)
        return KVD_SNAPSHOT_EFORMAT;
    const size_t nc = (size_t)n_clusters;
    const uint8_t *centres = take(r, nc * key), *counts = take(r, nc * 8);
    if (r->bad || !all_finite(centres, nc * d))
        return KVD_SNAPSHOT_EFORMAT;
    uint64_t sum = 0;
    size_t res_rows = 0;
    rbuf cb = {.p = counts, .len = nc * 8};
    for (size_t c = 0; c < nc; c++) {
        const uint64_t n = get_u64(&cb);
        if (n == 0 || __builtin_add_overflow(sum, n, &sum))
            return KVD_SNAPSHOT_EFORMAT;
        res_rows += n < g->t ? (size_t)n : g->t; /* <= nc * t: no overflow */
    }
    if (sum != items || res_rows > left(r) / key)
        return KVD_SNAPSHOT_EFORMAT;
    const uint8_t *res = take(r, res_rows * key);
    const size_t n_samples = nc ? g->s : 0;
    if (r->bad || n_samples > left(r) / (2 * key))
        return KVD_SNAPSHOT_EFORMAT;
    const uint8_t *samples = take(r, n_samples * 2 * key);
    if (r->bad || !all_finite(res, res_rows * d) || !all_finite(samples, n_samples * 2 * d))
        return KVD_SNAPSHOT_EFORMAT;
    for (size_t i = 0; i < n_samples; i++) {
        const double vv = norm_sq(samples + i * 2 * key + key, d);
        if (f > 0 ? !(vv > 0) || vv > f : norm_sq(samples + i * 2 * key, d) != 0 || vv != 0)
            return KVD_SNAPSHOT_EFORMAT;
    }
    size_t t_rows; /* the reservoir rows laid out: bounded, the pool refuses the rest */
    if (__builtin_mul_overflow(nc, (size_t)g->t, &t_rows))
        return KVD_SNAPSHOT_EFORMAT;
    const size_t pages = kvd_subgen_pages_bound(g, nc);
    if (!fill) {
        pc->at += pages;
        return 0;
    }
    if (kvd_subgen_reserve(g, nc) != 0)
        return KVD_SNAPSHOT_ENOMEM;
    size_t used = 0;
    kvd__subgen_layout(g, nc, pc->pages + pc->at, pages, &used);
    pc->at += used;
    cb = (rbuf){.p = counts, .len = nc * 8};
    for (size_t c = 0, at = 0; c < nc; c++) {
        memcpy(kvd__subgen_row(&g->centres, c), centres + c * key, key);
        const uint64_t n = get_u64(&cb);
        memcpy(kvd__subgen_row(&g->counts, c), &n, sizeof n);
        for (size_t j = 0; j < (n < g->t ? n : g->t); j++, at++)
            memcpy(kvd__subgen_row(&g->reservoir, c * g->t + j), res + at * key, key);
    }
    for (size_t i = 0; i < n_samples; i++)
        memcpy(kvd__subgen_row(&g->samples, i), samples + i * 2 * key, 2 * key);
    g->items = items;
    g->f = f;
    g->rng = rng;
    return 0;
}

static int read_session(rbuf *r, kvd_session *s, pages_cursor *pc, bool fill)
{
    for (size_t i = 0; i < s->n_streams; i++) {
        int rc = read_stream(r, &s->streams[i], pc, fill);
        if (rc == 0 && s->tensor_b)
            rc = read_stream(r, &s->tensor_b[i], pc, fill);
        if (rc == 0 && s->pairs)
            rc = read_stream(r, &s->pairs[i], pc, fill);
        if (rc == 0 && s->subgen)
            rc = read_sketch(r, &s->subgen[i], pc, fill);
        if (rc == 0 && s->subgen_b)
            rc = read_sketch(r, &s->subgen_b[i], pc, fill);
        if (rc != 0)
            return rc;
        /* Every token that left a subgen window went into its sketch(es). */
        if (fill && s->subgen &&
            (s->subgen[i].items != s->streams[i].evicted ||
             (s->subgen_b && (s->subgen_b[i].items != s->streams[i].evicted ||
                              s->tensor_b[i].evicted != s->streams[i].evicted))))
            return KVD_SNAPSHOT_EFORMAT;
        if (!fill || !s->tensor_b)
            continue;
        /* k2/v2 mirror k1/v1 slot for slot; a two-cache holds n^2 pair rows. */
        const size_t n = s->streams[i].n_tokens;
        if (s->tensor_b[i].n_tokens != n || (s->pairs && s->pairs[i].n_tokens != n * n))
            return KVD_SNAPSHOT_EFORMAT; /* n <= len / 8 < 2^61: n * n may wrap, but then cannot match */
    }
    return 0;
}

int kvd_session_restore(const void *bytes, size_t len, kvd_pool *pool, kvd_snapshot_meta *meta,
                        kvd_session **out, kvd_session **shadow_out)
{
    *out = NULL;
    if (shadow_out)
        *shadow_out = NULL;
    rbuf r;
    uint32_t flags;
    kvd_snapshot_meta m;
    kvd_session_config cfg;
    int rc = get_header(bytes, len, &r, &flags);
    if (rc == 0)
        rc = get_meta(&r, &m);
    if (rc == 0)
        rc = get_config(&r, &cfg);
    if (rc != 0)
        return rc;
    if (cfg.shadow != ((flags & F_SHADOW) != 0))
        return KVD_SNAPSHOT_EFORMAT;
    /* Each stream record is at least 32 bytes: the stream count is bounded
     * by the input before any allocation depends on it. */
    const kvd_session_config exact_cfg = kvd_session_shadow_config(&cfg);
    const size_t arrays = (cfg.attention == KVD_ATTN_TENSOR ? 2 + (cfg.tensor_cache == KVD_TENSOR_CACHE_TWO) : 1) +
                          (cfg.shadow ? (exact_cfg.attention == KVD_ATTN_TENSOR ? 2 : 1) : 0);
    size_t records;
    if (__builtin_mul_overflow((size_t)cfg.layers * cfg.kv_heads, arrays * 32, &records) || records > left(&r))
        return KVD_SNAPSHOT_EFORMAT;
    const size_t page_bytes = kvd_pool_page_bytes(pool);
    kvd_session *s = NULL, *sh = NULL;
    rc = kvd_session_create(&cfg, page_bytes, &s);
    if (rc == 0 && cfg.shadow) {
        const kvd_session_config exact = kvd_session_shadow_config(&cfg);
        rc = kvd_session_create(&exact, page_bytes, &sh);
    }
    if (rc != 0) {
        kvd_session_destroy(s, pool);
        return rc == -EINVAL ? KVD_SNAPSHOT_EPAGE : KVD_SNAPSHOT_ENOMEM;
    }
    rbuf plan = r;
    pages_cursor pc = {0};
    rc = read_session(&plan, s, &pc, false);
    if (rc == 0 && sh)
        rc = read_session(&plan, sh, &pc, false);
    if (rc == 0 && left(&plan) != 0)
        rc = KVD_SNAPSHOT_EFORMAT; /* bytes after the last record */
    const size_t need = pc.at;
    if (rc == 0 && !(pc.pages = malloc((need ? need : 1) * sizeof *pc.pages)))
        rc = KVD_SNAPSHOT_ENOMEM;
    if (rc == 0 && kvd_pool_alloc(pool, need, pc.pages) != 0)
        rc = KVD_SNAPSHOT_ENOSPC;
    else if (rc == 0) {
        pc.at = 0;
        rc = read_session(&r, s, &pc, true);
        if (rc == 0 && sh)
            rc = read_session(&r, sh, &pc, true);
        if (rc != 0) /* pages not attached yet go back; the sessions give back theirs */
            kvd_pool_release(pool, pc.pages + pc.at, need - pc.at);
    }
    free(pc.pages);
    if (rc != 0) {
        kvd_session_destroy(s, pool);
        kvd_session_destroy(sh, pool);
        return rc;
    }
    if (meta)
        *meta = m;
    *out = s;
    if (shadow_out)
        *shadow_out = sh;
    else
        kvd_session_destroy(sh, pool);
    return 0;
}
