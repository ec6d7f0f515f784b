/* tests/fuzz/fuzz_wire.c — b64 and number parsing (api/wire.c, api/json_text.c).
 * b64: the input's bytes as f32s encode and decode back to the same bytes
 * (NaN payloads too), and input accepted as base64 text decodes, re-encodes
 * and decodes to the same floats. Numbers, differentially: the step-body
 * pre-pass (kvd_json_parse_step_text, its own number scanner and grammar)
 * against cJSON on the same text — the input itself and the input as an
 * array's contents ({"k":[<input>]}). Both must accept the same texts with
 * the same error (kvd_json_parse_object's); where both accept, the trees
 * must match, and each decoded array must hold exactly the f32 of cJSON's
 * numbers (when it decoded without error; a flat all-finite array must). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "api/json.h"
#include "api/wire.h"
#include "tests/fuzz/support.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    kvd_fuzz_quiet();
    return 0;
}

static void b64_round_trip(const uint8_t *data, size_t size)
{
    const size_t n = size / sizeof(float);
    float *x = malloc(n * sizeof *x + 1);
    KVD_FUZZ_CHECK(x != NULL, "out of memory");
    memcpy(x, data, n * sizeof *x);
    char *enc = kvd_wire_b64_encode_f32(x, n);
    KVD_FUZZ_CHECK(enc && strncmp(enc, "b64:", 4) == 0, "encode");
    float *y = NULL;
    size_t m = SIZE_MAX;
    KVD_FUZZ_CHECK(kvd_wire_b64_decode_f32(enc + 4, strlen(enc + 4), &y, &m) == 0,
                   "its own encoding refused: %s", enc);
    KVD_FUZZ_CHECK(m == n && (n == 0 || memcmp(x, y, n * sizeof *x) == 0), "round trip changed %zu floats",
                   n);
    free(enc);
    free(y);
    free(x);

    /* The input as base64 text. */
    float *z = NULL;
    size_t k = SIZE_MAX;
    if (kvd_wire_b64_decode_f32((const char *)data, size, &z, &k) != 0) {
        KVD_FUZZ_CHECK(k == SIZE_MAX, "a refusal set *n");
        return;
    }
    KVD_FUZZ_CHECK(k * 4 <= size, "%zu floats out of %zu characters", k, size);
    enc = kvd_wire_b64_encode_f32(z, k);
    KVD_FUZZ_CHECK(enc != NULL, "encode");
    float *w = NULL;
    KVD_FUZZ_CHECK(kvd_wire_b64_decode_f32(enc + 4, strlen(enc + 4), &w, &m) == 0, "re-decode");
    KVD_FUZZ_CHECK(m == k && (k == 0 || memcmp(z, w, k * sizeof *z) == 0), "re-decode differs");
    free(enc);
    free(w);
    free(z);
}

/* Leaves of a cJSON subtree in row-major order; false if a leaf is not a
 * number. */
static bool flatten(const cJSON *item, float *out, size_t cap, size_t *n)
{
    if (cJSON_IsNumber(item)) {
        if (*n < cap)
            out[*n] = (float)item->valuedouble;
        ++*n;
        return true;
    }
    if (!cJSON_IsArray(item))
        return false;
    for (const cJSON *c = item->child; c; c = c->next)
        if (!flatten(c, out, cap, n))
            return false;
    return true;
}

static bool flat_finite_numbers(const cJSON *arr)
{
    for (const cJSON *c = arr->child; c; c = c->next)
        if (!cJSON_IsNumber(c) || !isfinite((float)c->valuedouble))
            return false;
    return true;
}

static void same_tensor(const kvd_json_tensor *t, const cJSON *full)
{
    KVD_FUZZ_CHECK(cJSON_IsArray(full), "a decoded array is not an array in cJSON's tree");
    if (t->error != KVD_JSON_TENSOR_OK) {
        KVD_FUZZ_CHECK(!flat_finite_numbers(full), "a flat finite array failed to decode (%d)",
                       (int)t->error);
        return;
    }
    size_t n = 0;
    float *v = malloc(t->count * sizeof *v + 1);
    KVD_FUZZ_CHECK(v != NULL, "out of memory");
    KVD_FUZZ_CHECK(flatten(full, v, t->count, &n), "decoded array has non-number leaves in cJSON");
    KVD_FUZZ_CHECK(n == t->count, "decoded %zu numbers, cJSON has %zu", t->count, n);
    for (size_t i = 0; i < n; i++)
        KVD_FUZZ_CHECK(memcmp(&v[i], &t->data[i], sizeof v[i]) == 0, "number %zu: %.9g vs cJSON %.9g",
                       i, (double)t->data[i], (double)v[i]);
    free(v);
}

/* The pre-pass's tree (arrays as placeholders) against cJSON's full tree. */
static void same_tree(const kvd_json_doc *doc, const cJSON *a, const cJSON *b)
{
    for (; a || b; a = a->next, b = b->next) {
        KVD_FUZZ_CHECK(a && b, "trees differ in length");
        KVD_FUZZ_CHECK((a->string == NULL) == (b->string == NULL) &&
                           (!a->string || strcmp(a->string, b->string) == 0),
                       "keys differ");
        const kvd_json_tensor *t = kvd_json_doc_tensor(doc, a);
        if (t) {
            same_tensor(t, b);
            continue;
        }
        const kvd_json_b64 *s = kvd_json_doc_b64(doc, a); /* left in the text */
        if (s) {
            KVD_FUZZ_CHECK(cJSON_IsString(b) && strncmp(b->valuestring, "b64:", 4) == 0 &&
                               strlen(b->valuestring + 4) == s->len &&
                               memcmp(b->valuestring + 4, s->text, s->len) == 0,
                           "b64 string differs from cJSON's");
            continue;
        }
        KVD_FUZZ_CHECK((a->type & 0xff) == (b->type & 0xff), "types differ: %d vs %d", a->type,
                       b->type);
        if (cJSON_IsNumber(a))
            KVD_FUZZ_CHECK(memcmp(&a->valuedouble, &b->valuedouble, sizeof(double)) == 0,
                           "numbers differ");
        if (cJSON_IsString(a))
            KVD_FUZZ_CHECK(strcmp(a->valuestring, b->valuestring) == 0, "strings differ");
        same_tree(doc, a->child, b->child);
    }
}

static void differential(const char *text, size_t len)
{
    char *mine = malloc(len + 1);
    KVD_FUZZ_CHECK(mine != NULL, "out of memory");
    memcpy(mine, text, len);
    mine[len] = '\0';
    kvd_json_doc doc;
    kvd_api_error e1, e2;
    char *orig = malloc(len + 1); /* both parsers read the NUL after the text */
    KVD_FUZZ_CHECK(orig != NULL, "out of memory");
    memcpy(orig, text, len);
    orig[len] = '\0';
    const int rc = kvd_json_parse_step_text(mine, len, SIZE_MAX, &doc, &e1);
    cJSON *full = kvd_json_parse_object(orig, len, &e2);
    if (rc != 0) {
        KVD_FUZZ_CHECK(e1.status == 400, "pre-pass: %d %s", e1.status, e1.message);
        KVD_FUZZ_CHECK(full == NULL, "pre-pass refused what cJSON accepts: %s", e1.message);
        KVD_FUZZ_CHECK(strcmp(e1.message, e2.message) == 0, "errors differ: '%s' vs '%s'",
                       e1.message, e2.message);
    } else {
        KVD_FUZZ_CHECK(full != NULL, "pre-pass accepted what cJSON refuses: %s", e2.message);
        same_tree(&doc, doc.root, full);
        kvd_json_doc_free(&doc);
    }
    cJSON_Delete(full);
    free(orig);
    free(mine);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    b64_round_trip(data, size);
    differential((const char *)data, size);
    char *wrapped = malloc(size + 16);
    KVD_FUZZ_CHECK(wrapped != NULL, "out of memory");
    memcpy(wrapped, "{\"k\":[", 6);
    memcpy(wrapped + 6, data, size);
    memcpy(wrapped + 6 + size, "]}", 2);
    differential(wrapped, size + 8);
    free(wrapped);
    return 0;
}
