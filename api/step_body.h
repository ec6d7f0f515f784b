/* api/step_body.h — the step body (POST /v1/sessions/{id}/step) as a typed,
 * validated kvd_step_request: one layer entry or a "steps" array, tensors
 * decoded to f32. Parsing validates the whole request against the session's
 * config before anything is returned, so a step can be applied knowing it is
 * well-formed; nothing here touches a session. */
#ifndef KVD_API_STEP_BODY_H
#define KVD_API_STEP_BODY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>

#include "api/errors.h"
#include "api/json.h"
#include "api/limits.h"
#include "api/wire.h"
#include "cache/session.h"
#include "cache/entry.h"

/* A decoded step body: its entries (cache/step.h) own their tensors, which
 * kvd_step_request_free frees. */
typedef struct kvd_step_request {
    kvd_step_entry *entries; /* in request order ("steps" array or one) */
    size_t n_entries;
    kvd_wire_encoding encoding; /* of the response tensors */
} kvd_step_request;

/* Parses and validates a step body against the session's config: shapes,
 * layer index, mask, finiteness, unknown fields, the shape rules of
 * api/wire.h and the optional "m" (must equal k/v's token count). Either the
 * body is one step ({"layer", "k", "v", "q", "mask", "m", "encoding"}) or
 * {"steps": [...], "encoding"}. Fields named in errors use the path, e.g. "steps[2].q".
 * Returns 0 (caller frees with kvd_step_request_free) or -1 with err. */
int kvd_step_request_parse(const cJSON *body, const kvd_session_config *cfg,
                           const kvd_api_limits *lim, kvd_step_request *req,
                           kvd_api_error *err);

/* kvd_step_request_parse over a tree whose tensor arrays were decoded from
 * the text (kvd_json_parse_step_text): the same checks and messages; a
 * decoded array's numbers move into the request (doc keeps the rest). */
int kvd_step_request_parse_doc(const kvd_json_doc *doc, const kvd_session_config *cfg,
                               const kvd_api_limits *lim, kvd_step_request *req,
                               kvd_api_error *err);

/* The whole path for a body the caller owns: text (len bytes, NUL after
 * them) is rewritten in place, parsed with kvd_json_parse_step_text and
 * validated; *multi says whether it used "steps". The parse holds at most
 * about 2x len bytes besides the text (4-byte f32 per number of >= 2 bytes
 * of text, cJSON's copy of strings, at most kvd_step_body_max_values nodes).
 * Returns 0 or -1 with err; req as kvd_step_request_parse. */
int kvd_step_request_parse_text(char *text, size_t len, const kvd_session_config *cfg,
                                const kvd_api_limits *lim, kvd_step_request *req, bool *multi,
                                kvd_api_error *err);

/* Most cJSON values a valid step body's tree can need under lim (arrays in
 * tensor positions count one each). */
size_t kvd_step_body_max_values(const kvd_api_limits *lim);

/* One step object of a "steps" array (no "encoding" in it) as an entry,
 * its fields named prefix + name ("steps[3].k"): POST /v1/batch parses
 * each item alone against its own session. Tensors are owned by *entry even
 * on failure (free them as a one-entry request's). Returns 0 or -1 with err. */
int kvd_step_entry_parse(const kvd_json_doc *doc, const cJSON *obj, const char *prefix,
                         const kvd_session_config *cfg, const kvd_api_limits *lim,
                         kvd_step_entry *entry, kvd_api_error *err);

void kvd_step_request_free(kvd_step_request *req);

#endif
