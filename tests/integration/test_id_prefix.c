/* tests/integration/test_id_prefix.c — --id-prefix / KVD_ID_PREFIX over HTTP:
 * ids become "<prefix>-<32 hex>" and every route that names a session (get,
 * step, fork, delete, listing with `after`) takes them, up to the longest
 * prefix (a 64-character id, the router's segment limit); the flag beats the
 * variable, an empty value means none, and a bad prefix stops start-up. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/check_main.h"
#include "tests/support/checked_session.h"
#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"

#define CASE_TIMEOUT_S 120
/* A start-up that should fail is killed (and the case fails) if it
 * is still running after this. */
#define BAD_START_DEADLINE_S 20

/* Asserts id is "<prefix>-<32 lowercase hex>". */
static void assert_prefixed(const char *id, const char *prefix)
{
    size_t n = strlen(prefix);
    ck_assert_msg(id && strncmp(id, prefix, n) == 0 && id[n] == '-' && kvd_is_session_id(id + n + 1),
                  "id '%s' is not '%s-<32 hex>'", id ? id : "(null)", prefix);
}

static void get_status(int port, const char *path, int status)
{
    http_response *r = http_request(port, "GET", path, NULL, NULL);
    ck_assert_msg(r->status == status, "GET %s: %d, want %d: %s", path, r->status, status, r->body ? r->body : "");
    http_response_free(r);
}

/* Every route that names a session, with the prefixed ids of one kvd. */
static void exercise(int port, const char *prefix)
{
    checked_session cs;
    cs_create(&cs, port, 2, 4, 2, 8, 0, NULL, 7, 1e-5);
    assert_prefixed(cs.id, prefix);
    cs_random_step(&cs, 0, 3, 3, "causal", false, "json", "prefill layer 0");
    cs_random_step(&cs, 1, 3, 3, "causal", true, "b64", "prefill layer 1");
    cs_random_step(&cs, 0, 1, 1, "causal", false, "json", "decode");
    cJSON *st = cs_check_stats(&cs, "stats");
    ck_assert_str_eq(kvd_json_str(st, "id"), cs.id);
    cJSON_Delete(st);

    char path[256];
    snprintf(path, sizeof path, "/v1/sessions/%s/fork", cs.id);
    http_response *r = http_request(port, "POST", path, KVD_JSON, "{}");
    ck_assert_msg(r->status == 201, "fork: %d %s", r->status, r->body);
    cJSON *j = http_response_json(r);
    const char *child = kvd_json_str(j, "id");
    assert_prefixed(child, prefix);
    ck_assert_str_eq(kvd_json_str(j, "parent"), cs.id);
    char *child_id = strdup(child);
    cJSON_Delete(j);
    http_response_free(r);

    /* The listing orders the prefixed ids and pages through them with `after`. */
    cJSON *list = kvd_get_json(port, "/v1/sessions", 200);
    const cJSON *arr = kvd_json_at(list, "sessions");
    ck_assert_int_eq(cJSON_GetArraySize(arr), 2);
    const char *first = kvd_json_str(cJSON_GetArrayItem(arr, 0), "id");
    const char *second = kvd_json_str(cJSON_GetArrayItem(arr, 1), "id");
    ck_assert_msg(first && second, "listing without ids");
    ck_assert_msg(strcmp(first, second) < 0, "listing not in id order: %s %s", first, second);
    ck_assert_msg((strcmp(first, cs.id) == 0 && strcmp(second, child_id) == 0) ||
                      (strcmp(first, child_id) == 0 && strcmp(second, cs.id) == 0),
                  "listing holds %s %s, not the session and its fork", first, second);
    snprintf(path, sizeof path, "/v1/sessions?limit=1&after=%s", first);
    cJSON *page = kvd_get_json(port, path, 200);
    const cJSON *parr = kvd_json_at(page, "sessions");
    ck_assert_int_eq(cJSON_GetArraySize(parr), 1);
    ck_assert_str_eq(kvd_json_str(cJSON_GetArrayItem(parr, 0), "id"), second);
    cJSON_Delete(page);
    cJSON_Delete(list);

    /* The hex alone, or the hex under another prefix, names nothing. */
    const char *hex = cs.id + strlen(prefix) + 1;
    snprintf(path, sizeof path, "/v1/sessions/%s", hex);
    get_status(port, path, 404);
    snprintf(path, sizeof path, "/v1/sessions/x%s-%s", prefix, hex);
    get_status(port, path, 404);

    kvd_delete_session(port, child_id);
    kvd_delete_session(port, cs.id);
    snprintf(path, sizeof path, "/v1/sessions/%s", cs.id);
    get_status(port, path, 404);
    cJSON *empty = kvd_get_json(port, "/v1/sessions", 200);
    ck_assert_int_eq(cJSON_GetArraySize(kvd_json_at(empty, "sessions")), 0);
    cJSON_Delete(empty);
    free(child_id);
    cs_free(&cs);
}

START_TEST(flag_prefixes_every_id)
{
    unsetenv("KVD_ID_PREFIX");
    const char *const args[] = {"--id-prefix", "r2", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    exercise(kvd_proc_port(p), "r2");
    kvd_proc_stop_ck(p);
}
END_TEST

/* 31 characters: the id is 64, the router's id segment limit. */
START_TEST(longest_prefix_fits_the_router)
{
    unsetenv("KVD_ID_PREFIX");
    const char *longest = "kvd-replica-0123456789abcdefghi";
    ck_assert_int_eq(strlen(longest), 31);
    const char *const args[] = {"--id-prefix", longest, NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    exercise(kvd_proc_port(p), longest);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(environment_and_flag_precedence)
{
    setenv("KVD_ID_PREFIX", "kvd-0", 1);
    kvd_proc *p = kvd_proc_start_ck(NULL);
    char *id = kvd_create_session(kvd_proc_port(p), "{\"heads\":1,\"head_dim\":4}", NULL);
    assert_prefixed(id, "kvd-0");
    free(id);
    kvd_proc_stop_ck(p);

    const char *const flag[] = {"--id-prefix=r7", NULL};
    p = kvd_proc_start_ck(flag);
    id = kvd_create_session(kvd_proc_port(p), "{\"heads\":1,\"head_dim\":4}", NULL);
    assert_prefixed(id, "r7");
    free(id);
    kvd_proc_stop_ck(p);

    /* Empty means none: the ids are the 32 hex digits of before. */
    setenv("KVD_ID_PREFIX", "", 1);
    p = kvd_proc_start_ck(NULL);
    id = kvd_create_session(kvd_proc_port(p), "{\"heads\":1,\"head_dim\":4}", NULL);
    ck_assert_msg(kvd_is_session_id(id), "KVD_ID_PREFIX= gave id %s", id);
    free(id);
    kvd_proc_stop_ck(p);
}
END_TEST

/* Runs kvd --port 0 <args> (env_prefix as KVD_ID_PREFIX unless NULL)
 * expecting it to stop at start-up; returns its exit status and its stderr
 * in *err (caller frees). One that starts is killed at the deadline and fails. */
static int run_to_exit(const char *const *args, const char *env_prefix, char **err)
{
    const char *argv[8] = {"--port", "0"};
    size_t n = 2;
    for (size_t i = 0; args[i] && n < 7; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    const kvd_proc_run_opts opt = {.env_name = "KVD_ID_PREFIX", .env_value = env_prefix,
                                   .deadline_ms = BAD_START_DEADLINE_S * 1000};
    return kvd_proc_run(argv, &opt, err);
}

START_TEST(bad_prefix_stops_start_up)
{
    const char *const upper[] = {"--id-prefix", "R2", NULL};
    const char *const slash[] = {"--id-prefix", "r/2", NULL};
    const char *const under[] = {"--id-prefix", "r_2", NULL};
    const char *const space[] = {"--id-prefix", "r 2", NULL};
    const char *const too_long[] = {"--id-prefix", "kvd-replica-0123456789abcdefghij", NULL}; /* 32 */
    const char *const none[] = {NULL};
    const struct { const char *const *args; const char *env; } cases[] = {
        {upper, NULL}, {slash, NULL}, {under, NULL}, {space, NULL}, {too_long, NULL}, {none, "Kvd-0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *err;
        int code = run_to_exit(cases[i].args, cases[i].env, &err);
        ck_assert_msg(code == 2, "case %zu: exit %d:\n%s", i, code, err);
        ck_assert_msg(strstr(err, "--id-prefix") != NULL, "case %zu: no '--id-prefix' in:\n%s", i, err);
        free(err);
    }
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("id_prefix");
    TCase *tc = tcase_create("id_prefix");
    tcase_set_timeout(tc, CASE_TIMEOUT_S);
    tcase_add_test(tc, flag_prefixes_every_id);
    tcase_add_test(tc, longest_prefix_fits_the_router);
    tcase_add_test(tc, environment_and_flag_precedence);
    tcase_add_test(tc, bad_prefix_stops_start_up);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
