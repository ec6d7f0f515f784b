/* tests/integration/test_lifecycle.c — the server's life and its read-only
 * endpoints: SIGTERM exits 0 when idle, with sessions, and with a step in
 * flight (which is still answered, exactly); GET /v1/sessions lists every
 * session through limit/after paging; /metrics holds the required metrics
 * and parses line by line as Prometheus text format 0.0.4; /healthz, /readyz
 * and /v1/info answer. Each test case runs its own kvd. */
#define _GNU_SOURCE
#include <ctype.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include <check.h>

#include "tests/support/checked_session.h"
#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"

/* See tests/integration/test_decode.c for the derivation. The in-flight step
 * attends over up to 256 tokens: the f32 accumulation bound grows with n but
 * stays far below this. */
#define OUTPUT_TOL_REL 1e-4
#define CASE_TIMEOUT_S 120
/* How long the server may take to read a sent request before the test
 * gives up (a failure bound, not a pause: the test waits for the sign). */
#define READ_SIGN_TIMEOUT_MS 20000
#define N_LISTED 7
#define LIST_PAGE 3
/* Unix time of 2020-09-13: any real process_start_time_seconds is later. */
#define SANE_UNIX_TIME 1.6e9

static const char *const server_args[] = {"--page-bytes", "16KiB", "--memory", "16MiB", "--threads", "2", NULL};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* Requests of `route` the server has read in full (0 before the first). */
static double received(int port, const char *route)
{
    char labels[64];
    snprintf(labels, sizeof labels, "route=\"%s\"", route);
    double v = kvd_metric_now(port, "kvd_http_requests_received_total", labels);
    return isnan(v) ? 0 : v;
}

/* Polls /metrics on other connections until the server has read more than
 * `before` requests of `route`: the sign that a request sent is in its hands. */
static void wait_received(int port, const char *route, double before)
{
    double deadline = now_ms() + READ_SIGN_TIMEOUT_MS;
    while (received(port, route) <= before) {
        ck_assert_msg(now_ms() < deadline, "kvd never read the %s request", route);
        struct timespec ts = {0, 1000000L}; /* between polls, not a guess at timing */
        nanosleep(&ts, NULL);
    }
}

static void expect_clean_exit(kvd_proc *p, const char *what)
{
    int st = kvd_proc_stop(p, KVD_PROC_STOP_TIMEOUT_MS);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        char *text = kvd_proc_stderr(p);
        fprintf(stderr, "%s: kvd stderr:\n%s\n", what, text);
        free(text);
    }
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: kvd exit status %d (signal %d)", what,
                  WIFEXITED(st) ? WEXITSTATUS(st) : -1, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    kvd_proc_free(p);
}

START_TEST(sigterm_idle)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    kvd_assert_healthy(kvd_proc_port(p));
    char *text = kvd_proc_stderr(p);
    ck_assert_msg(strstr(text, "kvd: listening on http://127.0.0.1:") != NULL, "no listening line");
    free(text);
    expect_clean_exit(p, "SIGTERM while idle");
}
END_TEST

START_TEST(sigterm_with_sessions)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    checked_session cs[3];
    for (int i = 0; i < 3; i++) {
        cs_create(&cs[i], port, 2, 4, 2, 32, 0, NULL, (uint64_t)(100 + i), OUTPUT_TOL_REL);
        cs_random_step(&cs[i], 0, 10, 10, NULL, false, NULL, "prefill");
        cs_random_step(&cs[i], 1, 10, 10, NULL, true, NULL, "prefill");
    }
    /* Under ASan a clean exit also means every page and session was freed. */
    expect_clean_exit(p, "SIGTERM with live sessions");
    for (int i = 0; i < 3; i++)
        cs_free(&cs[i]);
}
END_TEST

START_TEST(sigterm_inflight_step)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    checked_session cs;
    cs_create(&cs, port, 1, 8, 2, 64, 0, NULL, 55, OUTPUT_TOL_REL);
    http_conn *c = http_conn_open(port);
    ck_assert_ptr_nonnull(c);
    /* The connection is established and served before the step is sent. */
    const char health[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    ck_assert_int_eq(http_conn_send(c, health, sizeof health - 1), 0);
    http_response *r = http_conn_read(c, HTTP_TIMEOUT_MS);
    ck_assert_int_eq(r->status, 200);
    http_response_free(r);

    step_spec s = cs_spec(&cs, 0, 256, 256, NULL, true);
    double **want;
    char *body = cs_prepare(&cs, &s, 1, false, "b64", &want);
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/step", cs.id);
    size_t len;
    char *raw = http_format_request("POST", path, KVD_JSON, NULL, body, strlen(body), &len);
    /* SIGTERM once the server has read the step (it only has to be read,
     * not finished: the step may complete before or after the signal;
     * either way it must be answered). */
    double before = received(port, "session_step");
    ck_assert_int_eq(http_conn_send(c, raw, len), 0);
    wait_received(port, "session_step", before);
    kvd_proc_signal(p, SIGTERM);
    r = http_conn_read(c, HTTP_TIMEOUT_MS);
    ck_assert_msg(r->status == 200, "step in flight at SIGTERM: %d %s", r->status, r->status < 0 ? r->error : r->body);
    cJSON *j = http_response_json(r);
    cs_verify(&cs, &s, 1, false, "b64", want, j, "step in flight at SIGTERM");
    cJSON_Delete(j);
    http_response_free(r);
    http_conn_close(c);
    int st;
    ck_assert_msg(kvd_proc_wait(p, KVD_PROC_STOP_TIMEOUT_MS, &st), "kvd did not exit after SIGTERM");
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d after draining",
                  WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st));
    kvd_proc_free(p);
    free(raw);
    free(body);
    cs_want_free(want, 1);
    cs_spec_free(&s);
    cs_free(&cs);
}
END_TEST

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

START_TEST(list_paging)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    char *ids[N_LISTED];
    for (int i = 0; i < N_LISTED; i++) {
        ids[i] = kvd_create_session(port, "{\"layers\":1,\"heads\":2,\"head_dim\":16}", NULL);
        for (int k = 0; k < i; k++)
            ck_assert_msg(strcmp(ids[k], ids[i]) != 0, "two sessions got the same id");
    }
    /* Give one session tokens so the list shows them. */
    checked_session cs;
    cs_create(&cs, port, 1, 2, 2, 16, 0, NULL, 9, OUTPUT_TOL_REL);
    cs_random_step(&cs, 0, 5, 5, NULL, false, NULL, "prefill");
    qsort(ids, N_LISTED, sizeof ids[0], cmp_str);

    /* Pages of LIST_PAGE, in ascending id order, each session once. */
    char seen[N_LISTED + 1][KVD_SESSION_ID_LEN + 1];
    int n_seen = 0;
    char after[KVD_SESSION_ID_LEN + 1] = "";
    char prev[KVD_SESSION_ID_LEN + 1] = "";
    for (int page = 0; page < N_LISTED + 2; page++) {
        char path[128];
        snprintf(path, sizeof path, "/v1/sessions?limit=%d%s%s", LIST_PAGE, after[0] ? "&after=" : "", after);
        cJSON *list = kvd_get_json(port, path, 200);
        ck_assert_msg(kvd_json_num(list, "total") == N_LISTED + 1, "total %g", kvd_json_num(list, "total"));
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(list, "sessions");
        ck_assert_msg(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) <= LIST_PAGE, "page %d: %d entries", page,
                      cJSON_GetArraySize(arr));
        const cJSON *e;
        cJSON_ArrayForEach(e, arr)
        {
            const char *id = kvd_json_str(e, "id");
            ck_assert_msg(kvd_is_session_id(id), "listed id");
            ck_assert_msg(strcmp(id, prev) > 0, "list not in ascending id order: %s after %s", id, prev);
            ck_assert_msg(n_seen <= N_LISTED, "more sessions listed than exist");
            snprintf(seen[n_seen++], sizeof seen[0], "%s", id);
            snprintf(prev, sizeof prev, "%s", id);
            double tokens = kvd_json_num(e, "tokens"), bytes = kvd_json_num(e, "bytes");
            if (strcmp(id, cs.id) == 0)
                ck_assert_msg(tokens == 5 * 2 && bytes > 0, "listed tokens %g bytes %g of the stepped session",
                              tokens, bytes);
            else
                ck_assert_msg(tokens == 0 && bytes == 0, "an empty session lists tokens %g bytes %g", tokens, bytes);
        }
        const cJSON *next = cJSON_GetObjectItemCaseSensitive(list, "next_after");
        bool more = cJSON_IsString(next);
        if (more)
            snprintf(after, sizeof after, "%s", next->valuestring);
        cJSON_Delete(list);
        if (!more)
            break;
    }
    ck_assert_int_eq(n_seen, N_LISTED + 1);
    for (int i = 0; i < N_LISTED; i++) {
        bool found = false;
        for (int k = 0; k < n_seen; k++)
            found = found || strcmp(seen[k], ids[i]) == 0;
        ck_assert_msg(found, "session %s missing from the list", ids[i]);
    }

    /* after= alone, and a deleted session leaves the list. */
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions?after=%s", ids[N_LISTED - 2]);
    cJSON *list = kvd_get_json(port, path, 200);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(list, "sessions");
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) ck_assert_msg(strcmp(kvd_json_str(e, "id"), ids[N_LISTED - 2]) > 0, "after= ignored");
    cJSON_Delete(list);
    kvd_delete_session(port, ids[0]);
    list = kvd_get_json(port, "/v1/sessions", 200);
    ck_assert_msg(kvd_json_num(list, "total") == N_LISTED, "total after a delete: %g", kvd_json_num(list, "total"));
    arr = cJSON_GetObjectItemCaseSensitive(list, "sessions");
    cJSON_ArrayForEach(e, arr) ck_assert_msg(strcmp(kvd_json_str(e, "id"), ids[0]) != 0, "deleted id still listed");
    cJSON_Delete(list);

    for (int i = 0; i < N_LISTED; i++)
        free(ids[i]);
    cs_free(&cs);
    kvd_proc_stop_ck(p);
}
END_TEST

/* --- Prometheus text format 0.0.4, line by line ------------------------ */

static bool is_name_start(char c)
{
    return isalpha((unsigned char)c) || c == '_' || c == ':';
}

static bool is_name_char(char c)
{
    return is_name_start(c) || isdigit((unsigned char)c);
}

/* Parses a metric name at *p; copies it into name. */
static bool parse_name(const char **p, char *name, size_t cap)
{
    const char *s = *p;
    if (!is_name_start(*s))
        return false;
    size_t n = 0;
    while (is_name_char(s[n]))
        n++;
    if (n >= cap)
        return false;
    memcpy(name, s, n);
    name[n] = '\0';
    *p = s + n;
    return true;
}

/* Parses {k="v",...}; stores the value of label "le" (if any) in le. Label
 * values may not look like session ids (DESIGN.md §6: no ids in labels). */
static bool parse_labels(const char **p, char *le, size_t le_cap, char *why, size_t why_cap)
{
    const char *s = *p;
    if (*s != '{')
        return true;
    s++;
    while (*s != '}') {
        char lname[128];
        if (!isalpha((unsigned char)*s) && *s != '_') {
            snprintf(why, why_cap, "bad label name");
            return false;
        }
        size_t n = 0;
        while (isalnum((unsigned char)s[n]) || s[n] == '_')
            n++;
        if (n >= sizeof lname)
            return false;
        memcpy(lname, s, n);
        lname[n] = '\0';
        s += n;
        if (s[0] != '=' || s[1] != '"') {
            snprintf(why, why_cap, "label %.60s without =\"", lname);
            return false;
        }
        s += 2;
        char value[256];
        size_t vl = 0;
        while (*s != '"') {
            if (!*s || *s == '\n') {
                snprintf(why, why_cap, "unterminated label value");
                return false;
            }
            char c = *s++;
            if (c == '\\') {
                if (*s != '\\' && *s != '"' && *s != 'n') {
                    snprintf(why, why_cap, "bad escape in label value");
                    return false;
                }
                c = *s++;
            }
            if (vl + 1 < sizeof value)
                value[vl++] = c;
        }
        value[vl] = '\0';
        s++;
        if (strcmp(lname, "le") == 0)
            snprintf(le, le_cap, "%.60s", value);
        if (kvd_is_session_id(value)) {
            snprintf(why, why_cap, "label %.60s holds a session id", lname);
            return false;
        }
        if (*s == ',')
            s++;
        else if (*s != '}') {
            snprintf(why, why_cap, "expected , or } after a label");
            return false;
        }
    }
    *p = s + 1;
    return true;
}

static bool parse_value(const char *s, const char **end, double *v)
{
    if (strncmp(s, "+Inf", 4) == 0 || strncmp(s, "-Inf", 4) == 0 || strncmp(s, "NaN", 3) == 0) {
        *v = s[0] == 'N' ? NAN : s[0] == '+' ? INFINITY : -INFINITY;
        *end = s + (s[0] == 'N' ? 3 : 4);
        return true;
    }
    char *e;
    *v = strtod(s, &e);
    if (e == s)
        return false;
    *end = e;
    return true;
}

/* Family a sample belongs to: strips _bucket/_sum/_count when the
 * base name was declared a histogram or summary. */
typedef struct family {
    char name[128];
    char type[32];
} family;

static const family *find_family(const family *f, int n, const char *sample, bool strip)
{
    for (int i = 0; i < n; i++) {
        if (strcmp(f[i].name, sample) == 0)
            return &f[i];
        if (!strip)
            continue;
        size_t fl = strlen(f[i].name);
        if (strncmp(f[i].name, sample, fl) == 0 &&
            (strcmp(sample + fl, "_bucket") == 0 || strcmp(sample + fl, "_sum") == 0 ||
             strcmp(sample + fl, "_count") == 0))
            return &f[i];
    }
    return NULL;
}

/* Validates the whole exposition; fails the test at the first bad line. */
static void check_exposition(const char *text)
{
    enum { MAX_FAMILIES = 256 };
    static family fam[MAX_FAMILIES];
    int n_fam = 0;
    int lineno = 0;
    /* Histogram bucket checks: within one series buckets are cumulative. */
    char last_bucket_series[512] = "";
    double last_bucket_le = -INFINITY, last_bucket_count = 0;
    ck_assert_msg(text[0] != '\0' && text[strlen(text) - 1] == '\n', "exposition must end with a newline");
    for (const char *line = text; *line;) {
        const char *eol = strchr(line, '\n');
        ck_assert_ptr_nonnull(eol);
        char buf[1024];
        size_t len = (size_t)(eol - line);
        ck_assert_msg(len < sizeof buf, "line %d too long", lineno + 1);
        memcpy(buf, line, len);
        buf[len] = '\0';
        line = eol + 1;
        lineno++;
        if (len == 0)
            continue;
        if (buf[0] == '#') {
            char kw[16], name[128], type[32];
            if (sscanf(buf, "# %15s %127s %31s", kw, name, type) >= 2 && strcmp(kw, "TYPE") == 0) {
                ck_assert_msg(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                                  strcmp(type, "histogram") == 0 || strcmp(type, "summary") == 0 ||
                                  strcmp(type, "untyped") == 0,
                              "line %d: unknown type '%s'", lineno, type);
                ck_assert_msg(find_family(fam, n_fam, name, false) == NULL, "line %d: %s typed twice", lineno, name);
                ck_assert_msg(n_fam < MAX_FAMILIES, "too many families");
                if (strcmp(type, "counter") == 0) {
                    size_t nl = strlen(name);
                    ck_assert_msg(nl > 6 && strcmp(name + nl - 6, "_total") == 0,
                                  "line %d: counter %s does not end in _total", lineno, name);
                }
                snprintf(fam[n_fam].name, sizeof fam[n_fam].name, "%s", name);
                snprintf(fam[n_fam].type, sizeof fam[n_fam].type, "%s", type);
                n_fam++;
            } else {
                ck_assert_msg(strncmp(buf, "# HELP ", 7) == 0 || strncmp(buf, "# ", 2) == 0,
                              "line %d: malformed comment '%s'", lineno, buf);
            }
            continue;
        }
        const char *s = buf;
        char name[128], le[64] = "", why[128] = "";
        ck_assert_msg(parse_name(&s, name, sizeof name), "line %d: bad metric name: '%s'", lineno, buf);
        const char *labels_start = s;
        ck_assert_msg(parse_labels(&s, le, sizeof le, why, sizeof why), "line %d: bad labels (%s): '%s'", lineno, why,
                      buf);
        size_t labels_len = (size_t)(s - labels_start);
        ck_assert_msg(*s == ' ', "line %d: no space before the value: '%s'", lineno, buf);
        while (*s == ' ')
            s++;
        double v;
        const char *end;
        ck_assert_msg(parse_value(s, &end, &v), "line %d: bad value: '%s'", lineno, buf);
        s = end;
        if (*s == ' ') { /* optional integer timestamp */
            s++;
            if (*s == '-')
                s++;
            ck_assert_msg(isdigit((unsigned char)*s), "line %d: bad timestamp: '%s'", lineno, buf);
            while (isdigit((unsigned char)*s))
                s++;
        }
        ck_assert_msg(*s == '\0', "line %d: junk after the value: '%s'", lineno, buf);
        const family *f = find_family(fam, n_fam, name, true);
        ck_assert_msg(f != NULL, "line %d: sample %s has no # TYPE line before it", lineno, name);
        if (strcmp(f->type, "counter") == 0)
            ck_assert_msg(v >= 0, "line %d: negative counter", lineno);
        size_t nl = strlen(name);
        if (strcmp(f->type, "histogram") == 0 && nl > 7 && strcmp(name + nl - 7, "_bucket") == 0) {
            ck_assert_msg(le[0] != '\0', "line %d: bucket without le", lineno);
            double lev = strcmp(le, "+Inf") == 0 ? INFINITY : strtod(le, NULL);
            /* The name and labels without le identify one histogram. */
            char series[512];
            snprintf(series, sizeof series, "%s%.*s", name, (int)labels_len, labels_start);
            char *lp = strstr(series, "le=\"");
            if (lp) {
                char *q = strchr(lp + 4, '"');
                if (q)
                    memmove(lp, q + 1, strlen(q + 1) + 1);
            }
            if (strcmp(series, last_bucket_series) == 0) {
                ck_assert_msg(lev > last_bucket_le, "line %d: le not increasing", lineno);
                ck_assert_msg(v >= last_bucket_count, "line %d: bucket counts not cumulative", lineno);
            }
            snprintf(last_bucket_series, sizeof last_bucket_series, "%s", series);
            last_bucket_le = isinf(lev) ? -INFINITY : lev; /* +Inf closes a series */
            last_bucket_count = isinf(lev) ? 0 : v;
        }
    }
}

START_TEST(metrics_and_probes)
{
    kvd_proc *p = kvd_proc_start_ck(server_args);
    int port = kvd_proc_port(p);
    /* Traffic first, so counters and histograms have samples. */
    checked_session cs;
    cs_create(&cs, port, 1, 4, 2, 32, 0, NULL, 3, OUTPUT_TOL_REL);
    cs_random_step(&cs, 0, 8, 8, NULL, false, NULL, "prefill");
    cs_random_step(&cs, 0, 1, 1, NULL, false, NULL, "decode");
    http_response *r = http_request(port, "GET", "/v1/nope", NULL, NULL);
    ck_assert_int_eq(r->status, 404);
    http_response_free(r);

    r = http_request(port, "GET", "/metrics", NULL, NULL);
    ck_assert_int_eq(r->status, 200);
    const char *ct = http_header_get(r, "Content-Type");
    ck_assert_msg(ct && strncmp(ct, "text/plain", 10) == 0 && strstr(ct, "version=0.0.4"),
                  "metrics Content-Type '%s'", ct ? ct : "(none)");
    check_exposition(r->body);
    static const char *const required[] = {
        "kvd_http_requests_total", "kvd_sessions",  "kvd_pool_pages",
        "kvd_pool_bytes",          "kvd_kv_cache_usage_ratio", "kvd_step_tokens_total",
        "process_resident_memory_bytes", "process_start_time_seconds",
    };
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
        ck_assert_msg(!isnan(kvd_metric(r->body, required[i], NULL)), "metric %s missing", required[i]);
    ck_assert_msg(kvd_metric(r->body, "kvd_http_requests_total", "route=\"session_step\",code=\"200\"") == 2,
                  "two steps counted: %g",
                  kvd_metric(r->body, "kvd_http_requests_total", "route=\"session_step\",code=\"200\""));
    ck_assert_msg(kvd_metric(r->body, "kvd_http_requests_total", "code=\"404\"") >= 1, "the 404 is counted");
    /* Read counts too (the /metrics request reading them is itself counted). */
    ck_assert_msg(kvd_metric(r->body, "kvd_http_requests_received_total", "route=\"session_step\"") == 2,
                  "two steps read: %g",
                  kvd_metric(r->body, "kvd_http_requests_received_total", "route=\"session_step\""));
    ck_assert_msg(kvd_metric(r->body, "kvd_http_requests_received_total", "route=\"metrics\"") == 1,
                  "the scrape counts itself");
    ck_assert_msg(kvd_metric(r->body, "kvd_sessions", NULL) == 1, "kvd_sessions %g",
                  kvd_metric(r->body, "kvd_sessions", NULL));
    double used = kvd_metric(r->body, "kvd_pool_pages", "state=\"used\"");
    double freep = kvd_metric(r->body, "kvd_pool_pages", "state=\"free\"");
    ck_assert_msg(used >= 1 && freep >= 1 && used + freep == (16 << 20) / (16 << 10),
                  "pool pages used %g + free %g != 1024", used, freep);
    ck_assert_msg(kvd_metric(r->body, "kvd_pool_bytes", NULL) > 0, "kvd_pool_bytes");
    double start = kvd_metric(r->body, "process_start_time_seconds", NULL);
    ck_assert_msg(start > SANE_UNIX_TIME && start <= (double)time(NULL) + 1, "process_start_time_seconds %g", start);
    ck_assert_msg(kvd_metric(r->body, "process_resident_memory_bytes", NULL) > 0, "process_resident_memory_bytes");
    http_response_free(r);

    /* Counters count exactly. */
    double before = kvd_metric_now(port, "kvd_http_requests_total", "route=\"healthz\",code=\"200\"");
    if (isnan(before))
        before = 0;
    for (int i = 0; i < 3; i++)
        kvd_assert_healthy(port);
    double after = kvd_metric_now(port, "kvd_http_requests_total", "route=\"healthz\",code=\"200\"");
    ck_assert_msg(after - before == 3, "3 healthz counted as %g", after - before);

    /* Probes and info. */
    r = http_request(port, "GET", "/readyz", NULL, NULL);
    ck_assert_int_eq(r->status, 200);
    http_response_free(r);
    cJSON *info = kvd_get_json(port, "/v1/info", 200);
    ck_assert_msg(kvd_json_str(info, "version") && *kvd_json_str(info, "version"), "info.version");
    ck_assert_msg(kvd_json_num(info, "pool.page_bytes") == 16384, "info pool.page_bytes %g",
                  kvd_json_num(info, "pool.page_bytes"));
    ck_assert_msg(kvd_json_num(info, "pool.pages") == 1024, "info pool.pages %g", kvd_json_num(info, "pool.pages"));
    ck_assert_msg(kvd_json_num(info, "pool.bytes") == 16 << 20, "info pool.bytes %g", kvd_json_num(info, "pool.bytes"));
    cJSON_Delete(info);
    cs_free(&cs);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *lifecycle_suite(void)
{
    Suite *s = suite_create("integration_lifecycle");
    TCase *tc = tcase_create("lifecycle");
    tcase_set_timeout(tc, CASE_TIMEOUT_S);
    tcase_add_test(tc, sigterm_idle);
    tcase_add_test(tc, sigterm_with_sessions);
    tcase_add_test(tc, sigterm_inflight_step);
    tcase_add_test(tc, list_paging);
    tcase_add_test(tc, metrics_and_probes);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(lifecycle_suite)
