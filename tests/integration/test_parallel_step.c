/* tests/integration/test_parallel_step.c — long steps split over the worker
 * pool: kvd runs with --threads 1, 2 and 4 and takes the same long steps
 * (a 600-token causal prefill, then decode) on standard f32, int8 + h2o +
 * shadow, f16 + l2norm and a tensor four-cache session, from three clients
 * at once; every "o" (b64, compared as text), "tokens", "evicted" and
 * shadow error must equal the one-thread server's. Under `make test-tsan`
 * this gives the borrowed helpers real overlap with other jobs. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/check_main.h"
#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_data.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/tensor_body.h"

#define KINDS 4
#define STEPS 4
#define PREFILL 600
#define TENSOR_PREFILL 40

static const char *const shapes[KINDS] = {
    "{\"heads\":8,\"kv_heads\":2,\"head_dim\":64,\"seed\":1}",
    "{\"heads\":8,\"kv_heads\":4,\"head_dim\":64,\"cache\":{\"dtype\":\"int8\",\"eviction\":\"h2o\","
    "\"budget\":400,\"sink\":4},\"shadow\":true,\"seed\":2}",
    "{\"heads\":8,\"kv_heads\":2,\"head_dim\":64,\"cache\":{\"dtype\":\"f16\",\"eviction\":\"l2norm\","
    "\"budget\":500,\"sink\":4},\"seed\":3}",
    "{\"heads\":4,\"kv_heads\":2,\"head_dim\":32,\"attention\":\"tensor\",\"seed\":4}",
};
static const size_t heads[KINDS] = {8, 8, 8, 4}, kv_heads[KINDS] = {2, 4, 2, 2}, dims[KINDS] = {64, 64, 64, 32};

/* The step bodies of one kind (the same for every server): built once. */
static char *bodies[KINDS][STEPS];

static void build_bodies(void)
{
    rng r;
    rng_seed(&r, 99);
    for (int k = 0; k < KINDS; k++) {
        const size_t kv_row = kv_heads[k] * dims[k], q_row = heads[k] * dims[k];
        const bool tensor = k == 3;
        for (int s = 0; s < STEPS; s++) {
            const size_t m = s == 0 ? (tensor ? TENSOR_PREFILL : PREFILL) : 2;
            float *a = rng_tensor(&r, m * kv_row, -1, 1), *b = rng_tensor(&r, m * kv_row, -1, 1);
            float *c = rng_tensor(&r, m * kv_row, -1, 1), *d = rng_tensor(&r, m * kv_row, -1, 1);
            float *q = rng_tensor(&r, m * q_row, -2, 2);
            const char *mask = s == 0 ? "causal" : "block";
            if (tensor) {
                tensor_step_spec t = {.layer = 0, .k1 = a, .k2 = b, .v1 = c, .v2 = d, .m = m, .q = q, .m_q = m,
                                      .mask = mask, .b64 = true};
                bodies[k][s] = tensor_step_body(&t, kv_row, q_row, "b64");
            } else {
                step_spec t = {.layer = 0, .k = a, .v = b, .m = m, .q = q, .m_q = m, .mask = mask, .b64 = true};
                bodies[k][s] = step_body(&t, kv_row, q_row, "b64");
            }
            free(a);
            free(b);
            free(c);
            free(d);
            free(q);
        }
    }
}

/* What one session answered: each step's body minus nothing (the bodies
 * hold o, tokens, evicted and shadow only). */
typedef struct run {
    int port, kind;
    char *answers[STEPS];
} run;

static void *drive(void *arg)
{
    run *x = arg;
    char *id = kvd_create_session(x->port, shapes[x->kind], NULL);
    for (int s = 0; s < STEPS; s++) {
        http_response *r = kvd_step(x->port, id, bodies[x->kind][s]);
        x->answers[s] = r->status == 200 && r->body ? strdup(r->body) : NULL;
        http_response_free(r);
    }
    kvd_delete_session(x->port, id);
    free(id);
    return NULL;
}

/* Every kind on one server: kinds 1..3 from threads at once, kind 0 after. */
static void run_server(const char *threads, run out[KINDS])
{
    const char *const args[] = {"--threads", threads, NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    const int port = kvd_proc_port(p);
    pthread_t t[KINDS];
    for (int k = 0; k < KINDS; k++) {
        out[k] = (run){.port = port, .kind = k};
        if (k)
            ck_assert_int_eq(pthread_create(&t[k], NULL, drive, &out[k]), 0);
    }
    drive(&out[0]);
    for (int k = 1; k < KINDS; k++)
        pthread_join(t[k], NULL);
    kvd_assert_healthy(port);
    kvd_proc_stop_ck(p);
}

START_TEST(split_steps_match_one_thread)
{
    build_bodies();
    static run one[KINDS], many[KINDS];
    run_server("1", one);
    for (int s = 0; s < STEPS; s++)
        for (int k = 0; k < KINDS; k++)
            ck_assert_msg(one[k].answers[s] && strstr(one[k].answers[s], "\"o\":\"b64:"),
                          "kind %d step %d failed on one thread", k, s);
    const char *const counts[] = {"2", "4"};
    for (int c = 0; c < 2; c++) {
        run_server(counts[c], many);
        for (int k = 0; k < KINDS; k++)
            for (int s = 0; s < STEPS; s++) {
                ck_assert_msg(many[k].answers[s] && strcmp(many[k].answers[s], one[k].answers[s]) == 0,
                              "--threads %s, kind %d, step %d: the answer differs from one thread's", counts[c],
                              k, s);
                free(many[k].answers[s]);
            }
    }
    for (int k = 0; k < KINDS; k++)
        for (int s = 0; s < STEPS; s++) {
            free(one[k].answers[s]);
            free(bodies[k][s]);
        }
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("parallel_step");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, split_steps_match_one_thread);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
