/* api/json_text.c — a step body's text before cJSON sees it (issue 10): one pass that
 * accepts exactly what cJSON accepts (failing at the byte cJSON fails at), decodes each
 * array in a tensor position straight to f32 with the first error api/wire.c's walk would
 * report, notes where each "b64:" tensor string's text is (decoded later, from the body),
 * and copies the rest — a skeleton with "[]" and "" in their place — for cJSON, so it
 * builds a node per field, not per number, and copies no tensor text. Over 600 lines
 * because it is one grammar, cJSON's, mirrored whole. No global state but a probe. */
#include "api/json.h"

#include <locale.h>
#include <stdatomic.h>
#include <stdint.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* cJSON's nesting limit (CJSON_NESTING_LIMIT in cJSON.h, 1000 by default):
 * deeper text is a syntax error at the '[' or '{' that goes too deep. */
#ifdef CJSON_NESTING_LIMIT
#define NESTING_LIMIT CJSON_NESTING_LIMIT
#else
#define NESTING_LIMIT 1000
#endif

/* Where a value sits, which decides whether an array there is decoded. */
typedef enum {
    AT_ROOT,       /* the body itself */
    AT_MEMBER,     /* an object member's value: a tensor position */
    AT_ROOT_STEPS, /* the root's "steps": its elements count, kept in the tree */
    AT_STEPS_ITEM, /* an element of the root's "steps": must be an object */
    AT_ITEM,       /* an element of any other array kept in the tree */
    AT_SKIP,       /* inside a decoded array: validated, then blanked */
} place;

typedef struct scan {
    char *t;
    size_t length; /* len + 1: the terminating NUL is part of the buffer, as for cJSON */
    size_t off;
    size_t depth;
    char decimal_point;
    size_t number_limit;
    bool root_is_object;
    size_t values;  /* cJSON values the blanked text will hold */
    size_t arrays;  /* arrays the blanked text will hold, in document order */
    kvd_json_tensor *tensors;
    size_t n_tensors, cap_tensors;
    bool nomem;
    bool has_zeros;       /* a number with leading zeros was seen: zeros says */
    kvd_api_error zeros;  /* the 400 for the first one (reported after the syntax) */
    char *skel;           /* what cJSON parses: the text less the dropped values */
    size_t skel_len;
    size_t mark;          /* the text before mark is in skel (or dropped) */
    size_t strings;       /* string values the tree will hold, in document order */
    bool tensor_key;      /* the member value about to be scanned is k, v, q, k1, ... */
    kvd_json_b64 *b64s;
    size_t n_b64, cap_b64;
} scan;

/* The first error of the array being decoded (api/wire.c's walk order). */
typedef struct walk {
    kvd_json_tensor *t;
    bool chain;    /* still on the first element at each depth */
    size_t cap;    /* numbers data has room for */
    size_t idx[KVD_JSON_TENSOR_MAX_DIMS];
} walk;

static inline bool can_access(const scan *s, size_t i) { return s->off + i < s->length; }

static inline unsigned char at(const scan *s) { return (unsigned char)s->t[s->off]; }

/* cJSON's buffer_skip_whitespace: any byte <= 32 (the final NUL too, then
 * one step back onto it). */
static void skip_ws(scan *s)
{
    if (!can_access(s, 0))
        return;
    while (can_access(s, 0) && at(s) <= 32)
        s->off++;
    if (s->off == s->length)
        s->off--;
}

static bool scan_value(scan *s, place where);

/* How many bytes of a number cJSON hands to strtod: 63 in cJSON 1.7.15 as
 * released, all of them where the number buffer is allocated (1.7.18, and
 * distributions that backported it). Probed once, the answer is fixed. */
static _Atomic size_t number_limit;

static size_t cjson_number_limit(void)
{
    size_t lim = atomic_load_explicit(&number_limit, memory_order_relaxed);
    if (lim)
        return lim;
    char probe[80] = "[";
    memset(probe + 1, '1', 70);
    probe[71] = ']';
    probe[72] = '\0';
    cJSON *j = cJSON_ParseWithLength(probe, 73);
    lim = j ? SIZE_MAX : 63;
    cJSON_Delete(j);
    atomic_store_explicit(&number_limit, lim, memory_order_relaxed);
    return lim;
}

/* The number at s->off has leading zeros ("01", "-00.5"), which cJSON takes
 * and JSON does not. The 400 comes from the same scan that names the field
 * for kvd_json_parse_object, run over the text up to the end of this number:
 * it is the first such number (every earlier one passed through here), and
 * the arrays blanked before it are "[]" and spaces, which move no key or
 * index it reports. Only bodies that have one pay for it. */
static void leading_zeros(scan *s)
{
    size_t end = s->off;
    while (end < s->length - 1 && strchr("0123456789+-.eE", s->t[end]) != NULL && s->t[end] != '\0')
        end++;
    s->has_zeros = kvd__api_json_refuse_leading_zeros(s->t, end, &s->zeros) != 0;
}

/* cJSON's parse_number: the run of [0-9+-eE.] (up to its limit) through
 * strtod, '.' as the locale's decimal point. */
static bool scan_number(scan *s, double *out)
{
    size_t n = 0;
    while (n < s->number_limit && can_access(s, n)) {
        const char c = s->t[s->off + n];
        if (!((c >= '0' && c <= '9') || c == '+' || c == '-' || c == 'e' || c == 'E' || c == '.'))
            break;
        n++;
    }
    char small[64];
    char *buf = n < sizeof small ? small : malloc(n + 1);
    if (!buf) {
        s->nomem = true;
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        const char c = s->t[s->off + i];
        buf[i] = c == '.' ? s->decimal_point : c;
    }
    buf[n] = '\0';
    char *end;
    const double v = strtod(buf, &end);
    const size_t used = (size_t)(end - buf);
    if (buf != small)
        free(buf);
    if (used == 0)
        return false;
    const char *p = s->t + s->off;
    if (!s->has_zeros && p[*p == '-'] == '0' && p[(*p == '-') + 1] >= '0' && p[(*p == '-') + 1] <= '9')
        leading_zeros(s);
    s->off += used;
    *out = v;
    return true;
}

static unsigned hex4(const char *p)
{
    unsigned h = 0;
    for (int i = 0; i < 4; i++) {
        const char c = p[i];
        if (c >= '0' && c <= '9')
            h += (unsigned)(c - '0');
        else if (c >= 'A' && c <= 'F')
            h += 10u + (unsigned)(c - 'A');
        else if (c >= 'a' && c <= 'f')
            h += 10u + (unsigned)(c - 'a');
        else
            return 0; /* cJSON reads an invalid digit as code 0 */
        if (i < 3)
            h <<= 4;
    }
    return h;
}

/* Length of the \u escape at p (6 or 12 with a surrogate pair), 0 if cJSON
 * refuses it; *cp gets the code point. end is the closing quote. */
static size_t utf16_escape(const char *p, const char *end, unsigned long *cp)
{
    if (end - p < 6)
        return 0;
    const unsigned first = hex4(p + 2);
    if (first >= 0xDC00 && first <= 0xDFFF)
        return 0;
    if (first >= 0xD800 && first <= 0xDBFF) {
        const char *second = p + 6;
        if (end - second < 6 || second[0] != '\\' || second[1] != 'u')
            return 0;
        const unsigned low = hex4(second + 2);
        if (low < 0xDC00 || low > 0xDFFF)
            return 0;
        *cp = 0x10000 + (((unsigned long)(first & 0x3FF) << 10) | (low & 0x3FF));
        return 12;
    }
    *cp = first;
    return 6;
}

/* cJSON's parse_string. If key is set, the decoded text up to its first NUL
 * (as strcmp would see it) is compared with key into *is_key. */
static bool scan_string(scan *s, const char *key, bool *is_key)
{
    const size_t start = s->off;
    size_t end = start + 1;
    if (s->t[start] != '"') {
        s->off = start + 1;
        return false;
    }
    /* Most strings (keys, b64 tensors) hold no escape: their end is the next
     * quote, found at memchr's speed, and their text is their value. */
    const char *q = memchr(s->t + end, '"', s->length - end);
    if (q && !memchr(s->t + end, '\\', (size_t)(q - (s->t + end)))) {
        const size_t n = (size_t)(q - (s->t + end));
        if (is_key)
            *is_key = key && strlen(key) == n && memcmp(key, s->t + end, n) == 0;
        s->off = (size_t)(q - s->t) + 1;
        return true;
    }
    while (end < s->length && s->t[end] != '"') {
        if (s->t[end] == '\\') {
            if (end + 1 >= s->length) {
                s->off = start + 1;
                return false;
            }
            end++;
        }
        end++;
    }
    if (end >= s->length || s->t[end] != '"') {
        s->off = start + 1;
        return false;
    }
    /* The decoded key so far, compared byte by byte; a NUL ends it. */
    size_t kpos = 0;
    bool kmatch = key != NULL, kdone = false;
#define KEY_BYTE(b)                                                                    \
    do {                                                                               \
        const unsigned char b_ = (unsigned char)(b);                                   \
        if (kmatch && !kdone) {                                                        \
            if (b_ == 0)                                                               \
                kdone = true;                                                          \
            else if ((unsigned char)key[kpos] != b_)                                   \
                kmatch = false;                                                        \
            else                                                                       \
                kpos++;                                                                \
        }                                                                              \
    } while (0)
    const char *p = s->t + start + 1;
    const char *const e = s->t + end;
    while (p < e) {
        if (*p != '\\') {
            KEY_BYTE(*p);
            p++;
            continue;
        }
        size_t n = 2;
        switch (p[1]) {
        case 'b': KEY_BYTE('\b'); break;
        case 'f': KEY_BYTE('\f'); break;
        case 'n': KEY_BYTE('\n'); break;
        case 'r': KEY_BYTE('\r'); break;
        case 't': KEY_BYTE('\t'); break;
        case '"':
        case '\\':
        case '/': KEY_BYTE(p[1]); break;
        case 'u': {
            unsigned long cp = 0;
            n = utf16_escape(p, e, &cp);
            if (n == 0) {
                s->off = (size_t)(p - s->t);
                return false;
            }
            if (kmatch && !kdone) {
                unsigned char u[4];
                size_t len = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
                static const unsigned char mark[] = {0, 0, 0xC0, 0xE0, 0xF0};
                for (size_t k = len - 1; k > 0; k--) {
                    u[k] = (unsigned char)((cp | 0x80) & 0xBF);
                    cp >>= 6;
                }
                u[0] = len > 1 ? (unsigned char)((cp | mark[len]) & 0xFF) : (unsigned char)(cp & 0x7F);
                for (size_t k = 0; k < len; k++)
                    KEY_BYTE(u[k]);
            }
            break;
        }
        default:
            s->off = (size_t)(p - s->t);
            return false;
        }
        p += n;
    }
#undef KEY_BYTE
    if (is_key)
        *is_key = kmatch && key[kpos] == '\0';
    s->off = end + 1;
    return true;
}

/* The value at [start, end) leaves the skeleton: the text before it is
 * copied, then placeholder ("[]" or "\"\"", never longer than the value). */
static void drop(scan *s, size_t start, size_t end, const char *placeholder)
{
    memcpy(s->skel + s->skel_len, s->t + s->mark, start - s->mark);
    s->skel_len += start - s->mark;
    const size_t n = strlen(placeholder);
    memcpy(s->skel + s->skel_len, placeholder, n);
    s->skel_len += n;
    s->mark = end;
}

/* ---- arrays decoded to f32 ---------------------------------------------- */

static void walk_fail(walk *w, kvd_json_tensor_error kind, size_t depth)
{
    kvd_json_tensor *t = w->t;
    if (t->error != KVD_JSON_TENSOR_OK)
        return;
    t->error = kind;
    t->depth = depth;
    memcpy(t->idx, w->idx, sizeof t->idx);
    free(t->data);
    t->data = NULL;
}

static const char *type_at(char c)
{
    switch (c) {
    case '"': return "a string";
    case '{': return "an object";
    case '[': return "an array";
    case 'n': return "null";
    default: return "a boolean"; /* true, false: scan_value accepted it */
    }
}

/* A wrong element at depth d+1 (in an array at depth d): an array was
 * expected there if d+1 < nd, a number otherwise. */
static void wrong_element(walk *w, size_t d, const char *type)
{
    kvd_json_tensor *t = w->t;
    if (t->error != KVD_JSON_TENSOR_OK)
        return;
    if (d + 1 < t->nd) {
        walk_fail(w, KVD_JSON_TENSOR_NOT_ARRAY, d);
        t->expected = t->dims[d + 1];
    } else {
        walk_fail(w, KVD_JSON_TENSOR_NOT_NUMBER, d);
    }
    t->type = type;
}

/* cJSON's parse_array over an array at depth d of a decoded tensor, checking
 * the walk's rules as it goes: the shape is the first element's at each depth
 * (nd arrays deep), every other array must match it, leaves are finite f32. */
static bool tensor_array(scan *s, walk *w, size_t d)
{
    kvd_json_tensor *t = w->t;
    const bool in_chain = w->chain;
    if (in_chain) {
        if (d >= KVD_JSON_TENSOR_MAX_DIMS) {
            /* Deeper than any tensor: that is the error, whatever follows. */
            w->chain = false;
            if (t->error == KVD_JSON_TENSOR_OK) {
                t->error = KVD_JSON_TENSOR_DEEP;
                free(t->data);
                t->data = NULL;
            }
            return scan_value(s, AT_SKIP);
        }
        t->nd = d + 1;
    }
    if (s->depth >= NESTING_LIMIT)
        return false;
    s->depth++;
    size_t i = 0;
    s->off++;
    skip_ws(s);
    if (can_access(s, 0) && at(s) == ']') {
        w->chain = false;
        goto close;
    }
    if (!can_access(s, 0)) {
        s->off--;
        return false;
    }
    s->off--;
    do {
        s->off++;
        skip_ws(s);
        w->idx[d] = i;
        const char c = can_access(s, 0) ? (char)at(s) : '\0';
        if (c == '[') {
            if (w->chain || d + 1 < t->nd) {
                if (!tensor_array(s, w, d + 1))
                    return false;
            } else {
                wrong_element(w, d, "an array");
                if (!scan_value(s, AT_SKIP))
                    return false;
            }
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            w->chain = false;
            double v;
            if (!scan_number(s, &v))
                return false;
            if (d + 1 < t->nd) {
                wrong_element(w, d, "a number");
            } else if (!isfinite((float)v)) {
                if (t->error == KVD_JSON_TENSOR_OK) {
                    walk_fail(w, KVD_JSON_TENSOR_NOT_FINITE, d);
                    t->value = v;
                }
            } else if (t->data) {
                if (t->count < w->cap)
                    t->data[t->count++] = (float)v;
                else
                    s->nomem = true; /* cannot happen: cap counts every ',' and '[' */
            }
        } else {
            w->chain = false;
            if (!scan_value(s, AT_SKIP))
                return false;
            wrong_element(w, d, type_at(c));
        }
        i++;
        skip_ws(s);
    } while (can_access(s, 0) && at(s) == ',');
    if (!can_access(s, 0) || at(s) != ']')
        return false;
close:
    if (in_chain)
        t->dims[d] = i;
    else if (i != t->dims[d] && t->error == KVD_JSON_TENSOR_OK) {
        walk_fail(w, KVD_JSON_TENSOR_COUNT, d);
        t->expected = t->dims[d];
        t->got = i;
    }
    s->depth--;
    s->off++;
    return true;
}

/* Room for the numbers of the array at s->off: at most one per ',' or '['
 * up to its matching ']' (strings skipped the way cJSON finds their end). */
static size_t count_bound(const scan *s)
{
    size_t n = 0, nest = 0;
    for (size_t i = s->off; i < s->length; i++) {
        const char c = s->t[i];
        if (c == '"') {
            for (i++; i < s->length && s->t[i] != '"'; i++)
                if (s->t[i] == '\\')
                    i++;
        } else if (c == '[') {
            n++;
            nest++;
        } else if (c == ',') {
            n++;
        } else if (c == ']' && --nest == 0) {
            break;
        }
    }
    return n;
}

/* An array in a tensor position: decoded, then its text becomes "[]" and
 * spaces (same length, so later byte offsets do not move). */
static bool tensor_value(scan *s)
{
    if (s->n_tensors == s->cap_tensors) {
        size_t cap = s->cap_tensors ? 2 * s->cap_tensors : 8;
        kvd_json_tensor *grown = realloc(s->tensors, cap * sizeof *grown);
        if (!grown) {
            s->nomem = true;
            return false;
        }
        s->tensors = grown;
        s->cap_tensors = cap;
    }
    kvd_json_tensor *t = &s->tensors[s->n_tensors++];
    memset(t, 0, sizeof *t);
    t->ordinal = s->arrays++;
    s->values++;
    walk w = {.t = t, .chain = true, .cap = count_bound(s)};
    t->data = malloc(w.cap * sizeof(float));
    if (!t->data) {
        s->nomem = true;
        return false;
    }
    const size_t start = s->off;
    if (!tensor_array(s, &w, 0))
        return false;
    if (t->error == KVD_JSON_TENSOR_OK && t->count == 0) {
        free(t->data);
        t->data = NULL;
    }
    drop(s, start, s->off, "[]");
    return true;
}

/* A string member value: a tensor's "b64:..." with no escape in it (its text
 * is its value) leaves the skeleton as "" and is decoded later straight from
 * the body (kvd_json_doc_b64); any other string stays for cJSON. */
static bool string_value(scan *s, bool tensor)
{
    const size_t start = s->off;
    if (!scan_string(s, NULL, NULL))
        return false;
    const size_t ordinal = s->strings++;
    const size_t n = s->off - start - 2; /* between the quotes */
    if (!tensor || n < 4 || memcmp(s->t + start + 1, "b64:", 4) != 0 || memchr(s->t + start + 1, '\\', n))
        return true;
    if (s->n_b64 == s->cap_b64) {
        size_t cap = s->cap_b64 ? 2 * s->cap_b64 : 8;
        kvd_json_b64 *grown = realloc(s->b64s, cap * sizeof *grown);
        if (!grown) {
            s->nomem = true;
            return false;
        }
        s->b64s = grown;
        s->cap_b64 = cap;
    }
    s->b64s[s->n_b64++] = (kvd_json_b64){.text = s->t + start + 5, .len = n - 4, .ordinal = ordinal};
    drop(s, start, s->off, "\"\"");
    return true;
}

/* ---- everything else: validated, counted, kept for cJSON ----------------- */

/* The opening of an array or object at s->off (its bracket, then blanks),
 * as cJSON reads it: 0 when `close` follows at once (s->off on it), 1 when
 * a member follows (s->off back on the character before it, where the
 * member loop's first step starts), -1 at the end of the text (s->off on
 * the last blank, where cJSON reports the error). */
static int open_container(scan *s, char close)
{
    s->off++;
    skip_ws(s);
    if (can_access(s, 0) && at(s) == close)
        return 0;
    s->off--;
    return can_access(s, 1) ? 1 : -1;
}

/* The end of an array or object: `close` at s->off, stepped over. */
static bool close_container(scan *s, char close)
{
    if (!can_access(s, 0) || at(s) != close)
        return false;
    s->depth--;
    s->off++;
    return true;
}

static bool scan_array(scan *s, place where)
{
    const bool kept = where != AT_SKIP;
    if (kept)
        s->arrays++;
    if (s->depth >= NESTING_LIMIT)
        return false;
    s->depth++;
    const place item = where == AT_SKIP ? AT_SKIP : where == AT_ROOT_STEPS ? AT_STEPS_ITEM : AT_ITEM;
    const int first = open_container(s, ']');
    if (first <= 0)
        return first == 0 && close_container(s, ']');
    do {
        s->off++;
        skip_ws(s);
        if (!scan_value(s, item))
            return false;
        skip_ws(s);
    } while (can_access(s, 0) && at(s) == ',');
    return close_container(s, ']');
}

/* A step's tensor fields, by their raw key text (an escaped key is not one:
 * its string then stays for cJSON, which is only slower). */
static bool is_tensor_key(const char *k, size_t n)
{
    if (n == 1)
        return k[0] == 'k' || k[0] == 'v' || k[0] == 'q';
    return n == 2 && (k[0] == 'k' || k[0] == 'v') && (k[1] == '1' || k[1] == '2');
}

static bool scan_object(scan *s, place where)
{
    if (s->depth >= NESTING_LIMIT)
        return false;
    s->depth++;
    const int first = open_container(s, '}');
    if (first <= 0)
        return first == 0 && close_container(s, '}');
    do {
        s->off++;
        skip_ws(s);
        bool steps = false;
        const size_t key = s->off;
        if (!scan_string(s, where == AT_ROOT ? "steps" : NULL, &steps))
            return false;
        const bool tensor = is_tensor_key(s->t + key + 1, s->off - key - 2);
        skip_ws(s);
        if (!can_access(s, 0) || at(s) != ':')
            return false;
        s->off++;
        skip_ws(s);
        const place member = where == AT_SKIP ? AT_SKIP : steps ? AT_ROOT_STEPS : AT_MEMBER;
        s->tensor_key = tensor && member == AT_MEMBER;
        if (!scan_value(s, member))
            return false;
        skip_ws(s);
    } while (can_access(s, 0) && at(s) == ',');
    return close_container(s, '}');
}

/* cJSON's parse_value; on failure s->off is where cJSON would stop. */
static bool scan_value(scan *s, place where)
{
    const bool tensor_key = s->tensor_key;
    s->tensor_key = false;
    if (where != AT_SKIP)
        s->values++;
    if (s->off + 4 <= s->length && strncmp(s->t + s->off, "null", 4) == 0) {
        s->off += 4;
        return true;
    }
    if (s->off + 5 <= s->length && strncmp(s->t + s->off, "false", 5) == 0) {
        s->off += 5;
        return true;
    }
    if (s->off + 4 <= s->length && strncmp(s->t + s->off, "true", 4) == 0) {
        s->off += 4;
        return true;
    }
    if (!can_access(s, 0))
        return false;
    const char c = (char)at(s);
    if (c == '"')
        return where == AT_SKIP ? scan_string(s, NULL, NULL) : string_value(s, tensor_key);
    if (c == '-' || (c >= '0' && c <= '9')) {
        double v;
        return scan_number(s, &v);
    }
    if (c == '[') {
        if (where == AT_MEMBER || where == AT_STEPS_ITEM) {
            s->values--; /* tensor_value counts its placeholder */
            return tensor_value(s);
        }
        return scan_array(s, where);
    }
    if (c == '{') {
        if (where == AT_ROOT)
            s->root_is_object = true;
        return scan_object(s, where);
    }
    return false;
}

/* ---- the document ------------------------------------------------------- */

void kvd_json_doc_free(kvd_json_doc *doc)
{
    if (!doc)
        return;
    cJSON_Delete(doc->root);
    for (size_t i = 0; i < doc->n_tensors; i++)
        free(doc->tensors[i].data);
    free(doc->tensors);
    free(doc->b64);
    memset(doc, 0, sizeof *doc);
}

const kvd_json_b64 *kvd_json_doc_b64(const kvd_json_doc *doc, const cJSON *item)
{
    if (!doc || !item || !cJSON_IsString(item) || item->valueint <= 0 || (size_t)item->valueint > doc->n_b64)
        return NULL;
    const kvd_json_b64 *b = &doc->b64[item->valueint - 1];
    return b->node == item ? b : NULL;
}

kvd_json_tensor *kvd_json_doc_tensor(const kvd_json_doc *doc, const cJSON *item)
{
    if (!doc || !item || !cJSON_IsArray(item) || item->child || item->valueint <= 0
        || (size_t)item->valueint > doc->n_tensors)
        return NULL;
    kvd_json_tensor *t = &doc->tensors[item->valueint - 1];
    return t->node == item ? t : NULL;
}

/* Where attach is: arrays and strings seen, next tensor and b64 string. */
typedef struct attach_pos {
    size_t arrays, strings, tensor, b64;
} attach_pos;

/* Numbers the tree's arrays and strings in document order (cJSON keeps text
 * order) and marks each placeholder with its tensor's (b64 string's) index + 1. */
static void attach(cJSON *item, kvd_json_doc *doc, attach_pos *at)
{
    for (; item; item = item->next) {
        if (cJSON_IsArray(item)) {
            if (at->tensor < doc->n_tensors && doc->tensors[at->tensor].ordinal == at->arrays) {
                doc->tensors[at->tensor].node = item;
                item->valueint = (int)(at->tensor + 1);
                at->tensor++;
            }
            at->arrays++;
        } else if (cJSON_IsString(item)) {
            if (at->b64 < doc->n_b64 && doc->b64[at->b64].ordinal == at->strings) {
                doc->b64[at->b64].node = item;
                item->valueint = (int)(at->b64 + 1);
                at->b64++;
            }
            at->strings++;
        }
        if (item->child)
            attach(item->child, doc, at);
    }
}

int kvd_json_parse_step_text(char *body, size_t len, size_t max_values, kvd_json_doc *doc,
                             kvd_api_error *err)
{
    memset(doc, 0, sizeof *doc);
    if (!body || len == 0)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                                 "body is empty; expected a JSON object");
    const char *nul = memchr(body, '\0', len);
    if (nul)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                                 "invalid JSON: NUL byte at byte offset %zu", (size_t)(nul - body));
    /* Leading zeros are found by the pass below (scan_number) but reported
     * only after the syntax, as kvd_json_parse_object does. */
    scan s = {.t = body, .length = len + 1, .decimal_point = localeconv()->decimal_point[0],
              .number_limit = cjson_number_limit()};
    /* Never longer than the text: each placeholder replaces a longer value. */
    s.skel = malloc(len + 1);
    if (!s.skel)
        return kvd_api_error_set(err, 500, KVD_ERR_INTERNAL, NULL, "out of memory decoding the body's arrays");
    if (s.length >= 5 && strncmp(body, "\xEF\xBB\xBF", 3) == 0)
        s.off = 3; /* cJSON skips a UTF-8 byte order mark */
    skip_ws(&s);
    bool ok = scan_value(&s, AT_ROOT);
    if (ok) {
        skip_ws(&s);
        ok = s.off < s.length && s.t[s.off] == '\0';
    }
    doc->tensors = s.tensors;
    doc->n_tensors = s.n_tensors;
    doc->b64 = s.b64s;
    doc->n_b64 = s.n_b64;
    if (s.nomem || !ok || !s.root_is_object || s.has_zeros || s.values > max_values)
        free(s.skel);
    if (s.nomem) {
        kvd_json_doc_free(doc);
        return kvd_api_error_set(err, 500, KVD_ERR_INTERNAL, NULL,
                                 "out of memory decoding the body's arrays");
    }
    if (!ok) {
        kvd_json_doc_free(doc);
        kvd__api_json_syntax_error(body, len, s.off < s.length ? s.off : s.length - 1, err);
        return -1;
    }
    if (!s.root_is_object) {
        /* The root is the first value after the BOM and whitespace. */
        size_t r = strncmp(body, "\xEF\xBB\xBF", 3) == 0 && len >= 4 ? 3 : 0;
        while (r < len && (unsigned char)body[r] <= 32)
            r++;
        const char first = body[r];
        const char *type = first == '[' ? "an array"
                           : first == '-' || (first >= '0' && first <= '9') ? "a number"
                                                                           : type_at(first);
        kvd_json_doc_free(doc);
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                                 "body must be a JSON object, got %s", type);
    }
    if (s.has_zeros) {
        kvd_json_doc_free(doc);
        *err = s.zeros;
        return -1;
    }
    if (s.values > max_values) {
        kvd_json_doc_free(doc);
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, NULL,
                                 "body has %zu JSON values besides the numbers of its arrays, "
                                 "more than the %zu a step body can need",
                                 s.values, max_values);
    }
    /* The skeleton's tail, then cJSON over it (body itself is not changed:
     * the b64 strings' text stays there for kvd_json_doc_b64). */
    memcpy(s.skel + s.skel_len, body + s.mark, len - s.mark);
    s.skel_len += len - s.mark;
    s.skel[s.skel_len] = '\0';
    const char *end = NULL;
    kvd__api_json_oom_reset();
    doc->root = cJSON_ParseWithLengthOpts(s.skel, s.skel_len + 1, &end, 1);
    const size_t at = end && end >= s.skel ? (size_t)(end - s.skel) : 0;
    free(s.skel);
    if (!doc->root && kvd__api_json_oom()) {
        kvd_json_doc_free(doc);
        return kvd_api_error_set(err, 500, KVD_ERR_INTERNAL, NULL, "out of memory parsing the body");
    }
    if (!doc->root) {
        /* The pass above accepted what cJSON refuses: a bug, not the client's. */
        kvd_json_doc_free(doc);
        return kvd_api_error_set(err, 500, KVD_ERR_INTERNAL, NULL,
                                 "JSON pre-pass and parser disagree at byte offset %zu of the skeleton", at);
    }
    attach_pos pos = {0};
    attach(doc->root, doc, &pos);
    if (pos.tensor != doc->n_tensors || pos.b64 != doc->n_b64) {
        kvd_json_doc_free(doc);
        return kvd_api_error_set(err, 500, KVD_ERR_INTERNAL, NULL,
                                 "JSON pre-pass found %zu arrays and %zu b64 strings the parser did not",
                                 doc->n_tensors - pos.tensor, doc->n_b64 - pos.b64);
    }
    return 0;
}
