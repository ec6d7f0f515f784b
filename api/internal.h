/* api/internal.h — what the api sources share and nobody else sees: the API
 * state, the registry entry of a session with its request queue, and jobs.
 * Loop-thread-only fields are marked; a worker touches a session only while
 * that session's one running job is on it. */
#ifndef KVD_API_INTERNAL_H
#define KVD_API_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>

#include "api/api.h"
#include "api/limits.h"
#include "api/step_body.h"
#include "common/clock.h"
#include "common/fifo.h"
#include "cache/pool.h"
#include "cache/session.h"
#include "cache/step.h"

#define KVD_SESSION_ID_HEX 32 /* 128-bit random id, lowercase hex, after
                                 the optional "<--id-prefix>-" (api.h) */

/* Every route but a step takes no body or a small one (create: a few
 * hundred bytes; fork: {}), parsed on the loop thread: the bound keeps that
 * short whatever --max-body is. */
#define KVD_SMALL_BODY_MAX (64u * 1024u)

typedef enum { JOB_STEP, JOB_STATS, JOB_DELETE, JOB_FORK, JOB_SNAPSHOT, JOB_BATCH } api_job_kind;

typedef struct api_batch api_batch; /* api/batch.c */

typedef struct api_session api_session;

typedef struct api_job {
    kvd_api_job base;          /* must be first: the executor's view */
    api_job_kind kind;
    api_session *session;
    void *reply;               /* server's handle for the deferred answer */
    kvd_fifo_link queue_link;  /* in its session's queue (loop) */
    char *body;                /* JOB_STEP: the request's body, taken from the server
                                  (NUL-terminated), freed once parsed */
    size_t body_len;
    kvd_response resp;         /* filled by run, sent by done */
    kvd_step_request req;      /* JOB_STEP: the parsed body, once parsed */
    bool parsed, multi;        /* req is valid; the body used "steps" */
    bool pool_full;            /* JOB_STEP (or JOB_BATCH item next_item) failed for want of pages ... */
    size_t need_pages;         /* ... this many */
    bool retried;              /* already re-run once after reclaiming pages */
    bool applied;              /* JOB_STEP changed the session */
    double seconds;            /* JOB_STEP compute time */
    double queued_at;          /* kvd_clock_mono when queued (the queue phase) */
    api_batch *batch;          /* JOB_BATCH: the POST /v1/batch it is part of, */
    size_t *items;             /* ... the indices of this session's items in it, */
    size_t n_items;            /* ... in request order; */
    size_t next_item;          /* ... the first not yet answered (a job waiting for a
                                  reclaim resumes there), */
    bool item_retried;         /* ... which already ran again after a reclaim, */
    bool item_held;            /* ... and whose parsed entry is kept in item_entry */
    kvd_step_entry item_entry;
} api_job;

/* Shadow mode's running account of output error (DESIGN.md §3). Written by
 * the session's running job, read by the loop when the session is idle. */
typedef struct api_shadow_stats {
    uint64_t steps;
    double last_relative_error, sum_relative_error, max_abs_error;
} api_shadow_stats;

struct api_session {
    char id[KVD_SESSION_ID_MAX + 1];
    kvd_session *cache;
    kvd_session *shadow;       /* "shadow": true: an exact f32 copy, no eviction; else NULL */
    api_shadow_stats shadow_stats;
    api_session *hash_next;    /* registry chain (loop thread) */
    /* Request queue: jobs wait here until the previous one finished (loop). */
    kvd_fifo queue;
    bool running;              /* a job of this session is on a worker (loop) */
    bool deleted;              /* out of the registry; freed after its last job */
    double created_at;         /* unix seconds */
    uint32_t owner;            /* the key that created it (api/auth.h); only
                                  requests with that key see the session */
    /* Written by the job that runs, read by the loop for listings. */
    _Atomic double last_used_at;
    atomic_uint_fast64_t steps;
    _Atomic double last_step_seconds;
    atomic_size_t tokens_summary;  /* kvd_session_tokens after the last step */
    atomic_size_t pages_summary;   /* kvd_session_pages after the last step */
    atomic_size_t shadow_pages_summary; /* pages of the shadow copy */
    atomic_size_t heap_summary;    /* kvd__api_session_heap at the last summary: its
                                      share of *heap_account (0 once unaccounted) */
    atomic_size_t *heap_account;   /* the API's heap_bytes (set at register) */
};

struct kvd_api {
    kvd_api_options opt;
    char id_prefix[KVD_ID_PREFIX_MAX + 1]; /* opt.id_prefix, copied; "" = none */
    kvd_api_limits limits;
    kvd_pool *pool;
    kvd_api_submit_fn submit;
    void *executor;
    kvd_api_respond_fn respond;
    kvd_api_stats stats;
    /* Registry: chained hash on the id (ids are random, so any 8 bytes hash). */
    api_session **buckets;
    size_t n_buckets;          /* power of two */
    size_t n_sessions;
    /* The same sessions in ascending id order, for listings: a page is a
     * binary search for `after` and `limit` reads, never a sort. Kept on
     * insert and remove (one memmove of pointers each). [cap_sorted] */
    api_session **sorted;
    size_t cap_sorted;
    /* Sum of the live sessions' heap_summary: ordinary heap they hold outside
     * the pool, checked against opt.max_session_heap on create and fork.
     * Steps (workers) update it through kvd__api_session_summarize. */
    atomic_size_t heap_bytes;
};

/* api/instance.c: the API's wall clock in unix seconds (opt.now, or
 * kvd_clock_unix): every created_at, last use and expiry reads it. */
double kvd__api_now(const kvd_api *api);

/* api/response.c: takes ownership of json text (malloc'd) as the body with
 * the status. */
void kvd__api_response_json(kvd_response *resp, int status, char *json);
/* A JSON error body with a fixed message. */
void kvd__api_respond_error(kvd_response *resp, int status, const char *code,
                            const char *field, const char *message);
/* Renders and deletes obj; a failure to render becomes a 500. */
void kvd__api_respond_cjson(kvd_response *resp, int status, cJSON *obj);
/* 201 {"id", "config"[, "parent"]} for a registered session. */
void kvd__api_respond_created(api_session *s, const char *parent, kvd_response *resp);

/* api/registry.c (loop thread). find: the live session with this id or
 * NULL; remove: out of the registry (not freed); unlist: out of the sorted
 * order only (for a caller that unlinked it from its hash chain itself).
 * first_after: index in api->sorted of the first id greater than `after`
 * ("" = 0). */
api_session *kvd__api_registry_find(const kvd_api *api, const char *id);
void kvd__api_registry_remove(kvd_api *api, api_session *s);
void kvd__api_registry_unlist(kvd_api *api, const api_session *s);
size_t kvd__api_registry_first_after(const kvd_api *api, const char *after);
/* Registers a new session around `cache` (and its shadow copy, if any) with
 * a fresh id. Returns it, or NULL with resp set (both are then destroyed). */
api_session *kvd__api_session_register(kvd_api *api, kvd_session *cache, kvd_session *shadow,
                                       kvd_response *resp);
/* The same with the given id (a restore keeps its id); the caller has
 * checked that no live session has it. */
api_session *kvd__api_session_register_as(kvd_api *api, kvd_session *cache, kvd_session *shadow,
                                          const char *id, kvd_response *resp);
/* Destroys the session's caches (pages back to the pool) and frees it. */
void kvd__api_session_free(kvd_api *api, api_session *s);
/* Takes a just-registered session whose 201 could not be rendered back out
 * of the registry and frees it, so a 500 create or fork leaves nothing. */
void kvd__api_session_drop(kvd_api *api, api_session *s);
/* At --max-sessions: counts the rejection, fills resp with a 503, true. */
bool kvd__api_session_limit_reached(kvd_api *api, kvd_response *resp);
/* Stores the session's token and page counts (cache and shadow) where
 * listings and /metrics read them without waiting for its queue, and its
 * heap in the API's heap account. Called by whoever just changed the
 * session (a step's worker, the loop). */
void kvd__api_session_summarize(api_session *s);
/* The heap a session holds outside the pool: kvd_session_heap_bytes of its
 * cache and shadow copy plus its registry entry (the caller owns s now). */
size_t kvd__api_session_heap(const api_session *s);
/* Takes the session's share out of the heap account (before its caches are
 * destroyed; kvd__api_session_free does it too). */
void kvd__api_session_unaccount(api_session *s);
/* A new session needing `need` bytes of heap (kvd_session_heap_bytes_new,
 * kvd_session_fork_heap_bytes, plus the entry) would pass
 * --max-session-heap: counts it, fills resp (503 + Retry-After; 413 when
 * need alone is over the budget, which no wait can fix), true. */
bool kvd__api_session_heap_refused(kvd_api *api, size_t need, kvd_response *resp);

/* api/queue.c (loop thread). enqueue: queues a job of `kind` for the
 * session (a step takes req->body, setting it NULL) and pumps; false with resp set (429, 500)
 * if answered now. pump: runs what the queue allows (cheap jobs inline, one
 * step on a worker); frees a deleted session once its queue is empty. */
bool kvd__api_enqueue(kvd_api *api, api_session *s, api_job_kind kind,
                      kvd_api_request *req, void *reply, kvd_response *resp);
void kvd__api_session_pump(kvd_api *api, api_session *s);
api_job *kvd__api_queue_pop(api_session *s);
/* Hands job->resp to the server's respond callback and frees the job. */
void kvd__api_answer_job(kvd_api *api, api_job *job);
void kvd__api_job_free(api_job *job);

/* api/step.c: runs a step job on a worker thread. */
void kvd__api_step_run(kvd_api *api, api_job *job);

/* Factored out of the step path for api/batch.c: one entry's response text
 * ({"o"[, "lse"], "tokens", "evicted"[, "shadow"]}, malloc'd; NULL when an
 * allocation failed), the same writer a step's answer uses, and the
 * accounting of an applied step of n_entries (session and API counters,
 * shadow error). */
char *kvd__api_step_entry_text(const kvd_session_config *cfg, const kvd_step_entry *e,
                               const kvd_step_result *r, kvd_wire_encoding enc);
void kvd__api_step_account(kvd_api *api, api_session *s, size_t n_entries,
                           const kvd_step_output *out, double seconds);
/* The engine's refusal of a step or batch item (KVD_STEP_NOMEM: 500,
 * _TOO_BIG: 413, _POOL_FULL: 503) as the API error naming its pages, those
 * of a tensor row copy included; nothing changed. */
void kvd__api_step_refusal(const kvd_api *api, int rc, const kvd_step_output *out, kvd_api_error *err);

/* api/batch.c. handle: POST /v1/batch on the loop thread (false: deferred,
 * answered through api->respond once every session's job is done). run: a
 * JOB_BATCH on a worker (this session's items, in order). done: the loop's
 * completion of a JOB_BATCH (answers the batch after its last job); release:
 * a JOB_BATCH freed unrun (shutdown). */
bool kvd__api_handle_batch(kvd_api *api, kvd_api_request *req, uint32_t owner, void *reply,
                           kvd_response *resp);
void kvd__api_batch_run(kvd_api *api, api_job *job);
void kvd__api_batch_done(kvd_api *api, api_job *job);
void kvd__api_batch_release(api_job *job);
/* Has this batch an item on s (run, running or to run)? --on-full evict
 * never reclaims from such a session for the batch's items. Loop thread. */
bool kvd__api_batch_has_session(const api_batch *b, const api_session *s);
/* api/queue.c: queues a job built by the caller (kind, session, reply set);
 * false with resp = 429 when the session's queue is full (job not taken). */
bool kvd__api_enqueue_job(kvd_api *api, api_session *s, api_job *job, kvd_response *resp);

/* api/snapshot.c: GET .../snapshot on a worker (job->resp gets the bytes,
 * application/octet-stream), and POST /v1/sessions/restore on the loop
 * thread (the restoring key owns the session). */
void kvd__api_snapshot_run(kvd_api *api, api_job *job);
void kvd__api_handle_restore(kvd_api *api, const kvd_api_request *req, uint32_t owner, kvd_response *resp);

/* api/session_stats.c: the GET /v1/sessions/{id} body (a worker, while the
 * session's queue holds everything else back). */
char *kvd__api_session_stats_json(const kvd_api *api, const api_session *s);

#endif
