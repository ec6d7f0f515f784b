/* tests/support/yaml_mini.c — the YAML subset of yaml_mini.h into cJSON: the
 * text is cut into lines (indent, content without comments), then mappings
 * and sequences are read by indentation, recursively. Scalars follow YAML
 * 1.2's core schema for the forms the subset allows. */
#define _POSIX_C_SOURCE 200809L /* strndup */
#include "tests/support/yaml_mini.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct line {
    int indent;
    char *text; /* content, comment and trailing blanks removed (owned) */
    int no;     /* 1-based line number */
} line;

typedef struct reader {
    line *lines;
    size_t n, i;
    char *why;
    size_t why_len;
    bool failed;
} reader;

static void fail(reader *r, int no, const char *fmt, ...)
{
    if (r->failed)
        return;
    r->failed = true;
    int k = snprintf(r->why, r->why_len, "line %d: ", no);
    va_list ap;
    va_start(ap, fmt);
    if (k >= 0 && (size_t)k < r->why_len)
        vsnprintf(r->why + k, r->why_len - (size_t)k, fmt, ap);
    va_end(ap);
}

/* Index just past a quoted scalar starting at s[i] (a quote), or 0 if it
 * does not end on this line. */
static size_t skip_quoted(const char *s, size_t i)
{
    const char q = s[i++];
    for (; s[i]; i++) {
        if (q == '\'' && s[i] == '\'') {
            if (s[i + 1] == '\'') {
                i++;
                continue;
            }
            return i + 1;
        }
        if (q == '"' && s[i] == '\\' && s[i + 1]) {
            i++;
            continue;
        }
        if (q == '"' && s[i] == '"')
            return i + 1;
    }
    return 0;
}

/* Cuts the text into lines; false with why on a tab indent or a quote that
 * does not close. */
static bool split_lines(reader *r, const char *text)
{
    size_t cap = 64;
    r->lines = calloc(cap, sizeof *r->lines);
    int no = 0;
    for (const char *p = text; *p;) {
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        no++;
        char *s = malloc(len + 1);
        memcpy(s, p, len);
        s[len] = '\0';
        p = end ? end + 1 : p + len;
        int indent = 0;
        while (s[indent] == ' ')
            indent++;
        if (s[indent] == '\t') {
            fail(r, no, "tab in indentation");
            free(s);
            return false;
        }
        /* A comment starts at '#' at the start or after a blank, outside quotes. */
        size_t cut = strlen(s);
        for (size_t i = (size_t)indent; s[i]; i++) {
            if ((s[i] == '\'' || s[i] == '"') && (i == (size_t)indent || strchr(" [,:-", s[i - 1]))) {
                size_t j = skip_quoted(s, i);
                if (!j) {
                    fail(r, no, "quoted scalar does not close on its line");
                    free(s);
                    return false;
                }
                i = j - 1;
                continue;
            }
            if (s[i] == '#' && (i == (size_t)indent || s[i - 1] == ' ')) {
                cut = i;
                break;
            }
        }
        while (cut > (size_t)indent && (s[cut - 1] == ' ' || s[cut - 1] == '\r'))
            cut--;
        s[cut] = '\0';
        if (cut == (size_t)indent) {
            free(s);
            continue;
        }
        if (r->n == cap) {
            cap *= 2;
            r->lines = realloc(r->lines, cap * sizeof *r->lines);
        }
        memmove(s, s + indent, cut - (size_t)indent + 1);
        r->lines[r->n++] = (line){.indent = indent, .text = s, .no = no};
    }
    return true;
}

/* Where the ':' of "key: value" or "key:" is in s (outside quotes and
 * brackets), or -1. */
static long key_colon(const char *s)
{
    size_t i = 0;
    if (s[0] == '\'' || s[0] == '"') {
        i = skip_quoted(s, 0);
        if (!i)
            return -1;
    }
    if (s[0] == '[' || s[0] == '{')
        return -1;
    for (; s[i]; i++)
        if (s[i] == ':' && (s[i + 1] == ' ' || s[i + 1] == '\0'))
            return (long)i;
    return -1;
}

static bool is_number(const char *s)
{
    const char *p = s;
    if (*p == '-' || *p == '+')
        p++;
    if (!isdigit((unsigned char)*p))
        return false;
    while (isdigit((unsigned char)*p))
        p++;
    if (*p == '.') {
        p++;
        while (isdigit((unsigned char)*p))
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '-' || *p == '+')
            p++;
        if (!isdigit((unsigned char)*p))
            return false;
        while (isdigit((unsigned char)*p))
            p++;
    }
    return *p == '\0';
}

/* An unquoted copy of a quoted scalar s[0..len). */
static char *unquote(const char *s, size_t len)
{
    char *out = malloc(len + 1);
    size_t o = 0;
    const char q = s[0];
    for (size_t i = 1; i + 1 < len; i++) {
        if (q == '\'' && s[i] == '\'' && s[i + 1] == '\'') {
            out[o++] = '\'';
            i++;
        } else if (q == '"' && s[i] == '\\') {
            const char c = s[++i];
            out[o++] = c == 'n' ? '\n' : c == 't' ? '\t' : c;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = '\0';
    return out;
}

static cJSON *scalar(reader *r, int no, const char *s);

/* [a, b, 'c'] on one line: scalars only. */
static cJSON *flow_seq(reader *r, int no, const char *s)
{
    const size_t len = strlen(s);
    if (s[len - 1] != ']') {
        fail(r, no, "a flow sequence must close on its line");
        return NULL;
    }
    cJSON *arr = cJSON_CreateArray();
    size_t i = 1;
    while (i < len - 1) {
        while (s[i] == ' ')
            i++;
        if (i >= len - 1)
            break;
        size_t start = i, end;
        if (s[i] == '\'' || s[i] == '"') {
            end = skip_quoted(s, i);
            if (!end) {
                fail(r, no, "bad quoted scalar in a flow sequence");
                cJSON_Delete(arr);
                return NULL;
            }
            i = end;
        } else {
            while (i < len - 1 && s[i] != ',')
                i++;
            end = i;
        }
        while (end > start && s[end - 1] == ' ')
            end--;
        char *item = strndup(s + start, end - start);
        if (strchr("[{", item[0])) {
            fail(r, no, "nested flow collections are not in the subset");
            free(item);
            cJSON_Delete(arr);
            return NULL;
        }
        cJSON *v = scalar(r, no, item);
        free(item);
        if (!v) {
            cJSON_Delete(arr);
            return NULL;
        }
        cJSON_AddItemToArray(arr, v);
        while (s[i] == ' ')
            i++;
        if (s[i] == ',')
            i++;
        else if (i < len - 1) {
            fail(r, no, "expected ',' in a flow sequence");
            cJSON_Delete(arr);
            return NULL;
        }
    }
    return arr;
}

static cJSON *scalar(reader *r, int no, const char *s)
{
    const size_t len = strlen(s);
    if (s[0] == '\'' || s[0] == '"') {
        if (skip_quoted(s, 0) != len) {
            fail(r, no, "text after a quoted scalar");
            return NULL;
        }
        char *u = unquote(s, len);
        cJSON *v = cJSON_CreateString(u);
        free(u);
        return v;
    }
    if (s[0] == '[')
        return flow_seq(r, no, s);
    if (strcmp(s, "{}") == 0)
        return cJSON_CreateObject();
    if (strchr("{&*!|>%@`", s[0])) {
        fail(r, no, "'%c' starts a form outside the subset", s[0]);
        return NULL;
    }
    if (strcmp(s, "null") == 0 || strcmp(s, "~") == 0)
        return cJSON_CreateNull();
    if (strcmp(s, "true") == 0)
        return cJSON_CreateTrue();
    if (strcmp(s, "false") == 0)
        return cJSON_CreateFalse();
    if (is_number(s))
        return cJSON_CreateNumber(strtod(s, NULL));
    return cJSON_CreateString(s);
}

static cJSON *block(reader *r, int indent);

/* The value after "key:" (or "-") with nothing on the line: a nested block,
 * a sequence at the same indent (mappings only), or null. */
static cJSON *nested(reader *r, int indent, bool in_mapping)
{
    if (r->i < r->n) {
        const line *nx = &r->lines[r->i];
        if (nx->indent > indent)
            return block(r, nx->indent);
        if (in_mapping && nx->indent == indent && nx->text[0] == '-'
            && (nx->text[1] == ' ' || nx->text[1] == '\0'))
            return block(r, indent);
    }
    return cJSON_CreateNull();
}

static cJSON *sequence(reader *r, int indent)
{
    cJSON *arr = cJSON_CreateArray();
    while (!r->failed && r->i < r->n) {
        line *ln = &r->lines[r->i];
        if (ln->indent < indent)
            break;
        if (ln->indent > indent || ln->text[0] != '-' || (ln->text[1] != ' ' && ln->text[1]))
            break;
        if (ln->text[1] == '\0') {
            r->i++;
            cJSON_AddItemToArray(arr, nested(r, indent, false));
            continue;
        }
        /* "- rest": the rest is a line of its own, two columns in. */
        int in = indent + 2;
        while (ln->text[in - indent] == ' ')
            in++;
        memmove(ln->text, ln->text + (in - indent), strlen(ln->text + (in - indent)) + 1);
        ln->indent = in;
        if (key_colon(ln->text) >= 0) {
            cJSON_AddItemToArray(arr, block(r, in));
        } else {
            r->i++;
            cJSON *v = scalar(r, ln->no, ln->text);
            if (!v)
                break;
            cJSON_AddItemToArray(arr, v);
        }
    }
    if (r->failed) {
        cJSON_Delete(arr);
        return NULL;
    }
    return arr;
}

static cJSON *mapping(reader *r, int indent)
{
    cJSON *obj = cJSON_CreateObject();
    while (!r->failed && r->i < r->n) {
        const line *ln = &r->lines[r->i];
        if (ln->indent < indent)
            break;
        if (ln->indent > indent) {
            fail(r, ln->no, "unexpected indentation");
            break;
        }
        const long c = key_colon(ln->text);
        if (c < 0) {
            fail(r, ln->no, "expected 'key:' in a mapping");
            break;
        }
        char *key = (ln->text[0] == '\'' || ln->text[0] == '"')
                        ? unquote(ln->text, (size_t)c)
                        : strndup(ln->text, (size_t)c);
        if (cJSON_GetObjectItemCaseSensitive(obj, key)) {
            fail(r, ln->no, "duplicate key '%s'", key);
            free(key);
            break;
        }
        const char *rest = ln->text + c + 1;
        while (*rest == ' ')
            rest++;
        const int no = ln->no;
        r->i++;
        cJSON *v = *rest ? scalar(r, no, rest) : nested(r, indent, true);
        if (!v) {
            free(key);
            break;
        }
        cJSON_AddItemToObject(obj, key, v);
        free(key);
    }
    if (r->failed) {
        cJSON_Delete(obj);
        return NULL;
    }
    return obj;
}

static cJSON *block(reader *r, int indent)
{
    const line *ln = &r->lines[r->i];
    if (ln->text[0] == '-' && (ln->text[1] == ' ' || ln->text[1] == '\0'))
        return sequence(r, indent);
    if (key_colon(ln->text) < 0) {
        r->i++;
        return scalar(r, ln->no, ln->text);
    }
    return mapping(r, indent);
}

cJSON *yaml_mini_parse(const char *text, char *why, size_t why_len)
{
    reader r = {.why = why, .why_len = why_len};
    if (why_len)
        why[0] = '\0';
    cJSON *root = NULL;
    if (split_lines(&r, text)) {
        root = r.n ? block(&r, r.lines[0].indent) : cJSON_CreateNull();
        if (root && r.i < r.n) {
            fail(&r, r.lines[r.i].no, "text after the document's root value");
            cJSON_Delete(root);
            root = NULL;
        }
    }
    for (size_t i = 0; i < r.n; i++)
        free(r.lines[i].text);
    free(r.lines);
    return r.failed ? (cJSON_Delete(root), NULL) : root;
}

cJSON *yaml_mini_load(const char *path, char *why, size_t why_len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(why, why_len, "cannot open %s", path);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap)
            buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    buf[n] = '\0';
    cJSON *root = yaml_mini_parse(buf, why, why_len);
    free(buf);
    return root;
}

char *kvd_test_source_root(const char *file, char *buf, size_t len)
{
    snprintf(buf, len, "%s", file);
    for (int up = 0; up < 3; up++) { /* drop x.c, <dir>, tests */
        char *slash = strrchr(buf, '/');
        if (!slash) {
            snprintf(buf, len, ".");
            return buf;
        }
        *slash = '\0';
    }
    if (!buf[0])
        snprintf(buf, len, "/");
    return buf;
}
