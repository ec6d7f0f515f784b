/* tests/api/test_json_text.c — api/json_text.c against cJSON itself: on hand
 * picked edge cases and thousands of random mutated texts, the text pass must
 * accept what kvd_json_parse_object accepts with the same error message (byte
 * offset included), build the same tree, and decode every blanked array to
 * what kvd_wire_decode makes of cJSON's nodes (numbers, rows, messages). */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "api/json.h"
#include "api/wire.h"
#include "tests/support/api_asserts.h"
#include "tests/support/check_main.h"

static const char *cur; /* the text under test, for failure messages */
/* Nested arrays accepted, and refused by the shape rules: both reached. */
static size_t n_shape_ok, n_shape_refused;

static void compare_decode(const cJSON *a, const kvd_json_tensor *t)
{
    /* Shapes [m, h, d] that make the random arrays (up to 6 wide, 5 deep)
     * meet every shape rule: flat, [m, h, d], [m, h*d], and the refusals. */
    static const kvd_wire_shape shapes[] = {
        {.heads = 1, .head_dim = 1, .heads_name = "kv_heads"},
        {.heads = 1, .head_dim = 2},
        {.heads = 2, .head_dim = 1, .rows_name = "m_q", .heads_name = "heads"},
        {.heads = 1, .head_dim = 3, .heads_name = "kv_heads"},
        {.heads = 2, .head_dim = 2, .heads_name = "kv_heads"},
    };
    static const size_t max_of[] = {1000000, 1};
    for (size_t r = 0; r < sizeof shapes / sizeof *shapes; r++) {
        const size_t row = shapes[r].heads * shapes[r].head_dim;
        for (size_t m = 0; m < 2; m++) {
            kvd_json_tensor copy = *t;
            if (t->data) {
                copy.data = malloc(t->count * sizeof(float) + 1);
                memcpy(copy.data, t->data, t->count * sizeof(float));
            }
            float *o1 = (float *)0x1, *o2 = (float *)0x1;
            size_t n1 = 7, n2 = 7;
            kvd_api_error e1, e2;
            int r1 = kvd_wire_decode(a, "f", &shapes[r], max_of[m], &o1, &n1, &e1);
            int r2 = kvd_wire_decode_tensor(&copy, "f", &shapes[r], max_of[m], &o2, &n2, &e2);
            ck_assert_msg(r1 == r2, "decode rc %d vs %d for %s", r1, r2, cur);
            if (r1 == 0) {
                ck_assert_uint_eq(n1, n2);
                ck_assert_msg((o1 == NULL) == (o2 == NULL), "NULL-ness differs for %s", cur);
                if (o1)
                    ck_assert(memcmp(o1, o2, n1 * row * sizeof(float)) == 0);
                free(o1);
                free(o2);
            } else {
                ck_assert_int_eq(e1.status, e2.status);
                ck_assert_msg(strcmp(e1.message, e2.message) == 0, "\"%s\" vs \"%s\" for %s",
                              e1.message, e2.message, cur);
                ck_assert_ptr_eq(o2, (float *)0x1);
                ck_assert_uint_eq(n2, 7);
            }
            free(copy.data);
            n_shape_ok += r1 == 0 && a->child && cJSON_IsArray(a->child);
            n_shape_refused += r1 != 0 && strstr(e1.message, "a nested tensor is") != NULL;
        }
    }
}

/* Tensor strings the doc left in the text, decoded from there and from
 * cJSON's copy (kvd_wire_decode): the same numbers or the same error. */
static size_t n_b64;

static void compare_b64(const cJSON *a, const kvd_json_b64 *t)
{
    ck_assert_msg(cJSON_IsString(a) && strncmp(a->valuestring, "b64:", 4) == 0 &&
                      strlen(a->valuestring + 4) == t->len && memcmp(a->valuestring + 4, t->text, t->len) == 0,
                  "b64 string's text differs for %s", cur);
    static const kvd_wire_shape shapes[] = {
        {.heads = 1, .head_dim = 1, .heads_name = "kv_heads"},
        {.heads = 2, .head_dim = 3, .rows_name = "m_q", .heads_name = "heads"},
    };
    for (size_t r = 0; r < sizeof shapes / sizeof *shapes; r++) {
        float *o1 = (float *)0x1, *o2 = (float *)0x1;
        size_t n1 = 7, n2 = 7;
        kvd_api_error e1, e2;
        int r1 = kvd_wire_decode(a, "f", &shapes[r], 2, &o1, &n1, &e1);
        int r2 = kvd_wire_decode_b64(t->text, t->len, "f", &shapes[r], 2, &o2, &n2, &e2);
        ck_assert_msg(r1 == r2, "b64 decode rc %d vs %d for %s", r1, r2, cur);
        if (r1 == 0) {
            ck_assert_uint_eq(n1, n2);
            ck_assert_msg((o1 == NULL) == (o2 == NULL), "NULL-ness differs for %s", cur);
            if (o1)
                ck_assert(memcmp(o1, o2, n1 * shapes[r].heads * shapes[r].head_dim * sizeof(float)) == 0);
            free(o1);
            free(o2);
        } else {
            ck_assert_int_eq(e1.status, e2.status);
            ck_assert_msg(strcmp(e1.message, e2.message) == 0, "\"%s\" vs \"%s\" for %s", e1.message,
                          e2.message, cur);
        }
    }
    n_b64++;
}

/* a: cJSON's tree of the original text; b: the doc's tree (placeholders for
 * its decoded arrays and tensor strings). */
static void compare_trees(const cJSON *a, const cJSON *b, const kvd_json_doc *doc)
{
    for (; a || b; a = a->next, b = b->next) {
        ck_assert_msg(a && b, "trees differ in length for %s", cur);
        ck_assert_int_eq(a->type & 0xFF, b->type & 0xFF);
        ck_assert_msg((a->string == NULL) == (b->string == NULL), "keys differ for %s", cur);
        if (a->string)
            ck_assert_str_eq(a->string, b->string);
        const kvd_json_tensor *t = kvd_json_doc_tensor(doc, b);
        if (t) {
            compare_decode(a, t);
            continue;
        }
        const kvd_json_b64 *s = kvd_json_doc_b64(doc, b);
        if (s) {
            compare_b64(a, s);
            continue;
        }
        if (cJSON_IsNumber(a))
            ck_assert(memcmp(&a->valuedouble, &b->valuedouble, sizeof(double)) == 0);
        if (cJSON_IsString(a))
            ck_assert_str_eq(a->valuestring, b->valuestring);
        compare_trees(a->child, b->child, doc);
    }
}

/* Whether any array of the tree is at a tensor position that the text pass
 * should have decoded; counted to prove the random texts exercise it. */
static size_t n_decoded, n_accepted, n_refused;

static void differ(const char *text, size_t len)
{
    char shown[200];
    snprintf(shown, sizeof shown, "%.*s", (int)(len < 180 ? len : 180), text);
    cur = shown;
    kvd_api_error e1, e2;
    char *buf = malloc(len + 1);
    memcpy(buf, text, len);
    buf[len] = '\0'; /* both parsers read the server's terminator */
    cJSON *ref = kvd_json_parse_object(buf, len, &e1);
    kvd_json_doc doc;
    int rc = kvd_json_parse_step_text(buf, len, SIZE_MAX, &doc, &e2);
    if (!ref) {
        ck_assert_msg(rc == -1, "text pass accepted what cJSON refused: %s (%s)", shown,
                      e1.message);
        ck_assert_int_eq(e1.status, e2.status);
        ck_assert_msg(strcmp(e1.message, e2.message) == 0, "\"%s\" vs \"%s\" for %s",
                      e1.message, e2.message, shown);
        ck_assert_ptr_null(doc.root);
        n_refused++;
    } else {
        ck_assert_msg(rc == 0, "text pass refused what cJSON accepted: %s (%s)", shown,
                      e2.message);
        compare_trees(ref, doc.root, &doc);
        n_decoded += doc.n_tensors;
        n_accepted++;
        kvd_json_doc_free(&doc);
        cJSON_Delete(ref);
    }
    free(buf);
}

static void differ_str(const char *text) { differ(text, strlen(text)); }

START_TEST(edge_cases)
{
    static const char *const cases[] = {
        " ", "{", "}", "{}", " {} ", "\xEF\xBB\xBF{}", "\xEF\xBB\xBF", "\xEF\xBB{}",
        "[1,2]", "5", "\"x\"", "null", "true", "tru", "{\"a\":1} x", "{}{}",
        "{\"a\":[1,2,]}", "{\"a\":[1,,2]}", "{\"a\":[1 2]}", "{\"a\":[,1]}", "{\"a\":[}",
        "{\"a\":[", "{\"a\":[1", "{\"a\":[1,", "{\"a\":[[1]", "{\"a\":[]", "{\"a\":[] ",
        "{\"a\":[01]}", "{\"a\":[-01.5]}", "{\"a\":[1.]}", "{\"a\":[1.e5]}", "{\"a\":[-]}",
        "{\"a\":[1e]}", "{\"a\":[1e+]}", "{\"a\":[1e400]}", "{\"a\":[-1e400]}", "{\"a\":[1e39]}",
        "{\"a\":[3.4028235e38, -3.4028235e38, 1e-50]}", "{\"a\":[3.40282357e38]}",
        "{\"a\":[+1]}", "{\"a\":[.5]}", "{\"a\":[0x10]}", "{\"a\":[1.5.3]}", "{\"a\":[1-2]}",
        "{\"a\":[1234567890123456789012345678901234567890123456789012345678901234567890]}",
        "{\"a\":[1.00000000000000000000000000000000000000000000000000000000000000000001]}",
        "{\"a\":[\"x\\q\"]}", "{\"a\":[\"\\ud800\"]}", "{\"a\":[\"\\ud800\\udc00\"]}",
        "{\"a\":[\"\\udc00\"]}", "{\"a\":[\"\\uzzzz\"]}", "{\"a\":[\"\\u12\"]}",
        "{\"a\":[\"\\ud800\\u0041\"]}", "{\"a\":[\"abc]}", "{\"a\":[\"abc\\\"]}", "{\"a\":\"\\",
        "{\"a\":[true,null,false]}", "{\"a\":[tru]}", "{\"a\":[nul]}", "{\"a\":[{\"b\":[1,[2]]}]}",
        "{\"a\":[1,{\"b\":}]}", "{\"a\":[[1,2],[3]]}", "{\"a\":[[1,2],3]}", "{\"a\":[1,[2]]}",
        "{\"a\":[[[1,2]],[[1],[2]]]}", "{\"a\":[[],[1,2]]}", "{\"a\":[[[1,2]],[[1,[2]]]]}",
        "{\"a\":[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}", "{\"a\":[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}",
        "{\"a\":[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]],2]}", "{\"a\":[[1,\"x\"],[2]]}",
        "{\"steps\":[[1],[2,3],{\"k\":[1,2]},5,\"s\"]}", "{\"st\\u0065ps\":[[1],{\"q\":[2]}]}",
        "{\"steps\\u0000x\":[[1]]}", "{\"steps\":1,\"steps\":[[2]]}", "{\"x\":{\"steps\":[[1]]}}",
        "{\"a\":\"[1,2]\",\"b\":[1,\"]\"],\"c\":[\"[\",[1]]}", "{\"a\":\"b64:AACAPw==\"}",
        "{\x01\"a\"\x1f:[1,\x02 2]\x7f}", "{\"a\":[1]}\x01", "{\"a\":[1]\x7f}", "{\"a\" [1]}",
        "{a:[1]}", "{\"a\":[1],}", "{,}", "{\"k\":[],\"k\":[1,2]}", "{\"\":[]}",
        "{\"a\":[1e5,-0,0,-0.0,0.5e-3,1E+2]}", "{\"a\":[[1,2]\n,\t[3,4]]}", "{\"a\":[ ]}",
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        differ_str(cases[i]);
    /* cJSON's nesting limit, at the edge, in a tensor and beside it. */
    for (int depth = 997; depth <= 1001; depth++) {
        for (int where = 0; where < 3; where++) {
            const char *open = where == 0 ? "{\"a\":" : where == 1 ? "{\"steps\":" : "{\"a\":{\"b\":";
            const char *close = where == 2 ? "}}" : "}";
            size_t n = strlen(open) + 2 * (size_t)depth + 8;
            char *t = malloc(n);
            size_t p = 0;
            p += (size_t)sprintf(t, "%s", open);
            for (int d = 0; d < depth; d++)
                t[p++] = '[';
            t[p++] = '1';
            for (int d = 0; d < depth; d++)
                t[p++] = ']';
            p += (size_t)sprintf(t + p, "%s", close);
            differ(t, p);
            free(t);
        }
    }
}
END_TEST

/* Random texts: valid step-like bodies from a small grammar, then mutated a
 * byte at a time (deleted, doubled, replaced by a JSON-ish byte), or cut. */
static uint64_t rng = 0x9E3779B97F4A7C15u;
static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

typedef struct text {
    char *b;
    size_t n, cap;
} text;

static void put(text *t, const char *s)
{
    size_t k = strlen(s);
    if (t->n + k + 1 > t->cap) {
        t->cap = (t->n + k + 1) * 2;
        t->b = realloc(t->b, t->cap);
    }
    memcpy(t->b + t->n, s, k);
    t->n += k;
}

static void gen_number(text *t)
{
    static const char *const nums[] = {"0",    "1",   "-1",   "2.5",  "-0.125", "1e3",
                                       "1E-2", "7",   "3.4028235e38", "1e39", "01",
                                       "1.",   "12345678", "-0",   "4e-50", "9"};
    put(t, nums[rnd(sizeof nums / sizeof *nums)]);
}

static void gen_value(text *t, int depth);

static void gen_array(text *t, int depth, int width)
{
    put(t, "[");
    int n = (int)rnd((uint32_t)width + 1);
    for (int i = 0; i < n; i++) {
        if (i)
            put(t, rnd(4) ? "," : ", ");
        if (depth < 4 && rnd(3) == 0)
            gen_array(t, depth + 1, width);
        else if (rnd(12) == 0)
            gen_value(t, depth + 1);
        else
            gen_number(t);
    }
    put(t, "]");
}

static void gen_value(text *t, int depth)
{
    switch (rnd(depth > 3 ? 4 : 7)) {
    case 0: gen_number(t); break;
    case 1: {
        static const char *const strs[] = {"\"x\"", "\"[1,2]\"", "\"b64:AACAPw==\"", "\"\\\"]\"",
                                           "\"\\u0041\"", "\"\\ud83d\\ude00\"", "\"\""};
        put(t, strs[rnd(7)]);
        break;
    }
    case 2: put(t, rnd(2) ? "true" : "null"); break;
    case 3: gen_array(t, depth, 3); break;
    default: {
        static const char *const keys[] = {"\"k\"", "\"v\"", "\"q\"", "\"steps\"", "\"layer\"",
                                           "\"x\"", "\"st\\u0065ps\""};
        put(t, "{");
        int n = (int)rnd(4);
        for (int i = 0; i < n; i++) {
            if (i)
                put(t, ",");
            put(t, keys[rnd(7)]);
            put(t, rnd(3) ? ":" : " : ");
            if (rnd(2))
                gen_array(t, depth + 1, 4);
            else
                gen_value(t, depth + 1);
        }
        put(t, "}");
    }
    }
}

START_TEST(random_texts)
{
    static const char bytes[] = "[]{},:\"\\-0123456789.eE+ tnfu\x01\x7f";
    for (int iter = 0; iter < 20000; iter++) {
        text t = {0};
        if (rnd(2))
            gen_value(&t, 0);
        else {
            put(&t, "{\"k\":");
            gen_array(&t, 0, 6);
            put(&t, ",\"steps\":[");
            gen_value(&t, 2);
            put(&t, "]}");
        }
        int muts = iter % 3 == 0 ? 0 : (int)rnd(3) + 1;
        for (int m = 0; m < muts && t.n > 0; m++) {
            size_t at = rnd((uint32_t)t.n);
            switch (rnd(4)) {
            case 0:
                memmove(t.b + at, t.b + at + 1, t.n - at - 1);
                t.n--;
                break;
            case 1:
                t.b[at] = bytes[rnd(sizeof bytes - 1)];
                break;
            case 2:
                t.n = at;
                break;
            default:
                put(&t, " ");
                memmove(t.b + at + 1, t.b + at, t.n - at - 1);
                t.b[at] = bytes[rnd(sizeof bytes - 1)];
                break;
            }
        }
        differ(t.b ? t.b : "", t.n);
        free(t.b);
    }
    /* The random texts reached both outcomes and decoded arrays. */
    ck_assert_uint_gt(n_accepted, 1000);
    ck_assert_uint_gt(n_refused, 1000);
    ck_assert_uint_gt(n_decoded, 1000);
    ck_assert_uint_gt(n_shape_ok, 100);
    ck_assert_uint_gt(n_shape_refused, 100);
    ck_assert_uint_gt(n_b64, 10);
}
END_TEST

START_TEST(values_outside_tensors_are_capped)
{
    /* 3 values: the root, a placeholder, a number. */
    char body[] = "{\"k\":[1,2,3,4,5,6,7,8,9],\"x\":1}";
    kvd_json_doc doc;
    kvd_api_error err;
    ck_assert_int_eq(kvd_json_parse_step_text(body, strlen(body), 3, &doc, &err), 0);
    ck_assert_uint_eq(doc.n_tensors, 1);
    /* The text is left as it was (the tree is parsed from a copy without the array). */
    ck_assert_str_eq(body, "{\"k\":[1,2,3,4,5,6,7,8,9],\"x\":1}");
    kvd_json_doc_free(&doc);
    char body2[] = "{\"k\":[1,2,3,4,5,6,7,8,9],\"x\":1}";
    ck_assert_int_eq(kvd_json_parse_step_text(body2, strlen(body2), 2, &doc, &err), -1);
    ASSERT_ERR(err, 400, "", "body has 3 JSON values");
    ck_assert_ptr_null(doc.root);
    /* The root's "steps" is kept in the tree: its numbers count. */
    char body3[] = "{\"steps\":[1,2,3,4]}";
    ck_assert_int_eq(kvd_json_parse_step_text(body3, strlen(body3), 5, &doc, &err), -1);
    ASSERT_ERR(err, 400, "", "body has 6 JSON values");
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("api/json_text");
    TCase *tc = tcase_create("json_text");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, edge_cases);
    tcase_add_test(tc, random_texts);
    tcase_add_test(tc, values_outside_tensors_are_capped);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
