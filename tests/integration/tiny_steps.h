/* tests/integration/tiny_steps.h — the step bodies of the pool-pressure
 * tests (test_batch_evict.c, test_reclaim_room.c; test-only, header-only):
 * sessions of 2 query heads over 1 kv head at head_dim 16, recency with
 * SINK protected tokens for the evictable ones, step entries of m tokens
 * (as a single step's body, or with a session as a batch item) and a fill
 * in steps small enough for any body limit. */
#ifndef KVD_TESTS_INTEGRATION_TINY_STEPS_H
#define KVD_TESTS_INTEGRATION_TINY_STEPS_H

#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include <cJSON.h>

#include "tests/support/kvd_client.h"

#define HEAD_DIM 16
#define SINK 4
/* Recency sessions: reclaim takes each stream down to its SINK tokens. */
#define EVICTABLE                                                                                             \
    "{\"layers\":1,\"heads\":2,\"kv_heads\":1,\"head_dim\":16,\"cache\":{\"eviction\":\"recency\",\"budget\":0," \
    "\"sink\":4,\"recent\":0}}"

/* {"session"?,"layer":0,"k":[m x 16],"v":[m x 16],"q"?:[2 x 16]}: the body of
 * a step, or, with a session, of a batch item; q (one query, 2 heads) when
 * asked. Caller frees. */
static inline char *entry(const char *session, size_t m, bool query)
{
    size_t cap = 64 + 2 * m * HEAD_DIM * 8 + 2 * HEAD_DIM * 8, len = 0;
    char *s = malloc(cap);
    ck_assert_ptr_nonnull(s);
    len += (size_t)sprintf(s, "{");
    if (session)
        len += (size_t)sprintf(s + len, "\"session\":\"%s\",", session);
    len += (size_t)sprintf(s + len, "\"layer\":0");
    for (int kv = 0; kv < 2 && m; kv++) {
        len += (size_t)sprintf(s + len, ",\"%s\":[", kv ? "v" : "k");
        for (size_t i = 0; i < m * HEAD_DIM; i++)
            len += (size_t)sprintf(s + len, "%s%.2f", i ? "," : "", (double)((i * 7 + kv) % 13) / 13.0);
        len += (size_t)sprintf(s + len, "]");
    }
    if (query) {
        len += (size_t)sprintf(s + len, ",\"q\":[");
        for (size_t i = 0; i < 2 * HEAD_DIM; i++)
            len += (size_t)sprintf(s + len, "%s%.2f", i ? "," : "", (double)(i % 5) / 5.0);
        len += (size_t)sprintf(s + len, "]");
    }
    sprintf(s + len, "}");
    return s;
}

/* Appends m tokens to a session with single steps (each under 64 KiB). */
static inline void fill(int port, const char *id, size_t m)
{
    for (size_t done = 0; done < m;) {
        const size_t n = m - done < 112 ? m - done : 112;
        char *body = entry(NULL, n, false);
        cJSON_Delete(kvd_step_ok(port, id, body));
        free(body);
        done += n;
    }
}

#endif
