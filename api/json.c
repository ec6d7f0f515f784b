/* api/json.c — JSON helpers every body parser shares: parsing a whole body
 * into one object (errors say where), reading typed optional fields with
 * range checks, string enums, and refusing unknown or duplicate keys. Pure
 * functions of their arguments: workers call them in parallel. */
#include "api/json.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local bool json_oom;

static void *json_malloc(size_t n)
{
    void *p = malloc(n);
    if (!p)
        json_oom = true;
    return p;
}

void kvd__api_json_hooks_install(void)
{
    cJSON_Hooks hooks = {.malloc_fn = json_malloc, .free_fn = free};
    cJSON_InitHooks(&hooks);
}

void kvd__api_json_oom_reset(void)
{
    json_oom = false;
}

bool kvd__api_json_oom(void)
{
    return json_oom;
}

const char *kvd__api_json_type_name(const cJSON *item)
{
    if (cJSON_IsString(item))
        return "a string";
    if (cJSON_IsNumber(item))
        return "a number";
    if (cJSON_IsBool(item))
        return "a boolean";
    if (cJSON_IsNull(item))
        return "null";
    if (cJSON_IsArray(item))
        return "an array";
    if (cJSON_IsObject(item))
        return "an object";
    return "an invalid value";
}

/* A 400 whose message is "<field>: <what>". */
int kvd__api_json_invalid(kvd_api_error *err, const char *field, const char *what)
{
    return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field, "%s: %s", field, what);
}

/* Reads an optional integer field `name` of obj (error path `path`) into
 * *out, or dflt when absent. A JSON integer means a number with no fraction:
 * 1.5, -1, "1" and true are refused (1.0 and 1e2 cannot be told apart from 1
 * and 100 after parsing, and are accepted). */
int kvd__api_json_get_uint(const cJSON *obj, const char *name, const char *path, uint64_t min,
                           uint64_t max, uint64_t dflt, uint64_t *out, kvd_api_error *err)
{
    const cJSON *item = obj ? cJSON_GetObjectItemCaseSensitive(obj, name) : NULL;
    if (!item) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsNumber(item))
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                 "%s: expected an integer in %" PRIu64 "..%" PRIu64 ", got %s",
                                 path, min, max, kvd__api_json_type_name(item));
    const double v = item->valuedouble;
    if (!isfinite(v) || v != floor(v))
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                 "%s: expected an integer in %" PRIu64 "..%" PRIu64 ", got %g",
                                 path, min, max, v);
    /* min and max are at most 2^53 here, so the double compares are exact. */
    if (v < (double)min || v > (double)max)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                 "%s: must be in %" PRIu64 "..%" PRIu64 ", got %.17g",
                                 path, min, max, v);
    *out = (uint64_t)v;
    return 0;
}

int kvd__api_json_get_u32(const cJSON *obj, const char *name, const char *path, uint32_t min,
                          uint32_t max, uint32_t dflt, uint32_t *out, kvd_api_error *err)
{
    uint64_t v = 0; /* -O3 (make bench) cannot see the early return covers it */
    if (kvd__api_json_get_uint(obj, name, path, min, max, dflt, &v, err) != 0)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* Reads an optional string enum: the value must equal name_of(i) for some
 * i < n; *out = i. Names come from cache/session.c so the API spells them
 * the one way the rest of kvd does. */
int kvd__api_json_get_enum(const cJSON *obj, const char *name, const char *path,
                           const char *(*name_of)(int), int n, int dflt, int *out,
                           kvd_api_error *err)
{
    const cJSON *item = obj ? cJSON_GetObjectItemCaseSensitive(obj, name) : NULL;
    if (!item) {
        *out = dflt;
        return 0;
    }
    if (cJSON_IsString(item) && item->valuestring) {
        for (int i = 0; i < n; i++) {
            if (strcmp(item->valuestring, name_of(i)) == 0) {
                *out = i;
                return 0;
            }
        }
    }
    char allowed[160];
    size_t used = 0;
    allowed[0] = '\0';
    for (int i = 0; i < n && used < sizeof allowed; i++) {
        int k = snprintf(allowed + used, sizeof allowed - used, "%s\"%s\"", i ? ", " : "",
                         name_of(i));
        if (k < 0)
            break;
        used += (size_t)k;
    }
    if (cJSON_IsString(item) && item->valuestring)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                 "%s: expected one of %s, got \"%.48s\"", path, allowed,
                                 item->valuestring);
    return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path, "%s: expected one of %s, got %s",
                             path, allowed, kvd__api_json_type_name(item));
}

/* Every member of obj must be one of `allowed` (n <= 32), each at most once
 * (cJSON keeps duplicates and lookups would silently take the first).
 * prefix is prepended to the name in the error ("cache." -> "cache.foo"). */
int kvd__api_json_check_fields(const cJSON *obj, const char *prefix, const char *const *allowed,
                               size_t n, kvd_api_error *err)
{
    uint32_t seen = 0;
    char path[96];
    for (const cJSON *c = obj->child; c; c = c->next) {
        const char *key = c->string ? c->string : "";
        size_t i = 0;
        while (i < n && strcmp(key, allowed[i]) != 0)
            i++;
        snprintf(path, sizeof path, "%s%s", prefix, key);
        if (i == n) {
            char list[256];
            size_t used = 0;
            list[0] = '\0';
            for (size_t j = 0; j < n && used < sizeof list; j++) {
                int k = snprintf(list + used, sizeof list - used, "%s%s", j ? ", " : "",
                                 allowed[j]);
                if (k < 0)
                    break;
                used += (size_t)k;
            }
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path,
                                     "%.80s: unknown field (allowed: %s)", path, list);
        }
        if (seen & (UINT32_C(1) << i))
            return kvd__api_json_invalid(err, path, "duplicate field");
        seen |= UINT32_C(1) << i;
    }
    return 0;
}

bool kvd__api_json_in_list(const char *key, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(key, list[i]) == 0)
            return true;
    return false;
}

/* ---- JSON body --------------------------------------------------------- */

/* Path of a value for error messages while scanning the text: object keys
 * joined by '.', with the index of each array crossed between objects
 * ("steps[1].q"); arrays after the last key (a tensor's rows) are left out,
 * the way tensor errors name their field. */
#define SCAN_DEPTH 16
typedef struct scan_frame {
    bool object;
    char key[40];
    size_t index;
} scan_frame;

static void scan_path(const scan_frame *f, size_t depth, char *out, size_t cap)
{
    size_t last = depth; /* the innermost object frame holding a key */
    for (size_t d = depth; d-- > 0;)
        if (f[d].object) {
            last = d;
            break;
        }
    size_t used = 0;
    out[0] = '\0';
    for (size_t d = 0; last < depth && d <= last && used < cap; d++) {
        int k = f[d].object ? snprintf(out + used, cap - used, "%s%s", used ? "." : "", f[d].key)
                            : snprintf(out + used, cap - used, "[%zu]", f[d].index);
        if (k < 0)
            break;
        used += (size_t)k;
    }
}

/* cJSON accepts numbers with leading zeros ("0001", "-01.5"); JSON does
 * not. Scans text that cJSON has already parsed (so it is well formed
 * otherwise) for such a number; 0 or -1 with a 400 naming its field. */
int kvd__api_json_refuse_leading_zeros(const char *t, size_t len, kvd_api_error *err)
{
    scan_frame f[SCAN_DEPTH];
    size_t depth = 0;       /* frames in use; deeper nesting is scanned, not named */
    size_t nest = 0;        /* actual nesting */
    bool want_key = false;  /* in an object, before a key */
    for (size_t i = 0; i < len; i++) {
        const char c = t[i];
        if (c == '"') {
            const size_t start = ++i;
            while (i < len && t[i] != '"')
                i += t[i] == '\\' ? 2 : 1;
            if (want_key && nest == depth && depth > 0) {
                size_t n = i - start < sizeof f[0].key - 1 ? i - start : sizeof f[0].key - 1;
                memcpy(f[depth - 1].key, t + start, n);
                f[depth - 1].key[n] = '\0';
            }
            want_key = false;
        } else if (c == '{' || c == '[') {
            if (nest++ == depth && depth < SCAN_DEPTH) {
                f[depth] = (scan_frame){.object = c == '{', .index = 0};
                depth++;
            }
            want_key = c == '{';
        } else if (c == '}' || c == ']') {
            if (nest-- == depth && depth > 0)
                depth--;
            want_key = false;
        } else if (c == ',') {
            if (nest == depth && depth > 0) {
                if (f[depth - 1].object)
                    want_key = true;
                else
                    f[depth - 1].index++;
            }
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            const size_t start = i;
            if (t[i] == '-')
                i++;
            const bool zero_lead = i + 1 < len && t[i] == '0' && t[i + 1] >= '0' && t[i + 1] <= '9';
            while (i + 1 < len && (strchr("0123456789+-.eE", t[i + 1]) != NULL))
                i++;
            if (zero_lead) {
                char path[128];
                scan_path(f, depth, path, sizeof path);
                const int n = (int)(i + 1 - start < 32 ? i + 1 - start : 32);
                return kvd_api_error_set(err, 400, KVD_ERR_INVALID, path[0] ? path : NULL,
                                         "%s%s%.*s is not a JSON number (leading zeros are not allowed)",
                                         path, path[0] ? ": " : "", n, t + start);
            }
        }
    }
    return 0;
}

void kvd__api_json_syntax_error(const char *body, size_t len, size_t off, kvd_api_error *err)
{
    if (off >= len)
        kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                          "invalid JSON: unexpected end of body at byte offset %zu", len);
    else if ((unsigned char)body[off] >= 0x20 && (unsigned char)body[off] < 0x7f)
        kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                          "invalid JSON at byte offset %zu (near '%c')", off, body[off]);
    else
        kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                          "invalid JSON at byte offset %zu (byte 0x%02x)", off,
                          (unsigned)(unsigned char)body[off]);
}

/* Returns the parsed object (caller frees with cJSON_Delete) or NULL with
 * err filled. body[len] must be readable (the server NUL-terminates it). */
cJSON *kvd_json_parse_object(const char *body, size_t len, kvd_api_error *err)
{
    if (!body || len == 0) {
        kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                          "body is empty; expected a JSON object");
        return NULL;
    }
    /* JSON text never holds a raw NUL; cJSON would stop there and ignore the
     * rest, so refuse it rather than parse a prefix. */
    const char *nul = memchr(body, '\0', len);
    if (nul) {
        kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                          "invalid JSON: NUL byte at byte offset %zu", (size_t)(nul - body));
        return NULL;
    }
    /* cJSON_ParseWithOpts(body, &end, true) is this call with length
     * strlen(body) + 1; passing len + 1 says the same without trusting a
     * terminator to be there. The parse end is returned to us, not kept in
     * cJSON's global error pointer, so workers can parse in parallel. */
    const char *end = NULL;
    kvd__api_json_oom_reset();
    cJSON *root = cJSON_ParseWithLengthOpts(body, len + 1, &end, 1);
    if (!root && kvd__api_json_oom()) {
        /* Valid or not, the client is not to blame: a 500, never a 400. */
        kvd_api_error_set(err, 500, KVD_ERR_INTERNAL, NULL, "out of memory parsing the body");
        return NULL;
    }
    if (!root) {
        kvd__api_json_syntax_error(body, len, end && end >= body ? (size_t)(end - body) : 0, err);
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL, "body must be a JSON object, got %s",
                          kvd__api_json_type_name(root));
        cJSON_Delete(root);
        return NULL;
    }
    if (kvd__api_json_refuse_leading_zeros(body, len, err) != 0) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}
