/* api/request.c — turns JSON bodies into typed, validated requests: the
 * create body into a resolved kvd_session_config (DESIGN.md §3, §4), the
 * step body into kvd_step_request (tensors decoded by api/wire.c). A
 * request is validated whole before success is returned; on failure nothing
 * stays allocated. No global state: workers call these in parallel. */
#include "api/request.h"
#include "api/internal.h"

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "cache/stream.h"

/* Sessions expire after at most 30 days idle: a bound on how long a
 * forgotten session can hold pool pages. */
#define TTL_MAX_SECONDS (30.0 * 24.0 * 3600.0)
#define TTL_DEFAULT_SECONDS 600.0 /* DESIGN.md §3; the server's --session-ttl overrides */

/* Seeds are JSON numbers (doubles): integers above 2^53 would not survive
 * the round trip through the resolved config, so they are refused, and a
 * random seed is drawn in 0 .. 2^53 - 1 so the config shows it exactly. */
#define SEED_MAX ((uint64_t)1 << 53)

/* A quantization group spans `group` channels (int4, KIVI values) or tokens
 * (KIVI keys); the bound keeps per-group scratch small. */
#define GROUP_MAX 4096u
/* KIVI keeps the newest `residual` tokens in f32; bounded like one step. */
#define RESIDUAL_MAX (1u << 20)
/* SubGen (arXiv 2402.06082) parameters. The defaults are placeholders until
 * the subgen policy exists; its author should revisit them. */
#define SUBGEN_DEFAULT_DELTA 0.5
#define SUBGEN_DEFAULT_SAMPLES 32u
#define SUBGEN_MAX_SAMPLES 65536u

#define N_ATTENTION (KVD_ATTN_TENSOR + 1)
#define N_TENSOR_CACHE (KVD_TENSOR_CACHE_TWO + 1)
#define N_DTYPE (KVD_DTYPE_KIVI4 + 1)
#define N_EVICTION (KVD_EVICT_SUBGEN + 1)

void kvd_api_limits_default(kvd_api_limits *lim, size_t page_bytes)
{
    lim->max_layers = 1024;
    lim->max_heads = 1024;
    lim->max_head_dim = 4096;
    lim->max_streams = 65536;
    lim->max_step_tokens = (uint64_t)1 << 20;
    lim->max_steps_per_request = 4096;
    lim->page_bytes = page_bytes;
    lim->default_ttl_seconds = TTL_DEFAULT_SECONDS;
}

/* ---- JSON helpers ------------------------------------------------------ */

/* A 400 whose message is "<field>: <what>". */
static int invalid(kvd_api_error *err, const char *field, const char *what)
{
    return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field, "%s: %s", field, what);
}

/* Reads an optional integer field `name` of obj (error path `path`) into
 * *out, or dflt when absent. A JSON integer means a number with no fraction:
 * 1.5, -1, "1" and true are refused (1.0 and 1e2 cannot be told apart from 1
 * and 100 after parsing, and are accepted). */
static int get_uint(const cJSON *obj, const char *name, const char *path, uint64_t min,
                    uint64_t max, uint64_t dflt, uint64_t *out, kvd_api_error *err)
{
    const cJSON *item = obj ? cJSON_GetObjectItemCaseSensitive(obj, name) : NULL;
    if (!item) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsNumber(item))
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                 "%s: expected an integer in %" PRIu64 "..%" PRIu64 ", got %s",
                                 path, min, max, kvd_json_type_name(item));
    const double v = item->valuedouble;
    if (!isfinite(v) || v != floor(v))
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                 "%s: expected an integer in %" PRIu64 "..%" PRIu64 ", got %g",
                                 path, min, max, v);
    /* min and max are at most 2^53 here, so the double compares are exact. */
    if (v < (double)min || v > (double)max)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                 "%s: must be in %" PRIu64 "..%" PRIu64 ", got %.17g",
                                 path, min, max, v);
    *out = (uint64_t)v;
    return 0;
}

static int get_u32(const cJSON *obj, const char *name, const char *path, uint32_t min,
                   uint32_t max, uint32_t dflt, uint32_t *out, kvd_api_error *err)
{
    uint64_t v;
    if (get_uint(obj, name, path, min, max, dflt, &v, err) != 0)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* Reads an optional string enum: the value must equal name_of(i) for some
 * i < n; *out = i. Names come from cache/session.c so the API spells them
 * the one way the rest of kvd does. */
static int get_enum(const cJSON *obj, const char *name, const char *path,
                    const char *(*name_of)(int), int n, int dflt, int *out,
                    kvd_api_error *err)
{
    const cJSON *item = obj ? cJSON_GetObjectItemCaseSensitive(obj, name) : NULL;
    if (!item) {
        *out = dflt;
        return 0;
    }
    if (cJSON_IsString(item) && item->valuestring) {
        for (int i = 0; i < n; i++) {
            if (strcmp(item->valuestring, name_of(i)) == 0) {
                *out = i;
                return 0;
            }
        }
    }
    char allowed[160];
    size_t used = 0;
    allowed[0] = '\0';
    for (int i = 0; i < n && used < sizeof allowed; i++) {
        int k = snprintf(allowed + used, sizeof allowed - used, "%s\"%s\"", i ? ", " : "",
                         name_of(i));
        if (k < 0)
            break;
        used += (size_t)k;
    }
    if (cJSON_IsString(item) && item->valuestring)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                 "%s: expected one of %s, got \"%.48s\"", path, allowed,
                                 item->valuestring);
    return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path, "%s: expected one of %s, got %s",
                             path, allowed, kvd_json_type_name(item));
}

static const char *attention_name(int i) { return kvd_attention_name((kvd_attention_kind)i); }
static const char *tensor_cache_name(int i) { return kvd_tensor_cache_name((kvd_tensor_cache)i); }
static const char *dtype_name(int i) { return kvd_dtype_name((kvd_dtype)i); }
static const char *eviction_name(int i) { return kvd_eviction_name((kvd_eviction)i); }

/* Every member of obj must be one of `allowed` (n <= 32), each at most once
 * (cJSON keeps duplicates and lookups would silently take the first).
 * prefix is prepended to the name in the error ("cache." -> "cache.foo"). */
static int check_fields(const cJSON *obj, const char *prefix, const char *const *allowed,
                        size_t n, kvd_api_error *err)
{
    uint32_t seen = 0;
    char path[96];
    for (const cJSON *c = obj->child; c; c = c->next) {
        const char *key = c->string ? c->string : "";
        size_t i = 0;
        while (i < n && strcmp(key, allowed[i]) != 0)
            i++;
        snprintf(path, sizeof path, "%s%s", prefix, key);
        if (i == n) {
            char list[256];
            size_t used = 0;
            list[0] = '\0';
            for (size_t j = 0; j < n && used < sizeof list; j++) {
                int k = snprintf(list + used, sizeof list - used, "%s%s", j ? ", " : "",
                                 allowed[j]);
                if (k < 0)
                    break;
                used += (size_t)k;
            }
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                     "%.80s: unknown field (allowed: %s)", path, list);
        }
        if (seen & (UINT32_C(1) << i))
            return invalid(err, path, "duplicate field");
        seen |= UINT32_C(1) << i;
    }
    return 0;
}

/* ---- JSON body --------------------------------------------------------- */

/* Returns the parsed object (caller frees with cJSON_Delete) or NULL with
 * err filled. body[len] must be readable (the server NUL-terminates it). */
cJSON *kvd_json_parse_object(const char *body, size_t len, kvd_api_error *err)
{
    if (!body || len == 0) {
        kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                          "body is empty; expected a JSON object");
        return NULL;
    }
    /* JSON text never holds a raw NUL; cJSON would stop there and ignore the
     * rest, so refuse it rather than parse a prefix. */
    const char *nul = memchr(body, '\0', len);
    if (nul) {
        kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                          "invalid JSON: NUL byte at byte offset %zu", (size_t)(nul - body));
        return NULL;
    }
    /* cJSON_ParseWithOpts(body, &end, true) is this call with length
     * strlen(body) + 1; passing len + 1 says the same without trusting a
     * terminator to be there. The parse end is returned to us, not kept in
     * cJSON's global error pointer, so workers can parse in parallel. */
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len + 1, &end, 1);
    if (!root) {
        size_t off = end && end >= body ? (size_t)(end - body) : 0;
        if (off >= len)
            kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                              "invalid JSON: unexpected end of body at byte offset %zu", len);
        else if ((unsigned char)body[off] >= 0x20 && (unsigned char)body[off] < 0x7f)
            kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                              "invalid JSON at byte offset %zu (near '%c')", off, body[off]);
        else
            kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                              "invalid JSON at byte offset %zu (byte 0x%02x)", off,
                              (unsigned)(unsigned char)body[off]);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL, "body must be a JSON object, got %s",
                          kvd_json_type_name(root));
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* ---- create body ------------------------------------------------------- */

static const char *const create_fields[] = {
    "layers", "heads", "kv_heads", "head_dim", "attention", "scale", "tensor_cache",
    "window", "cache", "shadow", "seed", "ttl_seconds",
};
static const char *const cache_fields[] = {
    "dtype", "budget", "eviction", "sink", "recent", "group", "residual",
    "delta", "cluster_samples", "value_samples",
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
        /* Tensor streams are f32 and keep their tokens (a slot holds k1, k2,
         * v1, v2; evicting or forking them is not built yet). */
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
        if (c->shadow)
            return not_yet(err, "shadow", "true with tensor attention", "tensor caches are exact f32");
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
    if (c->cache.eviction == KVD_EVICT_SUBGEN)
        return not_yet(err, "cache.eviction", "\"subgen\"",
                       "none, recency, l2norm and h2o are implemented");
    return 0;
}
/* ==== end NOT YET SUPPORTED ============================================= */

/* Bytes one f32 slot takes in a page: K and V rows each in a 64-byte aligned
 * block, plus the slot metadata (cache/stream.c's layout for one slot). Only
 * for the message; the decision is kvd_stream_slots_per_page's, the same
 * function kvd_session_create uses, so the two cannot disagree. */
static size_t one_slot_bytes(uint32_t head_dim)
{
    const size_t row = ((size_t)head_dim * sizeof(float) + 63) & ~(size_t)63;
    return 2 * row + sizeof(kvd_slot_meta);
}

int kvd_api_random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(p + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        got += (size_t)r;
    }
    return 0;
}

static int random_seed(uint64_t *out)
{
    uint64_t v = 0;
    if (kvd_api_random_bytes(&v, sizeof v) != 0)
        return -1;
    *out = v & (SEED_MAX - 1);
    return 0;
}

static int parse_cache(const cJSON *cache, kvd_session_config *c, kvd_api_error *err)
{
    if (cache && !cJSON_IsObject(cache))
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "cache",
                                 "cache: expected an object, got %s", kvd_json_type_name(cache));
    if (cache && check_fields(cache, "cache.", cache_fields, NELEM(cache_fields), err) != 0)
        return -1;
    int e = 0;
    if (get_enum(cache, "dtype", "cache.dtype", dtype_name, N_DTYPE, KVD_DTYPE_F32, &e, err))
        return -1;
    c->cache.dtype = (kvd_dtype)e;
    if (get_u32(cache, "budget", "cache.budget", 0, UINT32_MAX, 0, &c->cache.budget, err))
        return -1;
    if (get_enum(cache, "eviction", "cache.eviction", eviction_name, N_EVICTION,
                 KVD_EVICT_NONE, &e, err))
        return -1;
    c->cache.eviction = (kvd_eviction)e;
    if (get_u32(cache, "sink", "cache.sink", 0, UINT32_MAX, 4, &c->cache.sink, err)
        || get_u32(cache, "recent", "cache.recent", 0, UINT32_MAX, 0, &c->cache.recent, err)
        || get_u32(cache, "group", "cache.group", 1, GROUP_MAX, 32, &c->cache.group, err)
        || get_u32(cache, "residual", "cache.residual", 0, RESIDUAL_MAX, 32,
                   &c->cache.residual, err))
        return -1;

    /* SubGen's parameters mean nothing to other policies: refuse them there
     * rather than accept a setting that silently does nothing. */
    const bool subgen = c->cache.eviction == KVD_EVICT_SUBGEN;
    static const char *const subgen_only[] = {"delta", "cluster_samples", "value_samples"};
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
                                     cJSON_IsNumber(d) ? "a number <= 0" : kvd_json_type_name(d));
        c->cache.delta = d->valuedouble;
    }
    if (get_u32(cache, "cluster_samples", "cache.cluster_samples", 1, SUBGEN_MAX_SAMPLES,
                SUBGEN_DEFAULT_SAMPLES, &c->cache.cluster_samples, err)
        || get_u32(cache, "value_samples", "cache.value_samples", 1, SUBGEN_MAX_SAMPLES,
                   SUBGEN_DEFAULT_SAMPLES, &c->cache.value_samples, err))
        return -1;

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
                                 body ? kvd_json_type_name(body) : "nothing");
    if (check_fields(body, "", create_fields, NELEM(create_fields), err) != 0)
        return -1;

    kvd_session_config c;
    memset(&c, 0, sizeof c);
    if (get_u32(body, "layers", "layers", 1, lim->max_layers, 1, &c.layers, err)
        || get_u32(body, "heads", "heads", 1, lim->max_heads, 8, &c.heads, err)
        || get_u32(body, "kv_heads", "kv_heads", 1, lim->max_heads, c.heads, &c.kv_heads, err)
        || get_u32(body, "head_dim", "head_dim", 1, lim->max_head_dim, 64, &c.head_dim, err))
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
    if (get_enum(body, "attention", "attention", attention_name, N_ATTENTION,
                 KVD_ATTN_STANDARD, &e, err))
        return -1;
    c.attention = (kvd_attention_kind)e;
    if (get_enum(body, "tensor_cache", "tensor_cache", tensor_cache_name, N_TENSOR_CACHE,
                 KVD_TENSOR_CACHE_FOUR, &e, err))
        return -1;
    c.tensor_cache = (kvd_tensor_cache)e;
    if (c.attention != KVD_ATTN_TENSOR && cJSON_GetObjectItemCaseSensitive(body, "tensor_cache"))
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "tensor_cache",
                                 "tensor_cache: only used with attention \"tensor\", which is "
                                 "\"%s\"", kvd_attention_name(c.attention));
    if (get_u32(body, "window", "window", 0, UINT32_MAX, 0, &c.window, err))
        return -1;

    /* Scores are scale * <q, k> in f32: the scale must be a positive f32
     * (a value that underflows to 0 or overflows f32 is refused too). */
    c.scale = 1.0f / sqrtf((float)c.head_dim);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(body, "scale");
    if (s) {
        if (!cJSON_IsNumber(s))
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "scale",
                                     "scale: expected a finite number > 0, got %s", kvd_json_type_name(s));
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
                                 "shadow: expected true or false, got %s", kvd_json_type_name(sh));
    c.shadow = sh && cJSON_IsTrue(sh);

    const cJSON *seed = cJSON_GetObjectItemCaseSensitive(body, "seed");
    if (get_uint(body, "seed", "seed", 0, SEED_MAX, 0, &c.seed, err))
        return -1;

    c.ttl_seconds = lim->default_ttl_seconds;
    const cJSON *ttl = cJSON_GetObjectItemCaseSensitive(body, "ttl_seconds");
    if (ttl) {
        if (!cJSON_IsNumber(ttl))
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "ttl_seconds",
                                     "ttl_seconds: expected a number of seconds in (0, %.0f] "
                                     "(30 days), got %s", TTL_MAX_SECONDS, kvd_json_type_name(ttl));
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
    if (reject_not_yet_supported(&c, err) != 0)
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
         && cJSON_AddNumberToObject(c, "residual", cfg->cache.residual);
    if (ok && cfg->cache.eviction == KVD_EVICT_SUBGEN)
        ok = cJSON_AddNumberToObject(c, "delta", cfg->cache.delta)
             && cJSON_AddNumberToObject(c, "cluster_samples", cfg->cache.cluster_samples)
             && cJSON_AddNumberToObject(c, "value_samples", cfg->cache.value_samples);
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

/* ---- step body --------------------------------------------------------- */

static const char *const step_fields[] = {"layer", "k", "v", "q", "mask"};
static const char *const tensor_step_fields[] = {"layer", "k1", "k2", "v1", "v2", "q", "mask"};
static const char *const tensor_fields[] = {"k1", "k2", "v1", "v2"};
static const char *const mask_names[] = {[KVD_MASK_CAUSAL] = "causal", [KVD_MASK_BLOCK] = "block"};
static const char *const encoding_names[] = {[KVD_WIRE_ENCODING_JSON] = "json",
                                             [KVD_WIRE_ENCODING_B64] = "b64"};

static const char *mask_name(int i) { return mask_names[i]; }
static const char *encoding_name(int i) { return encoding_names[i]; }

static bool in_list(const char *key, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(key, list[i]) == 0)
            return true;
    return false;
}

/* The members of one step object. `top` is the single form, where
 * "encoding" sits beside the step's own fields. */
static int check_step_fields(const cJSON *obj, const char *prefix, bool top, bool tensor,
                             kvd_api_error *err)
{
    const char *const *fields = tensor ? tensor_step_fields : step_fields;
    const size_t n_fields = tensor ? NELEM(tensor_step_fields) : NELEM(step_fields);
    uint32_t seen = 0;
    char path[96];
    for (const cJSON *c = obj->child; c; c = c->next) {
        const char *key = c->string ? c->string : "";
        snprintf(path, sizeof path, "%s%s", prefix, key);
        size_t i = 0;
        while (i < n_fields && strcmp(key, fields[i]) != 0)
            i++;
        if (i < n_fields) {
            if (seen & (UINT32_C(1) << i))
                return invalid(err, path, "duplicate field");
            seen |= UINT32_C(1) << i;
            continue;
        }
        if (strcmp(key, "encoding") == 0) {
            if (top)
                continue; /* read (and checked for duplicates) by the caller */
            return invalid(err, path, "only allowed at the top level of the body");
        }
        if (!tensor && in_list(key, tensor_fields, NELEM(tensor_fields)))
            return invalid(err, path,
                           "k1, k2, v1, v2 are for tensor attention; this session uses "
                           "standard attention (send k and v)");
        if (tensor && (strcmp(key, "k") == 0 || strcmp(key, "v") == 0))
            return invalid(err, path,
                           "k and v are for standard attention; this session uses tensor "
                           "attention (send k1, k2, v1, v2)");
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                 "%.80s: unknown field (allowed: layer, %s, q, mask%s)", path,
                                 tensor ? "k1, k2, v1, v2" : "k, v",
                                 top ? ", encoding; or steps" : "");
    }
    return 0;
}

/* Parses one step object into *st (tensors owned by *st even on failure,
 * so the caller's free releases whatever was decoded). */
static int parse_step(const cJSON *obj, const char *prefix, bool top,
                      const kvd_session_config *cfg, const kvd_api_limits *lim,
                      kvd_step_layer *st, kvd_api_error *err)
{
    char path[96], desc[64];
    const bool tensor = cfg->attention == KVD_ATTN_TENSOR;
    if (check_step_fields(obj, prefix, top, tensor, err) != 0)
        return -1;

    snprintf(path, sizeof path, "%slayer", prefix);
    const cJSON *layer = cJSON_GetObjectItemCaseSensitive(obj, "layer");
    if (layer && !(cJSON_IsNumber(layer) && isfinite(layer->valuedouble)
                   && layer->valuedouble == floor(layer->valuedouble)
                   && layer->valuedouble >= 0 && layer->valuedouble < (double)cfg->layers)) {
        if (cJSON_IsNumber(layer))
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                     "%s: expected an integer in 0..%" PRIu32 " (the session has "
                                     "%" PRIu32 " layers), got %g",
                                     path, cfg->layers - 1, cfg->layers, layer->valuedouble);
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                 "%s: expected an integer in 0..%" PRIu32 ", got %s",
                                 path, cfg->layers - 1, kvd_json_type_name(layer));
    }
    st->layer = layer ? (uint32_t)layer->valuedouble : 0;

    /* The new tokens' tensors: k, v (standard) or k1, v1, k2, v2 (tensor),
     * all present or all absent, each [m][kv_heads][head_dim]. */
    static const char *const std_names[] = {"k", "v"};
    static const char *const tensor_names[] = {"k1", "v1", "k2", "v2"};
    const char *const *names = tensor ? tensor_names : std_names;
    const size_t n_names = tensor ? 4 : 2;
    float **dst[4] = {&st->k, &st->v, &st->k2, &st->v2};
    size_t present = 0;
    for (size_t i = 0; i < n_names; i++)
        present += cJSON_GetObjectItemCaseSensitive(obj, names[i]) != NULL;
    if (present != 0 && present != n_names)
        for (size_t i = 0; i < n_names; i++)
            if (!cJSON_GetObjectItemCaseSensitive(obj, names[i])) {
                snprintf(path, sizeof path, "%s%s", prefix, names[i]);
                return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                         "%s: missing (%s come together: the new tokens' keys "
                                         "and values)", path, tensor ? "k1, v1, k2, v2" : "k and v");
            }
    /* Both bounded by the create limits (1024 * 4096), far from overflow. */
    const size_t row_kv = (size_t)cfg->kv_heads * cfg->head_dim;
    const size_t row_q = (size_t)cfg->heads * cfg->head_dim;
    /* The per-step token bound keeps one step's work and scratch bounded. */
    const size_t max_rows = lim->max_step_tokens > SIZE_MAX ? SIZE_MAX
                                                            : (size_t)lim->max_step_tokens;
    if (present) {
        snprintf(desc, sizeof desc, "kv_heads*head_dim = %" PRIu32 "*%" PRIu32, cfg->kv_heads,
                 cfg->head_dim);
        for (size_t i = 0; i < n_names; i++) {
            size_t rows = 0;
            snprintf(path, sizeof path, "%s%s", prefix, names[i]);
            if (kvd_wire_decode(cJSON_GetObjectItemCaseSensitive(obj, names[i]), path, row_kv, desc,
                                  max_rows, dst[i], &rows, err) != 0)
                return -1;
            if (i > 0 && rows != st->m)
                return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                         "%s: %zu tokens, but %s has %zu (%s must hold the same "
                                         "number of tokens)", path, rows, names[0], st->m,
                                         tensor ? "k1, v1, k2, v2" : "k and v");
            st->m = rows;
        }
    }
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(obj, "q");
    if (q) {
        snprintf(desc, sizeof desc, "heads*head_dim = %" PRIu32 "*%" PRIu32, cfg->heads,
                 cfg->head_dim);
        snprintf(path, sizeof path, "%sq", prefix);
        if (kvd_wire_decode(q, path, row_q, desc, max_rows, &st->q, &st->m_q, err) != 0)
            return -1;
    }

    /* Default: causal when every new token has its query (prefill, decode),
     * block otherwise (a VAR scale, or pure queries against the cache). */
    snprintf(path, sizeof path, "%smask", prefix);
    int mask = KVD_MASK_BLOCK;
    if (get_enum(obj, "mask", path, mask_name, (int)NELEM(mask_names),
                 st->m_q == st->m ? KVD_MASK_CAUSAL : KVD_MASK_BLOCK, &mask, err))
        return -1;
    st->mask = (kvd_mask)mask;
    /* Causal queries are the last m_q of the m new tokens, so there cannot
     * be more queries than new tokens. */
    if (st->mask == KVD_MASK_CAUSAL && st->m_q > st->m)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                 "%s: \"causal\" needs m_q <= m (each query is one of the step's "
                                 "new tokens), got m_q = %zu queries and m = %zu new tokens; use "
                                 "\"block\" for queries that see the cache and all new tokens",
                                 path, st->m_q, st->m);
    return 0;
}

/* On success req owns every tensor (kvd_step_request_free releases them);
 * on failure req is left empty and nothing stays allocated. */
int kvd_step_request_parse(const cJSON *body, const kvd_session_config *cfg,
                           const kvd_api_limits *lim, kvd_step_request *req,
                           kvd_api_error *err)
{
    memset(req, 0, sizeof *req);
    if (!cJSON_IsObject(body))
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                                 "body must be a JSON object, got %s",
                                 body ? kvd_json_type_name(body) : "nothing");
    if (cfg->layers == 0 || cfg->heads == 0 || cfg->kv_heads == 0 || cfg->head_dim == 0)
        return kvd_api_error_set(err, 500, KVD_ERR_INTERNAL, NULL, "session has an empty shape");

    int enc = KVD_WIRE_ENCODING_JSON;
    if (get_enum(body, "encoding", "encoding", encoding_name, (int)NELEM(encoding_names),
                 KVD_WIRE_ENCODING_JSON, &enc, err))
        return -1;
    int n_enc = 0;
    for (const cJSON *c = body->child; c; c = c->next)
        n_enc += c->string && strcmp(c->string, "encoding") == 0;
    if (n_enc > 1)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "encoding",
                                 "encoding: duplicate field");

    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(body, "steps");
    size_t n = 1;
    if (steps) {
        int n_steps = 0;
        for (const cJSON *c = body->child; c; c = c->next) {
            const char *key = c->string ? c->string : "";
            if (strcmp(key, "encoding") == 0)
                continue;
            if (strcmp(key, "steps") == 0) {
                if (++n_steps > 1)
                    return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "steps",
                                             "steps: duplicate field");
                continue;
            }
            if (in_list(key, step_fields, NELEM(step_fields))
                || in_list(key, tensor_fields, NELEM(tensor_fields)))
                return kvd_api_error_set(err, 400, KVD_ERR_INVALID, key,
                                         "%s: not allowed beside \"steps\" (put it inside each "
                                         "step)", key);
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, key,
                                     "%.80s: unknown field (allowed beside steps: encoding)",
                                     key);
        }
        if (!cJSON_IsArray(steps))
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "steps",
                                     "steps: expected an array of step objects, got %s",
                                     kvd_json_type_name(steps));
        int count = cJSON_GetArraySize(steps);
        if (count <= 0)
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "steps",
                                     "steps: expected 1..%" PRIu32 " step objects, got none",
                                     lim->max_steps_per_request);
        /* Bounds the per-request bookkeeping (one output per step). */
        if ((uint64_t)count > lim->max_steps_per_request)
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, "steps",
                                     "steps: expected 1..%" PRIu32 " step objects, got %d",
                                     lim->max_steps_per_request, count);
        n = (size_t)count;
    }

    req->layers = calloc(n, sizeof *req->layers);
    if (!req->layers)
        return kvd_api_error_set(err, 500, KVD_ERR_INTERNAL, NULL,
                                 "out of memory for %zu steps", n);
    req->n_layers = n;
    req->encoding = (kvd_wire_encoding)enc;

    if (!steps) {
        if (parse_step(body, "", true, cfg, lim, &req->layers[0], err) != 0)
            goto fail;
        return 0;
    }
    size_t i = 0;
    char prefix[48];
    for (const cJSON *s = steps->child; s; s = s->next, i++) {
        snprintf(prefix, sizeof prefix, "steps[%zu].", i);
        if (!cJSON_IsObject(s)) {
            snprintf(prefix, sizeof prefix, "steps[%zu]", i);
            kvd_api_error_set(err, 400, KVD_ERR_INVALID, prefix,
                              "%s: expected a step object, got %s", prefix, kvd_json_type_name(s));
            goto fail;
        }
        if (parse_step(s, prefix, false, cfg, lim, &req->layers[i], err) != 0)
            goto fail;
    }
    return 0;

fail:
    kvd_step_request_free(req);
    return -1;
}

void kvd_step_request_free(kvd_step_request *req)
{
    if (!req)
        return;
    for (size_t i = 0; req->layers && i < req->n_layers; i++) {
        free(req->layers[i].k);
        free(req->layers[i].v);
        free(req->layers[i].k2);
        free(req->layers[i].v2);
        free(req->layers[i].q);
    }
    free(req->layers);
    memset(req, 0, sizeof *req);
}
