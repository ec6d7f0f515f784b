/* tests/integration/test_batch.c — POST /v1/batch over HTTP against a real
 * kvd: items in request order with their own statuses and outputs equal to
 * single steps', another key's session as a 404 item, a body over the 64 KiB
 * small-body cap (but under --max-body) accepted, one over --max-body a 413,
 * and kvd_steps_total and kvd_step_phase_seconds counting each applied item. */
#define _GNU_SOURCE
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"

#define KEY_A "alpha-3f9c1e7b2d4a6085"
#define KEY_B "bravo-91d2c4e6a8b0f1e3"
#define AUTH_A "Authorization: Bearer " KEY_A "\r\n"
#define AUTH_B "Authorization: Bearer " KEY_B "\r\n"
#define CREATE "{\"layers\":2,\"heads\":2,\"kv_heads\":1,\"head_dim\":4}"
#define ENTRY "\"layer\":0,\"k\":[1,0,0,0, 0,1,0,0],\"v\":[1,2,3,4, 5,6,7,8],\"q\":[1,0,0,0, 0,1,0,0, 1,0,0,0, 0,1,0,0]"

static http_response *post(int port, const char *path, const char *body, const char *auth)
{
    return http_request_n(port, "POST", path, KVD_JSON, body, strlen(body), auth);
}

static char *create_as(int port, const char *auth)
{
    http_response *r = post(port, "/v1/sessions", CREATE, auth);
    ck_assert_msg(r->status == 201, "create: %d %s", r->status, r->body);
    cJSON *j = http_response_json(r);
    char *id = strdup(kvd_json_str(j, "id"));
    cJSON_Delete(j);
    http_response_free(r);
    return id;
}

static const cJSON *item(const cJSON *j, int i)
{
    return cJSON_GetArrayItem(kvd_json_at(j, "steps"), i);
}

START_TEST(batch_over_http)
{
    const char *keys = "/tmp/kvd_batch_keys_XXXXXX";
    char path[64];
    strcpy(path, keys);
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char text[] = KEY_A "\n" KEY_B "\n";
    ck_assert_int_eq(write(fd, text, sizeof text - 1), (ssize_t)(sizeof text - 1));
    close(fd);
    const char *args[] = {"--memory", "8MiB", "--threads", "2", "--max-body", "1MiB",
                          "--api-key-file", path, NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    const int port = kvd_proc_port(p);
    char *a = create_as(port, AUTH_A), *a2 = create_as(port, AUTH_A), *b = create_as(port, AUTH_B);

    /* Two sessions of key A, one of key B (a 404 item for A), a bad item. */
    char body[2048];
    snprintf(body, sizeof body,
             "{\"steps\":[{\"session\":\"%s\"," ENTRY "},{\"session\":\"%s\"," ENTRY "},"
             "{\"session\":\"%s\"," ENTRY "},{\"session\":\"%s\",\"layer\":2},"
             "{\"session\":\"%s\",\"layer\":1,\"q\":[1,0,0,0, 0,1,0,0]}]}",
             a, b, a2, a, a);
    http_response *r = post(port, "/v1/batch", body, AUTH_A);
    ck_assert_msg(r->status == 200, "batch: %d %s", r->status, r->body);
    cJSON *j = http_response_json(r);
    http_response_free(r);
    ck_assert_int_eq(cJSON_GetArraySize(kvd_json_at(j, "steps")), 5);
    const int want[] = {200, 404, 200, 400, 200};
    for (int i = 0; i < 5; i++)
        ck_assert_double_eq(kvd_json_num(item(j, i), "status"), want[i]);
    ck_assert_str_eq(kvd_json_str(item(j, 1), "error.field"), "steps[1].session");
    ck_assert_str_eq(kvd_json_str(item(j, 3), "error.field"), "steps[3].layer");
    const double o[16] = {1, 2, 3, 4, 1, 2, 3, 4, 2.51016283, 3.51016283, 4.51016283, 5.51016283,
                          3.48983741, 4.48983765, 5.48983717, 6.48983765};
    kvd_check_tensor(kvd_json_at(item(j, 0), "o"), o, 16, 1e-6, "steps[0].o");
    kvd_check_tensor(kvd_json_at(item(j, 2), "o"), o, 16, 1e-6, "steps[2].o");
    /* A query on an empty layer sees no token: zeros. */
    const double zero[8] = {0};
    kvd_check_tensor(kvd_json_at(item(j, 4), "o"), zero, 8, 0, "steps[4].o");
    cJSON_Delete(j);
    /* B's session was not touched by A's batch. */
    r = http_request_n(port, "GET", "/v1/sessions/", NULL, NULL, 0, AUTH_B);
    http_response_free(r);
    char get[96];
    snprintf(get, sizeof get, "/v1/sessions/%s", b);
    r = http_request_n(port, "GET", get, NULL, NULL, 0, AUTH_B);
    j = http_response_json(r);
    ck_assert_double_eq(kvd_json_num(j, "tokens"), 0);
    cJSON_Delete(j);
    http_response_free(r);

    /* 3 items applied: kvd_steps_total counts entries. */
    char *m = NULL;
    r = http_request_n(port, "GET", "/metrics", NULL, NULL, 0, AUTH_A);
    m = strndup(r->body, r->body_len);
    http_response_free(r);
    ck_assert_double_eq(kvd_metric(m, "kvd_steps_total", NULL), 3);
    /* The phases: the body's parse once plus each item parsed whole (3),
     * one queue wait per session job (a, a2), engine and render per item. */
    ck_assert_double_eq(kvd_metric(m, "kvd_step_phase_seconds_count", "phase=\"parse\""), 4);
    ck_assert_double_eq(kvd_metric(m, "kvd_step_phase_seconds_count", "phase=\"queue\""), 2);
    ck_assert_double_eq(kvd_metric(m, "kvd_step_phase_seconds_count", "phase=\"attend\""), 3);
    ck_assert_double_eq(kvd_metric(m, "kvd_step_phase_seconds_count", "phase=\"render\""), 3);
    free(m);

    /* Over 64 KiB (the small-body cap of other routes), under --max-body:
     * accepted. Over --max-body: 413. */
    size_t big_len = 200 * 1024;
    char *big = malloc(big_len + 1);
    int n = snprintf(big, big_len, "{\"steps\":[{\"session\":\"%s\"," ENTRY "}]", a2);
    memset(big + n, ' ', big_len - (size_t)n - 1);
    big[big_len - 1] = '}';
    big[big_len] = '\0';
    r = post(port, "/v1/batch", big, AUTH_A);
    ck_assert_msg(r->status == 200, "big batch: %d %s", r->status, r->body);
    j = http_response_json(r);
    ck_assert_double_eq(kvd_json_num(item(j, 0), "status"), 200);
    ck_assert_double_eq(kvd_json_num(item(j, 0), "tokens"), 4);
    cJSON_Delete(j);
    http_response_free(r);
    big = realloc(big, 2u << 20);
    memset(big + n, ' ', (2u << 20) - (size_t)n - 2);
    big[(2u << 20) - 2] = '}';
    big[(2u << 20) - 1] = '\0';
    r = post(port, "/v1/batch", big, AUTH_A);
    ck_assert_int_eq(r->status, 413);
    http_response_free(r);
    free(big);

    /* No key: 401, as every /v1 route. */
    r = post(port, "/v1/batch", "{\"steps\":[]}", NULL);
    ck_assert_int_eq(r->status, 401);
    http_response_free(r);

    free(a), free(a2), free(b);
    kvd_proc_stop_ck(p); /* frees p */
    unlink(path);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("integration/batch");
    TCase *tc = tcase_create("batch");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, batch_over_http);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
