/* tests/support/kvd_client.c — Check-asserting helpers over http_client for
 * kvd's endpoints, and a small Prometheus text-format sample lookup. */
#define _GNU_SOURCE
#include "tests/support/kvd_client.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/kvd_data.h"

/* Enough of a body to show what went wrong in a failure message. */
#define BODY_SNIPPET 400

static const char *snippet(const http_response *r)
{
    if (r->status < 0)
        return r->error;
    return r->body ? r->body : "";
}

bool kvd_is_session_id(const char *s)
{
    if (!s || strlen(s) != KVD_SESSION_ID_LEN)
        return false;
    for (size_t i = 0; i < KVD_SESSION_ID_LEN; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

bool kvd_is_any_session_id(const char *s)
{
    if (!s)
        return false;
    size_t n = strlen(s);
    if (n == KVD_SESSION_ID_LEN)
        return kvd_is_session_id(s);
    if (n < KVD_SESSION_ID_LEN + 2 || n > KVD_SESSION_ID_LEN + 32 || s[n - KVD_SESSION_ID_LEN - 1] != '-')
        return false;
    for (size_t i = 0; i + KVD_SESSION_ID_LEN + 1 < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return kvd_is_session_id(s + n - KVD_SESSION_ID_LEN);
}

char *kvd_create_session(int port, const char *body, cJSON **resp_json)
{
    http_response *r = http_request(port, "POST", "/v1/sessions", KVD_JSON, body);
    ck_assert_msg(r->status == 201, "create %s: status %d: %.*s", body, r->status, BODY_SNIPPET, snippet(r));
    cJSON *j = http_response_json(r);
    ck_assert_msg(cJSON_IsObject(j), "create: body is not a JSON object: %.*s", BODY_SNIPPET, snippet(r));
    const char *id = kvd_json_str(j, "id");
    ck_assert_msg(kvd_is_any_session_id(id), "create: id is not [<prefix>-]<32 lowercase hex>: %.*s", BODY_SNIPPET, snippet(r));
    ck_assert_msg(cJSON_IsObject(kvd_json_at(j, "config")), "create: no config object: %.*s", BODY_SNIPPET,
                  snippet(r));
    char *out = strdup(id);
    ck_assert_ptr_nonnull(out);
    if (resp_json)
        *resp_json = j;
    else
        cJSON_Delete(j);
    http_response_free(r);
    return out;
}

cJSON *kvd_get_json(int port, const char *path, int status)
{
    http_response *r = http_request(port, "GET", path, NULL, NULL);
    ck_assert_msg(r->status == status, "GET %s: status %d, expected %d: %.*s", path, r->status, status,
                  BODY_SNIPPET, snippet(r));
    cJSON *j = http_response_json(r);
    ck_assert_msg(j != NULL, "GET %s: body is not JSON: %.*s", path, BODY_SNIPPET, snippet(r));
    http_response_free(r);
    return j;
}

cJSON *kvd_session_stats(int port, const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    cJSON *j = kvd_get_json(port, path, 200);
    ck_assert_msg(cJSON_IsObject(j), "stats are not an object");
    return j;
}

http_response *kvd_step(int port, const char *id, const char *body)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/step", id);
    return http_request(port, "POST", path, KVD_JSON, body);
}

cJSON *kvd_step_ok(int port, const char *id, const char *body)
{
    http_response *r = kvd_step(port, id, body);
    ck_assert_msg(r->status == 200, "step: status %d: %.*s", r->status, BODY_SNIPPET, snippet(r));
    cJSON *j = http_response_json(r);
    ck_assert_msg(cJSON_IsObject(j), "step: body is not a JSON object: %.*s", BODY_SNIPPET, snippet(r));
    ck_assert_msg(!cJSON_HasObjectItem(j, "error"), "step: a success has an \"error\" key");
    http_response_free(r);
    return j;
}

cJSON *kvd_batch_ok(int port, char *const *items, size_t n)
{
    size_t len = sizeof "{\"steps\":[]}";
    for (size_t i = 0; i < n; i++)
        len += strlen(items[i]) + 1;
    char *body = malloc(len);
    ck_assert_ptr_nonnull(body);
    char *p = body + sprintf(body, "{\"steps\":[");
    for (size_t i = 0; i < n; i++)
        p += sprintf(p, "%s%s", i ? "," : "", items[i]);
    strcpy(p, "]}");
    http_response *r = http_request_n(port, "POST", "/v1/batch", KVD_JSON, body, strlen(body), NULL);
    free(body);
    ck_assert_msg(r->status == 200, "batch: status %d: %.*s", r->status, BODY_SNIPPET, snippet(r));
    cJSON *j = http_response_json(r);
    ck_assert_msg(cJSON_IsObject(j), "batch: body is not a JSON object: %.*s", BODY_SNIPPET, snippet(r));
    http_response_free(r);
    return j;
}

void kvd_delete_session(int port, const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    http_response *r = http_request(port, "DELETE", path, NULL, NULL);
    ck_assert_msg(r->status == 200 || r->status == 204, "DELETE %s: status %d: %.*s", path, r->status,
                  BODY_SNIPPET, snippet(r));
    http_response_free(r);
}

static bool field_matches(const char *got, const char *alternatives)
{
    size_t gl = strlen(got);
    const char *p = alternatives;
    for (;;) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == gl && strncmp(p, got, n) == 0)
            return true;
        if (!bar)
            return false;
        p = bar + 1;
    }
}

void kvd_expect_error(const http_response *r, int status, const char *code, const char *field,
                      const char *msg_part, const char *what)
{
    ck_assert_msg(r->status == status, "%s: status %d, expected %d: %.*s", what, r->status, status,
                  BODY_SNIPPET, snippet(r));
    cJSON *j = http_response_json(r);
    ck_assert_msg(cJSON_IsObject(j), "%s: error body is not a JSON object: %.*s", what, BODY_SNIPPET,
                  snippet(r));
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    ck_assert_msg(cJSON_IsObject(e), "%s: no \"error\" object: %.*s", what, BODY_SNIPPET, snippet(r));
    const char *c = kvd_json_str(e, "code");
    ck_assert_msg(c && strcmp(c, code) == 0, "%s: error.code %s, expected %s", what, c ? c : "(none)", code);
    const char *m = kvd_json_str(e, "message");
    ck_assert_msg(m && *m, "%s: error.message missing or empty: %.*s", what, BODY_SNIPPET, snippet(r));
    if (msg_part)
        ck_assert_msg(strstr(m, msg_part) != NULL, "%s: message '%s' lacks '%s'", what, m, msg_part);
    if (field) {
        const char *f = kvd_json_str(e, "field");
        ck_assert_msg(f && field_matches(f, field), "%s: error.field '%s', expected '%s' (message: %s)", what,
                      f ? f : "(none)", field, m);
    }
    cJSON_Delete(j);
}

void kvd_assert_healthy(int port)
{
    http_response *r = http_request(port, "GET", "/healthz", NULL, NULL);
    ck_assert_msg(r->status == 200, "healthz: status %d: %.*s", r->status, BODY_SNIPPET, snippet(r));
    http_response_free(r);
}

char *kvd_metrics_text(int port)
{
    http_response *r = http_request(port, "GET", "/metrics", NULL, NULL);
    ck_assert_msg(r->status == 200, "metrics: status %d: %.*s", r->status, BODY_SNIPPET, snippet(r));
    char *text = r->body;
    r->body = NULL;
    http_response_free(r);
    return text;
}

/* Does the label text (between the braces) hold the pair `k="v"`? */
static bool has_label_pair(const char *labels, size_t labels_len, const char *pair, size_t pair_len)
{
    for (size_t i = 0; i + pair_len <= labels_len; i++) {
        if ((i == 0 || labels[i - 1] == ',') && memcmp(labels + i, pair, pair_len) == 0 &&
            (i + pair_len == labels_len || labels[i + pair_len] == ','))
            return true;
    }
    return false;
}

double kvd_metric(const char *text, const char *name, const char *labels)
{
    size_t name_len = strlen(name);
    double sum = 0;
    bool found = false;
    for (const char *line = text; line && *line;) {
        const char *eol = strchr(line, '\n');
        size_t len = eol ? (size_t)(eol - line) : strlen(line);
        if (line[0] != '#' && len > name_len && strncmp(line, name, name_len) == 0 &&
            (line[name_len] == '{' || line[name_len] == ' ')) {
            const char *lab = "";
            size_t lab_len = 0;
            const char *rest = line + name_len;
            if (*rest == '{') {
                const char *close = memchr(rest, '}', len - name_len);
                if (close) {
                    lab = rest + 1;
                    lab_len = (size_t)(close - lab);
                    rest = close + 1;
                }
            }
            bool all = true;
            for (const char *p = labels; p && *p && all;) {
                const char *comma = strchr(p, ',');
                size_t n = comma ? (size_t)(comma - p) : strlen(p);
                all = has_label_pair(lab, lab_len, p, n);
                p = comma ? comma + 1 : p + n;
            }
            if (all) {
                sum += strtod(rest, NULL);
                found = true;
            }
        }
        line = eol ? eol + 1 : NULL;
    }
    return found ? sum : NAN;
}

double kvd_metric_now(int port, const char *name, const char *labels)
{
    char *text = kvd_metrics_text(port);
    double v = kvd_metric(text, name, labels);
    free(text);
    return v;
}

const cJSON *kvd_json_at(const cJSON *obj, const char *path)
{
    char key[128];
    const cJSON *cur = obj;
    const char *p = path;
    while (cur && *p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (n >= sizeof key)
            return NULL;
        memcpy(key, p, n);
        key[n] = '\0';
        cur = cJSON_IsObject(cur) ? cJSON_GetObjectItemCaseSensitive(cur, key) : NULL;
        p = dot ? dot + 1 : p + n;
    }
    return cur;
}

double kvd_json_num(const cJSON *obj, const char *path)
{
    const cJSON *x = kvd_json_at(obj, path);
    return cJSON_IsNumber(x) ? x->valuedouble : NAN;
}

const char *kvd_json_str(const cJSON *obj, const char *path)
{
    const cJSON *x = kvd_json_at(obj, path);
    return cJSON_IsString(x) ? x->valuestring : NULL;
}

double kvd_check_tensor(const cJSON *item, const double *want, size_t n, double tol, const char *what)
{
    float *got = NULL;
    size_t count = 0;
    ck_assert_msg(tensor_from_json(item, &got, &count) == 0, "%s: \"o\" is neither a number array nor b64", what);
    ck_assert_msg(count == n, "%s: \"o\" has %zu numbers, expected %zu", what, count, n);
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (isnan(e))
            e = INFINITY;
        if (e > worst) {
            worst = e;
            at = i;
        }
    }
    ck_assert_msg(worst <= tol, "%s: max abs error %.3g at [%zu] (got %.9g, want %.9g) exceeds %.3g", what, worst,
                  at, n ? (double)got[at] : 0.0, n ? want[at] : 0.0, tol);
    free(got);
    return worst;
}
