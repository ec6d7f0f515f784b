/* api/create_body.h — the create body (POST /v1/sessions) as a resolved
 * kvd_session_config, and the config back as JSON. Parsing validates the
 * whole body before anything is returned; nothing here touches a session. */
#ifndef KVD_API_CREATE_BODY_H
#define KVD_API_CREATE_BODY_H

#include <cJSON.h>

#include "api/errors.h"
#include "api/limits.h"
#include "cache/session.h"

/* Parses and validates a create body. Unknown fields are a 400 naming the
 * field; values the server does not implement yet (e.g. eviction "subgen")
 * are a 400 whose message says "not yet supported". On success fills *cfg
 * with every default resolved and returns 0; else -1 with err. The seed
 * defaults to a random value (so the resolved config shows the seed actually
 * used). */
int kvd_session_config_parse(const cJSON *body, const kvd_api_limits *lim,
                             kvd_session_config *cfg, kvd_api_error *err);

/* The resolved config as JSON (same field names as the create body).
 * Caller owns the result; NULL on allocation failure. */
cJSON *kvd_session_config_to_json(const kvd_session_config *cfg);

#endif
