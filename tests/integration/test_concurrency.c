/* tests/integration/test_concurrency.c — many clients at once against one
 * kvd with four workers, so the loop thread and the workers really overlap:
 * each client thread owns sessions (standard, h2o, int8 + shadow) and runs
 * steps, stats, forks, deletes, listings and /metrics on them while the others
 * do the same. Every answer must be a 2xx, the pool must be empty at the end
 * and kvd must exit cleanly. Its main use is `make test-tsan` (README
 * "Testing"), where a data race stops the ThreadSanitizer kvd at once. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/check_main.h"
#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"

#define CLIENTS 6
#define ROUNDS 12

static const char *const shapes[] = {
    "{\"heads\":2,\"kv_heads\":1,\"head_dim\":8,\"seed\":1}",
    "{\"heads\":2,\"kv_heads\":1,\"head_dim\":8,\"cache\":{\"eviction\":\"h2o\",\"budget\":6,\"sink\":1},"
    "\"seed\":2}",
    "{\"heads\":2,\"kv_heads\":1,\"head_dim\":8,\"cache\":{\"dtype\":\"int8\",\"eviction\":\"recency\","
    "\"budget\":6,\"sink\":1},\"shadow\":true,\"seed\":3}",
};

/* One token's k and v (1 x 8) and one query (2 x 8). */
static const char step_body[] =
    "{\"k\":[1,0,0,0,0,0,0,0.5],\"v\":[0,1,0,0,0,0,0,2],"
    "\"q\":[1,0,0,0,0,0,0,0, 0,1,0,0,0,0,0,0]}";

typedef struct client {
    int port, index;
    int bad;             /* answers that were not what they should be */
    char first_bad[200];
} client;

static void note(client *c, const char *what, const http_response *r)
{
    if (c->bad++ == 0)
        snprintf(c->first_bad, sizeof c->first_bad, "client %d: %s -> %d %.120s", c->index, what, r->status,
                 r->body ? r->body : r->error);
}

/* One request; true if its status is `want`. */
static bool req(client *c, const char *method, const char *path, const char *body, int want, char **id_out)
{
    http_response *r = http_request(c->port, method, path, body ? "application/json" : NULL, body);
    bool ok = r->status == want;
    if (!ok)
        note(c, path, r);
    if (ok && id_out) {
        cJSON *j = http_response_json(r);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
        *id_out = cJSON_IsString(id) ? strdup(id->valuestring) : NULL;
        ok = *id_out != NULL;
        cJSON_Delete(j);
    }
    http_response_free(r);
    return ok;
}

static void *client_main(void *arg)
{
    client *c = arg;
    char path[160];
    char *id = NULL;
    if (!req(c, "POST", "/v1/sessions", shapes[c->index % 3], 201, &id))
        return NULL;
    for (int round = 0; round < ROUNDS; round++) {
        snprintf(path, sizeof path, "/v1/sessions/%s/step", id);
        req(c, "POST", path, step_body, 200, NULL);
        snprintf(path, sizeof path, "/v1/sessions/%s", id);
        req(c, "GET", path, NULL, 200, NULL);
        req(c, "GET", round % 2 ? "/metrics" : "/v1/sessions", NULL, 200, NULL);
        if (round % 4 == 3) {
            char *child = NULL;
            snprintf(path, sizeof path, "/v1/sessions/%s/fork", id);
            if (req(c, "POST", path, NULL, 201, &child)) {
                snprintf(path, sizeof path, "/v1/sessions/%s/step", child);
                req(c, "POST", path, step_body, 200, NULL);
                snprintf(path, sizeof path, "/v1/sessions/%s", child);
                req(c, "DELETE", path, NULL, 200, NULL);
                free(child);
            }
        }
    }
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    req(c, "DELETE", path, NULL, 200, NULL);
    free(id);
    return NULL;
}

START_TEST(test_clients_at_once)
{
    const char *const args[] = {"--threads", "4", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    const int port = kvd_proc_port(p);
    client clients[CLIENTS];
    pthread_t threads[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        clients[i] = (client){.port = port, .index = i};
        ck_assert_int_eq(pthread_create(&threads[i], NULL, client_main, &clients[i]), 0);
    }
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(threads[i], NULL);
    for (int i = 0; i < CLIENTS; i++)
        ck_assert_msg(clients[i].bad == 0, "%d bad answers; first: %s", clients[i].bad, clients[i].first_bad);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\""), 0);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("integration/concurrency");
    TCase *tc = tcase_create("concurrency");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_clients_at_once);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
