/* api/create_body.c — the create body (POST /v1/sessions) into a resolved
 * kvd_session_config (DESIGN.md §3, §4), every default filled in, and the
 * resolved config back to JSON. A body is validated whole before success is
 * returned. No global state: safe on any thread. */
#include "api/create_body.h"

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "api/json.h"
#include "api/random.h"
#include "cache/stream.h"
#include "cache/subgen.h"

/* Sessions expire after at most 30 days idle: a bound on how long a
 * forgotten session can hold pool pages. */
#define TTL_MAX_SECONDS (30.0 * 24.0 * 3600.0)

/* Seeds are JSON numbers (doubles): integers above 2^53 would not survive
 * the round trip through the resolved config, so they are refused, and a
 * random seed is drawn in 0 .. 2^53 - 1 so the config shows it exactly. */
#define SEED_MAX ((uint64_t)1 << 53)

/* A quantization group spans `group` channels (int4, KIVI values) or tokens
 * (KIVI keys); the bound keeps per-group scratch small. */
#define GROUP_MAX 4096u
/* KIVI keeps the newest `residual` tokens in f32; bounded like one step. */
#define RESIDUAL_MAX (1u << 20)
/* SubGen (arXiv 2402.06082) parameters (docs/subgen.md). delta is a
 * distance between keys after `scale`; 0.5 keeps exp(scale <q, k>) within
 * a factor e^(0.5 ||q||) across a cluster. t = 32 reservoir keys per cluster
 * and s = 256 value samples give a few percent relative error on clustered
 * keys (bench/subgen.c). Both bounded so one step's sketch scratch and a
 * cluster's reservoir stay small (a cluster lays out all t rows at once). */
#define SUBGEN_DEFAULT_DELTA 0.5
#define SUBGEN_DEFAULT_CLUSTER_SAMPLES 32u
#define SUBGEN_DEFAULT_VALUE_SAMPLES 256u
#define SUBGEN_MAX_SAMPLES 65536u
/* max_clusters: 0 (no cap) or 1 .. KVD_SUBGEN_CLUSTERS_MAX, default
 * KVD_SUBGEN_CLUSTERS_DEFAULT (cache/subgen.h; docs/subgen.md "The cluster
 * cap"): without a cap, keys that do not cluster at delta open a cluster
 * each, and the sketch outgrows the exact cache it replaces. */

#define N_ATTENTION (KVD_ATTN_TENSOR + 1)
#define N_TENSOR_CACHE (KVD_TENSOR_CACHE_TWO + 1)
#define N_DTYPE (KVD_DTYPE_KIVI4 + 1)
#define N_EVICTION (KVD_EVICT_SUBGEN + 1)
#define N_ROTATE (KVD_ROTATE_HADAMARD + 1)

static const char *attention_name(int i) { return kvd_attention_name((kvd_attention_kind)i); }
static const char *tensor_cache_name(int i) { return kvd_tensor_cache_name((kvd_tensor_cache)i); }
static const char *dtype_name(int i) { return kvd_dtype_name((kvd_dtype)i); }
static const char *eviction_name(int i) { return kvd_eviction_name((kvd_eviction)i); }
static const char *rotate_name(int i) { return kvd_rotate_name((kvd_rotate)i); }

static const char *const create_fields[] = {
    "layers", "heads", "kv_heads", "head_dim", "attention", "scale", "tensor_cache",
    "window", "cache", "shadow", "seed", "ttl_seconds",
};
static const char *const cache_fields[] = {
    "dtype", "budget", "eviction", "sink", "recent", "group", "residual",
    "delta", "cluster_samples", "value_samples", "max_clusters", "rotate",
};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static int not_yet(kvd_api_error *err, const char *field, const char *value, const char *why)
{
    return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field,
                             "%s: %s is not yet supported (%s)", field, value, why);
}

/* ==== NOT YET SUPPORTED ====================================================
 * Values DESIGN.md §3 allows and that parse above as valid, but that this
 * build cannot run yet. Each check is one block: delete a block when its
 * feature lands (and add tests for the feature instead). */
static int reject_not_yet_supported(const kvd_session_config *c, kvd_api_error *err)
{
    char v[64];
    if (c->attention == KVD_ATTN_TENSOR) {
        /* A tensor session slides a window or evicts by a policy, not both;
         * a KIVI tensor cache does not slide. (Forking
         * one is refused when asked: cache/session.c.) */
        const bool kivi = c->cache.dtype == KVD_DTYPE_KIVI2 || c->cache.dtype == KVD_DTYPE_KIVI4;
        if (kivi && c->window > 0) {
            snprintf(v, sizeof v, "\"%s\" with a window", kvd_dtype_name(c->cache.dtype));
            return not_yet(err, "window", v, "a KIVI tensor cache does not slide a window");
        }

        if (c->cache.eviction != KVD_EVICT_NONE && c->window > 0) {
            snprintf(v, sizeof v, "\"%s\" with window %" PRIu32, kvd_eviction_name(c->cache.eviction),
                     c->window);
            return not_yet(err, "cache.eviction", v, "a tensor session takes a window or a policy");
        }
        if (c->tensor_cache == KVD_TENSOR_CACHE_TWO && c->window > 0) {
            snprintf(v, sizeof v, "window %" PRIu32 " with tensor_cache \"two\"", c->window);
            return not_yet(err, "window", v,
                           "a window's pairs are not a prefix of the pair rows; use \"four\", "
                           "which needs only O(window * d) memory");
        }
    } else if (c->window > 0) {
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "window",
                                 "window: only used with attention \"tensor\"");
    }
    if (c->cache.eviction == KVD_EVICT_SUBGEN && c->attention == KVD_ATTN_TENSOR &&
        c->tensor_cache == KVD_TENSOR_CACHE_TWO)
        return not_yet(err, "cache.eviction", "\"subgen\" with tensor_cache \"two\"",
                       "SubGen2Cache would need the pair rows of every sketched token with each new "
                       "token, i.e. every token's keys; use tensor_cache \"four\" (SubGen4Cache)");
    if (c->cache.eviction == KVD_EVICT_SUBGEN && c->cache.dtype != KVD_DTYPE_F32) {
        snprintf(v, sizeof v, "\"subgen\" with dtype \"%s\"", kvd_dtype_name(c->cache.dtype));
        return not_yet(err, "cache.dtype", v,
                       "the sketch and its protected window are f32; a quantized window would "
                       "save little next to the sketch");
    }
    return 0;
}
/* ==== end NOT YET SUPPORTED ============================================= */

/* cache.rotate "hadamard" (cache/rotate.h): the fast transform needs a
 * power-of-two head_dim; a rotation of q, k1 and k2 alike does not keep the
 * tensor score <q, k1 (.) k2>, and subgen's f32 sketch gains nothing from it. */
static int check_rotate(const kvd_session_config *c, kvd_api_error *err)
{
    if (c->cache.rotate == KVD_ROTATE_NONE)
        return 0;
    if (c->head_dim & (c->head_dim - 1))
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "cache.rotate",
                                 "cache.rotate: \"hadamard\" needs head_dim a power of two, got %" PRIu32,
                                 c->head_dim);
    if (c->attention == KVD_ATTN_TENSOR)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "cache.rotate",
                                 "cache.rotate: \"hadamard\" with attention \"tensor\" makes no sense: "
                                 "<q, k1 (.) k2> is not invariant under rotating q, k1 and k2");
    if (c->cache.eviction == KVD_EVICT_SUBGEN)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "cache.rotate",
                                 "cache.rotate: \"hadamard\" with cache.eviction \"subgen\" makes no "
                                 "sense: the sketch and its window are f32, there is nothing to quantize");
    return 0;
}

/* Bytes one f32 slot takes in a page: K and V rows each in a 64-byte aligned
 * block, plus the slot metadata (cache/stream.c's layout for one slot). Only
 * for the message; the decision is kvd_stream_slots_per_page's, the same
 * function kvd_session_create uses, so the two cannot disagree. */
static size_t one_slot_bytes(uint32_t head_dim)
{
    const size_t row = ((size_t)head_dim * sizeof(float) + 63) & ~(size_t)63;
    return 2 * row + sizeof(kvd_slot_meta);
}

static int random_seed(uint64_t *out)
{
    uint64_t v = 0;
    if (kvd__api_random_bytes(&v, sizeof v) != 0)
        return -1;
    *out = v & (SEED_MAX - 1);
    return 0;
}

static int parse_cache(const cJSON *cache, kvd_session_config *c, kvd_api_error *err)
{
    if (cache && !cJSON_IsObject(cache))
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "cache",
                                 "cache: expected an object, got %s",
                                 kvd__api_json_type_name(cache));
    if (cache && kvd__api_json_check_fields(cache, "cache.", cache_fields, NELEM(cache_fields),
                                            err) != 0)
        return -1;
    int e = 0;
    if (kvd__api_json_get_enum(cache, "dtype", "cache.dtype", dtype_name, N_DTYPE, KVD_DTYPE_F32,
                               &e, err))
        return -1;
    c->cache.dtype = (kvd_dtype)e;
    if (kvd__api_json_get_u32(cache, "budget", "cache.budget", 0, UINT32_MAX, 0, &c->cache.budget,
                              err))
        return -1;
    if (kvd__api_json_get_enum(cache, "eviction", "cache.eviction", eviction_name, N_EVICTION,
                               KVD_EVICT_NONE, &e, err))
        return -1;
    c->cache.eviction = (kvd_eviction)e;
    if (kvd__api_json_get_u32(cache, "sink", "cache.sink", 0, UINT32_MAX, 4, &c->cache.sink, err)
        || kvd__api_json_get_u32(cache, "recent", "cache.recent", 0, UINT32_MAX, 0,
                                 &c->cache.recent, err)
        || kvd__api_json_get_u32(cache, "group", "cache.group", 1, GROUP_MAX, 32,
                                 &c->cache.group, err)
        || kvd__api_json_get_u32(cache, "residual", "cache.residual", 0, RESIDUAL_MAX, 32,
                                 &c->cache.residual, err))
        return -1;

    if (kvd__api_json_get_enum(cache, "rotate", "cache.rotate", rotate_name, N_ROTATE, KVD_ROTATE_NONE, &e,
                               err))
        return -1;
    c->cache.rotate = (kvd_rotate)e;

    /* SubGen's parameters mean nothing to other policies: refuse them there
     * rather than accept a setting that silently does nothing. */
    const bool subgen = c->cache.eviction == KVD_EVICT_SUBGEN;
    static const char *const subgen_only[] = {"delta", "cluster_samples", "value_samples", "max_clusters"};
    for (size_t i = 0; i < NELEM(subgen_only); i++) {
        if (!subgen && cache && cJSON_GetObjectItemCaseSensitive(cache, subgen_only[i])) {
            char path[48];
            snprintf(path, sizeof path, "cache.%s", subgen_only[i]);
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                     "%s: only used with cache.eviction \"subgen\", which is "
                                     "\"%s\"", path, kvd_eviction_name(c->cache.eviction));
        }
    }
    c->cache.delta = SUBGEN_DEFAULT_DELTA;
    const cJSON *d = cache ? cJSON_GetObjectItemCaseSensitive(cache, "delta") : NULL;
    if (d) {
        if (!cJSON_IsNumber(d) || !isfinite(d->valuedouble) || !(d->valuedouble > 0))
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "cache.delta",
                                     "cache.delta: expected a finite number > 0, got %s",
                                     cJSON_IsNumber(d) ? "a number <= 0"
                                                       : kvd__api_json_type_name(d));
        c->cache.delta = d->valuedouble;
    }
    if (kvd__api_json_get_u32(cache, "cluster_samples", "cache.cluster_samples", 1,
                              SUBGEN_MAX_SAMPLES, SUBGEN_DEFAULT_CLUSTER_SAMPLES,
                              &c->cache.cluster_samples, err)
        || kvd__api_json_get_u32(cache, "value_samples", "cache.value_samples", 1,
                                 SUBGEN_MAX_SAMPLES, SUBGEN_DEFAULT_VALUE_SAMPLES,
                                 &c->cache.value_samples, err)
        || kvd__api_json_get_u32(cache, "max_clusters", "cache.max_clusters", 0, KVD_SUBGEN_CLUSTERS_MAX,
                                 KVD_SUBGEN_CLUSTERS_DEFAULT, &c->cache.max_clusters, err))
        return -1;
    if (!subgen)
        c->cache.max_clusters = 0; /* as a snapshot restores it: it only exists for subgen */
    /* SubGen keeps sink + recent exactly and sketches everything else: there
     * is no token budget to evict down to. */
    if (subgen && c->cache.budget > 0)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "cache.budget",
                                 "cache.budget: not used with cache.eviction \"subgen\" (sink + "
                                 "recent tokens stay exact, the rest goes into the sketch), got %"
                                 PRIu32, c->cache.budget);

    /* h2o with no recent window evicts a new token after one step of weight
     * (it has had no time to gather any): as the H2O paper (Zhang et al.
     * 2023, §3.3: heavy hitters and recent tokens, half the budget each), an
     * h2o cache given no "recent" keeps budget / 2 (rounded down) recent
     * tokens, less where sink + budget / 2 would pass the budget. */
    if (c->cache.eviction == KVD_EVICT_H2O && !(cache && cJSON_GetObjectItemCaseSensitive(cache, "recent"))) {
        const uint32_t room = c->cache.budget > c->cache.sink ? c->cache.budget - c->cache.sink : 0;
        c->cache.recent = c->cache.budget / 2 < room ? c->cache.budget / 2 : room;
    }

    /* A budget is reached by evicting, and sinks and recent tokens are never
     * evicted (DESIGN.md §4): a budget needs a policy and room above them. */
    if (c->cache.budget > 0 && c->cache.eviction == KVD_EVICT_NONE)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "cache.budget",
                                 "cache.budget: %" PRIu32 " tokens needs an eviction policy "
                                 "(cache.eviction is \"none\")", c->cache.budget);
    const uint64_t kept = (uint64_t)c->cache.sink + c->cache.recent;
    if (c->cache.budget > 0 && c->cache.budget < kept)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "cache.budget",
                                 "cache.budget: %" PRIu32 " is less than sink + recent = %"
                                 PRIu32 " + %" PRIu32 " = %" PRIu64 " tokens that are never "
                                 "evicted", c->cache.budget, c->cache.sink, c->cache.recent,
                                 kept);
    return 0;
}

/* Fills *cfg only on success. */
int kvd_session_config_parse(const cJSON *body, const kvd_api_limits *lim,
                             kvd_session_config *cfg, kvd_api_error *err)
{
    if (!cJSON_IsObject(body))
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                                 "body must be a JSON object, got %s",
                                 body ? kvd__api_json_type_name(body) : "nothing");
    if (kvd__api_json_check_fields(body, "", create_fields, NELEM(create_fields), err) != 0)
        return -1;

    kvd_session_config c;
    memset(&c, 0, sizeof c);
    if (kvd__api_json_get_u32(body, "layers", "layers", 1, lim->max_layers, 1, &c.layers, err)
        || kvd__api_json_get_u32(body, "heads", "heads", 1, lim->max_heads, 8, &c.heads, err)
        || kvd__api_json_get_u32(body, "kv_heads", "kv_heads", 1, lim->max_heads, c.heads,
                                 &c.kv_heads, err)
        || kvd__api_json_get_u32(body, "head_dim", "head_dim", 1, lim->max_head_dim, 64,
                                 &c.head_dim, err))
        return -1;
    /* GQA/MQA: query head h reads kv head h / (heads / kv_heads) (§5). */
    if (c.heads % c.kv_heads != 0)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "kv_heads",
                                 "kv_heads: must divide heads = %" PRIu32 ", got %" PRIu32,
                                 c.heads, c.kv_heads);
    /* Streams are the session's bookkeeping unit (block tables, stats). */
    const uint64_t streams = (uint64_t)c.layers * c.kv_heads;
    if (streams > lim->max_streams)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "layers",
                                 "layers: layers*kv_heads = %" PRIu32 "*%" PRIu32 " = %" PRIu64
                                 " streams, more than the limit of %" PRIu64,
                                 c.layers, c.kv_heads, streams, lim->max_streams);
    if (kvd_stream_slots_per_page(lim->page_bytes, c.head_dim) == 0)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "head_dim",
                                 "head_dim: one f32 slot of head_dim %" PRIu32 " takes %zu bytes, "
                                 "more than the page size of %zu bytes (--page-bytes)",
                                 c.head_dim, one_slot_bytes(c.head_dim), lim->page_bytes);

    int e = 0;
    if (kvd__api_json_get_enum(body, "attention", "attention", attention_name, N_ATTENTION,
                               KVD_ATTN_STANDARD, &e, err))
        return -1;
    c.attention = (kvd_attention_kind)e;
    if (kvd__api_json_get_enum(body, "tensor_cache", "tensor_cache", tensor_cache_name,
                               N_TENSOR_CACHE, KVD_TENSOR_CACHE_FOUR, &e, err))
        return -1;
    c.tensor_cache = (kvd_tensor_cache)e;
    if (c.attention != KVD_ATTN_TENSOR && cJSON_GetObjectItemCaseSensitive(body, "tensor_cache"))
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "tensor_cache",
                                 "tensor_cache: only used with attention \"tensor\", which is "
                                 "\"%s\"", kvd_attention_name(c.attention));
    if (kvd__api_json_get_u32(body, "window", "window", 0, UINT32_MAX, 0, &c.window, err))
        return -1;

    /* Scores are scale * <q, k> in f32: the scale must be a positive f32
     * (a value that underflows to 0 or overflows f32 is refused too). */
    c.scale = 1.0f / sqrtf((float)c.head_dim);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(body, "scale");
    if (s) {
        if (!cJSON_IsNumber(s))
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "scale",
                                     "scale: expected a finite number > 0, got %s",
                                     kvd__api_json_type_name(s));
        const double v = s->valuedouble;
        if (!(v > 0 && v <= (double)FLT_MAX) || !((float)v > 0))
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "scale",
                                     "scale: expected a finite f32 > 0, got %g", v);
        c.scale = (float)v;
    }

    if (parse_cache(cJSON_GetObjectItemCaseSensitive(body, "cache"), &c, err) != 0)
        return -1;

    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(body, "shadow");
    if (sh && !cJSON_IsBool(sh))
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "shadow",
                                 "shadow: expected true or false, got %s",
                                 kvd__api_json_type_name(sh));
    c.shadow = sh && cJSON_IsTrue(sh);

    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(body, "seed");
    if (kvd__api_json_get_uint(body, "seed", "seed", 0, SEED_MAX, 0, &c.seed, err))
        return -1;

    c.ttl_seconds = lim->default_ttl_seconds;
    const cJSON *ttl = cJSON_GetObjectItemCaseSensitive(body, "ttl_seconds");
    if (ttl) {
        if (!cJSON_IsNumber(ttl))
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "ttl_seconds",
                                     "ttl_seconds: expected a number of seconds in (0, %.0f] "
                                     "(30 days), got %s", TTL_MAX_SECONDS,
                                     kvd__api_json_type_name(ttl));
        const double v = ttl->valuedouble;
        if (!(v > 0 && v <= TTL_MAX_SECONDS))
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "ttl_seconds",
                                     "ttl_seconds: expected a number of seconds in (0, %.0f] "
                                     "(30 days), got %g", TTL_MAX_SECONDS, v);
        c.ttl_seconds = v;
    }

    /* KIVI quantizes keys in blocks of `group` tokens and keeps `residual`
     * tokens in f32 until a whole block is past them (DESIGN.md §4). */
    if ((c.cache.dtype == KVD_DTYPE_KIVI2 || c.cache.dtype == KVD_DTYPE_KIVI4) &&
        c.cache.residual % c.cache.group != 0)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "cache.residual",
                                 "cache.residual: must be a multiple of cache.group = %" PRIu32
                                 " for %s, got %" PRIu32, c.cache.group,
                                 kvd_dtype_name(c.cache.dtype), c.cache.residual);
    const kvd_stream_format fmt = {c.cache.dtype, c.cache.group, c.cache.residual};
    if (kvd_stream_slots_per_page_format(lim->page_bytes, c.head_dim, &fmt) == 0)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "cache.group",
                                 "cache.group: a %s page of head_dim %" PRIu32 " must hold whole "
                                 "blocks of %" PRIu32 " tokens, and %zu bytes (--page-bytes) "
                                 "cannot hold one", kvd_dtype_name(c.cache.dtype), c.head_dim,
                                 c.cache.group, lim->page_bytes);
    if (reject_not_yet_supported(&c, err) != 0 || check_rotate(&c, err) != 0)
        return -1;

    /* Drawn last, once the body is known good. */
    if (!seed && random_seed(&c.seed) != 0)
        return kvd_api_error_set(err, 500, KVD_ERR_INTERNAL, "seed",
                                 "no randomness for the seed (getrandom failed, errno %d)", errno);
    *cfg = c;
    return 0;
}

/* Caller owns the result (cJSON_Delete); NULL on allocation failure.
 * Fields that the create body refuses in this config (tensor_cache without
 * tensor attention, SubGen parameters without subgen) are left out, so the
 * output is itself a valid create body that resolves to the same config. */
cJSON *kvd_session_config_to_json(const kvd_session_config *cfg)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    bool ok = cJSON_AddNumberToObject(o, "layers", cfg->layers)
              && cJSON_AddNumberToObject(o, "heads", cfg->heads)
              && cJSON_AddNumberToObject(o, "kv_heads", cfg->kv_heads)
              && cJSON_AddNumberToObject(o, "head_dim", cfg->head_dim)
              && cJSON_AddStringToObject(o, "attention", kvd_attention_name(cfg->attention))
              && cJSON_AddNumberToObject(o, "scale", (double)cfg->scale);
    if (ok && cfg->attention == KVD_ATTN_TENSOR)
        ok = cJSON_AddStringToObject(o, "tensor_cache", kvd_tensor_cache_name(cfg->tensor_cache));
    ok = ok && cJSON_AddNumberToObject(o, "window", cfg->window);
    cJSON *c = ok ? cJSON_AddObjectToObject(o, "cache") : NULL;
    ok = c && cJSON_AddStringToObject(c, "dtype", kvd_dtype_name(cfg->cache.dtype))
         && cJSON_AddNumberToObject(c, "budget", cfg->cache.budget)
         && cJSON_AddStringToObject(c, "eviction", kvd_eviction_name(cfg->cache.eviction))
         && cJSON_AddNumberToObject(c, "sink", cfg->cache.sink)
         && cJSON_AddNumberToObject(c, "recent", cfg->cache.recent)
         && cJSON_AddNumberToObject(c, "group", cfg->cache.group)
         && cJSON_AddNumberToObject(c, "residual", cfg->cache.residual)
         && cJSON_AddStringToObject(c, "rotate", kvd_rotate_name(cfg->cache.rotate));
    if (ok && cfg->cache.eviction == KVD_EVICT_SUBGEN)
        ok = cJSON_AddNumberToObject(c, "delta", cfg->cache.delta)
             && cJSON_AddNumberToObject(c, "cluster_samples", cfg->cache.cluster_samples)
             && cJSON_AddNumberToObject(c, "value_samples", cfg->cache.value_samples)
             && cJSON_AddNumberToObject(c, "max_clusters", cfg->cache.max_clusters);
    /* The seed goes out as a raw number token with every digit: cJSON's
     * printer uses 15 significant digits when they compare "equal" within a
     * relative epsilon, which would round seeds above 10^15. In memory the
     * item is therefore cJSON_Raw, not cJSON_Number. */
    char seed[24];
    snprintf(seed, sizeof seed, "%" PRIu64, cfg->seed);
    ok = ok && cJSON_AddBoolToObject(o, "shadow", cfg->shadow)
         && cJSON_AddRawToObject(o, "seed", seed)
         && cJSON_AddNumberToObject(o, "ttl_seconds", cfg->ttl_seconds);
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}
