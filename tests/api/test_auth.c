/* tests/api/test_auth.c — api/auth.c: key-file parsing (comments, blanks,
 * trimming, CRLF, bad characters named by line without quoting the key,
 * duplicates, bounds), loading a file, matching Authorization headers to
 * owners, and per-key sessions through kvd_api_handle with no HTTP: 401
 * without a valid key, another key's session answered as missing (get,
 * delete, fork, step) and absent from its listing, a fork owned by its forker. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>

#include "api/api.h"
#include "api/auth.h"
#include "tests/support/check_main.h"

static char err[512];

static int parse(kvd_auth_keys *k, const char *text)
{
    return kvd_auth_keys_parse(k, text, strlen(text), "keys.txt", err, sizeof err);
}

START_TEST(parse_skips_comments_blanks_and_trims)
{
    kvd_auth_keys k = {0};
    ck_assert_int_eq(parse(&k, "# a comment\n\n   \t\n  key-one  \r\n\t# indented comment\nkey-two\r\nkey-three"), 3);
    ck_assert_uint_eq(k.n, 3);
    ck_assert_uint_eq(kvd_auth_owner(&k, "Bearer key-one"), 1);
    ck_assert_uint_eq(kvd_auth_owner(&k, "Bearer key-two"), 2);
    ck_assert_uint_eq(kvd_auth_owner(&k, "Bearer key-three"), 3); /* last line without '\n' */
    ck_assert_uint_eq(kvd_auth_owner(&k, "Bearer key-on"), KVD_OWNER_DENIED);
    kvd_auth_keys_free(&k);
}
END_TEST

START_TEST(parse_duplicates_count_once)
{
    kvd_auth_keys k = {0};
    ck_assert_int_eq(parse(&k, "same\nother\nsame\n"), 3); /* three key lines ... */
    ck_assert_uint_eq(k.n, 2);                           /* ... two keys */
    ck_assert_uint_eq(kvd_auth_owner(&k, "Bearer same"), 1);
    ck_assert_int_eq(parse(&k, "# nothing\n\n"), 0);
    ck_assert_uint_eq(k.n, 2);
    kvd_auth_keys_free(&k);
}
END_TEST

START_TEST(parse_rejects_bad_keys_by_line_without_quoting_them)
{
    static const char *const bad[] = {
        "good\nsecret with-space\n",   /* inner blank */
        "good\nsecr\x01t\n",           /* control character */
        "good\nsecr\xc3\xa9t\n",       /* non-ASCII */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kvd_auth_keys k = {0};
        ck_assert_int_eq(parse(&k, bad[i]), -1);
        ck_assert_msg(strstr(err, "line 2") != NULL, "case %zu: %s", i, err);
        ck_assert_msg(strstr(err, "secr") == NULL, "case %zu quotes the key: %s", i, err);
        kvd_auth_keys_free(&k);
    }
    kvd_auth_keys k = {0};
    char *long_key = malloc(KVD_AUTH_KEY_MAX + 2);
    memset(long_key, 'k', KVD_AUTH_KEY_MAX + 1);
    long_key[KVD_AUTH_KEY_MAX + 1] = '\0';
    ck_assert_int_eq(parse(&k, long_key), -1);
    long_key[KVD_AUTH_KEY_MAX] = '\0'; /* exactly the maximum is a key */
    ck_assert_int_eq(parse(&k, long_key), 1);
    ck_assert_uint_ne(kvd_auth_owner(&k, "Bearer kkkk"), 1);
    free(long_key);
    kvd_auth_keys_free(&k);
}
END_TEST

START_TEST(parse_caps_the_number_of_keys)
{
    kvd_auth_keys k = {0};
    char key[32];
    for (unsigned i = 0; i < KVD_AUTH_KEYS_MAX; i++) {
        snprintf(key, sizeof key, "key-%u", i);
        ck_assert_int_eq(kvd_auth_keys_add(&k, key, strlen(key), err, sizeof err), 0);
    }
    ck_assert_int_eq(kvd_auth_keys_add(&k, "one-more", 8, err, sizeof err), -1);
    ck_assert_int_eq(kvd_auth_keys_add(&k, "key-7", 5, err, sizeof err), 0); /* a duplicate still fits */
    ck_assert_uint_eq(kvd_auth_owner(&k, "Bearer key-4095"), KVD_AUTH_KEYS_MAX);
    kvd_auth_keys_free(&k);
}
END_TEST

static char *write_temp(const char *text)
{
    char *path = strdup("/tmp/kvd_test_keys_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

START_TEST(load_file)
{
    kvd_auth_keys k = {0};
    ck_assert_int_eq(kvd_auth_keys_load_file(&k, "/nonexistent/kvd-keys", err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent/kvd-keys"));
    char *empty = write_temp("# only comments\n\n");
    ck_assert_int_eq(kvd_auth_keys_load_file(&k, empty, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "no key"));
    char *good = write_temp("alpha\nbeta\n");
    ck_assert_int_eq(kvd_auth_keys_load_file(&k, good, err, sizeof err), 2);
    ck_assert_uint_eq(kvd_auth_owner(&k, "Bearer beta"), 2);
    unlink(empty);
    unlink(good);
    free(empty);
    free(good);
    kvd_auth_keys_free(&k);
}
END_TEST

START_TEST(owner_of_headers)
{
    kvd_auth_keys k = {0};
    ck_assert_uint_eq(kvd_auth_owner(&k, NULL), KVD_OWNER_ANON); /* no keys: open */
    ck_assert_uint_eq(kvd_auth_owner(NULL, "Bearer x"), KVD_OWNER_ANON);
    ck_assert_int_eq(parse(&k, "alpha-key\nbeta-key\n"), 2);
    ck_assert_uint_eq(kvd_auth_owner(&k, "Bearer alpha-key"), 1);
    ck_assert_uint_eq(kvd_auth_owner(&k, "bearer beta-key"), 2);      /* scheme in any case */
    ck_assert_uint_eq(kvd_auth_owner(&k, " BEARER \t beta-key \t"), 2); /* blanks around */
    static const char *const denied[] = {
        NULL, "", "Bearer", "Bearer ", "Bearer alpha-ke", "Bearer alpha-keyy", "Bearer Alpha-key",
        "Bearer alpha-key beta-key", "Basic YWxwaGEta2V5", "Beareralpha-key", "alpha-key",
        "Bearer alpha-key\x01",
    };
    for (size_t i = 0; i < sizeof denied / sizeof denied[0]; i++)
        ck_assert_msg(kvd_auth_owner(&k, denied[i]) == KVD_OWNER_DENIED, "case %zu: %s", i,
                      denied[i] ? denied[i] : "(none)");
    kvd_auth_keys_free(&k);
}
END_TEST

/* ---- the API with keys: a fake executor (stats, delete and fork run inline) ---- */

static kvd_response last_reply;
static int n_replies;

static void fake_submit(void *executor, kvd_api_job *job)
{
    (void)executor;
    kvd_api_job_run(job);       /* a step "on a worker", at once */
    kvd_api_job_done(job->api, job);
}

static void fake_respond(void *reply, kvd_response *resp)
{
    (void)reply;
    last_reply = *resp;
    n_replies++;
}

static kvd_auth_keys keys;

static kvd_api *make_api(void)
{
    memset(&keys, 0, sizeof keys);
    ck_assert_int_eq(parse(&keys, "key-a\nkey-b\n"), 2);
    kvd_api_options opt = {.memory_bytes = 1 << 20, .page_bytes = 4096, .threads = 1,
                           .max_body = 1 << 20, .keys = &keys};
    kvd_api *api;
    ck_assert_int_eq(kvd_api_create(&opt, fake_submit, NULL, fake_respond, &api), 0);
    return api;
}

/* One request; the answer whether given now or through respond. Caller
 * frees resp.body. */
static kvd_response call(kvd_api *api, kvd_route route, const char *id, const char *auth, const char *body)
{
    kvd_api_request req = {.route = route, .session_id = id, .query = "", .content_type = "application/json",
                           .authorization = auth, .body = body ? strdup(body) : NULL, /* the API takes it */
                           .body_len = body ? strlen(body) : 0};
    kvd_response resp;
    n_replies = 0;
    if (kvd_api_handle(api, &req, NULL, &resp))
        return resp;
    ck_assert_int_eq(n_replies, 1);
    return last_reply;
}

static int status_of(kvd_api *api, kvd_route route, const char *id, const char *auth, const char *body)
{
    kvd_response r = call(api, route, id, auth, body);
    free(r.body);
    return r.status;
}

static char *create(kvd_api *api, const char *auth)
{
    kvd_response r = call(api, KVD_ROUTE_SESSION_CREATE, NULL, auth, "{\"heads\":1,\"head_dim\":4}");
    ck_assert_int_eq(r.status, 201);
    cJSON *j = cJSON_Parse(r.body);
    char *id = strdup(cJSON_GetObjectItem(j, "id")->valuestring);
    cJSON_Delete(j);
    free(r.body);
    return id;
}

/* The ids listed for auth, as one comma-separated string, and total. */
static char *list(kvd_api *api, const char *auth, double *total)
{
    kvd_response r = call(api, KVD_ROUTE_SESSION_LIST, NULL, auth, NULL);
    ck_assert_int_eq(r.status, 200);
    cJSON *j = cJSON_Parse(r.body);
    char *out = calloc(1, 1024);
    const cJSON *s;
    cJSON_ArrayForEach(s, cJSON_GetObjectItem(j, "sessions"))
    {
        strcat(out, cJSON_GetObjectItem(s, "id")->valuestring);
        strcat(out, ",");
    }
    *total = cJSON_GetObjectItem(j, "total")->valuedouble;
    cJSON_Delete(j);
    free(r.body);
    return out;
}

START_TEST(api_needs_a_key)
{
    kvd_api *api = make_api();
    static const kvd_route routes[] = {KVD_ROUTE_SESSION_CREATE, KVD_ROUTE_SESSION_LIST, KVD_ROUTE_INFO,
                                       KVD_ROUTE_SESSION_GET, KVD_ROUTE_SESSION_STEP, KVD_ROUTE_BATCH};
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        kvd_response r = call(api, routes[i], "0123456789abcdef0123456789abcdef", NULL, "{}");
        ck_assert_int_eq(r.status, 401);
        ck_assert_ptr_nonnull(strstr(r.body, "\"unauthenticated\""));
        free(r.body);
        r = call(api, routes[i], "0123456789abcdef0123456789abcdef", "Bearer key-c", "{}");
        ck_assert_int_eq(r.status, 401);
        ck_assert_ptr_null(strstr(r.body, "key-c")); /* the header is never echoed */
        free(r.body);
    }
    ck_assert_uint_eq(kvd_api_session_count(api), 0);
    ck_assert_int_eq(status_of(api, KVD_ROUTE_INFO, NULL, "Bearer key-b", NULL), 200);
    kvd_api_destroy(api);
    kvd_auth_keys_free(&keys);
}
END_TEST

START_TEST(api_sessions_belong_to_their_key)
{
    kvd_api *api = make_api();
    const char *a = "Bearer key-a", *b = "Bearer key-b";
    char *sa = create(api, a), *sb = create(api, b);
    double total;
    char *la = list(api, a, &total);
    ck_assert_double_eq(total, 1);
    ck_assert_ptr_nonnull(strstr(la, sa));
    ck_assert_ptr_null(strstr(la, sb));
    free(la);
    /* B cannot reach A's session by any route naming it. */
    ck_assert_int_eq(status_of(api, KVD_ROUTE_SESSION_GET, sa, b, NULL), 404);
    ck_assert_int_eq(status_of(api, KVD_ROUTE_SESSION_FORK, sa, b, NULL), 404);
    ck_assert_int_eq(status_of(api, KVD_ROUTE_SESSION_STEP, sa, b,
                               "{\"k\":[1,0,0,0],\"v\":[1,2,3,4],\"q\":[1,0,0,0]}"), 404);
    ck_assert_int_eq(status_of(api, KVD_ROUTE_SESSION_DELETE, sa, b, NULL), 404);
    ck_assert_int_eq(status_of(api, KVD_ROUTE_SESSION_GET, sa, a, NULL), 200); /* still there */
    ck_assert_int_eq(status_of(api, KVD_ROUTE_SESSION_STEP, sa, a,
                               "{\"k\":[1,0,0,0],\"v\":[1,2,3,4],\"q\":[1,0,0,0]}"), 200);
    /* A's fork is A's. */
    kvd_response r = call(api, KVD_ROUTE_SESSION_FORK, sa, a, NULL);
    ck_assert_int_eq(r.status, 201);
    cJSON *j = cJSON_Parse(r.body);
    char *child = strdup(cJSON_GetObjectItem(j, "id")->valuestring);
    cJSON_Delete(j);
    free(r.body);
    ck_assert_int_eq(status_of(api, KVD_ROUTE_SESSION_GET, child, b, NULL), 404);
    ck_assert_int_eq(status_of(api, KVD_ROUTE_SESSION_GET, child, a, NULL), 200);
    char *lb = list(api, b, &total);
    ck_assert_double_eq(total, 1);
    ck_assert_ptr_null(strstr(lb, child));
    free(lb);
    la = list(api, a, &total);
    ck_assert_double_eq(total, 2);
    ck_assert_ptr_nonnull(strstr(la, child));
    free(la);
    ck_assert_int_eq(status_of(api, KVD_ROUTE_SESSION_DELETE, sa, a, NULL), 200);
    ck_assert_uint_eq(kvd_api_session_count(api), 2);
    free(sa);
    free(sb);
    free(child);
    kvd_api_destroy(api);
    kvd_auth_keys_free(&keys);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("auth");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, parse_skips_comments_blanks_and_trims);
    tcase_add_test(tc, parse_duplicates_count_once);
    tcase_add_test(tc, parse_rejects_bad_keys_by_line_without_quoting_them);
    tcase_add_test(tc, parse_caps_the_number_of_keys);
    tcase_add_test(tc, load_file);
    tcase_add_test(tc, owner_of_headers);
    tcase_add_test(tc, api_needs_a_key);
    tcase_add_test(tc, api_sessions_belong_to_their_key);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
