/* tests/support/cache_session.h — a kvd session with a cache policy (or a
 * fork of one) shadowed by the evicting reference (ref_cache.h): each step is
 * tried on a copy of the reference first, sent, and on 200 the copy becomes
 * the reference and the answer ("o", "tokens", "evicted") is checked against
 * it; on any other status the reference is left as it was. Random steps are
 * redrawn while an eviction decision of theirs is a near tie (margin below
 * min_margin), so every decision the test checks is one f32 rounding cannot
 * flip. */
#ifndef KVD_TEST_CACHE_SESSION_H
#define KVD_TEST_CACHE_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>

#include "tests/support/http_client.h"
#include "tests/support/kvd_data.h"
#include "tests/support/ref_cache.h"

/* How many times a random step is redrawn for a near tie before the test
 * gives up (a sign that min_margin is far too large for the data). */
#define CACHE_SESSION_MAX_REDRAWS 1000

typedef struct cache_session {
    int port;
    char *id;                 /* 32 hex chars, malloc'd */
    ref_cache *ref;
    size_t kv_row, q_row;     /* kv_heads*head_dim, heads*head_dim */
    rng r;
    double tol_rel;           /* allowed max |o - ref| / max|v| */
    double min_margin;        /* smallest eviction decision gap accepted from random data */
    size_t steps_sent;        /* successful step requests */
    size_t redraws;           /* random steps (or l2norm key rows) redrawn for a near tie */
    const char *encoding;     /* "b64" (default) or "json" for responses */
} cache_session;

/* The eviction name as the API spells it. */
const char *cache_policy_name(ref_evict_policy p);

/* Creates the session on the server (asserting 201): shape and "cache"
 * ({"eviction", "budget", "sink", "recent"} from cfg; nothing for
 * REF_EVICT_NONE) plus extra_json (e.g. "\"ttl_seconds\":1", or NULL). */
void cache_session_create(cache_session *cs, int port, const ref_cache_config *cfg, const char *extra_json,
                          uint64_t seed, double tol_rel, double min_margin);
/* A session that already exists on the server (a fork) whose state is a
 * copy of `ref` (cloned). */
void cache_session_adopt(cache_session *cs, int port, const char *id, const ref_cache *ref, uint64_t seed,
                         double tol_rel, double min_margin);
/* Frees the local state (does not delete the server's session). */
void cache_session_free(cache_session *cs);

/* Random tensors for one entry: k, v in [-1, 1), q in [-2, 2). Free with
 * cache_spec_free. */
step_spec cache_spec(cache_session *cs, long layer, size_t m, size_t m_q, const char *mask, bool b64);
void cache_spec_free(step_spec *s);

/* Sends one entry. On 200 the reference takes the step and the answer is
 * checked (o within tol_rel * max|v|, "tokens", "evicted"); *res gets what
 * the reference says the entry did. Any status other than 200 leaves the
 * reference unchanged. Returns the response (caller frees). */
http_response *cache_session_try(cache_session *cs, const step_spec *s, ref_entry_result *res, const char *what);
/* cache_session_try that asserts 200. */
ref_entry_result cache_session_step(cache_session *cs, const step_spec *s, const char *what);
/* Several entries in one {"steps": [...]} request (asserting 200): each
 * entry's result (its own "o", "tokens" and "evicted" after that entry's
 * eviction) is checked; res (n results, or NULL) gets the reference's. */
void cache_session_steps(cache_session *cs, const step_spec *specs, size_t n, ref_entry_result *res,
                         const char *what);
/* A random entry, redrawn while its decision margin is below min_margin,
 * sent and checked (asserting 200). */
ref_entry_result cache_session_random_step(cache_session *cs, long layer, size_t m, size_t m_q, const char *mask,
                                           const char *what);

/* Asserts the server's stats match the reference: "tokens", "appended",
 * "evicted" (summed over streams) and each layer's per-kv-head "tokens" and
 * "evicted". Returns the stats (caller cJSON_Deletes). */
cJSON *cache_session_check_stats(cache_session *cs, const char *what);

/* Slots of head_dim f32 keys and values one page holds, from the page layout
 * cache/stream.h documents: [K: spp x d f32][V: spp x d f32][meta: spp x 16
 * bytes], each block starting on a 64-byte boundary. Tests cross-check it
 * against the "pages" kvd reports. */
size_t kvd_slots_per_page(size_t page_bytes, size_t head_dim);
/* ceil(tokens / spp). */
size_t kvd_pages_for(size_t tokens, size_t spp);

#endif
