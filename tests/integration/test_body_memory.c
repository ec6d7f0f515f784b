/* tests/integration/test_body_memory.c — issue 10 bug 2 over loopback, by
 * the kvd process's peak resident memory (VmHWM in /proc/PID/status): a
 * 32 MiB JSON step body, valid or refused on shape, costs at most the body
 * plus 2x for its f32 numbers (not a cJSON node per number), and 64
 * pipelined 8 MiB steps on one connection stay within --max-inflight-bytes
 * plus a margin. Each case runs its own kvd (a peak never goes down). The
 * measured numbers are printed; sanitizer builds skip the bounds (ASan's
 * allocator keeps freed memory in quarantine and shadows every byte; TSan's
 * shadow is larger still). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_data.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define MEASURED 0 /* ThreadSanitizer's allocator and shadow too (make test-tsan) */
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MEASURED 0
#endif
#endif
#ifndef MEASURED
#define MEASURED 1
#endif

#define MIB ((size_t)1 << 20)
#define BODY_BYTES (32 * MIB)
/* The bound the README states: the body itself (the server's buffer until
 * the parse ends) plus 2x for the numbers (an f32 is 4 bytes, a number at
 * least 2 bytes of text: "1,"). The slack covers what is not the parse:
 * allocator arenas and rounding, the request's bookkeeping, the response. */
#define SLACK (16 * MIB)
#define PARSE_BOUND(body) (3 * (body) + SLACK)

static size_t vm_hwm(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    size_t kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %zu kB", &kb) == 1)
            break;
    fclose(f);
    ck_assert_uint_gt(kb, 0);
    return kb * 1024;
}

#define HEAD_DIM 64
#define SESSION "{\"layers\":1,\"heads\":1,\"kv_heads\":1,\"head_dim\":64}"

/* {"k":[...],"v":[...],"q":[...]} of `total` bytes: k and v hold the same
 * count of `num` numbers (a multiple of HEAD_DIM unless `ragged`), q one
 * row of 64. */
static char *json_body(size_t total, const char *num, bool ragged, size_t *len)
{
    const size_t w = strlen(num) + 1; /* "num," */
    const size_t q_len = 8 + 64 * 2;
    size_t per = (total - q_len - 32) / 2 / w; /* numbers in k (and in v) */
    per -= per % HEAD_DIM;
    if (ragged)
        per += 1;
    char *b = malloc(total + 1);
    ck_assert_ptr_nonnull(b);
    size_t p = 0;
    for (int t = 0; t < 2; t++) {
        p += (size_t)sprintf(b + p, t ? ",\"v\":[" : "{\"k\":[");
        for (size_t i = 0; i < per; i++) {
            memcpy(b + p, num, w - 1);
            p += w - 1;
            b[p++] = ',';
        }
        b[p - 1] = ']';
    }
    p += (size_t)sprintf(b + p, ",\"q\":[");
    for (int i = 0; i < 64; i++)
        p += (size_t)sprintf(b + p, i ? ",1" : "1");
    p += (size_t)sprintf(b + p, "]}");
    /* Pad to exactly `total` bytes so cases compare like for like. */
    ck_assert_uint_le(p, total);
    memmove(b + 1 + (total - p), b + 1, p - 1);
    memset(b + 1, ' ', total - p);
    b[total] = '\0';
    *len = total;
    return b;
}

/* One 32 MiB body on a fresh kvd; returns the VmHWM growth it caused,
 * less the pool bytes the session holds after it (the cache is what a valid
 * step is for, and is bounded by --memory). */
static size_t one_body(const char *num, bool ragged, int want_status, const char *what)
{
    kvd_proc *p = kvd_proc_start_ck(NULL);
    const int port = kvd_proc_port(p);
    char *id = kvd_create_session(port, SESSION, NULL);
    /* Warm up: a small step, so the baseline includes threads and arenas. */
    cJSON *warm = kvd_step_ok(port, id,
                              "{\"k\":[" "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,"
                              "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],"
                              "\"v\":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,"
                              "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}");
    cJSON_Delete(warm);
    size_t len;
    char *body = json_body(BODY_BYTES, num, ragged, &len);
    const size_t before = vm_hwm(kvd_proc_pid(p));
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/step", id);
    http_response *r = http_request_n(port, "POST", path, KVD_JSON, body, len, NULL);
    free(body);
    ck_assert_msg(r->status == want_status, "%s: status %d: %.300s", what, r->status,
                  r->body ? r->body : r->error);
    http_response_free(r);
    const size_t after = vm_hwm(kvd_proc_pid(p));
    cJSON *stats = kvd_session_stats(port, id);
    const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(stats, "bytes");
    ck_assert(cJSON_IsNumber(bytes));
    const size_t pool = want_status == 200 ? (size_t)bytes->valuedouble : 0;
    cJSON_Delete(stats);
    free(id);
    kvd_proc_stop_ck(p);
    const size_t growth = after - before;
    fprintf(stderr,
            "body_memory: %s: 32 MiB body, VmHWM %.1f -> %.1f MiB, growth %.1f MiB, "
            "pool %.1f MiB, growth less pool %.2fx the body\n",
            what, (double)before / MIB, (double)after / MIB, (double)growth / MIB,
            (double)pool / MIB, (double)(growth - (pool < growth ? pool : growth)) / BODY_BYTES);
    return growth - (pool < growth ? pool : growth);
}

START_TEST(json_body_valid)
{
    /* The case: 8.4M numbers of 4 bytes ("0.5,") in 32 MiB. */
    size_t g = one_body("0.5", false, 200, "valid, 4 B/number");
    if (MEASURED)
        ck_assert_msg(g < PARSE_BOUND(BODY_BYTES), "growth %zu over %zu", g,
                      PARSE_BOUND(BODY_BYTES));
}
END_TEST

START_TEST(json_body_refused_on_shape)
{
    size_t g = one_body("0.5", true, 400, "refused on shape, 4 B/number");
    if (MEASURED)
        ck_assert_msg(g < PARSE_BOUND(BODY_BYTES), "growth %zu over %zu", g,
                      PARSE_BOUND(BODY_BYTES));
}
END_TEST

START_TEST(json_body_worst_case)
{
    /* 2 bytes of text a number ("1,"): the most f32 a body can make. */
    size_t g = one_body("1", true, 400, "refused on shape, 2 B/number");
    if (MEASURED)
        ck_assert_msg(g < PARSE_BOUND(BODY_BYTES), "growth %zu over %zu", g,
                      PARSE_BOUND(BODY_BYTES));
}
END_TEST

/* ---- 64 pipelined 8 MiB steps on one connection ---- */

#define PIPE_N 64
#define PIPE_BODY (8 * MIB)
#define INFLIGHT_DEFAULT (256 * MIB)
/* Beyond the bodies in flight: each step being parsed holds cJSON's copy of
 * its b64 strings (1x) and their f32 (0.75x) while its body is counted, the
 * response, and the allocator's arenas (one per worker). */
#define PIPE_MARGIN (96 * MIB)

typedef struct writer {
    http_conn *c;
    const char *req;
    size_t req_len;
    int sent;
} writer;

static void *write_all(void *arg)
{
    writer *w = arg;
    for (int i = 0; i < PIPE_N; i++) {
        if (http_conn_send(w->c, w->req, w->req_len) != 0)
            break; /* the server closed after its 503 */
        w->sent++;
    }
    return NULL;
}

START_TEST(pipelined_steps)
{
    kvd_proc *p = kvd_proc_start_ck(NULL);
    const int port = kvd_proc_port(p);
    /* Recency eviction to 64 tokens keeps the cache small, so the peak is
     * the bodies, not the pool. */
    char *id = kvd_create_session(port,
                                  "{\"layers\":1,\"heads\":1,\"kv_heads\":1,\"head_dim\":64,"
                                  "\"cache\":{\"eviction\":\"recency\",\"budget\":64,\"sink\":4}}",
                                  NULL);
    /* ~8 MiB bodies: k and v of m tokens as b64 (4/3 bytes of text a byte). */
    const size_t m = PIPE_BODY / 2 * 3 / 4 / (HEAD_DIM * 4);
    float *kv = calloc(m * HEAD_DIM, sizeof(float));
    for (size_t i = 0; i < m * HEAD_DIM; i++)
        kv[i] = (float)(i % 7) * 0.25f;
    char *b64 = b64_encode(kv, m * HEAD_DIM * sizeof(float)); /* little-endian host */
    free(kv);
    size_t cap = 2 * strlen(b64) + 1024;
    char *body = malloc(cap);
    /* One query row (64 numbers): the step's attention is cheap. */
    int blen = snprintf(body, cap, "{\"k\":\"b64:%s\",\"v\":\"b64:%s\",\"q\":[1", b64, b64);
    for (int i = 1; i < HEAD_DIM; i++)
        blen += snprintf(body + blen, cap - (size_t)blen, ",0");
    blen += snprintf(body + blen, cap - (size_t)blen, "],\"encoding\":\"b64\"}");
    free(b64);
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/step", id);
    size_t req_len;
    char *req = http_format_request("POST", path, KVD_JSON, NULL, body, (size_t)blen, &req_len);
    free(body);
    const size_t before = vm_hwm(kvd_proc_pid(p));

    http_conn *c = http_conn_open(port);
    ck_assert_ptr_nonnull(c);
    writer w = {.c = c, .req = req, .req_len = req_len};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, write_all, &w), 0);
    int ok = 0, refused = 0;
    for (int i = 0; i < PIPE_N; i++) {
        http_response *r = http_conn_read(c, HTTP_TIMEOUT_MS);
        if (r->status == 200) {
            ck_assert_msg(refused == 0, "a 200 after the 503 (answer %d)", i);
            ok++;
        } else {
            /* The documented refusal: 503, Retry-After, then the close. */
            ck_assert_msg(r->status == 503, "answer %d: status %d: %.300s", i, r->status,
                          r->body ? r->body : r->error);
            ck_assert_ptr_nonnull(http_header_get(r, "Retry-After"));
            ck_assert_ptr_nonnull(strstr(r->body, "--max-inflight-bytes"));
            refused++;
            http_response_free(r);
            ck_assert_int_eq(http_conn_wait_closed(c, HTTP_TIMEOUT_MS), 1);
            break;
        }
        http_response_free(r);
    }
    /* The writer ends on its own: every request sent, or a send failing
     * once kvd closed after its 503. Only then may the connection go. */
    pthread_join(th, NULL);
    http_conn_close(c);
    free(req);
    ck_assert_int_eq(ok + refused, refused ? ok + 1 : PIPE_N);
    kvd_assert_healthy(port);
    const size_t after = vm_hwm(kvd_proc_pid(p));
    free(id);
    kvd_proc_stop_ck(p);
    const size_t growth = after - before;
    fprintf(stderr,
            "body_memory: %d pipelined %.1f MiB steps: %d answered 200, %d refused 503; "
            "VmHWM %.1f -> %.1f MiB, growth %.1f MiB (bound %zu MiB)\n",
            PIPE_N, (double)req_len / MIB, ok, refused, (double)before / MIB,
            (double)after / MIB, (double)growth / MIB, (INFLIGHT_DEFAULT + PIPE_MARGIN) / MIB);
    if (MEASURED)
        ck_assert_msg(growth < INFLIGHT_DEFAULT + PIPE_MARGIN, "growth %zu", growth);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("integration/body_memory");
    TCase *tc = tcase_create("body_memory");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, json_body_valid);
    tcase_add_test(tc, json_body_refused_on_shape);
    tcase_add_test(tc, json_body_worst_case);
    tcase_add_test(tc, pipelined_steps);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
