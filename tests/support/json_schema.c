/* tests/support/json_schema.c — the validator of json_schema.h: a recursive
 * walk of schema and instance together, carrying the instance path for the
 * first failure's message. */
#include "tests/support/json_schema.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct ctx {
    const cJSON *root;
    char *why;
    size_t why_len;
    int depth;
} ctx;

static bool failf(ctx *c, const char *path, const char *fmt, ...)
{
    int k = snprintf(c->why, c->why_len, "%s: ", path);
    va_list ap;
    va_start(ap, fmt);
    if (k >= 0 && (size_t)k < c->why_len)
        vsnprintf(c->why + k, c->why_len - (size_t)k, fmt, ap);
    va_end(ap);
    return false;
}

const cJSON *json_schema_resolve(const cJSON *root, const char *ref)
{
    if (!ref || strncmp(ref, "#/", 2) != 0)
        return NULL;
    const cJSON *node = root;
    char seg[128];
    for (const char *p = ref + 2; node && *p;) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len >= sizeof seg)
            return NULL;
        memcpy(seg, p, len);
        seg[len] = '\0';
        node = cJSON_GetObjectItemCaseSensitive(node, seg);
        p = slash ? slash + 1 : p + len;
    }
    return node;
}

static bool type_is(const cJSON *v, const char *t)
{
    if (strcmp(t, "object") == 0)
        return cJSON_IsObject(v);
    if (strcmp(t, "array") == 0)
        return cJSON_IsArray(v);
    if (strcmp(t, "string") == 0)
        return cJSON_IsString(v);
    if (strcmp(t, "number") == 0)
        return cJSON_IsNumber(v);
    if (strcmp(t, "integer") == 0)
        return cJSON_IsNumber(v) && isfinite(v->valuedouble)
               && v->valuedouble == floor(v->valuedouble);
    if (strcmp(t, "boolean") == 0)
        return cJSON_IsBool(v);
    if (strcmp(t, "null") == 0)
        return cJSON_IsNull(v);
    return false;
}

static bool scalar_eq(const cJSON *a, const cJSON *b)
{
    if (cJSON_IsString(a) && cJSON_IsString(b))
        return strcmp(a->valuestring, b->valuestring) == 0;
    if (cJSON_IsNumber(a) && cJSON_IsNumber(b))
        return a->valuedouble == b->valuedouble;
    if (cJSON_IsBool(a) && cJSON_IsBool(b))
        return cJSON_IsTrue(a) == cJSON_IsTrue(b);
    return cJSON_IsNull(a) && cJSON_IsNull(b);
}

static const char *const annotations[] = {"description", "default", "minimum", "maximum",
                                          "pattern", "minItems", "maxItems", "title",
                                          "format", "example"};
static const char *const keywords[] = {"type", "enum", "required", "properties",
                                       "additionalProperties", "items", "$ref", "allOf",
                                       "oneOf"};

static bool in(const char *k, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(k, list[i]) == 0)
            return true;
    return false;
}

static bool validate(ctx *c, const cJSON *s, const cJSON *v, const char *path);

static bool validate_object(ctx *c, const cJSON *s, const cJSON *v, const char *path)
{
    char sub[256];
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(s, "required");
    const cJSON *f;
    cJSON_ArrayForEach(f, req) {
        if (!cJSON_GetObjectItemCaseSensitive(v, f->valuestring))
            return failf(c, path, "required member \"%s\" missing", f->valuestring);
    }
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(s, "properties");
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(s, "additionalProperties");
    const cJSON *m;
    cJSON_ArrayForEach(m, v) {
        snprintf(sub, sizeof sub, "%s.%s", path, m->string);
        const cJSON *ps = props ? cJSON_GetObjectItemCaseSensitive(props, m->string) : NULL;
        if (ps) {
            if (!validate(c, ps, m, sub))
                return false;
        } else if (cJSON_IsFalse(extra)) {
            return failf(c, path, "member \"%s\" is not in the schema", m->string);
        } else if (cJSON_IsObject(extra) && !validate(c, extra, m, sub)) {
            return false;
        }
    }
    return true;
}

static bool validate(ctx *c, const cJSON *s, const cJSON *v, const char *path)
{
    if (++c->depth > 64) {
        c->depth--;
        return failf(c, path, "schema nests deeper than 64 (a $ref cycle?)");
    }
    bool ok = false;
    char sub[256];
    if (!cJSON_IsObject(s)) {
        failf(c, path, "schema is not an object");
        goto out;
    }
    const cJSON *k;
    cJSON_ArrayForEach(k, s) {
        if (!in(k->string, keywords, sizeof keywords / sizeof *keywords)
            && !in(k->string, annotations, sizeof annotations / sizeof *annotations)) {
            failf(c, path, "schema keyword \"%s\" is outside the validator's subset", k->string);
            goto out;
        }
    }
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(s, "$ref");
    if (ref) {
        const cJSON *target = json_schema_resolve(c->root, ref->valuestring);
        if (!target) {
            failf(c, path, "unresolved $ref %s", ref->valuestring);
            goto out;
        }
        if (!validate(c, target, v, path))
            goto out;
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(s, "type");
    if (type) {
        bool any = false;
        if (cJSON_IsString(type)) {
            any = type_is(v, type->valuestring);
        } else {
            const cJSON *t;
            cJSON_ArrayForEach(t, type)
                any = any || type_is(v, t->valuestring);
        }
        if (!any) {
            char *shown = cJSON_PrintUnformatted(v);
            char *want = cJSON_PrintUnformatted(type);
            failf(c, path, "%.60s is not of type %s", shown, want);
            cJSON_free(shown);
            cJSON_free(want);
            goto out;
        }
    }
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(s, "enum");
    if (en) {
        bool found = false;
        const cJSON *e;
        cJSON_ArrayForEach(e, en)
            found = found || scalar_eq(e, v);
        if (!found) {
            char *shown = cJSON_PrintUnformatted(v);
            failf(c, path, "%.60s is not one of the enum", shown);
            cJSON_free(shown);
            goto out;
        }
    }
    if (cJSON_IsObject(v) && !validate_object(c, s, v, path))
        goto out;
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(s, "items");
    if (items && cJSON_IsArray(v)) {
        int i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, v) {
            snprintf(sub, sizeof sub, "%s[%d]", path, i++);
            if (!validate(c, items, e, sub))
                goto out;
        }
    }
    const cJSON *all = cJSON_GetObjectItemCaseSensitive(s, "allOf");
    const cJSON *one;
    cJSON_ArrayForEach(one, all) {
        if (!validate(c, one, v, path))
            goto out;
    }
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(s, "oneOf");
    if (of) {
        int matched = 0, i = 0, first_fail = -1;
        char first_why[256] = "";
        cJSON_ArrayForEach(one, of) {
            if (validate(c, one, v, path)) {
                matched++;
            } else if (first_fail < 0) {
                first_fail = i;
                snprintf(first_why, sizeof first_why, "%s", c->why);
            }
            i++;
        }
        if (matched != 1) {
            if (matched == 0)
                failf(c, path, "matches none of oneOf (first: %s)", first_why);
            else
                failf(c, path, "matches %d of oneOf, not exactly one", matched);
            goto out;
        }
    }
    ok = true;
out:
    c->depth--;
    return ok;
}

bool json_schema_validate(const cJSON *root, const cJSON *schema, const cJSON *instance,
                          char *why, size_t why_len)
{
    ctx c = {.root = root, .why = why, .why_len = why_len};
    if (why_len)
        why[0] = '\0';
    return validate(&c, schema, instance, "$");
}
