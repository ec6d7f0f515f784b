/* api/registry.c — the live sessions by id (loop thread): random 128-bit
 * hex ids (after the --id-prefix and a dash, if any), a chained hash that doubles as it fills, registering a new session
 * (id, created_at, summary) or freeing one, the per-session summaries
 * that listings and /metrics read without waiting for a session's queue,
 * and the account of heap sessions hold outside the pool (--max-session-heap). */
#include "api/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/random.h"
#include "cache/session.h"

_Static_assert(KVD_SESSION_ID_MAX == KVD_ID_PREFIX_MAX + 1 + KVD_SESSION_ID_HEX,
               "the longest id is a prefix, a dash and the random hex");
_Static_assert(KVD_DTYPE_COUNT == KVD_DTYPE_KIVI4 + 1, "KVD_DTYPE_COUNT counts every kvd_dtype");

bool kvd_api_id_prefix_valid(const char *p)
{
    size_t n = strlen(p);
    if (n == 0 || n > KVD_ID_PREFIX_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9') || p[i] == '-'))
            return false;
    return true;
}

/* Called with ids of KVD_SESSION_ID_HEX..KVD_SESSION_ID_MAX characters. */
static size_t id_hash(const char *id)
{
    /* The last 32 digits are uniformly random hex (a prefix is the same for
     * every id of this process): 16 of them are a fine hash. */
    id += strlen(id) - KVD_SESSION_ID_HEX;
    uint64_t h = 0;
    for (int i = 0; i < 16 && id[i]; i++)
        h = (h << 4) | (uint64_t)(id[i] <= '9' ? id[i] - '0' : id[i] - 'a' + 10);
    return (size_t)h;
}

api_session *kvd__api_registry_find(const kvd_api *api, const char *id)
{
    if (!id)
        return NULL;
    const size_t len = strlen(id);
    if (len < KVD_SESSION_ID_HEX || len > KVD_SESSION_ID_MAX)
        return NULL;
    for (api_session *s = api->buckets[id_hash(id) & (api->n_buckets - 1)]; s; s = s->hash_next)
        if (strcmp(s->id, id) == 0)
            return s;
    return NULL;
}

/* Doubles the table when it averages more than one session per bucket. */
static int registry_grow(kvd_api *api)
{
    size_t n = api->n_buckets * 2;
    api_session **b = calloc(n, sizeof *b);
    if (!b)
        return -ENOMEM;
    for (size_t i = 0; i < api->n_buckets; i++) {
        api_session *s = api->buckets[i];
        while (s) {
            api_session *next = s->hash_next;
            size_t j = id_hash(s->id) & (n - 1);
            s->hash_next = b[j];
            b[j] = s;
            s = next;
        }
    }
    free(api->buckets);
    api->buckets = b;
    api->n_buckets = n;
    return 0;
}

/* Index of the first session in api->sorted whose id compares greater than
 * (or, with or_equal, equal to) id. */
static size_t sorted_lower(const kvd_api *api, const char *id, bool or_equal)
{
    size_t lo = 0, hi = api->n_sessions;
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        const int c = strcmp(api->sorted[mid]->id, id);
        if (c < 0 || (c == 0 && !or_equal))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

size_t kvd__api_registry_first_after(const kvd_api *api, const char *after)
{
    return after[0] ? sorted_lower(api, after, false) : 0;
}

void kvd__api_registry_unlist(kvd_api *api, const api_session *s)
{
    /* Called with n_sessions still counting s. */
    const size_t i = sorted_lower(api, s->id, true);
    if (i < api->n_sessions && api->sorted[i] == s)
        memmove(&api->sorted[i], &api->sorted[i + 1], (api->n_sessions - i - 1) * sizeof *api->sorted);
}

static int registry_insert(kvd_api *api, api_session *s)
{
    if (api->n_sessions >= api->n_buckets && registry_grow(api) != 0)
        return -ENOMEM;
    if (api->n_sessions >= api->cap_sorted) {
        const size_t cap = api->cap_sorted ? 2 * api->cap_sorted : 64;
        api_session **p = realloc(api->sorted, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        api->sorted = p;
        api->cap_sorted = cap;
    }
    const size_t at = sorted_lower(api, s->id, true);
    memmove(&api->sorted[at + 1], &api->sorted[at], (api->n_sessions - at) * sizeof *api->sorted);
    api->sorted[at] = s;
    size_t i = id_hash(s->id) & (api->n_buckets - 1);
    s->hash_next = api->buckets[i];
    api->buckets[i] = s;
    api->n_sessions++;
    return 0;
}

void kvd__api_registry_remove(kvd_api *api, api_session *s)
{
    api_session **p = &api->buckets[id_hash(s->id) & (api->n_buckets - 1)];
    while (*p && *p != s)
        p = &(*p)->hash_next;
    if (*p) {
        *p = s->hash_next;
        kvd__api_registry_unlist(api, s);
        api->n_sessions--;
    }
    s->hash_next = NULL;
}

/* "<prefix>-<32 hex>" with --id-prefix, else the 32 hex digits alone. */
static int new_session_id(const kvd_api *api, char out[KVD_SESSION_ID_MAX + 1])
{
    unsigned char raw[KVD_SESSION_ID_HEX / 2];
    int rc = kvd__api_random_bytes(raw, sizeof raw);
    if (rc != 0)
        return rc;
    size_t at = strlen(api->id_prefix);
    if (at) {
        memcpy(out, api->id_prefix, at);
        out[at++] = '-';
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof raw; i++) {
        out[at + 2 * i] = hex[raw[i] >> 4];
        out[at + 2 * i + 1] = hex[raw[i] & 15];
    }
    out[at + KVD_SESSION_ID_HEX] = '\0';
    return 0;
}

void kvd__api_session_free(kvd_api *api, api_session *s)
{
    kvd__api_session_unaccount(s);
    kvd_session_destroy(s->cache, api->pool);
    kvd_session_destroy(s->shadow, api->pool);
    free(s);
}

size_t kvd__api_session_heap(const api_session *s)
{
    return sizeof *s + (s->cache ? kvd_session_heap_bytes(s->cache) : 0) +
           (s->shadow ? kvd_session_heap_bytes(s->shadow) : 0);
}

/* Refreshes the summary that GET /v1/sessions reads without the queue. */
void kvd__api_session_summarize(api_session *s)
{
    atomic_store(&s->tokens_summary, kvd_session_tokens(s->cache));
    atomic_store(&s->pages_summary, kvd_session_pages(s->cache));
    atomic_store(&s->shadow_pages_summary, s->shadow ? kvd_session_pages(s->shadow) : 0);
    /* The account moves by the difference; adding before subtracting
     * keeps it from wrapping below zero in between. */
    const size_t heap = kvd__api_session_heap(s);
    const size_t old = atomic_exchange(&s->heap_summary, heap);
    if (s->heap_account) {
        atomic_fetch_add(s->heap_account, heap);
        atomic_fetch_sub(s->heap_account, old);
    }
}

void kvd__api_session_unaccount(api_session *s)
{
    const size_t old = atomic_exchange(&s->heap_summary, 0);
    if (s->heap_account)
        atomic_fetch_sub(s->heap_account, old);
}

bool kvd__api_session_heap_refused(kvd_api *api, size_t need, kvd_response *resp)
{
    const size_t budget = api->opt.max_session_heap;
    const size_t held = atomic_load(&api->heap_bytes);
    if (need <= budget && held <= budget - need)
        return false;
    kvd_api_error err;
    if (need > budget) {
        /* Never fits, however many sessions go away: no Retry-After. */
        kvd_api_error_set(&err, 413, KVD_ERR_TOO_LARGE, NULL,
                          "this session needs %zu bytes of heap outside the pool, more than the "
                          "whole --max-session-heap (%zu bytes)", need, budget);
    } else {
        atomic_fetch_add_explicit(&api->stats.rejected_session_heap, 1, memory_order_relaxed);
        kvd_api_error_set(&err, 503, KVD_ERR_EXHAUSTED, NULL,
                          "session heap budget reached (--max-session-heap %zu bytes: %zu held by "
                          "live sessions, this session needs %zu)", budget, held, need);
    }
    kvd_response_error(resp, &err);
    return true;
}

bool kvd__api_session_limit_reached(kvd_api *api, kvd_response *resp)
{
    if (!api->opt.max_sessions || api->n_sessions < api->opt.max_sessions)
        return false;
    atomic_fetch_add_explicit(&api->stats.rejected_max_sessions, 1, memory_order_relaxed);
    kvd_api_error err;
    kvd_api_error_set(&err, 503, KVD_ERR_EXHAUSTED, NULL,
                      "session limit reached (--max-sessions %" PRIu32 ")", api->opt.max_sessions);
    kvd_response_error(resp, &err);
    return true;
}

/* Registers a new session around `cache` (and its shadow copy, if any) with
 * a fresh id. Returns it, or NULL with resp set (both are then destroyed). */
api_session *kvd__api_session_register(kvd_api *api, kvd_session *cache, kvd_session *shadow,
                                       kvd_response *resp)
{
    return kvd__api_session_register_as(api, cache, shadow, NULL, resp);
}

/* id NULL: a fresh random one. */
api_session *kvd__api_session_register_as(kvd_api *api, kvd_session *cache, kvd_session *shadow,
                                          const char *id, kvd_response *resp)
{
    api_session *s = calloc(1, sizeof *s);
    if (!s) {
        kvd_session_destroy(cache, api->pool);
        kvd_session_destroy(shadow, api->pool);
        kvd__api_respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory creating the session");
        return NULL;
    }
    s->cache = cache;
    s->shadow = shadow;
    s->heap_account = &api->heap_bytes; /* summarized below, once registered */
    if (id)
        snprintf(s->id, sizeof s->id, "%s", id);
    while (!id) {
        if (new_session_id(api, s->id) != 0) {
            kvd__api_session_free(api, s);
            kvd__api_respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "no randomness for a session id");
            return NULL;
        }
        if (!kvd__api_registry_find(api, s->id)) /* 2^-128 per try, but free to check */
            break;
    }
    if (registry_insert(api, s) != 0) {
        kvd__api_session_free(api, s);
        kvd__api_respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory creating the session");
        return NULL;
    }
    s->created_at = kvd__api_now(api);
    atomic_store(&s->last_used_at, s->created_at);
    kvd__api_session_summarize(s);
    atomic_fetch_add_explicit(&api->stats.sessions_created, 1, memory_order_relaxed);
    return s;
}

void kvd__api_session_drop(kvd_api *api, api_session *s)
{
    kvd__api_registry_remove(api, s);
    kvd__api_session_free(api, s);
    atomic_fetch_sub_explicit(&api->stats.sessions_created, 1, memory_order_relaxed);
}

size_t kvd_api_session_count(const kvd_api *api)
{
    return api->n_sessions;
}

size_t kvd_api_session_heap_bytes(const kvd_api *api)
{
    return atomic_load(&api->heap_bytes);
}

size_t kvd_api_session_heap_budget(const kvd_api *api)
{
    return api->opt.max_session_heap;
}

void kvd_api_cache_totals(const kvd_api *api, double tokens[KVD_DTYPE_COUNT],
                          double bytes[KVD_DTYPE_COUNT], double *shadow_bytes)
{
    for (int d = 0; d < KVD_DTYPE_COUNT; d++)
        tokens[d] = bytes[d] = 0;
    *shadow_bytes = 0;
    const double pb = (double)api->opt.page_bytes;
    for (size_t i = 0; i < api->n_buckets; i++)
        for (const api_session *s = api->buckets[i]; s; s = s->hash_next) {
            int d = (int)s->cache->config.cache.dtype;
            tokens[d] += (double)atomic_load(&s->tokens_summary);
            bytes[d] += (double)atomic_load(&s->pages_summary) * pb;
            *shadow_bytes += (double)atomic_load(&s->shadow_pages_summary) * pb;
        }
}
