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

/* ---- api-internal -------------------------------------------------------- */

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
