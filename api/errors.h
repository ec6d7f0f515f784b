/* api/errors.h — the one error shape of the HTTP API (DESIGN.md §3):
 *   {"error": {"code": "invalid_argument", "message": "...", "field": "k"}}
 * A kvd_api_error is filled where the problem is found and rendered once. */
#ifndef KVD_API_ERRORS_H
#define KVD_API_ERRORS_H

#include <stddef.h>

typedef struct kvd_api_error {
    int status;          /* HTTP status: 400, 401, 404, 405, 409, 413, 415, 429, 503 */
    const char *code;    /* static string, e.g. "invalid_argument" */
    char field[96];      /* offending field ("k", "cache.dtype", "steps[1].q"); "" if none */
    char message[384];
} kvd_api_error;

/* Codes used with each status. */
#define KVD_ERR_INVALID      "invalid_argument"       /* 400 */
#define KVD_ERR_UNAUTHORIZED "unauthenticated"        /* 401 */
#define KVD_ERR_NOT_FOUND    "not_found"              /* 404 */
#define KVD_ERR_METHOD       "method_not_allowed"     /* 405 */
#define KVD_ERR_CONFLICT     "conflict"               /* 409 */
#define KVD_ERR_TOO_LARGE    "payload_too_large"      /* 413 */
#define KVD_ERR_MEDIA_TYPE   "unsupported_media_type" /* 415 */
#define KVD_ERR_BUSY         "too_many_requests"      /* 429 */
#define KVD_ERR_EXHAUSTED    "resource_exhausted"     /* 503: pool full */
#define KVD_ERR_UNAVAILABLE  "unavailable"            /* 503: starting or draining */
#define KVD_ERR_INTERNAL     "internal"               /* 500: allocation failure etc. */

/* Fills err (printf-style message). field may be NULL. Returns -1 so callers
 * can write `return kvd_api_error_set(...)`. */
int kvd_api_error_set(kvd_api_error *err, int status, const char *code,
                      const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Renders the JSON body. Returns a malloc'd NUL-terminated string (caller
 * frees) and its length in *len, or NULL on allocation failure. */
char *kvd_api_error_json(const kvd_api_error *err, size_t *len);

#endif
