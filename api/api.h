/* api/api.h — the HTTP API's handlers, independent of any event loop.
 * The server routes a request here on its loop thread. A handler answers at
 * once (kvd_response filled) or defers: work that computes (a step) becomes a
 * kvd_api_job that the server runs on a worker thread and hands back on the
 * loop thread. Jobs of one session run one at a time in arrival order: the API
 * keeps each session's queue, touched only on the loop thread. */
#ifndef KVD_API_H
#define KVD_API_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/errors.h"
#include "common/clock.h"
#include "common/fifo.h"
#include "common/histogram.h"

/* The page pool (cache/pool.h); the API only hands out a pointer to it. */
typedef struct kvd_pool kvd_pool;
/* API keys (api/auth.h). */
typedef struct kvd_auth_keys kvd_auth_keys;

typedef enum kvd_route {
    KVD_ROUTE_SESSION_CREATE,   /* POST   /v1/sessions */
    KVD_ROUTE_SESSION_LIST,     /* GET    /v1/sessions */
    KVD_ROUTE_SESSION_GET,      /* GET    /v1/sessions/{id} */
    KVD_ROUTE_SESSION_DELETE,   /* DELETE /v1/sessions/{id} */
    KVD_ROUTE_SESSION_STEP,     /* POST   /v1/sessions/{id}/step */
    KVD_ROUTE_SESSION_FORK,     /* POST   /v1/sessions/{id}/fork */
    KVD_ROUTE_SESSION_SNAPSHOT, /* GET    /v1/sessions/{id}/snapshot */
    KVD_ROUTE_SESSION_RESTORE,  /* POST   /v1/sessions/restore */
    KVD_ROUTE_BATCH,            /* POST   /v1/batch */
    KVD_ROUTE_INFO,             /* GET    /v1/info */
    KVD_ROUTE_HEALTHZ,          /* GET    /healthz */
    KVD_ROUTE_READYZ,           /* GET    /readyz */
    KVD_ROUTE_METRICS,          /* GET    /metrics */
    KVD_ROUTE_UNKNOWN,          /* no such path: 404 */
    KVD_ROUTE_COUNT
} kvd_route;

/* Route label for metrics ("session_step", ...); never holds a session id. */
const char *kvd_route_label(kvd_route r);

typedef struct kvd_response {
    int status;
    const char *content_type;  /* static string */
    char *body;                /* malloc'd; owner frees */
    size_t body_len;
    unsigned retry_after_s;    /* > 0 adds a Retry-After header */
    const char *allow;         /* static; adds an Allow header (405) */
} kvd_response;

/* Fills resp with a JSON error body (falls back to a static body if even
 * that allocation fails). */
void kvd_response_error(kvd_response *resp, const kvd_api_error *err);

typedef struct kvd_api_request {
    kvd_route route;
    const char *session_id;    /* the {id} path segment, NUL-terminated, or NULL */
    const char *query;         /* after '?', NUL-terminated, "" if none */
    const char *content_type;  /* header value or NULL */
    const char *authorization; /* header value or NULL; checked when keys are set (api/auth.h) */
    char *body;                /* malloc'd, NUL-terminated at body_len, or NULL
                                  when empty: kvd_api_handle takes ownership
                                  (a queued step keeps it without a copy; it
                                  is freed once parsed, or at once otherwise) */
    size_t body_len;
} kvd_api_request;

/* The least --max-sessions 0 derives (see kvd_api_options.max_sessions). */
#define KVD_MIN_DEFAULT_SESSIONS 1024u
/* The least --max-session-heap 0 derives (see kvd_api_options.max_session_heap):
 * room for seven empty sessions of the largest shape (8.5 MiB each). */
#define KVD_MIN_SESSION_HEAP ((size_t)64 << 20)

/* --id-prefix (kvd_api_options.id_prefix): with a prefix P a session id is
 * "P-" followed by the 32 hex digits, so a router can send every request
 * naming a session to the replica that made it (deploy/nginx). P is 1 to
 * KVD_ID_PREFIX_MAX of [a-z0-9-]; the longest id is KVD_SESSION_ID_MAX. */
#define KVD_ID_PREFIX_MAX 31
#define KVD_SESSION_ID_MAX (KVD_ID_PREFIX_MAX + 1 + 32)
/* True if p is a valid non-empty id prefix. */
bool kvd_api_id_prefix_valid(const char *p);

typedef struct kvd_api_options {
    size_t memory_bytes;
    size_t page_bytes;
    unsigned threads;
    size_t max_body;
    uint32_t max_sessions;     /* 0 = derived: max(pool pages, KVD_MIN_DEFAULT_SESSIONS) */
    size_t max_session_heap;   /* bytes of ordinary heap all sessions may hold outside
                                  the pool (kvd_session_heap_bytes, shadow copies and
                                  registry entries); a create or fork that would pass
                                  it is refused. 0 = derived: max(KVD_MIN_SESSION_HEAP,
                                  memory_bytes / 4) */
    unsigned session_queue;    /* pending requests per session before 429 */
    double session_ttl;        /* default ttl_seconds of a session (0 = 600) */
    bool on_full_evict;        /* --on-full evict: a full pool takes tokens from
                                  idle LRU sessions with a policy before a 503 */
    kvd_clock_fn now;          /* the wall clock (unix seconds) of created_at,
                                  last use and expiry; NULL = kvd_clock_unix */
    void *now_ctx;             /* passed to now */
    const kvd_auth_keys *keys; /* NULL or empty: no authentication; else every
                                  request needs one of them and a session is
                                  its creator's (api/auth.h). Borrowed: must
                                  outlive the API */
    const char *id_prefix;     /* NULL or "": ids are 32 hex digits; else
                                  "<id_prefix>-<32 hex>" (copied at create) */
    const struct kvd_parallel *parallel; /* NULL: each step on its worker alone;
                                  else a large step's attention is split over
                                  it (cache/step.h). Borrowed */
} kvd_api_options;

/* Counters the API keeps for /metrics (read with relaxed atomics). */
typedef struct kvd_api_stats {
    atomic_uint_fast64_t sessions_created;
    atomic_uint_fast64_t step_tokens;       /* new tokens received: m per layer entry */
    atomic_uint_fast64_t steps;             /* layer entries run (DESIGN.md §1) */
    atomic_uint_fast64_t rejected_pool_full;
    atomic_uint_fast64_t rejected_queue_full;
    atomic_uint_fast64_t rejected_max_sessions;
    atomic_uint_fast64_t rejected_session_heap; /* creates and forks past --max-session-heap */
    atomic_uint_fast64_t sessions_expired;  /* idle past their ttl_seconds */
    atomic_uint_fast64_t evictions[5];      /* tokens evicted, by kvd_eviction policy */
    atomic_uint_fast64_t reclaimed_tokens;  /* evicted under --on-full evict */
    atomic_uint_fast64_t tensor_row_pages;  /* pool pages lent to applied steps for a quantized
                                               four-cache's f32 row copy (cache/plan.h) */
    kvd_histogram step_seconds[2];          /* compute time of a step request, by
                                               kvd_attention_kind (standard, tensor) */
    kvd_histogram shadow_relative_error;    /* per entry with queries, shadow sessions */
    kvd_histogram phase_seconds[4];         /* a step request's (a batch item's) time by
                                               phase, indexed by KVD_PHASE_* */
} kvd_api_stats;

/* Where a step's server time goes (kvd_step_phase_seconds{phase}): parse of
 * the body, waiting in its session's queue and the executor's, the step
 * engine (append + attention), render of the answer. */
enum { KVD_PHASE_PARSE, KVD_PHASE_QUEUE, KVD_PHASE_ATTEND, KVD_PHASE_RENDER };

typedef struct kvd_api kvd_api;

/* A unit of deferred work. The API allocates it (inside a larger private
 * struct); the executor may use `link` for its queues while it holds the job. */
typedef struct kvd_api_job {
    kvd_fifo_link link;        /* the executor's queue link while it holds the job */
    kvd_api *api;              /* pass to kvd_api_job_done */
} kvd_api_job;

/* How the server runs deferred work: `submit` must eventually call
 * kvd_api_job_run(job) on a worker thread and then kvd_api_job_done(api, job)
 * on the loop thread. */
typedef void (*kvd_api_submit_fn)(void *executor, kvd_api_job *job);
/* How the API answers a request it deferred (called on the loop thread, once
 * per deferred request; takes ownership of resp->body). */
typedef void (*kvd_api_respond_fn)(void *reply, kvd_response *resp);

/* Returns 0 and *out, or a negative errno (-ENOMEM, -EINVAL for a pool that
 * cannot be made). Destroy after the loop stops and no job is in flight. */
int kvd_api_create(const kvd_api_options *opt, kvd_api_submit_fn submit, void *executor,
                   kvd_api_respond_fn respond, kvd_api **out);
void kvd_api_destroy(kvd_api *api);

/* Handles one request on the loop thread. Returns true with *resp filled when
 * answered now; false when deferred: `respond(reply, ...)` will be called
 * later with the answer (reply is the server's opaque handle). Always takes
 * req->body (see kvd_api_request). Every route but a step refuses a body
 * over KVD_SMALL_BODY_MAX with 413 before parsing it. */
bool kvd_api_handle(kvd_api *api, const kvd_api_request *req, void *reply, kvd_response *resp);

void kvd_api_job_run(kvd_api_job *job);                 /* worker thread */
void kvd_api_job_done(kvd_api *api, kvd_api_job *job);  /* loop thread; answers, frees */

/* --state-dir (api/snapshot.c, loop thread, no job running or queued: after
 * the drain). snapshot_each calls fn once per live session with its
 * snapshot bytes (the owner's key digest inside, so a restart gives it back
 * to the same key), or with NULL/0 when it cannot be written (out of memory,
 * or a kind the format cannot hold yet); returns how many calls failed (fn
 * returned non-zero). */
typedef int (*kvd_api_snapshot_fn)(void *ctx, const char *id, const void *bytes, size_t len);
int kvd_api_snapshot_each(kvd_api *api, kvd_api_snapshot_fn fn, void *ctx);
/* Restores one snapshot with its id and its owner (by key digest; a
 * snapshot whose key is no longer configured is refused). 0 and the id in
 * id[id_len], or -1 with the reason (status and error body) in why. */
int kvd_api_restore(kvd_api *api, const void *bytes, size_t len, char *id, size_t id_len, char *why,
                    size_t why_len);

/* Readiness: false while fewer than 1% of pool pages are free and nothing can
 * be reclaimed (no expired session; with --on-full evict, no idle session
 * whose policy could free a page). Loop thread. */
bool kvd_api_ready(const kvd_api *api);

/* Expires idle sessions whose ttl_seconds have passed by the API's clock
 * (loop thread, called about once a second by the server). Returns how many. */
size_t kvd_api_expire(kvd_api *api);
const kvd_pool *kvd_api_pool(const kvd_api *api);
const kvd_api_stats *kvd_api_stats_get(const kvd_api *api);
/* Live sessions (loop thread). */
size_t kvd_api_session_count(const kvd_api *api);
/* Heap held outside the pool by all live sessions, as last summarized
 * (any thread), and the budget it is checked against (--max-session-heap,
 * resolved). */
size_t kvd_api_session_heap_bytes(const kvd_api *api);
size_t kvd_api_session_heap_budget(const kvd_api *api);

/* Cached tokens and page bytes summed over live sessions, by cache dtype
 * (index kvd_dtype, KVD_DTYPE_COUNT entries), and the bytes of shadow copies
 * (loop thread; reads the summaries each step leaves). */
#define KVD_DTYPE_COUNT 7
void kvd_api_cache_totals(const kvd_api *api, double tokens[KVD_DTYPE_COUNT],
                          double bytes[KVD_DTYPE_COUNT], double *shadow_bytes);

#endif
