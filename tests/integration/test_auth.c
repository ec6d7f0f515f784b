/* tests/integration/test_auth.c — API keys over HTTP (DESIGN.md §3, 401):
 * every /v1 route answers 401 + `WWW-Authenticate: Bearer` to no key, a
 * wrong key or another scheme, and its normal answer to a right key, from
 * --api-key-file or KVD_API_KEY (their union); /healthz and /readyz stay
 * public, /metrics too unless --metrics-auth; each key sees only its own
 * sessions (listing, get, step, fork, delete) and owns its forks; the access
 * log holds no key and no full session id, in text and JSON; bad key set-ups
 * stop start-up; a non-loopback --host without keys warns. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>

#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"

#define CASE_TIMEOUT_S 120
/* A start-up that fails, or the warning case, must end within this. */
#define STARTUP_DEADLINE_MS 20000

#define KEY_A "alpha-3f9c1e7b2d4a6085"
#define KEY_B "bravo-91d2c4e6a8b0f1e3"
#define KEY_ENV "envkey-5a7c9e1b3d5f7092"
#define AUTH_A "Authorization: Bearer " KEY_A "\r\n"
#define AUTH_B "Authorization: Bearer " KEY_B "\r\n"
#define AUTH_ENV "Authorization: Bearer " KEY_ENV "\r\n"

#define STEP_BODY "{\"k\":[1,0,0,0],\"v\":[1,2,3,4],\"q\":[1,0,0,0]}"
#define CREATE_BODY "{\"heads\":1,\"head_dim\":4}"

/* A key file in /tmp (caller unlinks and frees the path). */
static char *key_file(const char *text)
{
    char *path = strdup("/tmp/kvd_auth_keys_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

typedef struct server {
    kvd_proc *proc;
    int port;
    char *keys_path;
} server;

/* kvd with KEY_A and KEY_B in a key file and KEY_ENV in KVD_API_KEY, plus
 * `more` flags (NULL-terminated, up to 4). */
static server start_with_keys(const char *const *more)
{
    server s = {0};
    s.keys_path = key_file("# test keys\n" KEY_A "\n\n  " KEY_B "  \n");
    const char *args[16] = {"--memory", "4MiB", "--page-bytes", "4096", "--threads", "1",
                            "--api-key-file", s.keys_path};
    size_t n = 8;
    for (size_t i = 0; more && more[i]; i++)
        args[n++] = more[i];
    args[n] = NULL;
    setenv("KVD_API_KEY", KEY_ENV, 1);
    s.proc = kvd_proc_start_ck(args);
    unsetenv("KVD_API_KEY");
    s.port = kvd_proc_port(s.proc);
    return s;
}

/* Stops the server cleanly and returns its whole stderr (caller frees). */
static char *stop(server *s)
{
    int st = kvd_proc_stop(s->proc, KVD_PROC_STOP_TIMEOUT_MS);
    char *text = kvd_proc_stderr(s->proc);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "kvd did not exit cleanly:\n%s", text);
    kvd_proc_free(s->proc);
    unlink(s->keys_path);
    free(s->keys_path);
    return text;
}

static http_response *req(int port, const char *method, const char *path, const char *body, const char *auth)
{
    return http_request_n(port, method, path, body ? KVD_JSON : NULL, body, body ? strlen(body) : 0, auth);
}

static void expect_401(http_response *r, const char *what)
{
    kvd_expect_error(r, 401, "unauthenticated", NULL, NULL, what);
    const char *h = http_header_get(r, "WWW-Authenticate");
    ck_assert_msg(h && strcmp(h, "Bearer") == 0, "%s: WWW-Authenticate %s", what, h ? h : "(none)");
    http_response_free(r);
}

/* POST /v1/sessions as auth; returns the id (caller frees). */
static char *create_as(int port, const char *auth)
{
    http_response *r = req(port, "POST", "/v1/sessions", CREATE_BODY, auth);
    ck_assert_msg(r->status == 201, "create: %d %s", r->status, r->body);
    cJSON *j = http_response_json(r);
    const char *id = kvd_json_str(j, "id");
    ck_assert(id && kvd_is_session_id(id));
    char *out = strdup(id);
    cJSON_Delete(j);
    http_response_free(r);
    return out;
}

static int status_of(int port, const char *method, const char *path, const char *body, const char *auth)
{
    http_response *r = req(port, method, path, body, auth);
    int st = r->status;
    http_response_free(r);
    return st;
}

/* Every /v1 route (and /v1 paths that are no route, and a wrong method)
 * with no key, a wrong key, a key under another scheme: 401. */
START_TEST(every_v1_route_needs_a_key)
{
    server s = start_with_keys(NULL);
    char *id = create_as(s.port, AUTH_A);
    char p_get[64], p_step[80], p_fork[80], p_snap[80];
    snprintf(p_get, sizeof p_get, "/v1/sessions/%s", id);
    snprintf(p_step, sizeof p_step, "%s/step", p_get);
    snprintf(p_fork, sizeof p_fork, "%s/fork", p_get);
    snprintf(p_snap, sizeof p_snap, "%s/snapshot", p_get);
    const struct { const char *method, *path, *body; int want; } routes[] = {
        {"POST", "/v1/sessions", CREATE_BODY, 201},
        {"GET", "/v1/sessions", NULL, 200},
        {"GET", "/v1/info", NULL, 200},
        {"GET", p_get, NULL, 200},
        {"POST", p_step, STEP_BODY, 200},
        {"POST", p_fork, NULL, 201},
        {"GET", p_snap, NULL, 200},
        {"POST", "/v1/sessions/restore", "{}", 415}, /* a snapshot is application/octet-stream */
        {"POST", "/v1/batch", "{}", 400}, /* reached: {} is not a batch */
        {"GET", "/v1/no-such-route", NULL, 404},
        {"PUT", "/v1/sessions", NULL, 405},
        {"DELETE", p_get, NULL, 200}, /* last: it ends the session */
    };
    const char *wrong[] = {NULL, "Authorization: Bearer not-a-key\r\n",
                           "Authorization: Bearer " KEY_A "x\r\n",
                           "Authorization: Basic YWxwaGE=\r\n",
                           "Authorization: " KEY_A "\r\n"};
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        char what[160];
        for (size_t w = 0; w < sizeof wrong / sizeof wrong[0]; w++) {
            snprintf(what, sizeof what, "%s %s, credentials %zu", routes[i].method, routes[i].path, w);
            expect_401(req(s.port, routes[i].method, routes[i].path, routes[i].body, wrong[w]), what);
        }
        /* The right key (the environment's key for every other route, to
         * show the union) gets the route's normal answer. */
        const char *auth = i % 2 ? AUTH_ENV : AUTH_A;
        if (strstr(routes[i].path, id))
            auth = AUTH_A; /* the session is A's */
        http_response *r = req(s.port, routes[i].method, routes[i].path, routes[i].body, auth);
        ck_assert_msg(r->status == routes[i].want, "%s %s with a key: %d, want %d: %s", routes[i].method,
                      routes[i].path, r->status, routes[i].want, r->body);
        http_response_free(r);
    }
    /* The probes and the metrics stay public. */
    ck_assert_int_eq(status_of(s.port, "GET", "/healthz", NULL, NULL), 200);
    ck_assert_int_eq(status_of(s.port, "GET", "/readyz", NULL, NULL), 200);
    ck_assert_int_eq(status_of(s.port, "GET", "/metrics", NULL, NULL), 200);
    ck_assert_int_eq(status_of(s.port, "GET", "/nope", NULL, NULL), 404); /* not /v1: no key asked */
    free(id);
    free(stop(&s));
}
END_TEST

START_TEST(metrics_auth)
{
    static const char *const more[] = {"--metrics-auth", "--log-format", "json", NULL};
    server s = start_with_keys(more);
    expect_401(req(s.port, "GET", "/metrics", NULL, NULL), "/metrics without a key");
    expect_401(req(s.port, "GET", "/metrics", NULL, "Authorization: Bearer nope\r\n"), "/metrics, wrong key");
    http_response *r = req(s.port, "GET", "/metrics", NULL, AUTH_B);
    ck_assert_int_eq(r->status, 200);
    ck_assert_ptr_nonnull(strstr(r->body, "kvd_pool_pages"));
    http_response_free(r);
    ck_assert_int_eq(status_of(s.port, "GET", "/healthz", NULL, NULL), 200);
    ck_assert_int_eq(status_of(s.port, "GET", "/readyz", NULL, NULL), 200);
    /* The JSON access log redacts the same way. */
    char *id = create_as(s.port, AUTH_B);
    char path[80];
    snprintf(path, sizeof path, "/v1/sessions/%s/step", id);
    ck_assert_int_eq(status_of(s.port, "POST", path, STEP_BODY, AUTH_B), 200);
    char *log = stop(&s);
    ck_assert_msg(strstr(log, id) == NULL, "session id in the JSON log:\n%s", log);
    ck_assert_msg(strstr(log, KEY_B) == NULL && strstr(log, KEY_ENV) == NULL, "key in the log:\n%s", log);
    ck_assert_msg(strstr(log, "\"path\":\"/v1/sessions/~") != NULL, "no hashed id in:\n%s", log);
    free(log);
    free(id);
}
END_TEST

/* The ids listed for auth, comma-separated (caller frees), and total. */
static char *list_as(int port, const char *auth, double *total)
{
    http_response *r = req(port, "GET", "/v1/sessions", NULL, auth);
    ck_assert_int_eq(r->status, 200);
    cJSON *j = http_response_json(r);
    char *out = calloc(1, 4096);
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(j, "sessions"))
    {
        strcat(out, kvd_json_str(e, "id"));
        strcat(out, ",");
    }
    *total = kvd_json_num(j, "total");
    cJSON_Delete(j);
    http_response_free(r);
    return out;
}

START_TEST(sessions_belong_to_their_key)
{
    server s = start_with_keys(NULL);
    char *sa = create_as(s.port, AUTH_A), *sb = create_as(s.port, AUTH_B);
    double total;
    char *la = list_as(s.port, AUTH_A, &total);
    ck_assert_msg(strstr(la, sa) && !strstr(la, sb) && total == 1, "A lists %s (total %g)", la, total);
    free(la);
    char *lb = list_as(s.port, AUTH_B, &total);
    ck_assert_msg(strstr(lb, sb) && !strstr(lb, sa) && total == 1, "B lists %s (total %g)", lb, total);
    free(lb);
    char *le = list_as(s.port, AUTH_ENV, &total);
    ck_assert_msg(total == 0 && le[0] == '\0', "the env key lists %s", le);
    free(le);

    /* B reaches none of A's session, the same 404 as for no session. */
    char p[128];
    const char *suffix[] = {"", "/step", "/fork", ""};
    const char *method[] = {"GET", "POST", "POST", "DELETE"};
    const char *body[] = {NULL, STEP_BODY, NULL, NULL};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "/v1/sessions/%s%s", sa, suffix[i]);
        http_response *r = req(s.port, method[i], p, body[i], AUTH_B);
        kvd_expect_error(r, 404, "not_found", "id", NULL, p);
        http_response_free(r);
    }
    /* ... and A's session is untouched by those: no token from B's step. */
    snprintf(p, sizeof p, "/v1/sessions/%s", sa);
    http_response *r = req(s.port, "GET", p, NULL, AUTH_A);
    ck_assert_int_eq(r->status, 200);
    cJSON *stats = http_response_json(r);
    ck_assert_double_eq(kvd_json_num(stats, "tokens"), 0);
    cJSON_Delete(stats);
    http_response_free(r);

    /* A's fork is A's. */
    snprintf(p, sizeof p, "/v1/sessions/%s/fork", sa);
    r = req(s.port, "POST", p, NULL, AUTH_A);
    ck_assert_int_eq(r->status, 201);
    cJSON *fj = http_response_json(r);
    char *child = strdup(kvd_json_str(fj, "id"));
    cJSON_Delete(fj);
    http_response_free(r);
    snprintf(p, sizeof p, "/v1/sessions/%s", child);
    ck_assert_int_eq(status_of(s.port, "GET", p, NULL, AUTH_B), 404);
    ck_assert_int_eq(status_of(s.port, "GET", p, NULL, AUTH_A), 200);
    la = list_as(s.port, AUTH_A, &total);
    ck_assert_msg(strstr(la, child) && strstr(la, sa) && total == 2, "A lists %s", la);
    free(la);
    lb = list_as(s.port, AUTH_B, &total);
    ck_assert_msg(!strstr(lb, child) && total == 1, "B lists %s", lb);
    free(lb);
    /* B's own session works for B, and A deletes its own. */
    snprintf(p, sizeof p, "/v1/sessions/%s/step", sb);
    ck_assert_int_eq(status_of(s.port, "POST", p, STEP_BODY, AUTH_B), 200);
    snprintf(p, sizeof p, "/v1/sessions/%s", sa);
    ck_assert_int_eq(status_of(s.port, "DELETE", p, NULL, AUTH_A), 200);

    /* Nothing of a key or a full session id reached the log; ids show as
     * hashes. */
    char *log = stop(&s);
    const char *secrets[] = {KEY_A, KEY_B, KEY_ENV, sa, sb, child};
    for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++)
        ck_assert_msg(strstr(log, secrets[i]) == NULL, "%s in the log:\n%s", secrets[i], log);
    ck_assert_msg(strstr(log, "path=/v1/sessions/~") != NULL, "no hashed id in:\n%s", log);
    free(log);
    free(sa);
    free(sb);
    free(child);
}
END_TEST

START_TEST(without_keys_nothing_is_asked)
{
    static const char *const args[] = {"--memory", "4MiB", "--page-bytes", "4096", NULL};
    unsetenv("KVD_API_KEY");
    kvd_proc *p = kvd_proc_start_ck(args);
    int port = kvd_proc_port(p);
    char *id = create_as(port, NULL);
    free(create_as(port, "Authorization: Bearer anything\r\n")); /* a header is ignored */
    double total;
    char *l = list_as(port, "Authorization: Bearer other\r\n", &total);
    ck_assert_msg(total == 2 && strstr(l, id), "no keys: everyone sees every session: %s", l);
    free(l);
    kvd_proc_stop(p, KVD_PROC_STOP_TIMEOUT_MS);
    char *log = kvd_proc_stderr(p);
    ck_assert_msg(strstr(log, "warning") == NULL, "a loopback --host warns:\n%s", log);
    kvd_proc_free(p);
    free(log);
    free(id);
}
END_TEST

/* Runs kvd with args (and KVD_API_KEY = env_key unless NULL) until it exits
 * or prints its listening line (then stops it). Returns its stderr (caller
 * frees); *exit_code gets its exit status, or -1 if it had to be stopped. */
static char *run_kvd(const char *const *args, const char *env_key, int *exit_code)
{
    const kvd_proc_run_opts opt = {.env_name = "KVD_API_KEY", .env_value = env_key, .stop_if_listening = true,
                                   .deadline_ms = STARTUP_DEADLINE_MS};
    char *out;
    *exit_code = kvd_proc_run(args, &opt, &out);
    return out;
}

START_TEST(bad_key_setups_stop_start_up)
{
    char *empty = key_file("# no keys here\n\n");
    char *spaced = key_file("ok-key\nsecret with space\n");
    const char *const missing_args[] = {"--port", "0", "--api-key-file", "/nonexistent/kvd-keys", NULL};
    const char *const empty_args[] = {"--port", "0", "--api-key-file", empty, NULL};
    const char *const spaced_args[] = {"--port", "0", "--api-key-file", spaced, NULL};
    const char *const metrics_args[] = {"--port", "0", "--metrics-auth", NULL};
    const char *const plain_args[] = {"--port", "0", NULL};
    const struct { const char *const *args; const char *env, *says; } cases[] = {
        {missing_args, NULL, "/nonexistent/kvd-keys"},
        {empty_args, NULL, "no key"},
        {spaced_args, NULL, "line 2"},
        {metrics_args, NULL, "--metrics-auth"},
        {plain_args, "   ", "KVD_API_KEY"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int code;
        char *err = run_kvd(cases[i].args, cases[i].env, &code);
        ck_assert_msg(code == 2, "case %zu: exit %d:\n%s", i, code, err);
        ck_assert_msg(strstr(err, cases[i].says) != NULL, "case %zu: no '%s' in:\n%s", i, cases[i].says, err);
        ck_assert_msg(strstr(err, "secret") == NULL, "case %zu quotes a key:\n%s", i, err);
        free(err);
    }
    unlink(empty);
    unlink(spaced);
    free(empty);
    free(spaced);
}
END_TEST

/* 192.0.2.1 (TEST-NET-1, RFC 5737) is never a local address, so listening
 * on it fails after the warning is printed; nothing binds a real interface. */
START_TEST(non_loopback_host_without_keys_warns)
{
    const char *const args[] = {"--host", "192.0.2.1", "--port", "0", NULL};
    int code;
    char *err = run_kvd(args, NULL, &code);
    ck_assert_msg(strstr(err, "kvd: warning:") != NULL && strstr(err, "no API key") != NULL,
                  "no warning:\n%s", err);
    free(err);
    err = run_kvd(args, KEY_ENV, &code);
    ck_assert_msg(strstr(err, "warning") == NULL, "warns although a key is set:\n%s", err);
    ck_assert_msg(strstr(err, KEY_ENV) == NULL, "prints the key:\n%s", err);
    free(err);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("auth");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, CASE_TIMEOUT_S);
    tcase_add_test(tc, every_v1_route_needs_a_key);
    tcase_add_test(tc, metrics_auth);
    tcase_add_test(tc, sessions_belong_to_their_key);
    tcase_add_test(tc, without_keys_nothing_is_asked);
    tcase_add_test(tc, bad_key_setups_stop_start_up);
    tcase_add_test(tc, non_loopback_host_without_keys_warns);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
