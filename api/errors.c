/* api/errors.c — fills a kvd_api_error where a problem is found and renders
 * it once as the API's one error body (DESIGN.md §3):
 *   {"error": {"code": "...", "message": "...", "field": "..."}}
 * Owns nothing beyond the string it returns from kvd_api_error_json. */
#include "api/errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <cJSON.h>

int kvd_api_error_set(kvd_api_error *err, int status, const char *code,
                      const char *field, const char *fmt, ...)
{
    if (!err)
        return -1;
    err->status = status;
    err->code = code ? code : KVD_ERR_INTERNAL;
    /* Both buffers are fixed-size: a long field path or message is cut, never
     * overrun (snprintf always terminates). */
    snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    } else {
        err->message[0] = '\0';
    }
    return -1;
}

/* Returns a malloc'd string (caller frees) or NULL on allocation failure. */
char *kvd_api_error_json(const kvd_api_error *err, size_t *len)
{
    if (!err)
        return NULL;
    cJSON *root = cJSON_CreateObject();
    cJSON *e = root ? cJSON_AddObjectToObject(root, "error") : NULL;
    if (!e || !cJSON_AddStringToObject(e, "code", err->code ? err->code : KVD_ERR_INTERNAL)
        || !cJSON_AddStringToObject(e, "message", err->message)
        || (err->field[0] && !cJSON_AddStringToObject(e, "field", err->field))) {
        cJSON_Delete(root);
        return NULL;
    }
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (out && len)
        *len = strlen(out);
    return out;
}
