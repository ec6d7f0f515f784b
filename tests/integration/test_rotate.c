/* tests/integration/test_rotate.c — cache.rotate over real HTTP: the create
 * body's "rotate" is echoed ("none" by default); a bad value, a head_dim that
 * is not a power of two, tensor attention and subgen are 400s naming
 * cache.rotate that create nothing; a rotated int4 session with shadow
 * answers close to the exact double reference and its reported shadow error
 * is the one the test measures against that unrotated reference; fork and
 * snapshot/restore keep the rotation. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/support/check_main.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_data.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/ref_attention.h"

/* The server's shadow error (f32 exact attention) against the test's (double
 * reference): f32 rounding of the reference apart, the same number. */
#define SHADOW_REPORT_TOL 1e-4
/* int4 rotated, uniform data: relative output error well under this
 * (tests/cache/test_rotate.c measures about 0.1). */
#define INT4_BOUND 0.25

static int n_sessions(int port)
{
    cJSON *l = kvd_get_json(port, "/v1/sessions", 200);
    const int n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(l, "sessions"));
    cJSON_Delete(l);
    return n;
}

static const char *config_rotate(const cJSON *resp)
{
    return kvd_json_str(resp, "config.cache.rotate");
}

START_TEST(validated_and_echoed)
{
    kvd_proc *p = kvd_proc_start_ck(NULL);
    const int port = kvd_proc_port(p);
    cJSON *resp;
    char *plain = kvd_create_session(port, "{\"heads\":2,\"head_dim\":64}", &resp);
    ck_assert_str_eq(config_rotate(resp), "none");
    cJSON_Delete(resp);
    char *rot = kvd_create_session(port, "{\"heads\":2,\"head_dim\":128,\"cache\":{\"dtype\":\"int4\",\"rotate\":"
                                         "\"hadamard\"}}", &resp);
    ck_assert_str_eq(config_rotate(resp), "hadamard");
    cJSON_Delete(resp);
    const int before = n_sessions(port);
    static const struct {
        const char *body, *msg;
    } bad[] = {
        {"{\"cache\":{\"rotate\":\"walsh\"}}", "rotate"},
        {"{\"cache\":{\"rotate\":1}}", "rotate"},
        {"{\"cache\":{\"rotate\":null}}", "rotate"},
        {"{\"head_dim\":48,\"cache\":{\"dtype\":\"int8\",\"rotate\":\"hadamard\"}}", "power of two"},
        {"{\"attention\":\"tensor\",\"cache\":{\"rotate\":\"hadamard\"}}", "tensor"},
        {"{\"cache\":{\"eviction\":\"subgen\",\"rotate\":\"hadamard\"}}", "subgen"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        http_response *r = http_request(port, "POST", "/v1/sessions", "application/json", bad[i].body);
        kvd_expect_error(r, 400, "invalid_argument", "cache.rotate", bad[i].msg, bad[i].body);
        http_response_free(r);
    }
    ck_assert_int_eq(n_sessions(port), before);
    cJSON *st = kvd_session_stats(port, rot);
    ck_assert_str_eq(kvd_json_str(st, "config.cache.rotate"), "hadamard");
    cJSON_Delete(st);
    free(plain);
    free(rot);
    kvd_proc_stop_ck(p);
}
END_TEST

static double rel_err(const float *o, const double *want, size_t n)
{
    double e = 0, w = 0;
    for (size_t i = 0; i < n; i++) {
        e += ((double)o[i] - want[i]) * ((double)o[i] - want[i]);
        w += want[i] * want[i];
    }
    return sqrt(e / w);
}

/* o of a JSON step answer, as floats (n of them). */
static float *answer_o(const cJSON *j, size_t n)
{
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(j, "o");
    ck_assert_int_eq(cJSON_GetArraySize(o), (int)n);
    float *out = malloc(n * sizeof *out);
    for (size_t i = 0; i < n; i++)
        out[i] = (float)cJSON_GetArrayItem(o, (int)i)->valuedouble;
    return out;
}

START_TEST(shadow_fork_snapshot)
{
    kvd_proc *p = kvd_proc_start_ck(NULL);
    const int port = kvd_proc_port(p);
    char *id = kvd_create_session(port,
                                  "{\"heads\":4,\"kv_heads\":2,\"head_dim\":64,\"shadow\":true,\"seed\":42,"
                                  "\"cache\":{\"dtype\":\"int4\",\"rotate\":\"hadamard\"}}",
                                  NULL);
    ref_session *ref = ref_session_new(1, 4, 2, 64, 0);
    rng r;
    rng_seed(&r, 8);
    for (int s = 0; s < 30; s++) {
        const size_t m = s == 0 ? 40 : 1;
        float *k = rng_tensor(&r, m * 128, -1, 1), *v = rng_tensor(&r, m * 128, -1, 1),
              *q = rng_tensor(&r, 256, -2, 2);
        step_spec sp = {.layer = 0, .k = k, .v = v, .m = m, .q = q, .m_q = 1, .mask = "block"};
        char *b = step_body(&sp, 128, 256, NULL);
        cJSON *j = kvd_step_ok(port, id, b);
        double want[256];
        ck_assert_int_eq(ref_step(ref, 0, k, v, m, q, 1, REF_MASK_BLOCK, want), 0);
        float *o = answer_o(j, 256);
        const double own = rel_err(o, want, 256), reported = kvd_json_num(j, "shadow.relative_error");
        ck_assert_msg(own <= INT4_BOUND, "step %d: error %g", s, own);
        ck_assert_msg(fabs(own - reported) <= SHADOW_REPORT_TOL, "step %d: shadow says %g, measured %g", s,
                      reported, own);
        free(o);
        cJSON_Delete(j);
        free(b);
        free(k);
        free(v);
        free(q);
    }
    char path[96];
    snprintf(path, sizeof path, "/v1/sessions/%s/fork", id);
    http_response *fr = http_request(port, "POST", path, NULL, NULL);
    ck_assert_int_eq(fr->status, 201);
    cJSON *fj = http_response_json(fr);
    ck_assert_str_eq(config_rotate(fj), "hadamard");
    cJSON_Delete(fj);
    http_response_free(fr);
    snprintf(path, sizeof path, "/v1/sessions/%s/snapshot", id);
    http_response *snap = http_request_n(port, "GET", path, NULL, NULL, 0, NULL);
    ck_assert_int_eq(snap->status, 200);
    kvd_delete_session(port, id);
    http_response *rr = http_request_n(port, "POST", "/v1/sessions/restore", "application/octet-stream",
                                       snap->body, snap->body_len, NULL);
    ck_assert_int_eq(rr->status, 201);
    cJSON *rj = http_response_json(rr);
    ck_assert_str_eq(config_rotate(rj), "hadamard");
    cJSON_Delete(rj);
    http_response_free(rr);
    http_response_free(snap);
    ref_session_free(ref);
    free(id);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("integration/rotate");
    TCase *tc = tcase_create("http");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, validated_and_echoed);
    tcase_add_test(tc, shadow_fork_snapshot);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
