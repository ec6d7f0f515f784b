/* tests/server/test_router.c — the route table: paths, ids, methods, 405s. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "server/router.h"
#include "tests/support/check_main.h"

static kvd_route match(const char *method, const char *path, char *id, int *rc)
{
    kvd_route r;
    const char *allow;
    *rc = kvd__route_match(method, path, &r, id, &allow);
    if (*rc == 405)
        ck_assert_ptr_nonnull(allow);
    return r;
}

START_TEST(routes)
{
    char id[KVD_ROUTER_ID_MAX + 1];
    int rc;
    static const struct { const char *method, *path; kvd_route route; const char *id; } ok[] = {
        {"POST", "/v1/sessions", KVD_ROUTE_SESSION_CREATE, ""},
        {"GET", "/v1/sessions", KVD_ROUTE_SESSION_LIST, ""},
        {"GET", "/v1/sessions/abc", KVD_ROUTE_SESSION_GET, "abc"},
        {"DELETE", "/v1/sessions/abc", KVD_ROUTE_SESSION_DELETE, "abc"},
        {"POST", "/v1/sessions/abc/step", KVD_ROUTE_SESSION_STEP, "abc"},
        {"POST", "/v1/sessions/abc/fork", KVD_ROUTE_SESSION_FORK, "abc"},
        {"GET", "/v1/sessions/abc/snapshot", KVD_ROUTE_SESSION_SNAPSHOT, "abc"},
        {"POST", "/v1/sessions/restore", KVD_ROUTE_SESSION_RESTORE, ""},
        {"POST", "/v1/batch", KVD_ROUTE_BATCH, ""},
        {"GET", "/v1/info", KVD_ROUTE_INFO, ""},
        {"GET", "/healthz", KVD_ROUTE_HEALTHZ, ""},
        {"GET", "/readyz", KVD_ROUTE_READYZ, ""},
        {"GET", "/metrics", KVD_ROUTE_METRICS, ""},
        /* HEAD is answered like GET (issue 10) */
        {"HEAD", "/healthz", KVD_ROUTE_HEALTHZ, ""},
        {"HEAD", "/readyz", KVD_ROUTE_READYZ, ""},
        {"HEAD", "/metrics", KVD_ROUTE_METRICS, ""},
        {"HEAD", "/v1/info", KVD_ROUTE_INFO, ""},
        {"HEAD", "/v1/sessions", KVD_ROUTE_SESSION_LIST, ""},
        {"HEAD", "/v1/sessions/abc", KVD_ROUTE_SESSION_GET, "abc"},
        {"HEAD", "/v1/sessions/abc/snapshot", KVD_ROUTE_SESSION_SNAPSHOT, "abc"},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        kvd_route r = match(ok[i].method, ok[i].path, id, &rc);
        ck_assert_msg(rc == 0 && r == ok[i].route, "%s %s", ok[i].method, ok[i].path);
        ck_assert_str_eq(id, ok[i].id);
    }
}
END_TEST

START_TEST(method_not_allowed)
{
    char id[KVD_ROUTER_ID_MAX + 1];
    int rc;
    static const char *const bad[][2] = {
        {"PUT", "/v1/sessions"},     {"POST", "/healthz"},           {"GET", "/v1/sessions/a/step"},
        {"PUT", "/v1/sessions/a"},   {"DELETE", "/metrics"},         {"GET", "/v1/batch"},
        {"HEAD", "/v1/sessions/a/step"}, {"HEAD", "/v1/batch"},     {"HEAD", "/v1/sessions/restore"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        match(bad[i][0], bad[i][1], id, &rc);
        ck_assert_msg(rc == 405, "%s %s", bad[i][0], bad[i][1]);
    }
    /* Allow names HEAD wherever GET is allowed */
    kvd_route r;
    const char *allow;
    ck_assert_int_eq(kvd__route_match("POST", "/healthz", &r, id, &allow), 405);
    ck_assert_str_eq(allow, "GET, HEAD");
    ck_assert_int_eq(kvd__route_match("PUT", "/v1/sessions/a", &r, id, &allow), 405);
    ck_assert_str_eq(allow, "GET, HEAD, DELETE");
}
END_TEST

START_TEST(unknown_paths)
{
    char id[KVD_ROUTER_ID_MAX + 1];
    int rc;
    static const char *const paths[] = {"/", "/v1", "/v1/sessions/", "/v1/sessions/a/b",
                                        "/v1/sessions/a/step/x", "/metricsx", "/v2/info"};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        kvd_route r = match("GET", paths[i], id, &rc);
        ck_assert_msg(r == KVD_ROUTE_UNKNOWN && rc == 0, "%s", paths[i]);
    }
    char longp[200] = "/v1/sessions/";
    memset(longp + 13, 'a', 100);
    longp[113] = '\0';
    ck_assert_int_eq(match("GET", longp, id, &rc), KVD_ROUTE_UNKNOWN); /* id over the bound */
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("server/router");
    TCase *tc = tcase_create("router");
    tcase_add_test(tc, routes);
    tcase_add_test(tc, method_not_allowed);
    tcase_add_test(tc, unknown_paths);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
