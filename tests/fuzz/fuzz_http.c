/* tests/fuzz/fuzz_http.c — raw HTTP bytes through the whole request pipeline
 * with no socket: server/loopback.h's connection, the real parser, router and
 * API (small pool), and an executor that queues jobs and runs them between
 * chunks (as workers would, but deterministic). After each input every
 * exchange must have been answered, and the pool's pages must match what the
 * sessions hold, then be all free once every session is deleted.
 * Input: [flags][split1][split2] then the bytes a client sends, fed in three
 * chunks cut at split1/256 and split2/256 of their length. flags: bit 0 API
 * key "fuzzkey" required, 1 --on-full evict, 2 peer EOF at the end, 3 id
 * prefix "fz", 4 one pipelined request at a time, 5 a 4 KiB in-flight body
 * budget, 6 --metrics-auth. Session ids are deterministic (support.h): the
 * first session an input creates is 0101...01, the next 0202...02.
 * KVD_FUZZ_DUMP=1 prints what the connection wrote (to read a seed's replies). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/auth.h"
#include "api/internal.h"
#include "cache/pool.h"
#include "server/loopback.h"
#include "server/router.h"
#include "tests/fuzz/support.h"

#define POOL_PAGES 64u
#define PAGE_BYTES 4096u
#define MAX_BODY (64u * 1024u)

/* Jobs the API submitted, oldest first. */
static kvd_api_job **jobs;
static size_t n_jobs, cap_jobs;

static void fuzz_submit(void *executor, kvd_api_job *job)
{
    (void)executor;
    if (n_jobs == cap_jobs) {
        cap_jobs = cap_jobs ? 2 * cap_jobs : 16;
        jobs = realloc(jobs, cap_jobs * sizeof *jobs);
        KVD_FUZZ_CHECK(jobs != NULL, "out of memory queueing a job");
    }
    jobs[n_jobs++] = job;
}

/* Answers to requests the harness itself sends (the final deletes). */
static int own_reply;
static int own_status;

static void fuzz_respond(void *reply, kvd_response *resp)
{
    if (reply == &own_reply) {
        own_status = resp->status;
        free(resp->body);
        return;
    }
    kvd_router_respond(reply, resp);
}

/* Runs queued jobs (each may queue the session's next) and the loop until
 * neither has anything left. */
static void settle(kvd_api *api, kvd__loopback *lb)
{
    for (;;) {
        if (lb)
            kvd__loopback_run(lb);
        if (n_jobs == 0)
            return;
        kvd_api_job *job = jobs[0];
        memmove(jobs, jobs + 1, --n_jobs * sizeof *jobs);
        kvd_api_job_run(job);
        kvd_api_job_done(api, job);
    }
}

static double fake_clock(void *ctx)
{
    (void)ctx;
    return 1.7e9;
}

static kvd_auth_keys keys;
static FILE *dump; /* KVD_FUZZ_DUMP=1: every response written goes to stdout */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    kvd_fuzz_quiet();
    if (getenv("KVD_FUZZ_DUMP"))
        dump = stdout;
    char err[128];
    KVD_FUZZ_CHECK(kvd_auth_keys_add(&keys, "fuzzkey", 7, err, sizeof err) == 0, "%s", err);
    return 0;
}

/* Every live session's caches (and shadow copies), for the page check. */
static void check_pages(const kvd_api *api)
{
    kvd_session **all = calloc(2 * api->n_sessions + 1, sizeof *all);
    KVD_FUZZ_CHECK(all != NULL, "out of memory");
    for (size_t i = 0; i < api->n_sessions; i++) {
        all[2 * i] = api->sorted[i]->cache;
        all[2 * i + 1] = api->sorted[i]->shadow;
    }
    kvd_fuzz_check_pages(api->pool, all, 2 * api->n_sessions);
    free(all);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t flags = 0, s1 = 85, s2 = 170;
    if (size >= 3) {
        flags = data[0];
        s1 = data[1];
        s2 = data[2];
        data += 3;
        size -= 3;
    }
    kvd_fuzz_reset();
    kvd_api_options aopt = {
        .memory_bytes = (size_t)POOL_PAGES * PAGE_BYTES,
        .page_bytes = PAGE_BYTES,
        .threads = 1,
        .max_body = MAX_BODY,
        .session_queue = 4,
        .on_full_evict = flags & 2,
        .now = fake_clock,
        .keys = flags & 1 ? &keys : NULL,
        .id_prefix = flags & 8 ? "fz" : NULL,
    };
    kvd_api *api;
    KVD_FUZZ_CHECK(kvd_api_create(&aopt, fuzz_submit, NULL, fuzz_respond, &api) == 0, "api create");
    kvd_router router = {.api = api, .metrics_auth = flags & 64};
    kvd_http_options hopt = {
        .max_body = MAX_BODY,
        .max_pipelined = flags & 16 ? 1 : 8,
        .max_inflight_bytes = flags & 32 ? 4096 : 0,
    };
    kvd__loopback *lb = kvd__loopback_open(&hopt, kvd_router_handle, &router);
    KVD_FUZZ_CHECK(lb != NULL, "loopback open");

    size_t cut1 = size * s1 / 256, cut2 = size * s2 / 256;
    if (cut2 < cut1)
        cut2 = cut1;
    const size_t cuts[4] = {0, cut1, cut2, size};
    for (int i = 0; i < 3; i++) {
        if (cuts[i + 1] > cuts[i])
            kvd__loopback_feed(lb, (const char *)data + cuts[i], cuts[i + 1] - cuts[i]);
        settle(api, lb);
        check_pages(api);
    }
    if (flags & 4) {
        kvd__loopback_eof(lb);
        settle(api, lb);
    }
    if (dump) {
        size_t n;
        const char *out = kvd__loopback_output(lb, &n);
        fwrite(out, 1, n, dump);
        fputc('\n', dump);
    }
    KVD_FUZZ_CHECK(kvd__loopback_free(lb), "an exchange was never answered");
    settle(api, NULL);
    check_pages(api);

    /* Delete every session through the API; then no page may stay used. */
    while (api->n_sessions > 0) {
        char id[KVD_SESSION_ID_MAX + 1];
        memcpy(id, api->sorted[0]->id, sizeof id);
        kvd_api_request req = {.route = KVD_ROUTE_SESSION_DELETE, .session_id = id, .query = ""};
        if (flags & 1)
            req.authorization = "Bearer fuzzkey";
        kvd_response resp;
        own_status = 0;
        if (kvd_api_handle(api, &req, &own_reply, &resp)) {
            own_status = resp.status;
            free(resp.body);
        }
        settle(api, NULL);
        KVD_FUZZ_CHECK(own_status == 200, "DELETE %s answered %d", id, own_status);
    }
    KVD_FUZZ_CHECK(kvd_pool_pages_used(api->pool) == 0, "%zu pages used with no session",
                   kvd_pool_pages_used(api->pool));
    kvd_api_destroy(api);
    return 0;
}
