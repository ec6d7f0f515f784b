/* tests/support/kvd_client.h — kvd's API as the integration tests use it:
 * each helper makes one request on a fresh connection and fails the current
 * Check test (with the response in the message) if the answer is not the
 * expected one. Also: the error-body check, /metrics sample lookup and small
 * JSON accessors. */
#ifndef KVD_TEST_CLIENT_H
#define KVD_TEST_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include <cJSON.h>

#include "tests/support/http_client.h"

#define KVD_JSON "application/json"
#define KVD_SESSION_ID_LEN 32

/* True if s is 32 lowercase hex characters. */
bool kvd_is_session_id(const char *s);
/* True if s is a session id with or without an --id-prefix: 32 lowercase hex,
 * or "<1-31 of a-z 0-9 ->-<32 lowercase hex>". */
bool kvd_is_any_session_id(const char *s);

/* POST /v1/sessions with body; asserts 201 and a well-formed id (prefixed or not). Returns
 * the id (caller frees); *resp_json (if non-NULL) gets the whole response
 * (caller cJSON_Deletes). */
char *kvd_create_session(int port, const char *body, cJSON **resp_json);

/* GET path; asserts `status` and a JSON body. Caller cJSON_Deletes. */
cJSON *kvd_get_json(int port, const char *path, int status);

/* GET /v1/sessions/{id}; asserts 200. */
cJSON *kvd_session_stats(int port, const char *id);

/* POST /v1/sessions/{id}/step with Content-Type application/json. */
http_response *kvd_step(int port, const char *id, const char *body);

/* kvd_step asserting 200 and a JSON object without "error". Caller
 * cJSON_Deletes. */
cJSON *kvd_step_ok(int port, const char *id, const char *body);

/* POST /v1/batch of {"steps": [items...]} (each item a JSON object text);
 * asserts 200 and a JSON object. Caller cJSON_Deletes. */
cJSON *kvd_batch_ok(int port, char *const *items, size_t n);

/* DELETE /v1/sessions/{id}; asserts 200 (or 204). */
void kvd_delete_session(int port, const char *id);

/* Asserts r is an error answer: the status, a JSON body
 * {"error":{"code": code, "message": non-empty string, ...}}, and when field
 * is non-NULL, error.field equal to one of the '|'-separated alternatives in
 * it ("v|k"). When msg_part is non-NULL the message must contain it. `what`
 * names the case in failure messages. */
void kvd_expect_error(const http_response *r, int status, const char *code, const char *field,
                      const char *msg_part, const char *what);

/* GET /healthz answers 200. */
void kvd_assert_healthy(int port);

/* GET /metrics body (asserts 200; caller frees). */
char *kvd_metrics_text(int port);

/* Sum of every sample of metric `name` whose label set includes all of the
 * comma-separated pairs in `labels` (e.g. "state=\"used\"", or NULL for any);
 * NAN if there is none. */
double kvd_metric(const char *text, const char *name, const char *labels);

/* Fetches /metrics and looks one metric up. */
double kvd_metric_now(int port, const char *name, const char *labels);

/* Dotted-path accessors ("config.cache.dtype"); NAN / NULL if absent or of
 * another type. */
double kvd_json_num(const cJSON *obj, const char *path);
const char *kvd_json_str(const cJSON *obj, const char *path);
const cJSON *kvd_json_at(const cJSON *obj, const char *path);

/* Compares a response tensor ("o", JSON array or b64 string) with the
 * reference: exactly n values, max |got - want| <= tol. Returns the error. */
double kvd_check_tensor(const cJSON *item, const double *want, size_t n, double tol, const char *what);

#endif
