/* api/errors.c — fills a kvd_api_error where a problem is found and renders
 * it once as the API's one error body (DESIGN.md §3):
 *   {"error": {"code": "...", "message": "...", "field": "..."}}
 * Owns nothing beyond the string it returns from kvd_api_error_json. */
#include "api/errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <cJSON.h>

/* Length of the valid UTF-8 sequence at s[0..n) (RFC 3629: no overlongs,
 * surrogates or code points past U+10FFFF), or 0 if it is not one. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    const unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

/* Rewrites buf (NUL-terminated, cap bytes) so it is valid UTF-8: each byte
 * that starts no valid sequence becomes U+FFFD, and a cut at the end never
 * splits a character. Request text (field names, values) is echoed into
 * error bodies and must not make them invalid JSON text. */
static void utf8_sanitize(char *buf, size_t cap)
{
    char out[sizeof ((kvd_api_error *)0)->message];
    const unsigned char *s = (const unsigned char *)buf;
    const size_t n = strlen(buf);
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(s + i, n - i);
        const char *src = k ? buf + i : "\xEF\xBF\xBD";
        const size_t w = k ? k : 3;
        if (o + w >= cap || o + w >= sizeof out)
            break;
        memcpy(out + o, src, w);
        o += w;
        i += k ? k : 1;
    }
    out[o] = '\0';
    memcpy(buf, out, o + 1);
}

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
    utf8_sanitize(err->field, sizeof err->field);
    utf8_sanitize(err->message, sizeof err->message);
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
