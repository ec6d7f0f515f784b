/* tests/server/test_openapi.c — api/openapi.yaml against the router: every
 * path and method of the spec routes (kvd__route_match gives a known route,
 * not 404/405), every other method there is a 405 whose Allow lists exactly
 * the spec's methods (HEAD with GET), every route of the router is reached
 * from the spec, and every path the router's own literals can form is in the
 * spec. Also the spec's $refs resolve, and the YAML reader and the schema
 * validator (tests/support) on small cases of their own. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "server/router.h"
#include "tests/support/check_main.h"
#include "tests/support/json_schema.h"
#include "tests/support/yaml_mini.h"

static const char *const methods[] = {"get", "post", "delete", "put", "patch", "head", "options"};
#define N_METHODS (sizeof methods / sizeof *methods)

/* Ids the spec's pattern allows: today's 32 hex, and a 64-character one (a
 * deployment's --id-prefix); the router must take both. */
static const char *const sample_ids[] = {
    "0123456789abcdef0123456789abcdef",
    "replica-a_0123456789abcdef0123456789abcdef0123456789abcdefABCDEF",
};

static cJSON *spec;

static void load_spec(void)
{
    char root[512], path[600], why[256];
    snprintf(path, sizeof path, "%s/api/openapi.yaml",
             kvd_test_source_root(__FILE__, root, sizeof root));
    spec = yaml_mini_load(path, why, sizeof why);
    ck_assert_msg(spec != NULL, "%s: %s", path, why);
}

static void free_spec(void)
{
    cJSON_Delete(spec);
    spec = NULL;
}

/* path with "{id}" replaced by id, into buf. */
static void instantiate(const char *tmpl, const char *id, char *buf, size_t len)
{
    const char *at = strstr(tmpl, "{id}");
    if (!at)
        snprintf(buf, len, "%s", tmpl);
    else
        snprintf(buf, len, "%.*s%s%s", (int)(at - tmpl), tmpl, id, at + 4);
}

static void upper(const char *m, char *buf)
{
    size_t i = 0;
    for (; m[i]; i++)
        buf[i] = (char)(m[i] >= 'a' && m[i] <= 'z' ? m[i] - 32 : m[i]);
    buf[i] = '\0';
}

static bool spec_has(const cJSON *item, const char *method)
{
    return cJSON_GetObjectItemCaseSensitive(item, method) != NULL
           || (strcmp(method, "head") == 0 && cJSON_GetObjectItemCaseSensitive(item, "get"));
}

START_TEST(spec_paths_route)
{
    const cJSON *paths = cJSON_GetObjectItemCaseSensitive(spec, "paths");
    ck_assert_int_ge(cJSON_GetArraySize(paths), 11);
    bool reached[KVD_ROUTE_COUNT] = {false};
    const cJSON *item;
    cJSON_ArrayForEach(item, paths) {
        for (size_t k = 0; k < sizeof sample_ids / sizeof *sample_ids; k++) {
            char path[256], id[KVD_ROUTER_ID_MAX + 1], m[16];
            instantiate(item->string, sample_ids[k], path, sizeof path);
            for (size_t i = 0; i < N_METHODS; i++) {
                kvd_route route;
                const char *allow;
                upper(methods[i], m);
                int rc = kvd__route_match(m, path, &route, id, &allow);
                ck_assert_msg(route != KVD_ROUTE_UNKNOWN, "%s %s: the router does not know it", m,
                              path);
                if (spec_has(item, methods[i])) {
                    ck_assert_msg(rc == 0, "%s %s is in the spec, the router says %d", m, path, rc);
                    reached[route] = true;
                    if (strstr(item->string, "{id}"))
                        ck_assert_str_eq(id, sample_ids[k]);
                    continue;
                }
                ck_assert_msg(rc == 405, "%s %s is not in the spec, the router says %d", m,
                              path, rc);
                /* Allow names exactly the spec's methods (HEAD beside GET). */
                char want[64] = "";
                static const char *const order[] = {"get", "head", "post", "delete"};
                for (size_t j = 0; j < 4; j++) {
                    if (strcmp(order[j], "head") == 0 ? !cJSON_GetObjectItemCaseSensitive(item, "get")
                                                      : !cJSON_GetObjectItemCaseSensitive(item, order[j]))
                        continue;
                    char u[16];
                    upper(order[j], u);
                    if (want[0])
                        strcat(want, ", ");
                    strcat(want, u);
                }
                ck_assert_msg(strcmp(allow, want) == 0, "%s %s: Allow \"%s\", spec says \"%s\"",
                              m, path, allow, want);
            }
        }
    }
    for (int r = 0; r < KVD_ROUTE_COUNT; r++)
        ck_assert_msg(reached[r] || r == KVD_ROUTE_UNKNOWN,
                      "route %d of the router is in no path of the spec", r);
}
END_TEST

/* Every path the router's string literals can spell (a literal path alone, or
 * a session path followed by a literal sub-path) that routes is in the spec:
 * a route added to server/router.c shows up here even if it reuses a route
 * label. */
START_TEST(router_literals_in_spec)
{
    char root[512], file[600];
    snprintf(file, sizeof file, "%s/server/router.c",
             kvd_test_source_root(__FILE__, root, sizeof root));
    FILE *f = fopen(file, "r");
    ck_assert_msg(f != NULL, "cannot open %s", file);
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    char lits[64][64];
    size_t n_lits = 0;
    for (const char *p = text; (p = strstr(p, "\"/")) != NULL && n_lits < 64;) {
        const char *end = strchr(p + 1, '"');
        ck_assert_ptr_nonnull(end);
        size_t len = (size_t)(end - p - 1);
        if (len < 64) {
            memcpy(lits[n_lits], p + 1, len);
            lits[n_lits++][len] = '\0';
        }
        p = end + 1;
    }
    ck_assert_uint_ge(n_lits, 10);
    const cJSON *paths = cJSON_GetObjectItemCaseSensitive(spec, "paths");
    size_t routed = 0;
    for (size_t i = 0; i < n_lits; i++) {
        for (int form = 0; form < 2; form++) {
            char path[256], tmpl[256], id[KVD_ROUTER_ID_MAX + 1];
            if (form == 0) {
                snprintf(path, sizeof path, "%.63s", lits[i]);
                snprintf(tmpl, sizeof tmpl, "%.63s", lits[i]);
            } else {
                snprintf(path, sizeof path, "/v1/sessions/%s%.63s", sample_ids[0], lits[i]);
                snprintf(tmpl, sizeof tmpl, "/v1/sessions/{id}%.63s", lits[i]);
            }
            for (size_t k = 0; k < N_METHODS; k++) {
                char m[16];
                upper(methods[k], m);
                kvd_route route;
                const char *allow;
                int rc = kvd__route_match(m, path, &route, id, &allow);
                if (route == KVD_ROUTE_UNKNOWN)
                    continue;
                if (form == 0 && id[0])
                    continue; /* "/v1/sessions/restore"-like ids are sessions */
                const cJSON *item = cJSON_GetObjectItemCaseSensitive(paths, tmpl);
                ck_assert_msg(item != NULL, "the router routes %s %s; the spec lacks %s", m, path,
                              tmpl);
                ck_assert_msg(rc != 0 || spec_has(item, methods[k]),
                              "the router takes %s %s; the spec does not", m, path);
                routed++;
            }
        }
    }
    ck_assert_uint_ge(routed, 11);
}
END_TEST

static void check_refs(const cJSON *node)
{
    for (const cJSON *c = node ? node->child : NULL; c; c = c->next) {
        if (c->string && strcmp(c->string, "$ref") == 0) {
            ck_assert_msg(json_schema_resolve(spec, c->valuestring) != NULL,
                          "unresolved $ref %s", c->valuestring);
        }
        check_refs(c);
    }
}

START_TEST(spec_refs_resolve)
{
    check_refs(spec);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(spec, "openapi")->valuestring, "3.1.0");
    /* The error statuses of the README's Errors paragraph, each with its code. */
    static const struct { const char *schema, *code; } errs[] = {
        {"Error400", "invalid_argument"}, {"Error401", "unauthenticated"},
        {"Error404", "not_found"}, {"Error405", "method_not_allowed"}, {"Error409", "conflict"},
        {"Error413", "payload_too_large"}, {"Error415", "unsupported_media_type"},
        {"Error429", "too_many_requests"}, {"Error501", "unimplemented"},
        {"Error503", "resource_exhausted"}, {"Error503", "unavailable"},
    };
    for (size_t i = 0; i < sizeof errs / sizeof *errs; i++) {
        char ref[96], body[160], why[256];
        snprintf(ref, sizeof ref, "#/components/schemas/%s", errs[i].schema);
        const cJSON *s = json_schema_resolve(spec, ref);
        ck_assert_ptr_nonnull(s);
        snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\",\"message\":\"m\"}}", errs[i].code);
        cJSON *v = cJSON_Parse(body);
        ck_assert_msg(json_schema_validate(spec, s, v, why, sizeof why), "%s: %s", ref, why);
        cJSON_Delete(v);
        v = cJSON_Parse("{\"error\":{\"code\":\"internal\",\"message\":\"m\"}}");
        ck_assert(!json_schema_validate(spec, s, v, why, sizeof why));
        cJSON_Delete(v);
    }
}
END_TEST

START_TEST(yaml_subset)
{
    char why[256];
    cJSON *y = yaml_mini_parse("# c\n"
                               "a: 1\n"
                               "b:\n"
                               "  - x\n"
                               "  - 'y # not a comment'\n"
                               "  - k: [1, 'two', \"3\", true, null]  # comment\n"
                               "    j: {}\n"
                               "c:\n"
                               "- -2.5e1\n"
                               "'d e': \"q\\\"\"\n"
                               "f: http://x:8/#y\n",
                               why, sizeof why);
    ck_assert_msg(y != NULL, "%s", why);
    char *s = cJSON_PrintUnformatted(y);
    ck_assert_str_eq(s, "{\"a\":1,\"b\":[\"x\",\"y # not a comment\",{\"k\":[1,\"two\",\"3\",true,"
                        "null],\"j\":{}}],\"c\":[-25],\"d e\":\"q\\\"\",\"f\":\"http://x:8/#y\"}");
    cJSON_free(s);
    cJSON_Delete(y);
    static const char *const bad[] = {"a: 1\na: 2\n", "a:\n\tb: 1\n", "a: &x 1\n", "a: |\n  t\n",
                                      "a: 'open\n", "a: [1, [2]]\n", "a: 1\n  b: 2\n", "a: [1\n"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        y = yaml_mini_parse(bad[i], why, sizeof why);
        ck_assert_msg(y == NULL, "accepted %s", bad[i]);
        ck_assert_msg(strncmp(why, "line ", 5) == 0, "%s", why);
    }
}
END_TEST

START_TEST(schema_subset)
{
    char why[256];
    cJSON *root = cJSON_Parse(
        "{\"d\":{\"T\":{\"type\":\"object\",\"additionalProperties\":false,\"required\":[\"a\"],"
        "\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":[\"string\",\"null\"],"
        "\"enum\":[\"x\",null]},\"c\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/d/U\"}}}},"
        "\"U\":{\"oneOf\":[{\"type\":\"number\"},{\"type\":\"string\"}]},"
        "\"V\":{\"allOf\":[{\"$ref\":\"#/d/T\"},{\"properties\":{\"a\":{\"enum\":[3]}}}]},"
        "\"W\":{\"minimum\":0,\"uniqueItems\":true}}}");
    const cJSON *t = json_schema_resolve(root, "#/d/T"), *v = json_schema_resolve(root, "#/d/V");
    static const struct { const char *json; bool ok; const char *why; } cases[] = {
        {"{\"a\":1}", true, ""},
        {"{\"a\":1,\"b\":null,\"c\":[1,\"s\"]}", true, ""},
        {"{}", false, "$: required member \"a\" missing"},
        {"{\"a\":1.5}", false, "$.a: 1.5 is not of type \"integer\""},
        {"{\"a\":1,\"z\":0}", false, "$: member \"z\" is not in the schema"},
        {"{\"a\":1,\"b\":\"y\"}", false, "$.b: \"y\" is not one of the enum"},
        {"{\"a\":1,\"c\":[1,true]}", false, "$.c[1]: matches none of oneOf"},
        {"[]", false, "$: [] is not of type \"object\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        cJSON *x = cJSON_Parse(cases[i].json);
        bool ok = json_schema_validate(root, t, x, why, sizeof why);
        ck_assert_msg(ok == cases[i].ok, "%s: %s", cases[i].json, why);
        if (!ok)
            ck_assert_msg(strncmp(why, cases[i].why, strlen(cases[i].why)) == 0, "%s: \"%s\"",
                          cases[i].json, why);
        cJSON_Delete(x);
    }
    cJSON *x = cJSON_Parse("{\"a\":3}");
    ck_assert(json_schema_validate(root, v, x, why, sizeof why));
    cJSON_Delete(x);
    x = cJSON_Parse("{\"a\":4}");
    ck_assert(!json_schema_validate(root, v, x, why, sizeof why));
    cJSON_Delete(x);
    /* A keyword outside the subset is an error, not silently skipped. */
    x = cJSON_Parse("[]");
    ck_assert(!json_schema_validate(root, json_schema_resolve(root, "#/d/W"), x, why, sizeof why));
    ck_assert_msg(strstr(why, "uniqueItems") != NULL, "%s", why);
    cJSON_Delete(x);
    cJSON_Delete(root);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("server/openapi");
    TCase *tc = tcase_create("spec");
    tcase_add_checked_fixture(tc, load_spec, free_spec);
    tcase_add_test(tc, spec_paths_route);
    tcase_add_test(tc, router_literals_in_spec);
    tcase_add_test(tc, spec_refs_resolve);
    tcase_add_test(tc, yaml_subset);
    tcase_add_test(tc, schema_subset);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
