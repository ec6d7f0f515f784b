/* api/json.h — JSON helpers shared by the body parsers (create, step, fork):
 * one whole-body parse (public: tests and handlers use it) and, for api/
 * sources only (kvd__api_json_*), typed optional fields, string enums and
 * the unknown/duplicate key check. Errors are 400s whose field is the path. */
#ifndef KVD_API_JSON_H
#define KVD_API_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>

#include "api/errors.h"

/* Parses a JSON body with cJSON_ParseWithOpts (thread-safe error position;
 * a body that is not one complete JSON object is a 400 saying where).
 * Returns the object (caller cJSON_Deletes) or NULL with err. */
cJSON *kvd_json_parse_object(const char *body, size_t len, kvd_api_error *err);

/* ---- step bodies: number arrays decoded from the text (api/json_text.c) --- */

/* Most dims a tensor may nest (api/wire.c refuses deeper). */
#define KVD_JSON_TENSOR_MAX_DIMS 16

/* What the first problem of a pre-decoded array was, in the order a walk
 * over its elements (api/wire.c) meets them. */
typedef enum {
    KVD_JSON_TENSOR_OK,
    KVD_JSON_TENSOR_DEEP,      /* nested deeper than KVD_JSON_TENSOR_MAX_DIMS */
    KVD_JSON_TENSOR_NOT_ARRAY, /* at idx[0..depth]: expected an array of `expected` */
    KVD_JSON_TENSOR_NOT_NUMBER,/* at idx[0..depth]: expected a number */
    KVD_JSON_TENSOR_NOT_FINITE,/* at idx[0..depth]: |value| beyond f32 */
    KVD_JSON_TENSOR_COUNT,     /* the array at idx[0..depth): `got` elements, not `expected` */
} kvd_json_tensor_error;

/* A JSON array value of a step body, decoded to f32 straight from the text
 * (no cJSON node per number). In the cJSON tree it is an empty array that
 * kvd_json_doc_tensor maps back to this. */
typedef struct kvd_json_tensor {
    const cJSON *node;    /* its placeholder in the tree */
    float *data;          /* count numbers in row-major order (NULL after an error) */
    size_t count;
    size_t nd;            /* dims from the first element at each depth */
    size_t dims[KVD_JSON_TENSOR_MAX_DIMS];
    kvd_json_tensor_error error;
    size_t depth;         /* where: idx[0..depth] (idx[0..depth) for COUNT) */
    size_t idx[KVD_JSON_TENSOR_MAX_DIMS];
    size_t expected, got;
    const char *type;     /* "a string", ... for NOT_ARRAY / NOT_NUMBER */
    double value;         /* for NOT_FINITE */
    size_t ordinal;       /* among the text's arrays in document order (internal) */
} kvd_json_tensor;

/* A "b64:..." tensor string of a step body, left in the body's text: its
 * base64 (after the prefix) is decoded from there (kvd_wire_decode_b64), never
 * copied into the tree, where it is an empty string kvd_json_doc_b64 maps
 * back to this. */
typedef struct kvd_json_b64 {
    const cJSON *node;    /* its placeholder in the tree */
    const char *text;     /* the base64 after "b64:", in the body */
    size_t len;
    size_t ordinal;       /* among the tree's strings in document order (internal) */
} kvd_json_b64;

/* A parsed step body: the cJSON tree of everything but its arrays' contents
 * and tensor strings, those arrays decoded, and where those strings are. */
typedef struct kvd_json_doc {
    cJSON *root;
    kvd_json_tensor *tensors;
    size_t n_tensors;
    kvd_json_b64 *b64;    /* point into the body: valid while it is */
    size_t n_b64;
} kvd_json_doc;

/* Parses a step body of len bytes (body[len] == '\0'; the body is not
 * changed, and must outlive the doc): every array that is an object member's
 * value (other than the root's "steps") or an element of the root's "steps"
 * is decoded to f32, and every "b64:" string without escapes that is the
 * value of a k, v, q, k1, k2, v1 or v2 member is located, before cJSON parses
 * the rest (a copy without them), so a number costs 4 bytes, not a cJSON
 * node, and base64 text is read once, when it is decoded. Syntax errors,
 * their byte offsets, leading zeros and the root type are reported exactly as
 * kvd_json_parse_object reports them. A text whose tree would hold more than
 * max_values cJSON values is refused (400) before any is allocated. Returns 0
 * (kvd_json_doc_free frees) or -1 with err (doc left empty). */
int kvd_json_parse_step_text(char *body, size_t len, size_t max_values, kvd_json_doc *doc,
                             kvd_api_error *err);
void kvd_json_doc_free(kvd_json_doc *doc);

/* The decoded array whose placeholder is item, or NULL (item is then an
 * ordinary cJSON value). doc may be NULL. */
kvd_json_tensor *kvd_json_doc_tensor(const kvd_json_doc *doc, const cJSON *item);

/* The tensor string whose placeholder is item, or NULL. doc may be NULL. */
const kvd_json_b64 *kvd_json_doc_b64(const kvd_json_doc *doc, const cJSON *item);

/* ---- api-internal -------------------------------------------------------- */

/* cJSON's allocations, seen (issue 11): kvd_api_create routes them through a
 * malloc that notes a failure in a thread-local flag, because cJSON reports
 * one as a syntax error (a parse) or not at all (cJSON_Add*ToObject returns
 * NULL and the member is silently missing). reset clears the flag before a
 * parse or a response is built; oom says whether an allocation failed since. */
void kvd__api_json_hooks_install(void);
void kvd__api_json_oom_reset(void);
bool kvd__api_json_oom(void);

/* The 400 for a text cJSON cannot parse, failing at byte offset off
 * (kvd_json_parse_object's message; api/json_text.c reports the same). */
void kvd__api_json_syntax_error(const char *body, size_t len, size_t off, kvd_api_error *err);

/* The 400 for a number with leading zeros ("0001") anywhere in a text that
 * is otherwise valid JSON: 0, or -1 with err naming its field. */
int kvd__api_json_refuse_leading_zeros(const char *t, size_t len, kvd_api_error *err);

/* "a string", "a number", "a boolean", "null", "an array", "an object" —
 * what an item is, for error messages. */
const char *kvd__api_json_type_name(const cJSON *item);

/* A 400 whose message is "<field>: <what>". Returns -1. */
int kvd__api_json_invalid(kvd_api_error *err, const char *field, const char *what);

/* Optional integer member `name` of obj (obj may be NULL; errors name
 * `path`) in min..max (max <= 2^53), or dflt when absent. Returns 0 or -1
 * with err. */
int kvd__api_json_get_uint(const cJSON *obj, const char *name, const char *path, uint64_t min,
                           uint64_t max, uint64_t dflt, uint64_t *out, kvd_api_error *err);
int kvd__api_json_get_u32(const cJSON *obj, const char *name, const char *path, uint32_t min,
                          uint32_t max, uint32_t dflt, uint32_t *out, kvd_api_error *err);

/* Optional string enum member: its value must be name_of(i) for some i < n
 * (*out = i), or dflt when absent. Returns 0 or -1 with err. */
int kvd__api_json_get_enum(const cJSON *obj, const char *name, const char *path,
                           const char *(*name_of)(int), int n, int dflt, int *out,
                           kvd_api_error *err);

/* Every member of obj is one of `allowed` (n <= 32), each at most once;
 * prefix goes before the key in the error's field ("cache." -> "cache.foo").
 * Returns 0 or -1 with err. */
int kvd__api_json_check_fields(const cJSON *obj, const char *prefix, const char *const *allowed,
                               size_t n, kvd_api_error *err);

/* Whether key is one of list[0..n). */
bool kvd__api_json_in_list(const char *key, const char *const *list, size_t n);

#endif
