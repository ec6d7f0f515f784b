/* cache/types.h — the configuration vocabulary shared by sessions and
 * streams: attention kind, tensor cache layout, cache dtype, eviction policy,
 * rotation, and their API names. Kept apart so stream.h can name a dtype without
 * including the session it belongs to. */
#ifndef KVD_CACHE_TYPES_H
#define KVD_CACHE_TYPES_H

typedef enum { KVD_ATTN_STANDARD, KVD_ATTN_TENSOR } kvd_attention_kind;
typedef enum { KVD_TENSOR_CACHE_FOUR, KVD_TENSOR_CACHE_TWO } kvd_tensor_cache;
typedef enum {
    KVD_DTYPE_F32, KVD_DTYPE_F16, KVD_DTYPE_BF16, KVD_DTYPE_INT8,
    KVD_DTYPE_INT4, KVD_DTYPE_KIVI2, KVD_DTYPE_KIVI4
} kvd_dtype;
typedef enum {
    KVD_EVICT_NONE, KVD_EVICT_RECENCY, KVD_EVICT_L2NORM, KVD_EVICT_H2O, KVD_EVICT_SUBGEN
} kvd_eviction;
/* cache.rotate: keys, values and queries stored and attended in a randomized
 * Hadamard basis (cache/rotate.h), or as sent. */
typedef enum { KVD_ROTATE_NONE, KVD_ROTATE_HADAMARD } kvd_rotate;

/* Names as they appear in the API ("f32", "recency", ...). */
const char *kvd_dtype_name(kvd_dtype d);
const char *kvd_eviction_name(kvd_eviction e);
const char *kvd_attention_name(kvd_attention_kind a);
const char *kvd_tensor_cache_name(kvd_tensor_cache t);
const char *kvd_rotate_name(kvd_rotate r);

#endif
