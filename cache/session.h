/* cache/session.h — a session's resolved configuration and its streams.
 * A session is one decode sequence of fixed shape; it owns layers * kv_heads
 * streams (stream of layer l, kv head g at index l * kv_heads + g). It is not
 * thread-safe: the API layer runs one step of a session at a time. */
#ifndef KVD_CACHE_SESSION_H
#define KVD_CACHE_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/pool.h"
#include "cache/stream.h"

typedef enum { KVD_ATTN_STANDARD, KVD_ATTN_TENSOR } kvd_attention_kind;
typedef enum { KVD_TENSOR_CACHE_FOUR, KVD_TENSOR_CACHE_TWO } kvd_tensor_cache;
typedef enum {
    KVD_DTYPE_F32, KVD_DTYPE_F16, KVD_DTYPE_BF16, KVD_DTYPE_INT8,
    KVD_DTYPE_INT4, KVD_DTYPE_KIVI2, KVD_DTYPE_KIVI4
} kvd_dtype;
typedef enum {
    KVD_EVICT_NONE, KVD_EVICT_RECENCY, KVD_EVICT_L2NORM, KVD_EVICT_H2O, KVD_EVICT_SUBGEN
} kvd_eviction;

/* Names as they appear in the API ("f32", "recency", ...). */
const char *kvd_dtype_name(kvd_dtype d);
const char *kvd_eviction_name(kvd_eviction e);
const char *kvd_attention_name(kvd_attention_kind a);
const char *kvd_tensor_cache_name(kvd_tensor_cache t);

/* The resolved create body (DESIGN.md §3): every default filled in. */
typedef struct kvd_session_config {
    uint32_t layers, heads, kv_heads, head_dim;
    kvd_attention_kind attention;
    float scale;                  /* default 1/sqrt(head_dim) */
    kvd_tensor_cache tensor_cache;
    uint32_t window;              /* 0 = unlimited */
    struct {
        kvd_dtype dtype;
        uint32_t budget;          /* tokens per stream, 0 = unlimited */
        kvd_eviction eviction;
        uint32_t sink, recent, group, residual;
        double delta;             /* subgen only */
        uint32_t cluster_samples, value_samples; /* subgen only */
    } cache;
    bool shadow;
    uint64_t seed;
    double ttl_seconds;
} kvd_session_config;

typedef struct kvd_session {
    kvd_session_config config;
    kvd_stream *streams;          /* [layers][kv_heads] */
    size_t n_streams;
} kvd_session;

/* Creates a session with empty streams (no pages yet). Returns 0, -ENOMEM, or
 * -EINVAL if one slot does not fit in a page. Free with kvd_session_destroy. */
int kvd_session_create(const kvd_session_config *cfg, size_t page_bytes, kvd_session **out);

/* A copy-on-write fork: same config and tokens, every page shared (see
 * kvd_stream_fork). The parent's pages get flagged shared too. Returns 0 or
 * -ENOMEM (nothing changed). */
int kvd_session_fork(kvd_session *parent, kvd_pool *pool, kvd_session **out);

/* Releases every page to the pool and frees the session. NULL is a no-op. */
void kvd_session_destroy(kvd_session *s, kvd_pool *pool);

static inline kvd_stream *kvd_session_stream(kvd_session *s, uint32_t layer, uint32_t kv_head)
{
    return &s->streams[(size_t)layer * s->config.kv_heads + kv_head];
}

/* Totals over all streams. */
size_t kvd_session_tokens(const kvd_session *s);
uint64_t kvd_session_appended(const kvd_session *s);
uint64_t kvd_session_evicted(const kvd_session *s);
size_t kvd_session_pages(const kvd_session *s);

#endif
