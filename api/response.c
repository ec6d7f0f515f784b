/* api/response.c — what the API answers with outside a step: a JSON body
 * with its status, the one error body (falling back to a static one when
 * even that cannot be allocated; a 503 says when to retry), a rendered cJSON
 * object, and the 201 of a created or forked session. */
#include "api/internal.h"

#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "api/create_body.h"
#include "api/json.h"

void kvd__api_response_json(kvd_response *resp, int status, char *json)
{
    resp->status = status;
    resp->content_type = "application/json";
    resp->body = json;
    resp->body_len = json ? strlen(json) : 0;
    resp->retry_after_s = 0;
}

void kvd_response_error(kvd_response *resp, const kvd_api_error *err)
{
    size_t len = 0;
    char *json = kvd_api_error_json(err, &len);
    if (!json) {
        /* Out of memory even for the error: a fixed body still says why. */
        static const char fallback[] =
            "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
        json = malloc(sizeof fallback);
        if (json)
            memcpy(json, fallback, sizeof fallback);
    }
    kvd__api_response_json(resp, json ? err->status : 500, json);
    if (err->status == 503)
        resp->retry_after_s = 1;
}

void kvd__api_respond_error(kvd_response *resp, int status, const char *code,
                            const char *field, const char *message)
{
    kvd_api_error err;
    kvd_api_error_set(&err, status, code, field, "%s", message);
    kvd_response_error(resp, &err);
}

/* Renders and deletes `obj`; a failure to render becomes a 500, and so does
 * any cJSON allocation that failed while obj was built (a member missing). */
void kvd__api_respond_cjson(kvd_response *resp, int status, cJSON *obj)
{
    char *json = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (json && kvd__api_json_oom()) {
        free(json);
        json = NULL;
    }
    if (!json) {
        kvd__api_respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory");
        return;
    }
    kvd__api_response_json(resp, status, json);
}

/* Answers 201 {"id", "config"[, "parent"]} for a registered session. */
void kvd__api_respond_created(api_session *s, const char *parent, kvd_response *resp)
{
    cJSON *out = cJSON_CreateObject();
    cJSON *conf = kvd_session_config_to_json(&s->cache->config);
    if (!out || !conf) {
        cJSON_Delete(out);
        cJSON_Delete(conf);
        kvd__api_respond_error(resp, 500, KVD_ERR_INTERNAL, NULL, "out of memory");
        return;
    }
    cJSON_AddStringToObject(out, "id", s->id);
    if (parent)
        cJSON_AddStringToObject(out, "parent", parent);
    if (!cJSON_AddItemToObject(out, "config", conf))
        cJSON_Delete(conf); /* not attached (its key could not be copied): ours to free */
    kvd__api_respond_cjson(resp, 201, out);
}
