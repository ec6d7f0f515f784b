/* tests/api/test_wire.c — api/wire.c: base64 of little-endian f32
 * (known vectors worked by hand, round trips, every rejection), decoding JSON
 * tensors (flat, nested, shape and finiteness errors) and encoding them. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "api/wire.h"
#include "tests/support/api_asserts.h"
#include "tests/support/check_main.h"
#include "tests/support/failing_alloc.h"

/* [rows, h, d] with names (messages say "kv_heads*head_dim = h*d"), and
 * without (messages give the row size alone). */
#define SH(h, d) (&(kvd_wire_shape){.heads = (h), .head_dim = (d), .heads_name = "kv_heads"})
#define Q(h, d) (&(kvd_wire_shape){.heads = (h), .head_dim = (d), .rows_name = "m_q", .heads_name = "heads"})
#define SH_ANON(h, d) (&(kvd_wire_shape){.heads = (h), .head_dim = (d)})

/* ---- base64 ---- */

static void check_encode(const float *x, size_t n, const char *want)
{
    char *s = kvd_wire_b64_encode_f32(x, n);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(s, want);
    free(s);
}

/* Worked by hand: 1.0f = 0x3f800000, little-endian bytes 00 00 80 3f.
 * 00 00 80 -> 000000 000000 000010 000000 -> "AACA"; 3f -> 001111 11(0000)
 * -> "Pw" + "==". 2.0f = 0x40000000 -> bytes 00 00 00 40. */
START_TEST(b64_known_vectors)
{
    const float one = 1.0f, mone = -1.0f, zero = 0.0f;
    check_encode(&one, 1, "b64:AACAPw==");
    check_encode(&mone, 1, "b64:AACAvw==");     /* bf: 101111 11 -> "vw" */
    check_encode(&zero, 1, "b64:AAAAAA==");
    const float two[2] = {1.0f, 2.0f};         /* 00 00 80 3f 00 00 00 40 */
    check_encode(two, 2, "b64:AACAPwAAAEA=");  /* 3f 00 00 -> "PwAA"; 00 40 -> "AEA=" */
    const float three[3] = {1.0f, 2.0f, 1.0f}; /* 12 bytes: no padding */
    check_encode(three, 3, "b64:AACAPwAAAEAAAIA/");
    check_encode(NULL, 0, "b64:");

    float *out = NULL;
    size_t n = 99;
    ck_assert_int_eq(kvd_wire_b64_decode_f32("AACAPwAAAEA=", 12, &out, &n), 0);
    ck_assert_uint_eq(n, 2);
    ck_assert(out[0] == 1.0f && out[1] == 2.0f);
    free(out);
    ck_assert_int_eq(kvd_wire_b64_decode_f32("AACAvw==", 8, &out, &n), 0);
    ck_assert_uint_eq(n, 1);
    ck_assert(out[0] == -1.0f);
    free(out);
    ck_assert_int_eq(kvd_wire_b64_decode_f32("AACAPwAAAEAAAIA/", 16, &out, &n), 0);
    ck_assert_uint_eq(n, 3);
    ck_assert(out[2] == 1.0f);
    free(out);
    out = (float *)&n; /* must be replaced */
    ck_assert_int_eq(kvd_wire_b64_decode_f32("", 0, &out, &n), 0);
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_null(out);
}
END_TEST

START_TEST(b64_round_trip_lengths)
{
    const float pool[9] = {0.0f, -0.0f, 1.5f, -3.25e-3f, FLT_MAX, -FLT_MAX, FLT_MIN,
                           1e-45f /* denormal */, 123456.789f};
    for (size_t n = 0; n <= 9; n++) {
        float x[9];
        for (size_t i = 0; i < n; i++)
            x[i] = pool[(i * 7 + n) % 9];
        char *s = kvd_wire_b64_encode_f32(x, n);
        ck_assert_ptr_nonnull(s);
        ck_assert(strncmp(s, "b64:", 4) == 0);
        size_t len = strlen(s) - 4;
        ck_assert_uint_eq(len, (n * 4 + 2) / 3 * 4);
        float *y = NULL;
        size_t m = 99;
        ck_assert_int_eq(kvd_wire_b64_decode_f32(s + 4, len, &y, &m), 0);
        ck_assert_uint_eq(m, n);
        if (n)
            ck_assert_int_eq(memcmp(x, y, n * sizeof(float)), 0); /* bit-exact, -0 too */
        free(y);
        free(s);
    }
}
END_TEST

static void check_reject(const char *text)
{
    float *out = (float *)0x1;
    size_t n = 77;
    ck_assert_msg(kvd_wire_b64_decode_f32(text, strlen(text), &out, &n) == -1, "accepted \"%s\"", text);
    ck_assert_uint_eq(n, 77); /* untouched */
    ck_assert_ptr_eq(out, (float *)0x1);
}

START_TEST(b64_rejections)
{
    check_reject("AAA");          /* length not a multiple of 4 */
    check_reject("AACAPw=");      /* 7 */
    check_reject("AACAPw");       /* no padding */
    check_reject("AAAA");         /* 3 bytes: not whole f32s */
    check_reject("AAAAAAAA");     /* 6 bytes */
    check_reject("AACAPwAA");     /* 6 bytes */
    check_reject("AAC*Pw==");     /* bad character */
    check_reject("AAC Pw==");     /* whitespace is not accepted */
    check_reject("AACAPw==\n");   /* trailing newline */
    check_reject("AACA\nPw=");
    check_reject("AAC-Pw==");     /* URL-safe alphabet is not accepted */
    check_reject("AAC_Pw==");
    check_reject("AA==AACA");     /* padding in the middle */
    check_reject("A===");         /* three '=' */
    check_reject("====");
    check_reject("AACAP===");
    check_reject("AACA=w==");
    check_reject("AACAPx==");     /* non-zero pad bits (x = 110001) */
    check_reject("AACAPwAAAEB=");  /* 'B' = 000001: pad bits set */
    check_reject("AACAPw=A");     /* '=' then data */
    const char nul[] = "AA\0APw==";
    float *out = NULL;
    size_t n = 77;
    ck_assert_int_eq(kvd_wire_b64_decode_f32(nul, 8, &out, &n), -1); /* NUL byte */
    ck_assert_int_eq(kvd_wire_b64_decode_f32("\xc3\xa9\xc3\xa9", 4, &out, &n), -1); /* non-ASCII */
    ck_assert_int_eq(kvd_wire_b64_decode_f32(NULL, 0, &out, &n), -1);
}
END_TEST

/* ---- decoding JSON tensors ---- */

static cJSON *float_array(size_t n, float base)
{
    cJSON *a = cJSON_CreateArray();
    for (size_t i = 0; i < n; i++)
        cJSON_AddItemToArray(a, cJSON_CreateNumber((double)(base + (float)i)));
    return a;
}

START_TEST(decode_flat)
{
    cJSON *a = float_array(12, 0.5f);
    float *out = NULL;
    size_t rows = 0;
    kvd_api_error err;
    ck_assert_int_eq(kvd_wire_decode(a, "k", SH(2, 2), 10, &out, &rows, &err), 0);
    ck_assert_uint_eq(rows, 3);
    for (size_t i = 0; i < 12; i++)
        ck_assert(out[i] == 0.5f + (float)i);
    free(out);
    cJSON_Delete(a);
}
END_TEST

START_TEST(decode_nested_row_major)
{
    /* [2][2][3]: numpy's tolist() of a [m][kv_heads][head_dim] tensor. */
    cJSON *a = parse("[[[1,2,3],[4,5,6]],[[7,8,9],[10,11,12]]]");
    float *out = NULL;
    size_t rows = 0;
    kvd_api_error err;
    ck_assert_int_eq(kvd_wire_decode(a, "k", SH(2, 3), 10, &out, &rows,
                                       &err), 0);
    ck_assert_uint_eq(rows, 2);
    for (int i = 0; i < 12; i++)
        ck_assert(out[i] == (float)(i + 1));
    free(out);
    cJSON_Delete(a);
    /* [m][row] works too, and a 1-row nest. */
    a = parse("[[1,2,3,4,5,6]]");
    ck_assert_int_eq(kvd_wire_decode(a, "k", SH_ANON(2, 3), 10, &out, &rows, &err), 0);
    ck_assert_uint_eq(rows, 1);
    ck_assert(out[5] == 6.0f);
    free(out);
    cJSON_Delete(a);
}
END_TEST

START_TEST(decode_empty_is_zero_rows)
{
    const char *empties[] = {"[]", "\"b64:\""};
    for (size_t i = 0; i < sizeof empties / sizeof *empties; i++) {
        cJSON *a = parse(empties[i]);
        float *out = (float *)0x1;
        size_t rows = 9;
        kvd_api_error err;
        ck_assert_int_eq(kvd_wire_decode(a, "q", SH(2, 64), 10, &out, &rows, &err), 0);
        ck_assert_uint_eq(rows, 0);
        ck_assert_ptr_null(out);
        cJSON_Delete(a);
    }
}
END_TEST

/* The shape rules: flat any multiple of the row; nested exactly
 * [m, heads, head_dim] or [m, heads*head_dim]; nothing else. */
static void shape_ok(const char *json, size_t want_rows)
{
    cJSON *a = parse(json);
    float *out = NULL;
    size_t rows = 9;
    kvd_api_error err;
    int rc = kvd_wire_decode(a, "k", SH(2, 3), 10, &out, &rows, &err);
    ck_assert_msg(rc == 0, "%s: %s", json, err.message);
    ck_assert_uint_eq(rows, want_rows);
    for (size_t i = 0; i < rows * 6; i++)
        ck_assert(out[i] == (float)(i + 1));
    free(out);
    cJSON_Delete(a);
}

static void shape_bad(const char *json, const char *want_msg)
{
    cJSON *a = parse(json);
    float *out = (float *)0x1;
    size_t rows = 9;
    kvd_api_error err;
    ck_assert_int_eq(kvd_wire_decode(a, "k", SH(2, 3), 10, &out, &rows, &err), -1);
    ck_assert_int_eq(err.status, 400);
    ck_assert_str_eq(err.field, "k");
    ck_assert_str_eq(err.message, want_msg);
    ck_assert_ptr_eq(out, (float *)0x1);
    ck_assert_uint_eq(rows, 9);
    cJSON_Delete(a);
}

#define NEST_HELP " (a nested tensor is [m, kv_heads, head_dim] or [m, kv_heads*head_dim] = [m, 6])"

START_TEST(decode_nested_shape_rules)
{
    shape_ok("[1,2,3,4,5,6,7,8,9,10,11,12]", 2);           /* flat */
    shape_ok("[[[1,2,3],[4,5,6]],[[7,8,9],[10,11,12]]]", 2); /* [2, 2, 3] */
    shape_ok("[[1,2,3,4,5,6],[7,8,9,10,11,12]]", 2);       /* [2, 6] */
    shape_ok("[[[1,2,3],[4,5,6]]]", 1);
    /* Three query-head rows sent as k: read flat they would be 1.5 tokens;
     * [1, 3, 2] or [2, 3, 2] (the head count of q) is never more tokens. */
    shape_bad("[[[1,2],[3,4],[5,6]]]", "k: expected [m, 2, 3], got [1, 3, 2]" NEST_HELP);
    shape_bad("[[[1,2,3],[4,5,6],[7,8,9],[10,11,12]]]",
              "k: expected [m, 2, 3], got [1, 4, 3]" NEST_HELP);
    shape_bad("[[1,2,3],[4,5,6]]", "k: expected [m, 2, 3], got [2, 3]" NEST_HELP);
    shape_bad("[[1,2,3,4,5,6,7,8,9,10,11,12]]", "k: expected [m, 2, 3], got [1, 12]" NEST_HELP);
    shape_bad("[[[[1,2,3],[4,5,6]]]]", "k: expected [m, 2, 3], got [1, 1, 2, 3]" NEST_HELP);
    shape_bad("[[]]", "k: expected [m, 2, 3], got [1, 0]" NEST_HELP);
    shape_bad("[[],[]]", "k: expected [m, 2, 3], got [2, 0]" NEST_HELP);
    shape_bad("[[[]]]", "k: expected [m, 2, 3], got [1, 1, 0]" NEST_HELP);
    /* Rectangularity and finiteness are reported first, as before. */
    shape_bad("[[[1,2],[3,4],[5]]]",
              "k[0][2]: expected 2 elements (the tensor must be rectangular), got 1");
    /* q names its own dims; the message of the issue, for heads 2, head_dim 64. */
    cJSON *a = cJSON_CreateArray();
    for (int t = 0; t < 3; t++) {
        cJSON *h = cJSON_CreateArray();
        for (int i = 0; i < 8; i++)
            cJSON_AddItemToArray(h, float_array(64, 0.0f));
        cJSON_AddItemToArray(a, h);
    }
    float *out = NULL;
    size_t rows = 0;
    kvd_api_error err;
    ck_assert_int_eq(kvd_wire_decode(a, "k", SH(2, 64), 10, &out, &rows, &err), -1);
    ASSERT_ERR(err, 400, "k", "k: expected [m, 2, 64], got [3, 8, 64]");
    ck_assert_int_eq(kvd_wire_decode(a, "q", Q(4, 64), 10, &out, &rows, &err), -1);
    ASSERT_ERR(err, 400, "q", "q: expected [m_q, 4, 64], got [3, 8, 64] (a nested tensor is "
                              "[m_q, heads, head_dim] or [m_q, heads*head_dim] = [m_q, 256])");
    ck_assert_int_eq(kvd_wire_decode(a, "q", Q(8, 64), 10, &out, &rows, &err), 0);
    ck_assert_uint_eq(rows, 3);
    free(out);
    cJSON_Delete(a);
}
END_TEST

static void decode_err(const char *json, size_t row, size_t max_rows, int status,
                       const char *want_msg_part)
{
    cJSON *a = parse(json);
    float *out = (float *)0x1;
    size_t rows = 9;
    kvd_api_error err;
    ck_assert_int_eq(kvd_wire_decode(a, "k", SH(1, row), max_rows, &out,
                                       &rows, &err), -1);
    ASSERT_ERR(err, status, "k", want_msg_part);
    ck_assert_ptr_eq(out, (float *)0x1); /* untouched on error */
    ck_assert_uint_eq(rows, 9);
    cJSON_Delete(a);
}

START_TEST(decode_shape_errors)
{
    /* The multiple-of-row message names expected and got. */
    cJSON *a = float_array(100, 0.0f);
    float *out = NULL;
    size_t rows = 0;
    kvd_api_error err;
    ck_assert_int_eq(kvd_wire_decode(a, "k", SH(2, 64), 1000, &out,
                                       &rows, &err), -1);
    ASSERT_ERR(err, 400, "k", "x");
    ck_assert_str_eq(err.message,
                     "k: expected a multiple of kv_heads*head_dim = 2*64 = 128 numbers, got 100");
    ck_assert_int_eq(kvd_wire_decode(a, "k", SH_ANON(2, 64), 1000, &out, &rows, &err), -1);
    ck_assert_str_eq(err.message, "k: expected a multiple of 128 numbers, got 100");
    cJSON_Delete(a);

    decode_err("[1,2,3]", 2, 10, 400, "expected a multiple of kv_heads*head_dim = 1*2 = 2");
    decode_err("[1,2,3,4,5,6]", 2, 2, 400, "3 rows of 2 numbers, more than the limit of 2");
    decode_err("[[1,2],[3]]", 1, 10, 400, "k[1]: expected 2 elements");
    decode_err("[[1,2],[3,4,5]]", 1, 10, 400, "k[1]: expected 2 elements");
    decode_err("[[1,2],3]", 1, 10, 400, "k[1]: expected an array of 2 elements");
    decode_err("[1,[2]]", 1, 10, 400, "k[1]: expected a number, got an array");
    decode_err("[[[1,2]],[[1],[2]]]", 1, 10, 400, "k[1][0]: expected 2 elements");
    decode_err("[[[1,2]],[[1,2],[3,4]]]", 1, 10, 400, "k[1]: expected 1 elements");
    decode_err("[[[1,2]],[[1,[2]]]]", 1, 10, 400, "k[1][0][1]: expected a number");
    decode_err("[[],[1,2]]", 1, 10, 400, "k[1]: expected 0 elements");
    decode_err("[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]", 1, 10, 400, "nested deeper than 16");
    decode_err("5", 2, 10, 400, "k: expected an array of numbers or a \"b64:...\" string, "
                                "got a number");
    decode_err("{}", 2, 10, 400, "got an object");
    decode_err("null", 2, 10, 400, "got null");
    decode_err("true", 2, 10, 400, "got a boolean");
    decode_err("[1,2]", 0, 10, 500, "row size 0"); /* a bad shape is our bug: 500 */

    ck_assert_int_eq(kvd_wire_decode(NULL, "v", SH(1, 2), 10, &out, &rows, &err), -1);
    ASSERT_ERR(err, 400, "v", "v: missing");
}
END_TEST

START_TEST(decode_non_number_elements)
{
    decode_err("[1,2,3,\"4\"]", 2, 10, 400, "k[3]: expected a number, got a string");
    decode_err("[1,null]", 2, 10, 400, "k[1]: expected a number, got null");
    decode_err("[true,1]", 2, 10, 400, "k[0]: expected a number, got a boolean");
    decode_err("[1,{}]", 2, 10, 400, "k[1]: expected a number, got an object");
    decode_err("[[1,\"x\"]]", 2, 10, 400, "k[0][1]: expected a number, got a string");
}
END_TEST

START_TEST(decode_non_finite)
{
    /* 1e39 is a finite double but beyond the f32 range. */
    cJSON *a = float_array(20, 0.0f);
    cJSON_ReplaceItemInArray(a, 17, cJSON_CreateNumber(1e39));
    float *out = NULL;
    size_t rows = 0;
    kvd_api_error err;
    ck_assert_int_eq(kvd_wire_decode(a, "k", SH(1, 2), 100, &out, &rows, &err), -1);
    ASSERT_ERR(err, 400, "k", "k[17]: not a finite f32");
    cJSON_ReplaceItemInArray(a, 17, cJSON_CreateNumber(-3.5e38));
    ck_assert_int_eq(kvd_wire_decode(a, "k", SH(1, 2), 100, &out, &rows, &err), -1);
    ASSERT_ERR(err, 400, "k", "k[17]: not a finite f32");
    cJSON_ReplaceItemInArray(a, 17, cJSON_CreateNumber(INFINITY));
    ck_assert_int_eq(kvd_wire_decode(a, "k", SH(1, 2), 100, &out, &rows, &err), -1);
    ASSERT_ERR(err, 400, "k", "k[17]: not a finite f32");
    cJSON_ReplaceItemInArray(a, 3, cJSON_CreateNumber(NAN));
    ck_assert_int_eq(kvd_wire_decode(a, "steps[2].k", SH(1, 2), 100, &out, &rows, &err), -1);
    ASSERT_ERR(err, 400, "steps[2].k", "steps[2].k[3]: not a finite f32");
    /* The f32 extremes themselves are fine. */
    cJSON_ReplaceItemInArray(a, 3, cJSON_CreateNumber((double)FLT_MAX));
    cJSON_ReplaceItemInArray(a, 17, cJSON_CreateNumber(-(double)FLT_MAX));
    cJSON_ReplaceItemInArray(a, 18, cJSON_CreateNumber(1e-50)); /* underflows to 0: fine */
    ck_assert_int_eq(kvd_wire_decode(a, "k", SH(1, 2), 100, &out, &rows, &err), 0);
    ck_assert(out[3] == FLT_MAX && out[17] == -FLT_MAX && out[18] == 0.0f);
    free(out);
    cJSON_Delete(a);
    /* Parsed from text: "1e400" becomes infinity in cJSON. */
    decode_err("[1,1e400]", 2, 10, 400, "k[1]: not a finite f32");
    decode_err("[[1,2],[3,1e39]]", 2, 10, 400, "k[1][1]: not a finite f32");
}
END_TEST

static cJSON *b64_item(const float *x, size_t n)
{
    char *s = kvd_wire_b64_encode_f32(x, n);
    cJSON *j = cJSON_CreateString(s);
    free(s);
    return j;
}

START_TEST(decode_b64)
{
    const float x[6] = {1, 2, 3, 4, 5, 6};
    cJSON *j = b64_item(x, 6);
    float *out = NULL;
    size_t rows = 0;
    kvd_api_error err;
    ck_assert_int_eq(kvd_wire_decode(j, "q", Q(1, 3), 10, &out, &rows, &err), 0);
    ck_assert_uint_eq(rows, 2);
    ck_assert_int_eq(memcmp(out, x, sizeof x), 0);
    free(out);
    /* Not a multiple of the row; over the row limit. */
    ck_assert_int_eq(kvd_wire_decode(j, "q", Q(1, 4), 10, &out, &rows, &err), -1);
    ASSERT_ERR(err, 400, "q", "q: expected a multiple of heads*head_dim = 1*4 = 4 numbers, got 6");
    ck_assert_int_eq(kvd_wire_decode(j, "q", SH(1, 1), 5, &out, &rows, &err), -1);
    ASSERT_ERR(err, 400, "q", "6 rows of 1 numbers, more than the limit of 5");
    cJSON_Delete(j);

    /* Non-finite values inside base64. */
    float y[3] = {1, NAN, 2};
    j = b64_item(y, 3);
    ck_assert_int_eq(kvd_wire_decode(j, "k", SH(1, 1), 10, &out, &rows, &err), -1);
    ASSERT_ERR(err, 400, "k", "k[1]: not a finite f32");
    cJSON_Delete(j);
    y[1] = 0;
    y[2] = -INFINITY;
    j = b64_item(y, 3);
    ck_assert_int_eq(kvd_wire_decode(j, "k", SH(1, 1), 10, &out, &rows, &err), -1);
    ASSERT_ERR(err, 400, "k", "k[2]: not a finite f32");
    cJSON_Delete(j);

    decode_err("\"AACAPw==\"", 1, 10, 400, "must start with \"b64:\"");
    decode_err("\"B64:AACAPw==\"", 1, 10, 400, "must start with \"b64:\"");
    decode_err("\"\"", 1, 10, 400, "must start with \"b64:\"");
    decode_err("\"b64:AACAPw=\"", 1, 10, 400, "not a multiple of 4");
    decode_err("\"b64:AAC*Pw==\"", 1, 10, 400, "invalid base64 character 0x2a at offset 3");
    decode_err("\"b64:AA==AACA\"", 1, 10, 400, "padding");
    decode_err("\"b64:AACAPx==\"", 1, 10, 400, "padding bits");
    decode_err("\"b64:AAAA\"", 1, 10, 400, "3 bytes, not a whole number of f32");
    decode_err("\"b64: AACAPw=\"", 1, 10, 400, "invalid base64 character 0x20");
}
END_TEST

/* Text breaking several rules reports the first in the decoder's order: a
 * character outside the alphabet (or '=' before the end) wins over the byte
 * count and the pad bits, wherever it is; the string form read in place
 * (kvd_wire_decode_b64) says the same as the cJSON string. */
START_TEST(decode_b64_first_rule_broken_wins)
{
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"AAA*", "invalid base64 character 0x2a at offset 3"},          /* and 3 bytes */
        {"A*A=", "invalid base64 character 0x2a at offset 1"},          /* and 2 bytes */
        {"AACAP*==", "invalid base64 character 0x2a at offset 5"},      /* and pad bits */
        {"AACAPw==AAAA", "base64 padding '=' at offset 6 is not at the end"},
        {"AACAPwAAAEAA#EBA", "invalid base64 character 0x23 at offset 12"}, /* deep in a long one */
        {"AACAPx==", "padding bits at offset 5 are not zero"},
        {"AAAAAA==", "4 bytes"},                                        /* valid: one f32 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char json[64];
        snprintf(json, sizeof json, "\"b64:%s\"", cases[i].text);
        cJSON *a = parse(json);
        float *o1 = NULL, *o2 = NULL;
        size_t r1 = 0, r2 = 0;
        kvd_api_error e1, e2;
        const int rc1 = kvd_wire_decode(a, "k", SH(1, 1), 10, &o1, &r1, &e1);
        const int rc2 = kvd_wire_decode_b64(cases[i].text, strlen(cases[i].text), "k", SH(1, 1), 10, &o2, &r2, &e2);
        ck_assert_int_eq(rc1, rc2);
        if (rc1 == 0) { /* the last case */
            ck_assert_uint_eq(r1, 1);
            ck_assert_uint_eq(r2, 1);
            ck_assert(memcmp(o1, o2, sizeof *o1) == 0 && o1[0] == 0.0f);
        } else {
            ASSERT_ERR(e1, 400, "k", cases[i].want);
            ck_assert_str_eq(e1.message, e2.message);
        }
        free(o1);
        free(o2);
        cJSON_Delete(a);
    }
}
END_TEST

/* ---- encoding ---- */

START_TEST(encode_json_and_b64)
{
    const float x[4] = {1.0f, -0.5f, 0.1f, 3.0e38f};
    cJSON *a = kvd_wire_encode(x, 4, KVD_WIRE_ENCODING_JSON);
    ck_assert(cJSON_IsArray(a));
    ck_assert_int_eq(cJSON_GetArraySize(a), 4);
    char *text = cJSON_PrintUnformatted(a);
    ck_assert_str_eq(text, "[1,-0.5,0.100000001,3.00000001e+38]");
    /* What is printed decodes back to the same floats, bit for bit. */
    cJSON *back = cJSON_Parse(text);
    float *out = NULL;
    size_t rows = 0;
    kvd_api_error err;
    ck_assert_int_eq(kvd_wire_decode(back, "o", SH(1, 1), 10, &out, &rows, &err), 0);
    ck_assert_uint_eq(rows, 4);
    ck_assert_int_eq(memcmp(out, x, sizeof x), 0);
    free(out);
    cJSON_Delete(back);
    cJSON_free(text);
    cJSON_Delete(a);

    /* FLT_MAX's 9-digit decimal is above FLT_MAX: it must still decode. */
    const float big[2] = {FLT_MAX, -FLT_MAX};
    a = kvd_wire_encode(big, 2, KVD_WIRE_ENCODING_JSON);
    text = cJSON_PrintUnformatted(a);
    back = cJSON_Parse(text);
    ck_assert_int_eq(kvd_wire_decode(back, "o", SH(1, 1), 10, &out, &rows, &err), 0);
    ck_assert(out[0] == FLT_MAX && out[1] == -FLT_MAX);
    ck_assert_str_eq(text, "[3.40282346e+38,-3.40282346e+38]");
    free(out);
    cJSON_Delete(back);
    cJSON_free(text);
    cJSON_Delete(a);

    a = kvd_wire_encode(x, 1, KVD_WIRE_ENCODING_B64);
    ck_assert(cJSON_IsString(a));
    ck_assert_str_eq(a->valuestring, "b64:AACAPw==");
    cJSON_Delete(a);

    a = kvd_wire_encode(NULL, 0, KVD_WIRE_ENCODING_JSON);
    text = cJSON_PrintUnformatted(a);
    ck_assert_str_eq(text, "[]");
    cJSON_free(text);
    cJSON_Delete(a);
    a = kvd_wire_encode(NULL, 0, KVD_WIRE_ENCODING_B64);
    ck_assert_str_eq(a->valuestring, "b64:");
    cJSON_Delete(a);
}
END_TEST

START_TEST(encode_round_trip_random)
{
    /* A fixed LCG: reproducible bit patterns, finite ones only. */
    uint32_t state = 12345;
    float x[257];
    for (size_t i = 0; i < 257; i++) {
        uint32_t u;
        do {
            state = state * 1664525u + 1013904223u;
            u = state;
            memcpy(&x[i], &u, sizeof u);
        } while (!isfinite(x[i]));
    }
    for (int enc = 0; enc < 2; enc++) {
        cJSON *a = kvd_wire_encode(x, 257, (kvd_wire_encoding)enc);
        char *text = cJSON_PrintUnformatted(a);
        cJSON *back = cJSON_Parse(text);
        float *out = NULL;
        size_t rows = 0;
        kvd_api_error err;
        ck_assert_int_eq(kvd_wire_decode(back, "o", SH(1, 257), 1, &out, &rows, &err), 0);
        ck_assert_uint_eq(rows, 1);
        for (size_t i = 0; i < 257; i++)
            ck_assert_msg(memcmp(&out[i], &x[i], 4) == 0 || (x[i] == 0 && out[i] == 0),
                          "enc %d i %zu: %.9g -> %.9g", enc, i, (double)x[i], (double)out[i]);
        free(out);
        cJSON_Delete(back);
        cJSON_free(text);
        cJSON_Delete(a);
    }
}
END_TEST

START_TEST(encode_allocation_failure_is_null)
{
    const float x[5] = {1, 2, 3, 4, 5};
    for (int enc = 0; enc < 2; enc++) {
        failing_alloc_install();
        cJSON *a = NULL;
        int failures = 0;
        for (int budget = 0; budget < 100 && !a; budget++) {
            failing_alloc_budget(budget);
            a = kvd_wire_encode(x, 5, (kvd_wire_encoding)enc);
            failures += a == NULL;
        }
        failing_alloc_uninstall();
        ck_assert_ptr_nonnull(a);
        ck_assert_int_gt(failures, 0);
        cJSON_Delete(a);
    }
}
END_TEST

/* The response writer (api/step.c renders with it): every finite f32 bit
 * pattern tried reads back as the same f32, in JSON and b64, and the text
 * matches what kvd_wire_encode + cJSON print for ordinary values. */
START_TEST(buf_tensor_round_trip)
{
    uint32_t state = 777;
    float x[1024];
    for (size_t i = 0; i < 1024; i++) {
        uint32_t u;
        do {
            state = state * 1664525u + 1013904223u;
            u = state;
            memcpy(&x[i], &u, sizeof u);
        } while (!isfinite(x[i]));
    }
    x[0] = FLT_MAX, x[1] = -FLT_MAX, x[2] = -0.0f, x[3] = 12345.0f, x[4] = -7.0f, x[5] = FLT_MIN;
    x[6] = 1e-45f, x[7] = 0.1f, x[8] = 16777216.0f, x[9] = -3.0e38f;
    for (int enc = 0; enc < 2; enc++) {
        kvd_wire_buf b = {0};
        kvd_wire_buf_put(&b, "{\"o\":", 5);
        kvd_wire_buf_tensor(&b, x, 1024, (kvd_wire_encoding)enc);
        kvd_wire_buf_put(&b, "}", 1);
        ck_assert(!b.failed);
        ck_assert_uint_eq(strlen(b.p), b.len);
        cJSON *back = cJSON_Parse(b.p);
        ck_assert_ptr_nonnull(back);
        float *out = NULL;
        size_t rows = 0;
        kvd_api_error err;
        ck_assert_int_eq(kvd_wire_decode(cJSON_GetObjectItem(back, "o"), "o", SH(1, 1024), 1, &out, &rows, &err), 0);
        for (size_t i = 0; i < 1024; i++)
            ck_assert_msg(memcmp(&out[i], &x[i], 4) == 0, "enc %d i %zu: %.9g -> %.9g", enc, i, (double)x[i],
                          (double)out[i]);
        free(out);
        cJSON_Delete(back);
        kvd_wire_buf_free(&b);
    }
    const float y[5] = {1.0f, -0.5f, 0.1f, 3.0e38f, FLT_MAX};
    kvd_wire_buf b = {0};
    kvd_wire_buf_tensor(&b, y, 5, KVD_WIRE_ENCODING_JSON);
    ck_assert_str_eq(b.p, "[1,-0.5,0.100000001,3.00000001e+38,3.40282346e+38]");
    kvd_wire_buf_free(&b);
    kvd_wire_buf_tensor(&b, y, 1, KVD_WIRE_ENCODING_B64);
    ck_assert_str_eq(b.p, "\"b64:AACAPw==\"");
    kvd_wire_buf_size(&b, 1234567890123u);
    kvd_wire_buf_put(&b, " ", 1);
    kvd_wire_buf_double(&b, 0.1);
    kvd_wire_buf_put(&b, " ", 1);
    kvd_wire_buf_double(&b, INFINITY);
    ck_assert_str_eq(b.p, "\"b64:AACAPw==\"1234567890123 0.1 null");
    kvd_wire_buf_free(&b);
    kvd_wire_buf_tensor(&b, NULL, 0, KVD_WIRE_ENCODING_JSON);
    ck_assert_str_eq(b.p, "[]");
    kvd_wire_buf_free(&b);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("api/wire");
    TCase *tc = tcase_create("wire");
    tcase_add_test(tc, b64_known_vectors);
    tcase_add_test(tc, b64_round_trip_lengths);
    tcase_add_test(tc, b64_rejections);
    tcase_add_test(tc, decode_flat);
    tcase_add_test(tc, decode_nested_row_major);
    tcase_add_test(tc, decode_empty_is_zero_rows);
    tcase_add_test(tc, decode_nested_shape_rules);
    tcase_add_test(tc, decode_shape_errors);
    tcase_add_test(tc, decode_non_number_elements);
    tcase_add_test(tc, decode_non_finite);
    tcase_add_test(tc, decode_b64);
    tcase_add_test(tc, decode_b64_first_rule_broken_wins);
    tcase_add_test(tc, encode_json_and_b64);
    tcase_add_test(tc, encode_round_trip_random);
    tcase_add_test(tc, encode_allocation_failure_is_null);
    tcase_add_test(tc, buf_tensor_round_trip);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
