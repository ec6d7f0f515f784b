/* tests/integration/test_hardening_api.c — issue 10's API and cache fixes
 * over loopback: reclaim under --on-full evict keeps a tensor two-cache
 * consistent (bug 1), a step larger than the whole pool is a 413 (bug 5),
 * small-body routes are capped, error bodies stay valid UTF-8 and numbers
 * with leading zeros are refused (bug 8), listings and stats stay exact
 * (bug 4), and the session count and per-session heap are bounded. Each
 * case runs its own kvd. */
#define _GNU_SOURCE
#include <math.h>
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

#define CASE_TIMEOUT_S 600

/* ---- bug 1: reclaim on a tensor two-cache ---- */

#define T_HEADS 2
#define T_D 8
#define T_PREFILL 60     /* 3600 pair rows: 65 pages of 56 rows */
#define T_SINK 1
#define T_RECENT 2
/* Exact attention in double against f32 pair rows over 4 tokens. */
#define T_TOL 1e-5

typedef struct ttoken {
    float k1[T_D], k2[T_D], v1[T_D], v2[T_D];
} ttoken;

/* Exact tensor attention of one query head over tokens t[0..n). */
static void tensor_ref(const ttoken *t, size_t n, const float *q, double *o)
{
    const double scale = 1.0 / sqrt(T_D);
    double mx = -INFINITY, z = 0;
    for (size_t j = 0; j < n; j++)
        for (size_t k = 0; k < n; k++) {
            double s = 0;
            for (int l = 0; l < T_D; l++)
                s += (double)q[l] * t[j].k1[l] * t[k].k2[l];
            mx = fmax(mx, s * scale);
        }
    for (int l = 0; l < T_D; l++)
        o[l] = 0;
    for (size_t j = 0; j < n; j++)
        for (size_t k = 0; k < n; k++) {
            double s = 0;
            for (int l = 0; l < T_D; l++)
                s += (double)q[l] * t[j].k1[l] * t[k].k2[l];
            const double w = exp(s * scale - mx);
            z += w;
            for (int l = 0; l < T_D; l++)
                o[l] += w * t[j].v1[l] * t[k].v2[l];
        }
    for (int l = 0; l < T_D; l++)
        o[l] /= z;
}

/* {"k1","k2","v1","v2"[,"q"],"mask":"block"} for tokens t[0..m). */
static char *tensor_body(const ttoken *t, size_t m, const float *q)
{
    sbuf b;
    sb_init(&b);
    static const char *const names[4] = {"k1", "k2", "v1", "v2"};
    sb_puts(&b, "{");
    float *rows = malloc((m ? m : 1) * T_D * sizeof *rows);
    for (int f = 0; f < 4; f++) {
        for (size_t i = 0; i < m; i++)
            memcpy(rows + i * T_D, f == 0 ? t[i].k1 : f == 1 ? t[i].k2 : f == 2 ? t[i].v1 : t[i].v2,
                   sizeof(float) * T_D);
        sb_printf(&b, "\"%s\":", names[f]);
        sb_floats_json(&b, rows, m * T_D);
        sb_puts(&b, ",");
    }
    free(rows);
    sb_puts(&b, "\"q\":");
    sb_floats_json(&b, q, q ? T_HEADS * T_D : 0);
    sb_puts(&b, ",\"mask\":\"block\"}");
    return sb_take(&b);
}

static void random_ttoken(rng *r, ttoken *t)
{
    rng_fill(r, t->k1, T_D, -1, 1);
    rng_fill(r, t->k2, T_D, -1, 1);
    rng_fill(r, t->v1, T_D, -1, 1);
    rng_fill(r, t->v2, T_D, -1, 1);
}

/* The reported case: an idle two-cache with recency (sink 1, recent 2) holds
 * 60 tokens (3600 pair rows); another session's step needs more pages than
 * are free, so --on-full evict reclaims the two-cache down to 3 tokens. Its
 * pair rows must be 9 again, its next query exact over the kept tokens
 * (positions 0, 58, 59 and the new one), and its next appends fit. */
START_TEST(reclaim_rebuilds_two_cache_pairs)
{
    const char *const args[] = {"--page-bytes", "4096", "--memory", "512KiB", "--threads", "2",
                                "--on-full",    "evict", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    const int port = kvd_proc_port(p);
    char create[256];
    snprintf(create, sizeof create,
             "{\"heads\":%d,\"kv_heads\":1,\"head_dim\":%d,\"attention\":\"tensor\",\"tensor_cache\":\"two\","
             "\"cache\":{\"eviction\":\"recency\",\"sink\":%d,\"recent\":%d}}",
             T_HEADS, T_D, T_SINK, T_RECENT);
    char *a = kvd_create_session(port, create, NULL);
    rng r;
    rng_seed(&r, 1010);
    ttoken all[T_PREFILL];
    for (size_t i = 0; i < T_PREFILL; i++)
        random_ttoken(&r, &all[i]);
    char *body = tensor_body(all, T_PREFILL, NULL);
    cJSON_Delete(kvd_step_ok(port, a, body));
    free(body);
    cJSON *st = kvd_session_stats(port, a);
    ck_assert_msg(kvd_json_num(st, "pair_rows") == T_PREFILL * T_PREFILL, "pair_rows %g",
                  kvd_json_num(st, "pair_rows"));
    cJSON_Delete(st);

    /* A plain session's step that needs one page more than is free (56 f32
     * slots of head_dim 8 a page): reclaim takes the two-cache's tokens. */
    const double free_pages = kvd_metric_now(port, "kvd_pool_pages", "state=\"free\"");
    char *b = kvd_create_session(port, "{\"heads\":1,\"kv_heads\":1,\"head_dim\":8}", NULL);
    const size_t m = ((size_t)free_pages + 1) * 56;
    float *k = calloc(m * 8, sizeof *k), *q = calloc(8, sizeof *q);
    sbuf sb;
    sb_init(&sb);
    sb_puts(&sb, "{\"k\":");
    sb_floats_b64(&sb, k, m * 8);
    sb_puts(&sb, ",\"v\":");
    sb_floats_b64(&sb, k, m * 8);
    sb_puts(&sb, ",\"q\":");
    sb_floats_json(&sb, q, 8);
    sb_puts(&sb, ",\"mask\":\"block\"}");
    body = sb_take(&sb);
    cJSON_Delete(kvd_step_ok(port, b, body));
    free(body);
    free(k);
    free(q);

    st = kvd_session_stats(port, a);
    ck_assert_msg(kvd_json_num(st, "tokens") == T_SINK + T_RECENT, "tokens %g", kvd_json_num(st, "tokens"));
    ck_assert_msg(kvd_json_num(st, "pair_rows") == 9, "after reclaim: tokens 3, pair_rows %g (want 9)",
                  kvd_json_num(st, "pair_rows"));
    cJSON_Delete(st);

    /* Kept: the sink (position 0) and the two newest; then new tokens, each
     * step's query checked against exact attention over all kept tokens. */
    ttoken kept[16] = {all[0], all[T_PREFILL - 2], all[T_PREFILL - 1]};
    size_t n = 3;
    for (int step = 0; step < 3; step++) {
        ttoken fresh[4];
        for (int i = 0; i < 4; i++)
            random_ttoken(&r, &fresh[i]);
        memcpy(kept + n, fresh, sizeof fresh);
        n += 4;
        float qv[T_HEADS * T_D];
        rng_fill(&r, qv, T_HEADS * T_D, -2, 2);
        body = tensor_body(fresh, 4, qv);
        cJSON *resp = kvd_step_ok(port, a, body);
        free(body);
        double want[T_HEADS * T_D];
        for (int h = 0; h < T_HEADS; h++)
            tensor_ref(kept, n, qv + h * T_D, want + h * T_D);
        kvd_check_tensor(cJSON_GetObjectItem(resp, "o"), want, T_HEADS * T_D, T_TOL, "query after reclaim");
        cJSON_Delete(resp);
        st = kvd_session_stats(port, a);
        ck_assert_msg(kvd_json_num(st, "pair_rows") == (double)(n * n), "pair_rows %g at %zu tokens",
                      kvd_json_num(st, "pair_rows"), n);
        cJSON_Delete(st);
    }
    kvd_delete_session(port, a);
    kvd_delete_session(port, b);
    ck_assert_msg(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\"") == 0, "pages left after DELETE");
    free(a);
    free(b);
    kvd_proc_stop_ck(p);
}
END_TEST

/* ---- bug 5: a step larger than the whole pool ---- */

/* A step needing more pages than the pool has is a 413 that names both
 * counts, without Retry-After, not counted as rejected for a full pool; one
 * that fits the pool but not its free pages stays a 503 with Retry-After. */
START_TEST(impossible_step_is_413)
{
    /* 64 pages; head_dim 16: 30 slots a page (64-byte aligned K and V blocks of
     * 30 * 64 B, 30 * 8 B of metadata). */
    const char *const args[] = {"--page-bytes", "4096", "--memory", "256KiB", "--threads", "2", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    const int port = kvd_proc_port(p);
    char *id = kvd_create_session(port, "{\"heads\":1,\"kv_heads\":1,\"head_dim\":16}", NULL);
    sbuf sb;
    float *k = calloc(30 * 65 * 16, sizeof *k);
    /* 65 pages' worth: more than the 64 the pool has. */
    sb_init(&sb);
    sb_puts(&sb, "{\"k\":");
    sb_floats_b64(&sb, k, 30 * 65 * 16);
    sb_puts(&sb, ",\"v\":");
    sb_floats_b64(&sb, k, 30 * 65 * 16);
    sb_puts(&sb, ",\"q\":[]}");
    char *body = sb_take(&sb);
    http_response *r = kvd_step(port, id, body);
    kvd_expect_error(r, 413, "payload_too_large", NULL, "needs 65 pages", "step over the whole pool");
    ck_assert_msg(strstr(r->body, "64 pages") != NULL, "message does not name the pool's 64 pages: %s", r->body);
    ck_assert_msg(http_header_get(r, "Retry-After") == NULL, "a 413 with Retry-After");
    http_response_free(r);
    free(body);

    /* Take 40 pages, then ask for 30: fits the pool, not the free pages. */
    sb_init(&sb);
    sb_puts(&sb, "{\"k\":");
    sb_floats_b64(&sb, k, 30 * 40 * 16);
    sb_puts(&sb, ",\"v\":");
    sb_floats_b64(&sb, k, 30 * 40 * 16);
    sb_puts(&sb, ",\"q\":[]}");
    body = sb_take(&sb);
    cJSON_Delete(kvd_step_ok(port, id, body));
    free(body);
    sb_init(&sb);
    sb_puts(&sb, "{\"k\":");
    sb_floats_b64(&sb, k, 30 * 30 * 16);
    sb_puts(&sb, ",\"v\":");
    sb_floats_b64(&sb, k, 30 * 30 * 16);
    sb_puts(&sb, ",\"q\":[]}");
    body = sb_take(&sb);
    r = kvd_step(port, id, body);
    kvd_expect_error(r, 503, "resource_exhausted", NULL, "needs up to 30 pages", "step over the free pages");
    ck_assert_msg(http_header_get(r, "Retry-After") != NULL, "a 503 without Retry-After");
    http_response_free(r);
    free(body);
    free(k);
    ck_assert_msg(kvd_metric_now(port, "kvd_rejected_total", "reason=\"pool_full\"") == 1,
                  "rejected{pool_full} %g: only the 503 counts",
                  kvd_metric_now(port, "kvd_rejected_total", "reason=\"pool_full\""));
    free(id);
    kvd_proc_stop_ck(p);
}
END_TEST

/* ---- bug 8: UTF-8 in error bodies, leading zeros ---- */

/* True if s[0..n) is valid UTF-8 (RFC 3629). Written apart from kvd's. */
static bool valid_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], len, cp;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xE0) == 0xC0)
            len = 2, cp = c & 0x1F;
        else if ((c & 0xF0) == 0xE0)
            len = 3, cp = c & 0x0F;
        else if ((c & 0xF8) == 0xF0)
            len = 4, cp = c & 0x07;
        else
            return false;
        if (i + len > n)
            return false;
        for (unsigned k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        const unsigned min[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

/* Sends body to path; expects a 400 whose body is valid UTF-8 JSON. */
static void expect_clean_400(int port, const char *path, const char *body, const char *field, const char *what)
{
    http_response *r = http_request_n(port, "POST", path, KVD_JSON, body, strlen(body), NULL);
    kvd_expect_error(r, 400, "invalid_argument", field, NULL, what);
    ck_assert_msg(valid_utf8((const unsigned char *)r->body, r->body_len), "%s: error body is not UTF-8: %s", what,
                  r->body);
    http_response_free(r);
}

START_TEST(error_bodies_are_utf8)
{
    const char *const args[] = {"--threads", "2", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    const int port = kvd_proc_port(p);
    /* An unknown field named with bytes that are not UTF-8 (a lone
     * continuation byte, an overlong '/', a surrogate, a cut sequence). */
    expect_clean_400(port, "/v1/sessions", "{\"heads\":1,\"kv_heads\":1,\"head_dim\":8,\"x\x80\xc0\xaf\xed\xa0\x80\xe2\x82\":1}",
                     NULL, "unknown field with invalid UTF-8");
    /* A string value echoed in an enum error. */
    expect_clean_400(port, "/v1/sessions", "{\"heads\":1,\"kv_heads\":1,\"head_dim\":8,\"attention\":\"t\xff\xfe\"}",
                     "attention", "enum value with invalid UTF-8");
    /* Valid UTF-8 in a name comes back as it was. */
    http_response *r = http_request(port, "POST", "/v1/sessions", KVD_JSON,
                                    "{\"heads\":1,\"kv_heads\":1,\"head_dim\":8,\"h\xc3\xa9" "ads\":1}");
    kvd_expect_error(r, 400, "invalid_argument", NULL, "h\xc3\xa9" "ads", "valid UTF-8 kept");
    http_response_free(r);
    char *id = kvd_create_session(port, "{\"heads\":1,\"kv_heads\":1,\"head_dim\":2}", NULL);
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/fork", id);
    expect_clean_400(port, path, "{\"\xf5\x80\":1}", NULL, "fork option with invalid UTF-8");
    free(id);
    kvd_proc_stop_ck(p);
}
END_TEST

/* "0001" is not a JSON number (cJSON takes it): a 400 naming the field,
 * for scalars, nested fields and tensor elements alike; "0", "0.5", "-0"
 * and "1e05" stay numbers. */
START_TEST(leading_zeros_refused)
{
    const char *const args[] = {"--threads", "2", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    const int port = kvd_proc_port(p);
    expect_clean_400(port, "/v1/sessions", "{\"heads\":0001,\"kv_heads\":1,\"head_dim\":8}", "heads", "heads 0001");
    expect_clean_400(port, "/v1/sessions",
                     "{\"heads\":1,\"kv_heads\":1,\"head_dim\":8,\"cache\":{\"eviction\":\"recency\",\"sink\":-01}}",
                     "cache.sink", "cache.sink -01");
    char *id = kvd_create_session(port, "{\"heads\":1,\"kv_heads\":1,\"head_dim\":2}", NULL);
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/step", id);
    expect_clean_400(port, path, "{\"layer\":0,\"k\":[[0.5,00.5]],\"v\":[[1,2]],\"q\":[1,2]}", "k", "k 00.5");
    expect_clean_400(port, path, "{\"steps\":[{\"layer\":0,\"k\":[1,2],\"v\":[1,2],\"q\":[]},"
                                 "{\"layer\":0,\"k\":[1,2],\"v\":[1,2],\"q\":[1,02]}]}",
                     "steps[1].q", "steps[1].q 02");
    cJSON *st = kvd_session_stats(port, id);
    ck_assert_msg(kvd_json_num(st, "tokens") == 0, "a refused step changed the session");
    cJSON_Delete(st);
    cJSON_Delete(kvd_step_ok(port, id, "{\"layer\":0,\"k\":[0,-0],\"v\":[0.5,1e05],\"q\":[-0.0,1E-05]}"));
    free(id);
    kvd_proc_stop_ck(p);
}
END_TEST

/* ---- bug 2: small-body routes are capped like create ---- */

/* A body over 64 KiB on any route but a step is a 413 before it is parsed
 * (a 32 MiB fork body was parsed on the loop thread); the session is
 * untouched and a small fork body still works. */
START_TEST(small_body_routes_capped)
{
    const char *const args[] = {"--threads", "2", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    const int port = kvd_proc_port(p);
    char *id = kvd_create_session(port, "{\"heads\":1,\"kv_heads\":1,\"head_dim\":2}", NULL);
    const size_t n = 64 * 1024 + 1;
    char *big = malloc(n + 1);
    /* a valid JSON object: {"a":"xxxx..."} */
    memset(big, 'x', n);
    memcpy(big, "{\"a\":\"", 6);
    memcpy(big + n - 2, "\"}", 2);
    big[n] = '\0';
    char path[128];
    static const char *const routes[][2] = {{"POST", "/fork"}, {"DELETE", ""}, {"POST", ""}};
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, i == 2 ? "/v1/sessions" : "/v1/sessions/%s%s", id, routes[i][1]);
        http_response *r = http_request_n(port, routes[i][0], path, KVD_JSON, big, n, NULL);
        kvd_expect_error(r, 413, "payload_too_large", NULL, "over 64 KiB", path);
        http_response_free(r);
    }
    free(big);
    cJSON *list = kvd_get_json(port, "/v1/sessions", 200);
    ck_assert_msg(kvd_json_num(list, "total") == 1, "a refused request changed the sessions");
    cJSON_Delete(list);
    snprintf(path, sizeof path, "/v1/sessions/%s/fork", id);
    http_response *r = http_request(port, "POST", path, KVD_JSON, "{}");
    ck_assert_int_eq(r->status, 201);
    http_response_free(r);
    free(id);
    kvd_proc_stop_ck(p);
}
END_TEST

/* ---- bug 4: listing from a sorted registry, stats on a worker ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Pages of `limit` ids through ?after= return every live id exactly once, in
 * ascending order, after creates, deletes and expiry-free churn; stats of a
 * session with evictions still report its kept positions exactly. */
START_TEST(listing_and_stats_exact)
{
    const char *const args[] = {"--threads", "2", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    const int port = kvd_proc_port(p);
    enum { N = 30, LIMIT = 7 };
    char *ids[N];
    for (int i = 0; i < N; i++)
        ids[i] = kvd_create_session(port, "{\"heads\":1,\"kv_heads\":1,\"head_dim\":2}", NULL);
    for (int i = 0; i < N; i += 3) { /* delete every third */
        kvd_delete_session(port, ids[i]);
        free(ids[i]);
        ids[i] = NULL;
    }
    char *live[N];
    size_t n_live = 0;
    for (int i = 0; i < N; i++)
        if (ids[i])
            live[n_live++] = ids[i];
    qsort(live, n_live, sizeof *live, cmp_str);
    char after[64] = "";
    size_t seen = 0;
    for (int page = 0; page < N; page++) {
        char path[160];
        snprintf(path, sizeof path, "/v1/sessions?limit=%d%s%s", LIMIT, after[0] ? "&after=" : "", after);
        cJSON *j = kvd_get_json(port, path, 200);
        ck_assert_msg(kvd_json_num(j, "total") == (double)n_live, "total %g", kvd_json_num(j, "total"));
        const cJSON *arr = kvd_json_at(j, "sessions");
        const cJSON *e;
        cJSON_ArrayForEach(e, arr)
        {
            const char *id = kvd_json_str(e, "id");
            ck_assert_msg(seen < n_live && strcmp(id, live[seen]) == 0, "page %d: id %s, want %s", page, id,
                          seen < n_live ? live[seen] : "(none)");
            seen++;
        }
        const cJSON *next = kvd_json_at(j, "next_after");
        const bool more = cJSON_IsString(next);
        ck_assert_msg(more == (seen < n_live), "next_after %s with %zu of %zu seen", more ? "set" : "null", seen,
                      n_live);
        if (more)
            snprintf(after, sizeof after, "%s", next->valuestring);
        cJSON_Delete(j);
        if (!more)
            break;
    }
    ck_assert_uint_eq(seen, n_live);

    /* Stats (now a worker job) after evictions: kept positions exact. */
    char *id = kvd_create_session(
        port, "{\"heads\":1,\"kv_heads\":1,\"head_dim\":2,\"cache\":{\"budget\":4,\"eviction\":\"recency\",\"sink\":1}}",
        NULL);
    cJSON_Delete(kvd_step_ok(port, id, "{\"layer\":0,\"k\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20],"
                                       "\"v\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20],\"q\":[]}"));
    cJSON *st = kvd_session_stats(port, id);
    ck_assert_msg(kvd_json_num(st, "tokens") == 4 && kvd_json_num(st, "evicted") == 6, "tokens %g evicted %g",
                  kvd_json_num(st, "tokens"), kvd_json_num(st, "evicted"));
    const cJSON *lo = cJSON_GetArrayItem(kvd_json_at(cJSON_GetArrayItem(kvd_json_at(st, "layers"), 0),
                                                     "oldest_position"), 0);
    const cJSON *hi = cJSON_GetArrayItem(kvd_json_at(cJSON_GetArrayItem(kvd_json_at(st, "layers"), 0),
                                                     "newest_position"), 0);
    ck_assert_msg(cJSON_IsNumber(lo) && lo->valuedouble == 0 && cJSON_IsNumber(hi) && hi->valuedouble == 9,
                  "kept positions %g..%g, want 0..9", lo ? lo->valuedouble : -1, hi ? hi->valuedouble : -1);
    cJSON_Delete(st);
    free(id);
    for (size_t i = 0; i < n_live; i++)
        free(live[i]);
    kvd_proc_stop_ck(p);
}
END_TEST

/* ---- security: --max-sessions has a finite default ---- */

/* --max-sessions 0 (the default) is one session per pool page, at least
 * 1024 (it was unlimited); an explicit value is kept. */
START_TEST(max_sessions_default_is_finite)
{
    static const struct {
        const char *memory, *max;
        double want;
    } cases[] = {{"64MiB", NULL, 16384}, {"256KiB", NULL, 1024}, {"256KiB", "7", 7}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *args[] = {"--page-bytes", "4096", "--memory", cases[i].memory, "--threads", "2",
                              cases[i].max ? "--max-sessions" : NULL, cases[i].max, NULL};
        kvd_proc *p = kvd_proc_start_ck(args);
        cJSON *info = kvd_get_json(kvd_proc_port(p), "/v1/info", 200);
        ck_assert_msg(kvd_json_num(info, "limits.max_sessions") == cases[i].want, "--memory %s: max_sessions %g, want %g",
                      cases[i].memory, kvd_json_num(info, "limits.max_sessions"), cases[i].want);
        cJSON_Delete(info);
        kvd_proc_stop_ck(p);
    }
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("integration_hardening_api");
    TCase *tc = tcase_create("hardening_api");
    tcase_set_timeout(tc, CASE_TIMEOUT_S);
    tcase_add_test(tc, reclaim_rebuilds_two_cache_pairs);
    tcase_add_test(tc, impossible_step_is_413);
    tcase_add_test(tc, error_bodies_are_utf8);
    tcase_add_test(tc, small_body_routes_capped);
    tcase_add_test(tc, listing_and_stats_exact);
    tcase_add_test(tc, max_sessions_default_is_finite);
    tcase_add_test(tc, leading_zeros_refused);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
