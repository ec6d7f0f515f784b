/* tests/integration/test_session_heap.c — --max-session-heap over loopback:
 * empty sessions of the largest shape (1024 layers x 64 kv heads, 8.5 MiB of
 * heap each outside the pool) are created until a 503 names the budget; the
 * kvd_session_heap_bytes gauge, the sessions' heap_bytes and kvd's resident
 * memory (VmRSS) stay within the budget; deletes bring the account back to
 * zero and the same number fits again. Also: KVD_MAX_SESSION_HEAP, the
 * default derived from --memory, a 413 for a session over the whole budget,
 * and bad values refused at start-up. Each test case runs its own kvd. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <check.h>

#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"

#define MiB (1024.0 * 1024.0)
#define BUDGET_MIB 48
/* The largest shape the API allows: 65536 streams; head_dim 8 so that a slot
 * fits a 1 KiB page. */
#define BIG_SHAPE "{\"layers\":1024,\"heads\":64,\"kv_heads\":64,\"head_dim\":8}"
#define BIG_STREAMS 65536
/* A kvd_stream is well over 100 bytes: an empty BIG_SHAPE session holds at
 * least this much heap (8.5 MiB measured). */
#define BIG_MIN_HEAP (BIG_STREAMS * 100.0)
/* Resident memory kvd may add beyond the budget while holding it: malloc's
 * headers and page rounding, request and response buffers, glibc arena
 * slack. 16 MiB is a third of the budget, far below one more session per
 * 8.5 MiB only if the account were wrong by two sessions or more. */
#define RSS_MARGIN_MIB 16
#define MAX_BIG 64

/* VmRSS of the process in bytes (from /proc/PID/status). */
static double rss_bytes(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    char line[256];
    double kib = NAN;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kib = strtod(line + 6, NULL);
    fclose(f);
    ck_assert_msg(!isnan(kib), "no VmRSS in %s", path);
    return kib * 1024.0;
}

/* Creates BIG_SHAPE sessions until one is refused; checks the refusal (503
 * resource_exhausted, Retry-After, names the budget). Returns how many. */
static size_t fill(int port, char **ids, const char *what)
{
    size_t n = 0;
    for (;;) {
        ck_assert_msg(n < MAX_BIG, "%s: %zu sessions of 8.5 MiB and no refusal", what, n);
        http_response *r = http_request(port, "POST", "/v1/sessions", KVD_JSON, BIG_SHAPE);
        if (r->status == 201) {
            cJSON *j = http_response_json(r);
            ck_assert_ptr_nonnull(j);
            ids[n++] = strdup(kvd_json_str(j, "id"));
            cJSON_Delete(j);
            http_response_free(r);
            continue;
        }
        kvd_expect_error(r, 503, "resource_exhausted", NULL, "--max-session-heap", what);
        ck_assert_msg(http_header_get(r, "Retry-After") != NULL, "%s: 503 without Retry-After", what);
        http_response_free(r);
        return n;
    }
}

static bool sanitized(int port)
{
    cJSON *info = kvd_get_json(port, "/v1/info", 200);
    const char *s = kvd_json_str(info, "build.sanitize");
    bool yes = s && strcmp(s, "none") != 0;
    cJSON_Delete(info);
    return yes;
}

START_TEST(budget_bounds_empty_sessions_and_rss)
{
    static const char *const args[] = {"--page-bytes", "1024", "--memory", "4MiB", "--threads", "1",
                                       "--max-session-heap", "48MiB", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    const int port = kvd_proc_port(p);
    const double budget = BUDGET_MIB * MiB;
    cJSON *info = kvd_get_json(port, "/v1/info", 200);
    ck_assert_double_eq(kvd_json_num(info, "limits.max_session_heap"), budget);
    cJSON_Delete(info);
    /* ASan keeps freed blocks in quarantine and adds shadow memory, so
     * resident memory says nothing about the account there. */
    const bool check_rss = !sanitized(port);
    const double rss0 = rss_bytes(kvd_proc_pid(p));

    char *ids[MAX_BIG];
    const size_t n = fill(port, ids, "first fill");
    char *text = kvd_metrics_text(port);
    const double heap = kvd_metric(text, "kvd_session_heap_bytes", NULL);
    ck_assert_double_eq(kvd_metric(text, "kvd_rejected_total", "reason=\"session_heap\""), 1);
    ck_assert_double_eq(kvd_metric(text, "kvd_sessions", NULL), (double)n);
    ck_assert_double_eq(kvd_metric(text, "kvd_pool_pages", "state=\"used\""), 0);
    ck_assert_ptr_nonnull(strstr(text, "# TYPE kvd_session_heap_bytes gauge"));
    ck_assert_ptr_nonnull(strstr(text, "# HELP kvd_session_heap_bytes "));
    free(text);
    /* Refused exactly at the budget: n fit, n + 1 would not. */
    ck_assert_uint_ge(n, 4);
    ck_assert_double_le(heap, budget);
    ck_assert_double_gt(heap / (double)n * (double)(n + 1), budget);
    ck_assert_double_ge(heap / (double)n, BIG_MIN_HEAP);
    const double rss1 = rss_bytes(kvd_proc_pid(p));
    if (check_rss) {
        /* The account is real memory (each stream struct is written at
         * create) and bounds it. */
        ck_assert_msg(rss1 - rss0 <= budget + RSS_MARGIN_MIB * MiB,
                      "RSS grew %.1f MiB with %zu sessions; budget %d MiB + margin %d MiB",
                      (rss1 - rss0) / MiB, n, BUDGET_MIB, RSS_MARGIN_MIB);
        ck_assert_msg(rss1 - rss0 >= heap / 2, "RSS grew %.1f MiB for %.1f MiB of counted heap",
                      (rss1 - rss0) / MiB, heap / MiB);
    }

    /* Deleted, the account is back to zero and as many fit again. */
    for (size_t i = 0; i < n; i++) {
        kvd_delete_session(port, ids[i]);
        free(ids[i]);
    }
    ck_assert_double_eq(kvd_metric_now(port, "kvd_session_heap_bytes", NULL), 0);
    const size_t again = fill(port, ids, "second fill");
    ck_assert_uint_eq(again, n);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_session_heap_bytes", NULL), heap);
    const double rss2 = rss_bytes(kvd_proc_pid(p));
    if (check_rss)
        ck_assert_msg(rss2 - rss0 <= budget + RSS_MARGIN_MIB * MiB,
                      "RSS grew %.1f MiB after deleting and creating %zu sessions again",
                      (rss2 - rss0) / MiB, n);
    fprintf(stderr, "session_heap: %zu sessions of %.2f MiB heap each; RSS +%.1f MiB, +%.1f MiB after refill%s\n",
            n, heap / (double)n / MiB, (rss1 - rss0) / MiB, (rss2 - rss0) / MiB,
            check_rss ? "" : " (sanitized build: not checked)");

    /* A session's stats say its share (all n are alike). */
    cJSON *st = kvd_session_stats(port, ids[0]);
    ck_assert_double_eq(kvd_json_num(st, "heap_bytes") * (double)n, heap);
    cJSON_Delete(st);
    for (size_t i = 0; i < n; i++) {
        kvd_delete_session(port, ids[i]);
        free(ids[i]);
    }
    ck_assert_double_eq(kvd_metric_now(port, "kvd_session_heap_bytes", NULL), 0);
    kvd_proc_stop_ck(p);
}
END_TEST

/* KVD_MAX_SESSION_HEAP sets it too; a session whose heap alone is over the
 * whole budget is a 413 without Retry-After (no wait makes it fit), and a
 * small session still fits. */
START_TEST(environment_and_oversized_session)
{
    static const char *const args[] = {"--page-bytes", "1024", "--memory", "4MiB", "--threads", "1", NULL};
    setenv("KVD_MAX_SESSION_HEAP", "2MiB", 1);
    kvd_proc *p = kvd_proc_start_ck(args);
    unsetenv("KVD_MAX_SESSION_HEAP");
    const int port = kvd_proc_port(p);
    cJSON *info = kvd_get_json(port, "/v1/info", 200);
    ck_assert_double_eq(kvd_json_num(info, "limits.max_session_heap"), 2 * MiB);
    cJSON_Delete(info);
    http_response *r = http_request(port, "POST", "/v1/sessions", KVD_JSON, BIG_SHAPE);
    kvd_expect_error(r, 413, "payload_too_large", NULL, "--max-session-heap", "a session over the budget");
    ck_assert_ptr_null(http_header_get(r, "Retry-After"));
    http_response_free(r);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_sessions", NULL), 0);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_session_heap_bytes", NULL), 0);
    char *id = kvd_create_session(port, "{\"layers\":4,\"heads\":2,\"head_dim\":8}", NULL);
    const double heap = kvd_metric_now(port, "kvd_session_heap_bytes", NULL);
    ck_assert_double_gt(heap, 0);
    cJSON *st = kvd_session_stats(port, id);
    ck_assert_double_eq(kvd_json_num(st, "heap_bytes"), heap);
    cJSON_Delete(st);
    kvd_delete_session(port, id);
    free(id);
    kvd_proc_stop_ck(p);
}
END_TEST

/* 0 (the default) is max(64 MiB, --memory / 4); a budget under 1 MiB or
 * not a size stops kvd at start-up. */
START_TEST(default_and_bad_values)
{
    static const struct { const char *memory, *flag; double want; } cases[] = {
        {"8MiB", NULL, 64 * MiB},
        {"512MiB", NULL, 128 * MiB},
        {"512MiB", "0", 128 * MiB},
        {"8MiB", "3MiB", 3 * MiB},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *args[] = {"--memory", cases[i].memory, "--threads", "1",
                              cases[i].flag ? "--max-session-heap" : NULL, cases[i].flag, NULL};
        kvd_proc *p = kvd_proc_start_ck(args);
        cJSON *info = kvd_get_json(kvd_proc_port(p), "/v1/info", 200);
        ck_assert_msg(kvd_json_num(info, "limits.max_session_heap") == cases[i].want,
                      "--memory %s --max-session-heap %s: %g, want %g", cases[i].memory,
                      cases[i].flag ? cases[i].flag : "(unset)", kvd_json_num(info, "limits.max_session_heap"),
                      cases[i].want);
        cJSON_Delete(info);
        kvd_proc_stop_ck(p);
    }
    static const char *const bad[] = {"1000", "512KiB", "lots", "-1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        const char *args[] = {"--max-session-heap", bad[i], NULL};
        kvd_proc *p = kvd_proc_start(args);
        ck_assert_msg(p == NULL, "--max-session-heap %s was accepted", bad[i]);
    }
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("integration/session_heap");
    TCase *tc = tcase_create("session_heap");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, budget_bounds_empty_sessions_and_rss);
    tcase_add_test(tc, environment_and_oversized_session);
    tcase_add_test(tc, default_and_bad_values);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
