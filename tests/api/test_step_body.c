/* tests/api/test_step_body.c — api/step_body.c: the step body (shapes, k/v
 * pairing, masks, layers, the "steps" form, encodings), checking status,
 * code, field and message of each error. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "api/create_body.h"
#include "api/json.h"
#include "api/step_body.h"
#include "api/wire.h"
#include "tests/support/api_asserts.h"
#include "tests/support/check_main.h"

#define PAGE 16384
#define ROW8 "0,1,2,3,4,5,6,7"
#define ROW16 "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15"
#define ROW32 ROW16 "," ROW16

static kvd_api_limits lim;

static void setup(void)
{
    kvd_api_limits_default(&lim, PAGE);
}

/* Session: 2 layers, 4 query heads over 2 kv heads, head_dim 8:
 * k/v rows are 2*8 = 16 numbers, q rows 4*8 = 32. */
static kvd_session_config step_cfg;

static void step_setup(void)
{
    setup();
    kvd_api_error err;
    cJSON *j = parse("{\"layers\": 2, \"heads\": 4, \"kv_heads\": 2, \"head_dim\": 8}");
    ck_assert_int_eq(kvd_session_config_parse(j, &lim, &step_cfg, &err), 0);
    cJSON_Delete(j);
}

static cJSON *arr(size_t n, float base)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)(base + (float)i)));
    return a;
}

/* A step object with m tokens of k/v (if m >= 0) and mq queries (if mq >= 0). */
static cJSON *step(int layer, int m, int mq, const char *mask)
{
    cJSON *o = cJSON_CreateObject();
    if (layer >= 0)
        cJSON_AddNumberToObject(o, "layer", layer);
    if (m >= 0) {
        cJSON_AddItemToObject(o, "k", arr((size_t)m * 16, 0.0f));
        cJSON_AddItemToObject(o, "v", arr((size_t)m * 16, 1000.0f));
    }
    if (mq >= 0)
        cJSON_AddItemToObject(o, "q", arr((size_t)mq * 32, -1.0f));
    if (mask)
        cJSON_AddStringToObject(o, "mask", mask);
    return o;
}

static void step_ok(const cJSON *body, kvd_step_request *req)
{
    kvd_api_error err;
    int rc = kvd_step_request_parse(body, &step_cfg, &lim, req, &err);
    ck_assert_msg(rc == 0, "%s (field %s)", err.message, err.field);
}

/* Expects a 400 and an empty request; consumes body. */
static void step_err(cJSON *body, const char *field, const char *sub)
{
    kvd_step_request req;
    memset(&req, 0x5a, sizeof req);
    kvd_api_error err;
    ck_assert_int_eq(kvd_step_request_parse(body, &step_cfg, &lim, &req, &err), -1);
    ck_assert_int_eq(err.status, 400);
    ck_assert_str_eq(err.code, KVD_ERR_INVALID);
    ck_assert_msg(strcmp(err.field, field) == 0, "field \"%s\", want \"%s\" (%s)", err.field,
                  field, err.message);
    ck_assert_msg(strstr(err.message, sub) != NULL, "message \"%s\" lacks \"%s\"", err.message,
                  sub);
    ck_assert_ptr_null(req.entries);
    ck_assert_uint_eq(req.n_entries, 0);
    cJSON_Delete(body);
}

static void step_err_text(const char *json, const char *field, const char *sub)
{
    step_err(parse(json), field, sub);
}

START_TEST(step_single)
{
    cJSON *b = step(1, 3, 3, NULL);
    kvd_step_request req;
    step_ok(b, &req);
    ck_assert_uint_eq(req.n_entries, 1);
    ck_assert_int_eq(req.encoding, KVD_WIRE_ENCODING_JSON);
    const kvd_step_entry *st = &req.entries[0];
    ck_assert_uint_eq(st->layer, 1);
    ck_assert_uint_eq(st->m, 3);
    ck_assert_uint_eq(st->m_q, 3);
    ck_assert_int_eq(st->mask, KVD_MASK_CAUSAL);
    for (size_t i = 0; i < 48; i++)
        ck_assert(st->k[i] == (float)i && st->v[i] == 1000.0f + (float)i);
    for (size_t i = 0; i < 96; i++)
        ck_assert(st->q[i] == -1.0f + (float)i);
    kvd_step_request_free(&req);
    ck_assert_ptr_null(req.entries);
    kvd_step_request_free(&req); /* twice is harmless */
    cJSON_Delete(b);

    /* Defaults: layer 0; nothing at all is an empty step. */
    b = parse("{}");
    step_ok(b, &req);
    ck_assert_uint_eq(req.entries[0].layer, 0);
    ck_assert_uint_eq(req.entries[0].m, 0);
    ck_assert_uint_eq(req.entries[0].m_q, 0);
    ck_assert_ptr_null(req.entries[0].k);
    kvd_step_request_free(&req);
    cJSON_Delete(b);

    /* b64 tensors and the b64 response encoding; nested q. */
    b = step(0, -1, -1, NULL);
    float k[32];
    for (int i = 0; i < 32; i++)
        k[i] = (float)i * 0.5f;
    cJSON_AddItemToObject(b, "k", kvd_wire_encode(k, 32, KVD_WIRE_ENCODING_B64));
    cJSON_AddItemToObject(b, "v", kvd_wire_encode(k, 32, KVD_WIRE_ENCODING_B64));
    cJSON_AddItemToObject(b, "q", parse("[[[1,1,1,1,1,1,1,1],[2,2,2,2,2,2,2,2],"
                                        "[3,3,3,3,3,3,3,3],[4,4,4,4,4,4,4,4]]]"));
    cJSON_AddStringToObject(b, "encoding", "b64");
    step_ok(b, &req);
    ck_assert_int_eq(req.encoding, KVD_WIRE_ENCODING_B64);
    ck_assert_uint_eq(req.entries[0].m, 2);
    ck_assert_uint_eq(req.entries[0].m_q, 1);
    ck_assert_int_eq(req.entries[0].mask, KVD_MASK_BLOCK); /* m_q != m */
    ck_assert(req.entries[0].k[31] == 15.5f && req.entries[0].q[31] == 4.0f);
    kvd_step_request_free(&req);
    cJSON_Delete(b);
}
END_TEST

START_TEST(step_masks)
{
    struct { int m, mq; const char *mask; kvd_mask want; } ok[] = {
        {3, 3, NULL, KVD_MASK_CAUSAL},     /* prefill / decode */
        {0, 0, NULL, KVD_MASK_CAUSAL},
        {3, 1, NULL, KVD_MASK_BLOCK},      /* VAR scale-like */
        {-1, 2, NULL, KVD_MASK_BLOCK},     /* pure query against the cache */
        {4, -1, NULL, KVD_MASK_BLOCK},     /* append only */
        {3, 1, "causal", KVD_MASK_CAUSAL}, /* the last query of three tokens */
        {3, 3, "block", KVD_MASK_BLOCK},
        {2, 2, "causal", KVD_MASK_CAUSAL},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        cJSON *b = step(-1, ok[i].m, ok[i].mq, ok[i].mask);
        kvd_step_request req;
        step_ok(b, &req);
        ck_assert_msg(req.entries[0].mask == ok[i].want, "case %zu", i);
        kvd_step_request_free(&req);
        cJSON_Delete(b);
    }
    step_err(step(-1, 1, 2, "causal"), "mask",
             "\"causal\" needs m_q <= m (each query is one of the step's new tokens), got m_q = "
             "2 queries and m = 1 new tokens");
    step_err(step(-1, -1, 1, "causal"), "mask", "got m_q = 1 queries and m = 0");
    step_err(step(-1, 1, 1, "full"), "mask",
             "mask: expected one of \"causal\", \"block\", got \"full\"");
    cJSON *b = step(-1, 1, 1, NULL);
    cJSON_AddNumberToObject(b, "mask", 0);
    step_err(b, "mask", "got a number");
}
END_TEST

START_TEST(step_shapes)
{
    cJSON *b = step(-1, -1, -1, NULL);
    cJSON_AddItemToObject(b, "k", arr(15, 0));
    cJSON_AddItemToObject(b, "v", arr(16, 0));
    step_err(b, "k", "k: expected a multiple of kv_heads*head_dim = 2*8 = 16 numbers, got 15");
    b = step(-1, -1, -1, NULL);
    cJSON_AddItemToObject(b, "k", arr(16, 0));
    cJSON_AddItemToObject(b, "v", arr(17, 0));
    step_err(b, "v", "v: expected a multiple of kv_heads*head_dim = 2*8 = 16 numbers, got 17");
    b = step(-1, -1, -1, NULL);
    cJSON_AddItemToObject(b, "q", arr(31, 0));
    step_err(b, "q", "q: expected a multiple of heads*head_dim = 4*8 = 32 numbers, got 31");
    /* k and v come together and hold the same number of tokens. */
    b = step(-1, -1, 1, NULL);
    cJSON_AddItemToObject(b, "k", arr(16, 0));
    step_err(b, "v", "v: missing (k and v come together");
    b = step(-1, -1, 1, NULL);
    cJSON_AddItemToObject(b, "v", arr(16, 0));
    step_err(b, "k", "k: missing");
    b = step(-1, -1, -1, NULL);
    cJSON_AddItemToObject(b, "k", arr(32, 0));
    cJSON_AddItemToObject(b, "v", arr(16, 0));
    step_err(b, "v", "v: 1 tokens, but k has 2");
    /* Non-finite and non-number elements. */
    b = step(-1, 2, -1, NULL);
    cJSON_ReplaceItemInArray(cJSON_GetObjectItemCaseSensitive(b, "v"), 17, cJSON_CreateNumber(1e39));
    step_err(b, "v", "v[17]: not a finite f32");
    b = step(-1, -1, 1, NULL);
    cJSON_ReplaceItemInArray(cJSON_GetObjectItemCaseSensitive(b, "q"), 5, cJSON_CreateString("x"));
    step_err(b, "q", "q[5]: expected a number, got a string");
    step_err_text("{\"k\": 1, \"v\": 1}", "k", "expected an array of numbers");
    step_err_text("{\"q\": \"b64:AAC\"}", "q", "not a multiple of 4");
    /* Token limits per step. */
    lim.max_step_tokens = 2;
    step_err(step(-1, 3, -1, NULL), "k", "3 rows of 16 numbers, more than the limit of 2");
    step_err(step(-1, -1, 3, NULL), "q", "more than the limit of 2");
    kvd_step_request req;
    b = step(-1, 2, 2, NULL);
    step_ok(b, &req);
    kvd_step_request_free(&req);
    cJSON_Delete(b);
}
END_TEST

START_TEST(step_layer)
{
    step_err(step(2, 1, 1, NULL), "layer",
             "layer: expected an integer in 0..1 (the session has 2 layers), got 2");
    step_err_text("{\"layer\": -1}", "layer", "got -1");
    step_err_text("{\"layer\": 0.5}", "layer", "got 0.5");
    step_err_text("{\"layer\": 1e300}", "layer", "0..1");
    step_err_text("{\"layer\": \"0\"}", "layer", "expected an integer in 0..1, got a string");
    step_err_text("{\"layer\": null}", "layer", "got null");
    step_err_text("{\"steps\": [{\"layer\": 0}, {\"layer\": 5}]}", "steps[1].layer",
                  "steps[1].layer: expected an integer in 0..1");
}
END_TEST

START_TEST(step_fields)
{
    step_err_text("{\"foo\": 1}", "foo", "foo: unknown field");
    step_err_text("{\"layer\": 0, \"k1\": []}", "k1",
                  "k1: k1, k2, v1, v2 are for tensor attention");
    step_err_text("{\"k2\": []}", "k2", "tensor attention");
    step_err_text("{\"v1\": []}", "v1", "tensor attention");
    step_err_text("{\"v2\": []}", "v2", "tensor attention");
    step_err_text("{\"layer\": 0, \"layer\": 1}", "layer", "duplicate field");
    step_err_text("{\"q\": [], \"q\": []}", "q", "duplicate field");
    step_err_text("{\"encoding\": \"xml\"}", "encoding",
                  "encoding: expected one of \"json\", \"b64\", got \"xml\"");
    step_err_text("{\"encoding\": 1}", "encoding", "got a number");
    step_err_text("{\"encoding\": \"b64\", \"encoding\": \"b64\"}", "encoding", "duplicate");
    step_err_text("{\"steps\": [{\"encoding\": \"b64\"}]}", "steps[0].encoding",
                  "only allowed at the top level");
    step_err_text("{\"steps\": [{\"foo\": 1}]}", "steps[0].foo", "steps[0].foo: unknown field");
    step_err_text("{\"steps\": [{}, {\"k1\": []}]}", "steps[1].k1", "tensor attention");
    step_err_text("{\"steps\": [{\"steps\": []}]}", "steps[0].steps", "unknown field");
}
END_TEST

START_TEST(step_steps_form)
{
    cJSON *b = cJSON_CreateObject();
    cJSON *steps = cJSON_AddArrayToObject(b, "steps");
    cJSON_AddItemToArray(steps, step(0, 2, 2, NULL));
    cJSON_AddItemToArray(steps, step(1, 1, -1, NULL));
    cJSON_AddItemToArray(steps, step(0, -1, 1, "block"));
    cJSON_AddStringToObject(b, "encoding", "b64");
    kvd_step_request req;
    step_ok(b, &req);
    ck_assert_uint_eq(req.n_entries, 3);
    ck_assert_int_eq(req.encoding, KVD_WIRE_ENCODING_B64);
    ck_assert_uint_eq(req.entries[0].layer, 0);
    ck_assert_uint_eq(req.entries[0].m, 2);
    ck_assert_int_eq(req.entries[0].mask, KVD_MASK_CAUSAL);
    ck_assert_uint_eq(req.entries[1].layer, 1);
    ck_assert_uint_eq(req.entries[1].m, 1);
    ck_assert_uint_eq(req.entries[1].m_q, 0);
    ck_assert_uint_eq(req.entries[2].m, 0);
    ck_assert_uint_eq(req.entries[2].m_q, 1);
    ck_assert_int_eq(req.entries[2].mask, KVD_MASK_BLOCK);
    kvd_step_request_free(&req);

    /* An error in the last step frees everything decoded before it. */
    cJSON_ReplaceItemInArray(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(steps, 2), "q"),
                             20, cJSON_CreateNumber(INFINITY));
    step_err(b, "steps[2].q", "steps[2].q[20]: not a finite f32");

    step_err_text("{\"steps\": []}", "steps", "steps: expected 1..4096 step objects, got none");
    step_err_text("{\"steps\": {}}", "steps", "expected an array of step objects, got an object");
    step_err_text("{\"steps\": null}", "steps", "got null");
    step_err_text("{\"steps\": [{}, 1]}", "steps[1]", "steps[1]: expected a step object, got a number");
    step_err_text("{\"steps\": [[]]}", "steps[0]", "got an array");
    step_err_text("{\"steps\": [{}], \"layer\": 0}", "layer", "not allowed beside \"steps\"");
    step_err_text("{\"q\": [], \"steps\": [{}]}", "q", "not allowed beside \"steps\"");
    step_err_text("{\"steps\": [{}], \"k1\": []}", "k1", "not allowed beside");
    step_err_text("{\"steps\": [{}], \"foo\": 1}", "foo", "unknown field");
    step_err_text("{\"steps\": [{}], \"steps\": [{}]}", "steps", "duplicate field");
    step_err_text("{\"steps\": [{\"q\": [1]}]}", "steps[0].q",
                  "steps[0].q: expected a multiple of heads*head_dim = 4*8 = 32 numbers, got 1");
    step_err_text("{\"steps\": [{\"k\": []}]}", "steps[0].v", "steps[0].v: missing");
    lim.max_steps_per_request = 3;
    step_err_text("{\"steps\": [{}, {}, {}, {}]}", "steps",
                  "steps: expected 1..3 step objects, got 4");
    b = parse("{\"steps\": [{}, {}, {}]}");
    step_ok(b, &req);
    ck_assert_uint_eq(req.n_entries, 3);
    kvd_step_request_free(&req);
    cJSON_Delete(b);
}
END_TEST

/* Issue 12: nested tensors must have the session's dims, and "m", when
 * given, must equal the new tokens (2 kv heads x 8 here; q 4 heads x 8). */
START_TEST(step_nested_shapes_and_m)
{
    /* k as q's shape [1, 4, 8]: flat it would be 2 tokens; nested it is refused. */
    step_err_text("{\"k\": [[[" ROW8 "],[" ROW8 "],[" ROW8 "],[" ROW8 "]]], \"v\": [" ROW16 "," ROW16 "]}",
                  "k", "k: expected [m, 2, 8], got [1, 4, 8]");
    step_err_text("{\"k\": [" ROW16 "], \"v\": [[" ROW8 "],[" ROW8 "]]}", "v",
                  "v: expected [m, 2, 8], got [2, 8]");
    step_err_text("{\"q\": [[[" ROW8 "],[" ROW8 "]]]}", "q",
                  "q: expected [m_q, 4, 8], got [1, 2, 8] (a nested tensor is [m_q, heads, "
                  "head_dim] or [m_q, heads*head_dim] = [m_q, 32])");
    step_err_text("{\"steps\": [{}, {\"k\": [[[" ROW16 "]]], \"v\": [" ROW16 "]}]}",
                  "steps[1].k", "steps[1].k: expected [m, 2, 8], got [1, 1, 16]");
    /* The accepted forms: flat, [m, 2, 8], [m, 16]; m matching each. */
    static const char *const ok[] = {
        "{\"m\": 1, \"k\": [" ROW16 "], \"v\": [[[" ROW8 "],[" ROW8 "]]], \"q\": [[" ROW16 "," ROW16 "]]}",
        "{\"m\": 2, \"k\": [[" ROW16 "],[" ROW16 "]], \"v\": [" ROW16 "," ROW16 "]}",
        "{\"m\": 0, \"q\": [" ROW16 "," ROW16 "]}",
        "{\"m\": 0, \"k\": [], \"v\": []}",
        "{\"steps\": [{\"m\": 1, \"k\": [" ROW16 "], \"v\": [" ROW16 "]}, {\"layer\": 1}]}",
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        cJSON *b = parse(ok[i]);
        kvd_step_request req;
        step_ok(b, &req);
        kvd_step_request_free(&req);
        cJSON_Delete(b);
    }
    /* m against the count. */
    step_err_text("{\"m\": 2, \"k\": [" ROW16 "], \"v\": [" ROW16 "]}", "m",
                  "m: 2 new tokens given, but k holds 1 (rows of kv_heads*head_dim = 2*8 numbers)");
    step_err_text("{\"m\": 1, \"k\": [" ROW16 "," ROW16 "], \"v\": [" ROW16 "," ROW16 "]}", "m",
                  "m: 1 new tokens given, but k holds 2");
    step_err_text("{\"m\": 1, \"q\": [" ROW16 "," ROW16 "]}", "m",
                  "m: 1 new tokens given, but the step has no k and v (0 new tokens)");
    step_err_text("{\"steps\": [{\"m\": 0}, {\"m\": 3, \"k\": [" ROW16 "], \"v\": [" ROW16 "]}]}",
                  "steps[1].m", "steps[1].m: 3 new tokens given, but steps[1].k holds 1");
    step_err_text("{\"m\": -1}", "m", "m: must be in 0..");
    step_err_text("{\"m\": 1.5}", "m", "m: expected an integer");
    step_err_text("{\"m\": \"1\"}", "m", "m: expected an integer in 0..1048576, got a string");
    step_err_text("{\"m\": 1, \"m\": 1}", "m", "m: duplicate field");
    step_err_text("{\"steps\": [{}], \"m\": 1}", "m", "m: not allowed beside \"steps\"");
    /* A shape error in k comes before m's check: it says more. */
    step_err_text("{\"m\": 1, \"k\": [[[" ROW16 "]]], \"v\": [" ROW16 "]}", "k",
                  "k: expected [m, 2, 8], got [1, 1, 16]");
}
END_TEST

START_TEST(step_body_not_object)
{
    step_err_text("[]", "", "body must be a JSON object");
    kvd_step_request req;
    kvd_api_error err;
    ck_assert_int_eq(kvd_step_request_parse(NULL, &step_cfg, &lim, &req, &err), -1);
    ASSERT_ERR(err, 400, "", "body must be a JSON object");
    /* Through the body parser, as the handler does: one query, [1, 4, 8]
     * ([4, 8] alone is refused since issue 12: its first dim is m_q). */
    const char body[] = "{\"layer\": 1, \"q\": [[[0,0,0,0,0,0,0,0],[0,0,0,0,0,0,0,0],"
                        "[0,0,0,0,0,0,0,0],[0,0,0,0,0,0,0,0]]]}";
    cJSON *j = kvd_json_parse_object(body, sizeof body - 1, &err);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(kvd_step_request_parse(j, &step_cfg, &lim, &req, &err), 0);
    ck_assert_uint_eq(req.entries[0].m_q, 1);
    kvd_step_request_free(&req);
    cJSON_Delete(j);
}
END_TEST

/* The handler's path (kvd_step_request_parse_text: arrays decoded from the
 * text) answers every body exactly as the tree path does. */
static void same_both_ways(const char *json)
{
    kvd_step_request r1, r2;
    kvd_api_error e1, e2;
    cJSON *tree = kvd_json_parse_object(json, strlen(json), &e1);
    int rc1 = tree ? kvd_step_request_parse(tree, &step_cfg, &lim, &r1, &e1) : -1;
    char *text = strdup(json);
    bool multi = false;
    int rc2 = kvd_step_request_parse_text(text, strlen(text), &step_cfg, &lim, &r2, &multi, &e2);
    free(text);
    ck_assert_msg(rc1 == rc2, "%s: tree %d, text %d (%s)", json, rc1, rc2,
                  rc2 ? e2.message : e1.message);
    if (rc1 != 0) {
        ck_assert_int_eq(e1.status, e2.status);
        ck_assert_str_eq(e1.field, e2.field);
        ck_assert_str_eq(e1.message, e2.message);
    } else {
        ck_assert(multi == (cJSON_GetObjectItemCaseSensitive(tree, "steps") != NULL));
        ck_assert_uint_eq(r1.n_entries, r2.n_entries);
        ck_assert_int_eq(r1.encoding, r2.encoding);
        for (size_t i = 0; i < r1.n_entries; i++) {
            const kvd_step_entry *a = &r1.entries[i], *b = &r2.entries[i];
            ck_assert_uint_eq(a->layer, b->layer);
            ck_assert_uint_eq(a->m, b->m);
            ck_assert_uint_eq(a->m_q, b->m_q);
            ck_assert_int_eq(a->mask, b->mask);
            const size_t kv = a->m * step_cfg.kv_heads * step_cfg.head_dim * sizeof(float);
            const size_t q = a->m_q * step_cfg.heads * step_cfg.head_dim * sizeof(float);
            ck_assert(kv == 0 || memcmp(a->k, b->k, kv) == 0);
            ck_assert(kv == 0 || memcmp(a->v, b->v, kv) == 0);
            ck_assert(q == 0 || memcmp(a->q, b->q, q) == 0);
        }
        kvd_step_request_free(&r1);
        kvd_step_request_free(&r2);
    }
    cJSON_Delete(tree);
}


START_TEST(step_text_path_same_as_tree)
{
    static const char *const bodies[] = {
        "{\"k\":[" ROW16 "],\"v\":[" ROW16 "],\"q\":[" ROW32 "]}",
        "{\"k\":[[" ROW16 "]],\"v\":[[[0,1,2,3,4,5,6,7],[8,9,10,11,12,13,14,15]]],\"q\":[" ROW32 "]}",
        "{\"layer\":1,\"q\":[" ROW32 "],\"mask\":\"block\",\"encoding\":\"b64\"}",
        "{\"k\":[" ROW16 ",1],\"v\":[" ROW16 "]}",
        "{\"k\":[" ROW16 "],\"v\":[" ROW16 ",\"x\"]}",
        "{\"k\":[[1,2],[3]],\"v\":[]}",
        "{\"k\":[[[" ROW8 "],[" ROW8 "],[" ROW8 "],[" ROW8 "]]],\"v\":[" ROW16 "," ROW16 "]}",
        "{\"k\":[[" ROW8 "],[" ROW8 "]],\"v\":[" ROW16 "]}",
        "{\"k\":[[[[" ROW8 "],[" ROW8 "]]]],\"v\":[" ROW16 "]}",
        "{\"k\":[[]],\"v\":[[]]}",
        "{\"q\":[[[" ROW8 "],[" ROW8 "],[" ROW8 "],[" ROW8 "]]]}",
        "{\"q\":[[" ROW8 "],[" ROW8 "],[" ROW8 "],[" ROW8 "]]}",
        "{\"m\":1,\"k\":[[[" ROW8 "],[" ROW8 "]]],\"v\":[[" ROW16 "]]}",
        "{\"m\":2,\"k\":[[[" ROW8 "],[" ROW8 "]]],\"v\":[[" ROW16 "]]}",
        "{\"m\":[1],\"k\":[" ROW16 "],\"v\":[" ROW16 "]}",
        "{\"steps\":[{\"m\":1,\"k\":[" ROW16 "],\"v\":[" ROW16 "]},{\"m\":1}]}",
        "{\"q\":[1e39," ROW16 "]}",
        "{\"q\":[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}",
        "{\"layer\":[1,2,3,4,5,6,7,8,9],\"q\":[1]}",
        "{\"mask\":[1,2,3,4,5,6,7,8,9]}",
        "{\"encoding\":[1,2,3,4,5,6,7,8,9]}",
        "{\"extra\":[1,2,3,4,5,6,7,8,9],\"q\":[" ROW32 "]}",
        "{\"k1\":[1,2,3,4,5,6,7,8,9]}",
        "{\"q\":[" ROW32 "],\"q\":[" ROW32 "]}",
        "{\"q\":\"[1,2]\",\"k\":[\"]\"]}",
        "{\"q\":\"b64:AACAPw==\"}",
        "{\"steps\":[[1,2,3,4,5,6,7,8,9]]}",
        "{\"steps\":[1,2,3]}",
        "{\"steps\":[]}",
        "{\"steps\":[{\"q\":[" ROW32 "]},{\"layer\":1,\"k\":[" ROW16 "],\"v\":[" ROW16 "]}]}",
        "{\"steps\":[{\"q\":[" ROW32 "]},{\"q\":[[1,2],[3,4,5]]}]}",
        "{\"steps\":[{\"q\":[" ROW32 "]}],\"steps\":[[1]]}",
        "{\"st\\u0065ps\":[{\"q\":[" ROW32 "]}]}",
        "{\"steps\":[{\"q\":[" ROW32 "],\"encoding\":[1]}]}",
        "{\"q\":[01," ROW16 "]}",
        "{\"q\":[" ROW32 "],}",
        "{\"k\":[" ROW16 "],\"v\":[" ROW16 "],\"q\":[" ROW32 "," ROW32 "],\"mask\":\"causal\"}",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++)
        same_both_ways(bodies[i]);
    lim.max_steps_per_request = 2;
    same_both_ways("{\"steps\":[{},{},{}]}");
}
END_TEST

START_TEST(step_text_caps_values_outside_tensors)
{
    /* A valid body needs at most 10 values a step (9 members with "m" and "return_lse"); more is refused before
     * cJSON builds them (here: the root's "steps" full of numbers). */
    lim.max_steps_per_request = 2;
    ck_assert_uint_eq(kvd_step_body_max_values(&lim), 84);
    char text[1024] = "{\"steps\":[0";
    for (int i = 0; i < 100; i++)
        strcat(text, ",0");
    strcat(text, "]}");
    kvd_step_request req;
    kvd_api_error err;
    bool multi;
    ck_assert_int_eq(kvd_step_request_parse_text(text, strlen(text), &step_cfg, &lim, &req, &multi,
                                                 &err), -1);
    ASSERT_ERR(err, 400, "", "body has 103 JSON values besides the numbers of its arrays, "
                             "more than the 84 a step body can need");
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("api/step_body");
    TCase *ts = tcase_create("step");
    tcase_add_checked_fixture(ts, step_setup, NULL);
    tcase_add_test(ts, step_single);
    tcase_add_test(ts, step_masks);
    tcase_add_test(ts, step_shapes);
    tcase_add_test(ts, step_layer);
    tcase_add_test(ts, step_fields);
    tcase_add_test(ts, step_steps_form);
    tcase_add_test(ts, step_nested_shapes_and_m);
    tcase_add_test(ts, step_body_not_object);
    tcase_add_test(ts, step_text_path_same_as_tree);
    tcase_add_test(ts, step_text_caps_values_outside_tensors);
    suite_add_tcase(s, ts);
    return s;
}

KVD_TEST_MAIN(make_suite)
