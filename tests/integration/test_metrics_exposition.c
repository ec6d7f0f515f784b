/* tests/integration/test_metrics_exposition.c — /metrics as Prometheus reads it: after
 * real traffic (standard and tensor steps, shadow, eviction, a fork, errors, a rejection)
 * every DESIGN.md §6 metric is there with # HELP and # TYPE of the right type, every
 * sample belongs to a declared family, counters end in _total, histograms are cumulative
 * with +Inf = _count; the lint itself is checked on planted bad texts; kvd_ready follows
 * /readyz on a pool filled to exhaustion. (promtool's own lint runs in make test-deploy.) */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/check_main.h"
#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"

#define MAX_FAMILIES 128
#define NAME_MAX_LEN 96
#define MAX_FILL_STEPS 400

typedef struct family {
    char name[NAME_MAX_LEN];
    char type[16];
    bool help, typed, sampled;
} family;

typedef struct lint {
    family fam[MAX_FAMILIES];
    size_t n;
    char err[256];
} lint;

static family *find(lint *l, const char *name, size_t len)
{
    for (size_t i = 0; i < l->n; i++)
        if (strlen(l->fam[i].name) == len && strncmp(l->fam[i].name, name, len) == 0)
            return &l->fam[i];
    return NULL;
}

static family *add(lint *l, const char *name, size_t len)
{
    family *f = find(l, name, len);
    if (f || l->n == MAX_FAMILIES || len >= NAME_MAX_LEN)
        return f;
    f = &l->fam[l->n++];
    memset(f, 0, sizeof *f);
    memcpy(f->name, name, len);
    return f;
}

static bool ends_with(const char *s, size_t len, const char *suffix)
{
    size_t n = strlen(suffix);
    return len >= n && strncmp(s + len - n, suffix, n) == 0;
}

/* The family a sample name belongs to: itself, or a histogram it is _bucket/_sum/_count of. */
static family *family_of(lint *l, const char *name, size_t len)
{
    family *f = find(l, name, len);
    if (f)
        return f;
    static const char *const parts[] = {"_bucket", "_sum", "_count"};
    for (size_t i = 0; i < 3; i++)
        if (ends_with(name, len, parts[i])) {
            f = find(l, name, len - strlen(parts[i]));
            if (f && strcmp(f->type, "histogram") == 0)
                return f;
        }
    return NULL;
}

/* Lints exposition text; returns true if clean, else false with l->err saying why. */
static bool lint_text(lint *l, const char *text)
{
    memset(l, 0, sizeof *l);
    for (const char *line = text; *line;) {
        const char *eol = strchr(line, '\n');
        if (!eol) {
            snprintf(l->err, sizeof l->err, "text does not end in a newline");
            return false;
        }
        size_t len = (size_t)(eol - line);
        if (strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0) {
            const char *name = line + 7;
            const char *sp = memchr(name, ' ', (size_t)(eol - name));
            if (!sp || sp + 1 >= eol) {
                snprintf(l->err, sizeof l->err, "bad line: %.*s", (int)len, line);
                return false;
            }
            family *f = add(l, name, (size_t)(sp - name));
            if (!f) {
                snprintf(l->err, sizeof l->err, "too many families at %.*s", (int)len, line);
                return false;
            }
            if (f->sampled) {
                snprintf(l->err, sizeof l->err, "%s: HELP/TYPE after its samples", f->name);
                return false;
            }
            if (line[2] == 'H') {
                if (f->help) {
                    snprintf(l->err, sizeof l->err, "%s: two HELP lines", f->name);
                    return false;
                }
                f->help = true;
            } else {
                size_t tl = (size_t)(eol - sp - 1);
                if (f->typed || tl >= sizeof f->type) {
                    snprintf(l->err, sizeof l->err, "%s: two TYPE lines or a bad type", f->name);
                    return false;
                }
                memcpy(f->type, sp + 1, tl);
                f->type[tl] = '\0';
                f->typed = true;
                if (strcmp(f->type, "counter") && strcmp(f->type, "gauge") && strcmp(f->type, "histogram")) {
                    snprintf(l->err, sizeof l->err, "%s: type %s", f->name, f->type);
                    return false;
                }
                if (strcmp(f->type, "counter") == 0 && !ends_with(f->name, strlen(f->name), "_total")) {
                    snprintf(l->err, sizeof l->err, "counter %s does not end in _total", f->name);
                    return false;
                }
            }
        } else if (line[0] != '#' && len > 0) {
            size_t nl = strcspn(line, "{ ");
            family *f = family_of(l, line, nl);
            if (!f || !f->typed || !f->help) {
                snprintf(l->err, sizeof l->err, "sample without HELP and TYPE: %.*s", (int)len, line);
                return false;
            }
            const char *v = memchr(line, ' ', len);
            if (line[nl] == '{')
                v = memchr(line, '}', len) ? strchr(memchr(line, '}', len), ' ') : NULL;
            char *end = NULL;
            if (!v || v >= eol || (strtod(v + 1, &end), end != eol)) {
                snprintf(l->err, sizeof l->err, "bad sample value: %.*s", (int)len, line);
                return false;
            }
            f->sampled = true;
        }
        line = eol + 1;
    }
    for (size_t i = 0; i < l->n; i++)
        if (!l->fam[i].help || !l->fam[i].typed) {
            snprintf(l->err, sizeof l->err, "%s lacks HELP or TYPE", l->fam[i].name);
            return false;
        }
    return true;
}

START_TEST(lint_catches_planted_faults)
{
    static const char *const bad[] = {
        "x_total 1\n",                                                 /* no HELP/TYPE */
        "# TYPE x_total counter\nx_total 1\n",                         /* no HELP */
        "# HELP x X.\n# TYPE x counter\nx 1\n",                        /* counter without _total */
        "# HELP x X.\n# TYPE x gauge\n# TYPE x gauge\nx 1\n",          /* two TYPE */
        "# HELP x X.\n# TYPE x gauge\nx one\n",                        /* bad value */
        "# HELP x X.\n# TYPE x gauge\nx_sum 1\n",                      /* _sum of a gauge */
        "# HELP x X.\n# TYPE x gauge\nx 1\n# HELP x X.\n",             /* HELP after samples */
        "# HELP x X.\n# TYPE x gauge\nx 1",                            /* no final newline */
    };
    lint *l = malloc(sizeof *l);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(!lint_text(l, bad[i]), "planted fault %zu passed the lint", i);
    ck_assert_msg(lint_text(l, "# HELP h_seconds H.\n# TYPE h_seconds histogram\n"
                               "h_seconds_bucket{le=\"+Inf\"} 1\nh_seconds_sum 0.5\nh_seconds_count 1\n"),
                  "a good histogram failed: %s", l->err);
    free(l);
}
END_TEST

static char *post_ok(int port, const char *path, const char *body, int status)
{
    http_response *r = http_request(port, "POST", path, KVD_JSON, body);
    ck_assert_msg(r->status == status, "POST %s: %d, expected %d: %s", path, r->status, status,
                  r->status < 0 ? r->error : r->body);
    cJSON *j = http_response_json(r);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
    char *out = cJSON_IsString(id) ? strdup(id->valuestring) : NULL;
    cJSON_Delete(j);
    http_response_free(r);
    return out;
}

static void expect_metric(const char *text, const char *name, const char *labels, double lo, double hi)
{
    double v = kvd_metric(text, name, labels);
    ck_assert_msg(v >= lo && v <= hi, "%s{%s} = %g, expected %g..%g", name, labels ? labels : "", v, lo, hi);
}

/* The histogram's +Inf bucket equals its _count for the given labels. */
static void expect_histogram(const char *text, const char *name, const char *labels)
{
    char bucket[128], count[128], inf[128];
    snprintf(bucket, sizeof bucket, "%s_bucket", name);
    snprintf(count, sizeof count, "%s_count", name);
    snprintf(inf, sizeof inf, "%s%sle=\"+Inf\"", labels ? labels : "", labels ? "," : "");
    double b = kvd_metric(text, bucket, inf), c = kvd_metric(text, count, labels);
    ck_assert_msg(!isnan(c) && b == c, "%s{%s}: +Inf bucket %g, count %g", name, labels ? labels : "", b, c);
}

START_TEST(exposition_after_traffic)
{
    static const char *const args[] = {"--memory", "64MiB", "--max-sessions", "4", "--threads", "2", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    int port = kvd_proc_port(p);

    char *sid = post_ok(port, "/v1/sessions",
                        "{\"layers\":1,\"heads\":2,\"kv_heads\":1,\"head_dim\":4,\"shadow\":true,"
                        "\"cache\":{\"dtype\":\"int8\",\"eviction\":\"recency\",\"budget\":6,\"sink\":2}}",
                        201);
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/step", sid);
    for (int i = 0; i < 4; i++)
        free(post_ok(port, path,
                     "{\"k\":[[[1,0,0,0]],[[0,1,0,0]],[[0,0,1,1]]],\"v\":[[[1,2,3,4]],[[5,6,7,8]],[[1,1,1,1]]],"
                     "\"q\":[[[1,0,0,0],[0,1,0,0]]]}",
                     200));
    snprintf(path, sizeof path, "/v1/sessions/%s/fork", sid);
    free(post_ok(port, path, "{}", 201));
    char *tid = post_ok(port, "/v1/sessions", "{\"attention\":\"tensor\",\"heads\":2,\"kv_heads\":1,\"head_dim\":4}", 201);
    snprintf(path, sizeof path, "/v1/sessions/%s/step", tid);
    free(post_ok(port, path,
                 "{\"k1\":[1,0,0,0,0,1,0,0],\"k2\":[1,0,0,0,0,1,0,0],\"v1\":[1,2,3,4,5,6,7,8],"
                 "\"v2\":[1,1,1,1,2,2,2,2],\"q\":[1,0,0,0,0,1,0,0]}",
                 200));
    free(post_ok(port, "/v1/sessions", "{\"heads\":3,\"kv_heads\":2}", 400));
    free(post_ok(port, "/v1/sessions/00000000000000000000000000000000/step", "{\"k\":[1,0,0,0]}", 404));
    free(post_ok(port, "/v1/sessions", "{}", 201));
    free(post_ok(port, "/v1/sessions", "{}", 503)); /* the fifth: --max-sessions 4 */

    char *text = kvd_metrics_text(port);
    lint *l = malloc(sizeof *l);
    ck_assert_msg(lint_text(l, text), "lint: %s\n%s", l->err, text);

    /* DESIGN.md §6, and kvd_ready (the readiness-flapping alert's metric). */
    static const struct {
        const char *name, *type;
    } six[] = {
        {"kvd_http_requests_total", "counter"},       {"kvd_http_request_duration_seconds", "histogram"},
        {"kvd_step_duration_seconds", "histogram"},   {"kvd_step_tokens_total", "counter"},
        {"kvd_sessions", "gauge"},                    {"kvd_sessions_created_total", "counter"},
        {"kvd_sessions_expired_total", "counter"},    {"kvd_pool_pages", "gauge"},
        {"kvd_pool_bytes", "gauge"},                  {"kvd_kv_cache_usage_ratio", "gauge"},
        {"kvd_cache_tokens", "gauge"},                {"kvd_cache_bytes", "gauge"},
        {"kvd_evictions_total", "counter"},           {"kvd_rejected_total", "counter"},
        {"kvd_shadow_relative_error", "histogram"},   {"kvd_cache_config_info", "gauge"},
        {"process_resident_memory_bytes", "gauge"},   {"process_cpu_seconds_total", "counter"},
        {"process_open_fds", "gauge"},                {"process_start_time_seconds", "gauge"},
        {"kvd_ready", "gauge"},
    };
    for (size_t i = 0; i < sizeof six / sizeof six[0]; i++) {
        family *f = find(l, six[i].name, strlen(six[i].name));
        ck_assert_msg(f && f->sampled, "%s missing or without samples", six[i].name);
        ck_assert_msg(strcmp(f->type, six[i].type) == 0, "%s is a %s, expected %s", six[i].name, f->type,
                      six[i].type);
    }

    /* The traffic shows where it should. */
    expect_metric(text, "kvd_http_requests_total", "route=\"session_create\",code=\"400\"", 1, 1);
    expect_metric(text, "kvd_http_requests_total", "route=\"session_step\",code=\"404\"", 1, 1);
    expect_metric(text, "kvd_http_requests_total", "route=\"session_create\",code=\"503\"", 1, 1);
    expect_metric(text, "kvd_rejected_total", "reason=\"max_sessions\"", 1, 1);
    expect_metric(text, "kvd_step_duration_seconds_count", "attention=\"standard\"", 4, 4);
    expect_metric(text, "kvd_step_duration_seconds_count", "attention=\"tensor\"", 1, 1);
    expect_metric(text, "kvd_shadow_relative_error_count", NULL, 4, 4);
    expect_metric(text, "kvd_evictions_total", "policy=\"recency\"", 1, 1e9);
    expect_metric(text, "kvd_cache_bytes", "dtype=\"int8\"", 1, 1e12);
    expect_metric(text, "kvd_sessions", NULL, 4, 4);
    expect_metric(text, "kvd_sessions_created_total", NULL, 4, 4);
    expect_metric(text, "kvd_ready", NULL, 1, 1);
    expect_metric(text, "kvd_kv_cache_usage_ratio", NULL, 1e-9, 1);
    expect_histogram(text, "kvd_step_duration_seconds", "attention=\"standard\"");
    expect_histogram(text, "kvd_step_duration_seconds", "attention=\"tensor\"");
    expect_histogram(text, "kvd_shadow_relative_error", NULL);
    expect_histogram(text, "kvd_http_request_duration_seconds", "route=\"session_step\"");

    free(l);
    free(text);
    free(sid);
    free(tid);
    kvd_proc_stop_ck(p);
}
END_TEST

static int get_status(int port, const char *path)
{
    http_response *r = http_request(port, "GET", path, NULL, NULL);
    int s = r->status;
    http_response_free(r);
    return s;
}

START_TEST(ready_gauge_follows_readyz)
{
    /* 16 pages of 4 KiB; a head_dim 128 f32 token takes 1 KiB + metadata per page. */
    static const char *const args[] = {"--memory", "64KiB", "--page-bytes", "4096", "--threads", "2", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    int port = kvd_proc_port(p);
    ck_assert_int_eq(get_status(port, "/readyz"), 200);
    ck_assert_msg(kvd_metric_now(port, "kvd_ready", NULL) == 1, "kvd_ready not 1 on an empty pool");

    char *id = post_ok(port, "/v1/sessions", "{\"heads\":2,\"kv_heads\":1,\"head_dim\":128}", 201);
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/step", id);
    /* One token: k and v of [1, 1, 128]. */
    char body[4096];
    int n = snprintf(body, sizeof body, "{\"k\":[");
    for (int i = 0; i < 128; i++)
        n += snprintf(body + n, sizeof body - (size_t)n, "%s0.5", i ? "," : "");
    n += snprintf(body + n, sizeof body - (size_t)n, "],\"v\":[");
    for (int i = 0; i < 128; i++)
        n += snprintf(body + n, sizeof body - (size_t)n, "%s1", i ? "," : "");
    snprintf(body + n, sizeof body - (size_t)n, "]}");
    int steps = 0, status = 200;
    while (status == 200 && steps < MAX_FILL_STEPS) {
        http_response *r = http_request(port, "POST", path, KVD_JSON, body);
        status = r->status;
        http_response_free(r);
        steps++;
    }
    ck_assert_msg(status == 503, "the pool never filled (%d steps, last %d)", steps, status);
    ck_assert_int_eq(get_status(port, "/readyz"), 503);
    ck_assert_msg(kvd_metric_now(port, "kvd_ready", NULL) == 0, "kvd_ready not 0 while /readyz is 503");

    kvd_delete_session(port, id);
    ck_assert_int_eq(get_status(port, "/readyz"), 200);
    ck_assert_msg(kvd_metric_now(port, "kvd_ready", NULL) == 1, "kvd_ready not back to 1 after DELETE");
    free(id);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("metrics_exposition");
    TCase *tc = tcase_create("exposition");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, lint_catches_planted_faults);
    tcase_add_test(tc, exposition_after_traffic);
    tcase_add_test(tc, ready_gauge_follows_readyz);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
