/* api/wire.c — tensors on the wire (DESIGN.md §3): decoding JSON number
 * arrays (flat, or nested exactly [m, heads, head_dim] / [m, heads*head_dim])
 * and "b64:" strings of little-endian f32 into malloc'd f32 arrays that the
 * caller owns, with every number checked finite as an f32 and the shape rules
 * of wire.h; and encoding output tensors back the same two ways.
 * Pure functions of their arguments: safe to call from any worker thread.
 * Over 600 lines because encoding into a response buffer shares the b64
 * writer and the f32 rules with the rest; splitting it out is a follow-up. */
#include "api/wire.h"

#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/json.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define KVD_BIG_ENDIAN 1
#else
#define KVD_BIG_ENDIAN 0
#endif

/* Tensors on the API have at most 3 dims ([m][heads][head_dim]); deeper
 * nesting is accepted up to this bound so the shape fits in a fixed array
 * (no allocation while validating) and recursion depth stays small. */
#define TENSOR_MAX_DIMS KVD_JSON_TENSOR_MAX_DIMS

#define B64_PREFIX "b64:"
#define B64_PREFIX_LEN 4

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Value of each byte in the RFC 4648 alphabet, -1 if not in it ('=' is
 * handled apart, as padding). */
static const int8_t b64_value[256] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1, -1, 63,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1,
    -1,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, -1,
    -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};

/* ---- base64 ------------------------------------------------------------ */

/* Byte i of the little-endian serialization of x[0..]. */
static inline unsigned char le_byte(const float *x, size_t i)
{
    const unsigned char *p = (const unsigned char *)x;
#if KVD_BIG_ENDIAN
    return p[(i & ~(size_t)3) | (3 - (i & 3))];
#else
    return p[i];
#endif
}

/* Writes the base64 of n little-endian f32s (no prefix) at p; returns the
 * end. The caller sized p: (4n + 2) / 3 * 4 rounded up to whole groups. */
static char *b64_write(const float *x, size_t n, char *p)
{
    const size_t nbytes = n * sizeof(float);
    size_t i = 0;
    for (; i + 3 <= nbytes; i += 3) {
        uint32_t v = (uint32_t)le_byte(x, i) << 16 | (uint32_t)le_byte(x, i + 1) << 8
                     | le_byte(x, i + 2);
        p[0] = b64_alphabet[v >> 18];
        p[1] = b64_alphabet[(v >> 12) & 63];
        p[2] = b64_alphabet[(v >> 6) & 63];
        p[3] = b64_alphabet[v & 63];
        p += 4;
    }
    if (nbytes - i == 1) {
        uint32_t v = (uint32_t)le_byte(x, i) << 16;
        *p++ = b64_alphabet[v >> 18];
        *p++ = b64_alphabet[(v >> 12) & 63];
        *p++ = '=';
        *p++ = '=';
    } else if (nbytes - i == 2) {
        uint32_t v = (uint32_t)le_byte(x, i) << 16 | (uint32_t)le_byte(x, i + 1) << 8;
        *p++ = b64_alphabet[v >> 18];
        *p++ = b64_alphabet[(v >> 12) & 63];
        *p++ = b64_alphabet[(v >> 6) & 63];
        *p++ = '=';
    }
    return p;
}

/* Returns malloc'd text (caller frees) or NULL on allocation failure or if
 * the encoded length would not fit in size_t. */
char *kvd_wire_b64_encode_f32(const float *x, size_t n)
{
    /* 4 output chars per 3 input bytes; bound n so 4n, and the text, fit. */
    if (n > (SIZE_MAX / 4 - B64_PREFIX_LEN - 8) / 2)
        return NULL;
    const size_t nbytes = n * sizeof(float);
    const size_t text_len = B64_PREFIX_LEN + (nbytes + 2) / 3 * 4;
    char *out = malloc(text_len + 1);
    if (!out)
        return NULL;
    memcpy(out, B64_PREFIX, B64_PREFIX_LEN);
    char *p = b64_write(x, n, out + B64_PREFIX_LEN);
    *p = '\0';
    return out;
}

typedef enum { B64_OK = 0, B64_INVALID = -1, B64_NOMEM = -2 } b64_status;

/* The first character of text[0..body) outside the alphabet, described in
 * why; false if there is none. */
static bool b64_bad_char(const char *text, size_t body, char *why, size_t why_len)
{
    for (size_t i = 0; i < body; i++) {
        if (b64_value[(unsigned char)text[i]] < 0) {
            if (text[i] == '=')
                snprintf(why, why_len, "base64 padding '=' at offset %zu is not at the end", i);
            else
                snprintf(why, why_len, "invalid base64 character 0x%02x at offset %zu",
                         (unsigned)(unsigned char)text[i], i);
            return true;
        }
    }
    return false;
}

/* Strict RFC 4648 decoding: alphabet characters only (no whitespace, no
 * URL-safe alphabet), length a multiple of 4, '=' only as one or two final
 * padding characters, pad bits zero (canonical encoding), and a byte count
 * that is a whole number of f32s. On B64_INVALID, why/why_len get a
 * description (a bad character first, then the count, then the pad bits: the
 * first rule broken in that order). On success *out is malloc'd (NULL when
 * *n is 0). The text is read once when it is valid: each group of four is
 * checked and decoded together, and only an invalid text is scanned again for
 * its first bad character. */
static b64_status b64_decode(const char *text, size_t len, float **out, size_t *n,
                             char *why, size_t why_len)
{
    if (len % 4 != 0) {
        snprintf(why, why_len, "base64 length %zu is not a multiple of 4", len);
        return B64_INVALID;
    }
    size_t pad = 0;
    if (len >= 1 && text[len - 1] == '=') {
        pad++;
        if (len >= 2 && text[len - 2] == '=')
            pad++;
    }
    const size_t body = len - pad; /* characters that must be in the alphabet */
    const size_t nbytes = len / 4 * 3 - pad;
    /* The checks that need no scan: each reported only after the text is
     * known to have no bad character (which comes first). */
    if (nbytes % sizeof(float) != 0) {
        if (!b64_bad_char(text, body, why, why_len))
            snprintf(why, why_len,
                     "base64 decodes to %zu bytes, not a whole number of f32 (4 bytes each)", nbytes);
        return B64_INVALID;
    }
    /* Canonical form: the bits a padded group does not carry must be zero, so
     * each float array has exactly one encoding. */
    if ((pad == 1 && (b64_value[(unsigned char)text[len - 2]] & 0x3)) ||
        (pad == 2 && (b64_value[(unsigned char)text[len - 3]] & 0xf))) {
        if (!b64_bad_char(text, body, why, why_len))
            snprintf(why, why_len, "base64 padding bits at offset %zu are not zero", len - 1 - pad);
        return B64_INVALID;
    }
    const size_t count = nbytes / sizeof(float);
    if (count == 0) {
        if (b64_bad_char(text, body, why, why_len)) /* "====" and the like */
            return B64_INVALID;
        *out = NULL;
        *n = 0;
        return B64_OK;
    }
    float *dst = malloc(nbytes);
    if (!dst)
        return b64_bad_char(text, body, why, why_len) ? B64_INVALID : B64_NOMEM;
    unsigned char *b = (unsigned char *)dst;
    const unsigned char *t = (const unsigned char *)text;
    const size_t whole = pad ? len / 4 - 1 : len / 4; /* groups of four alphabet characters */
    int bad = 0;                                      /* any table value < 0 (-1) sets the sign bit */
    for (size_t g = 0; g < whole; g++, t += 4, b += 3) {
        const int c0 = b64_value[t[0]], c1 = b64_value[t[1]], c2 = b64_value[t[2]], c3 = b64_value[t[3]];
        bad |= c0 | c1 | c2 | c3;
        const uint32_t v = (uint32_t)c0 << 18 | (uint32_t)c1 << 12 | (uint32_t)c2 << 6 | (uint32_t)c3;
        b[0] = (unsigned char)(v >> 16);
        b[1] = (unsigned char)(v >> 8);
        b[2] = (unsigned char)v;
    }
    if (pad) { /* the last group: 4 - pad characters, 3 - pad bytes */
        const int c0 = b64_value[t[0]], c1 = b64_value[t[1]], c2 = pad == 1 ? b64_value[t[2]] : 0;
        bad |= c0 | c1 | c2;
        const uint32_t v = (uint32_t)c0 << 18 | (uint32_t)c1 << 12 | (uint32_t)c2 << 6;
        b[0] = (unsigned char)(v >> 16);
        if (pad == 1)
            b[1] = (unsigned char)(v >> 8);
    }
    if (bad < 0) {
        free(dst);
        (void)b64_bad_char(text, body, why, why_len);
        return B64_INVALID;
    }
#if KVD_BIG_ENDIAN
    for (size_t j = 0; j < count; j++) {
        uint32_t u;
        memcpy(&u, &dst[j], sizeof u);
        u = __builtin_bswap32(u);
        memcpy(&dst[j], &u, sizeof u);
    }
#endif
    *out = dst;
    *n = count;
    return B64_OK;
}

/* *out is malloc'd on success (NULL when *n is 0; caller frees). Returns -1
 * on invalid text and also when the array cannot be allocated (callers that
 * must tell the two apart use kvd_wire_decode). */
int kvd_wire_b64_decode_f32(const char *text, size_t len, float **out, size_t *n)
{
    char why[128];
    if (!text || !out || !n)
        return -1;
    float *dst;
    size_t count;
    if (b64_decode(text, len, &dst, &count, why, sizeof why) != B64_OK)
        return -1;
    *out = dst;
    *n = count;
    return 0;
}

/* ---- JSON arrays ------------------------------------------------------- */

/* Where the walk over a nested array is: the field name and the index at
 * each depth, formatted only when an error is reported. */
typedef struct walk {
    const char *field;
    size_t dims[TENSOR_MAX_DIMS];
    size_t nd;
    size_t idx[TENSOR_MAX_DIMS];
    float *dst;   /* NULL on the validating pass */
    size_t pos;   /* next flat index into dst */
    kvd_api_error *err;
} walk;

/* field[idx0]..[idx(n-1)] into buf. */
static void index_path(const char *field, const size_t *idx, size_t n, char *buf, size_t len)
{
    int k = snprintf(buf, len, "%s", field);
    size_t used = k > 0 ? (size_t)k : 0;
    for (size_t d = 0; d < n && used < len; d++) {
        k = snprintf(buf + used, len - used, "[%zu]", idx[d]);
        if (k < 0)
            break;
        used += (size_t)k;
    }
}

/* Formats field[i0][i1]..[i(depth-1)] into buf. */
static void walk_path(const walk *w, size_t depth, char *buf, size_t len)
{
    index_path(w->field, w->idx, depth, buf, len);
}

/* Walks `arr` (at `depth`) checking it has the rectangular shape w->dims and
 * finite-f32 numbers at the leaves; writes them to w->dst if set. The
 * validating pass (dst NULL) reports every error, so the filling pass
 * cannot fail. */
static int walk_array(walk *w, const cJSON *arr, size_t depth)
{
    char path[160];
    size_t i = 0;
    for (const cJSON *e = arr->child; e; e = e->next, i++) {
        w->idx[depth] = i;
        if (depth + 1 < w->nd) {
            if (!cJSON_IsArray(e)) {
                walk_path(w, depth + 1, path, sizeof path);
                return kvd_api_error_set(w->err, 400, KVD_ERR_INVALID, w->field,
                                         "%s: expected an array of %zu elements (the tensor "
                                         "must be rectangular), got %s",
                                         path, w->dims[depth + 1], kvd__api_json_type_name(e));
            }
            if (walk_array(w, e, depth + 1) != 0)
                return -1;
            continue;
        }
        if (!cJSON_IsNumber(e)) {
            walk_path(w, depth + 1, path, sizeof path);
            return kvd_api_error_set(w->err, 400, KVD_ERR_INVALID, w->field,
                                     "%s: expected a number, got %s", path,
                                     kvd__api_json_type_name(e));
        }
        const double v = e->valuedouble;
        /* Finite as an f32: the value rounded to nearest f32 must be finite.
         * So 3.4028235e38 (the shortest decimal of FLT_MAX, slightly above it
         * as a double) is accepted, and anything that rounds to infinity —
         * beyond FLT_MAX plus half an ulp, ~3.40282357e38 — is a 400. */
        if (!isfinite((float)v)) {
            walk_path(w, depth + 1, path, sizeof path);
            return kvd_api_error_set(w->err, 400, KVD_ERR_INVALID, w->field,
                                     "%s: not a finite f32 (got %g)", path, v);
        }
        if (w->dst)
            w->dst[w->pos++] = (float)v;
    }
    if (i != w->dims[depth]) {
        walk_path(w, depth, path, sizeof path);
        return kvd_api_error_set(w->err, 400, KVD_ERR_INVALID, w->field,
                                 "%s: expected %zu elements (the tensor must be rectangular), "
                                 "got %zu", path, w->dims[depth], i);
    }
    return 0;
}

/* The row of a shape (heads*head_dim, bounded by the create limits) and its
 * description for messages ("kv_heads*head_dim = 2*64"; "" without names). */
static size_t shape_row(const kvd_wire_shape *sh, char *desc, size_t len)
{
    if (sh->heads_name)
        snprintf(desc, len, "%s*head_dim = %zu*%zu", sh->heads_name, sh->heads, sh->head_dim);
    else
        desc[0] = '\0';
    return sh->heads * sh->head_dim;
}

/* Checks the decoded element count against the row size and the row limit. */
static int check_rows(size_t count, const char *field, size_t row, const char *row_desc,
                      size_t max_rows, kvd_api_error *err)
{
    if (count % row != 0) {
        if (row_desc[0])
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field,
                                     "%s: expected a multiple of %s = %zu numbers, got %zu",
                                     field, row_desc, row, count);
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field,
                                 "%s: expected a multiple of %zu numbers, got %zu",
                                 field, row, count);
    }
    if (count / row > max_rows)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field,
                                 "%s: %zu rows of %zu numbers, more than the limit of %zu",
                                 field, count / row, row, max_rows);
    return 0;
}

/* The shape rule for an array nd deep with dims (rectangular already): flat
 * (nd 1) takes any count, checked by check_rows; nested must be exactly
 * [rows, heads, head_dim] or [rows, heads*head_dim], so a tensor of another
 * head count is never read as more tokens. */
static int check_nesting(const char *field, const kvd_wire_shape *sh, size_t nd,
                         const size_t *dims, kvd_api_error *err)
{
    const size_t row = sh->heads * sh->head_dim;
    if (nd <= 1 || (nd == 2 && dims[1] == row)
        || (nd == 3 && dims[1] == sh->heads && dims[2] == sh->head_dim))
        return 0;
    char got[128];
    size_t used = 0;
    for (size_t d = 0; d < nd && used < sizeof got; d++) {
        int k = snprintf(got + used, sizeof got - used, d ? ", %zu" : "%zu", dims[d]);
        if (k < 0)
            break;
        used += (size_t)k;
    }
    const char *rn = sh->rows_name ? sh->rows_name : "m";
    const char *hn = sh->heads_name ? sh->heads_name : "heads";
    return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field,
                             "%s: expected [%s, %zu, %zu], got [%s] (a nested tensor is [%s, %s, "
                             "head_dim] or [%s, %s*head_dim] = [%s, %zu])",
                             field, rn, sh->heads, sh->head_dim, got, rn, hn, rn, hn, rn, row);
}

/* A string tensor's base64 (after "b64:"): its size checked against the rows
 * allowed before anything is allocated, decoded, rows and finiteness checked. */
static int b64_tensor(const char *text, size_t len, const char *field, size_t row, const char *row_desc,
                      size_t max_rows, float **out, size_t *rows, kvd_api_error *err)
{
    /* Refuse an oversized tensor before allocating for it: the byte
     * count follows from the length and the padding alone. */
    if (len % 4 == 0 && len >= 4) {
        const size_t pad = text[len - 1] != '=' ? 0 : text[len - 2] == '=' ? 2 : 1;
        const size_t nbytes = len / 4 * 3 - pad;
        const size_t cnt = nbytes / sizeof(float);
        if (nbytes % sizeof(float) == 0 && cnt % row == 0 && cnt / row > max_rows)
            return check_rows(cnt, field, row, row_desc, max_rows, err);
    }
    char why[128];
    float *dst = NULL;
    size_t count = 0;
    b64_status st = b64_decode(text, len, &dst, &count, why, sizeof why);
    if (st == B64_NOMEM)
        return kvd_api_error_set(err, 500, KVD_ERR_INTERNAL, field,
                                 "%s: out of memory decoding %zu base64 characters",
                                 field, len);
    if (st != B64_OK)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field, "%s: %s", field, why);
    if (check_rows(count, field, row, row_desc, max_rows, err) != 0) {
        free(dst);
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        if (!isfinite(dst[i])) {
            kvd_api_error_set(err, 400, KVD_ERR_INVALID, field,
                              "%s[%zu]: not a finite f32 (got %g)", field, i, (double)dst[i]);
            free(dst);
            return -1;
        }
    }
    *out = dst;
    *rows = count / row;
    return 0;
}

/* What every decoder starts with: the field's name ("tensor" when none is
 * given) and the row size the session's shape implies, described in desc
 * for errors. A zero row is the server's fault (a 500), not the client's. */
static int tensor_row(const kvd_wire_shape *shape, const char **field, char *desc, size_t len, size_t *row,
                      kvd_api_error *err)
{
    if (!*field)
        *field = "tensor";
    *row = shape_row(shape, desc, len);
    if (*row == 0)
        return kvd_api_error_set(err, 500, KVD_ERR_INTERNAL, *field, "%s: row size 0 (bad session shape)",
                                 *field);
    return 0;
}

/* On success *out is malloc'd (NULL when *rows is 0) and owned by the
 * caller, who frees it. On error nothing is allocated. */
int kvd_wire_decode(const cJSON *item, const char *field, const kvd_wire_shape *shape,
                    size_t max_rows, float **out, size_t *rows, kvd_api_error *err)
{
    char row_desc[96];
    size_t row;
    if (tensor_row(shape, &field, row_desc, sizeof row_desc, &row, err) != 0)
        return -1;
    if (!item)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field, "%s: missing", field);

    if (cJSON_IsString(item)) {
        const char *s = item->valuestring;
        if (!s || strncmp(s, B64_PREFIX, B64_PREFIX_LEN) != 0)
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field,
                                     "%s: a string tensor must start with \"b64:\" "
                                     "(base64 of little-endian f32)", field);
        return b64_tensor(s + B64_PREFIX_LEN, strlen(s + B64_PREFIX_LEN), field, row, row_desc, max_rows, out,
                          rows, err);
    }

    if (!cJSON_IsArray(item))
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field,
                                 "%s: expected an array of numbers or a \"b64:...\" string, got %s",
                                 field, kvd__api_json_type_name(item));

    /* Shape from the first element at each depth; the walk then checks every
     * other element against it. */
    walk w = {.field = field, .err = err};
    size_t count = 1;
    bool overflow = false;
    for (const cJSON *a = item; cJSON_IsArray(a); a = a->child) {
        if (w.nd == TENSOR_MAX_DIMS)
            return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field,
                                     "%s: nested deeper than %d arrays", field, TENSOR_MAX_DIMS);
        size_t d = (size_t)cJSON_GetArraySize(a);
        w.dims[w.nd++] = d;
        if (d && count > SIZE_MAX / d)
            overflow = true;
        else
            count *= d;
    }
    if (walk_array(&w, item, 0) != 0 || check_nesting(field, shape, w.nd, w.dims, err) != 0)
        return -1;
    /* A rectangular array that passed the walk has exactly `count` leaves,
     * all in memory already, so the product cannot really overflow. */
    if (overflow)
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field, "%s: too many numbers", field);
    if (check_rows(count, field, row, row_desc, max_rows, err) != 0)
        return -1;
    float *dst = NULL;
    if (count) {
        dst = malloc(count * sizeof(float)); /* count leaves exist: no overflow */
        if (!dst)
            return kvd_api_error_set(err, 500, KVD_ERR_INTERNAL, field,
                                     "%s: out of memory for %zu numbers", field, count);
        w.dst = dst;
        w.pos = 0;
        (void)walk_array(&w, item, 0); /* validated above: cannot fail */
    }
    *out = dst;
    *rows = count / row;
    return 0;
}

/* The errors walk_array reports, from what the text pass recorded. */
int kvd_wire_decode_b64(const char *text, size_t len, const char *field, const kvd_wire_shape *shape,
                        size_t max_rows, float **out, size_t *rows, kvd_api_error *err)
{
    char row_desc[96];
    size_t row;
    if (tensor_row(shape, &field, row_desc, sizeof row_desc, &row, err) != 0)
        return -1;
    return b64_tensor(text, len, field, row, row_desc, max_rows, out, rows, err);
}

int kvd_wire_decode_tensor(kvd_json_tensor *t, const char *field, const kvd_wire_shape *shape,
                           size_t max_rows, float **out, size_t *rows, kvd_api_error *err)
{
    char row_desc[96];
    size_t row;
    if (tensor_row(shape, &field, row_desc, sizeof row_desc, &row, err) != 0)
        return -1;
    char path[160];
    switch (t->error) {
    case KVD_JSON_TENSOR_OK:
        break;
    case KVD_JSON_TENSOR_DEEP:
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field,
                                 "%s: nested deeper than %d arrays", field, TENSOR_MAX_DIMS);
    case KVD_JSON_TENSOR_NOT_ARRAY:
        index_path(field, t->idx, t->depth + 1, path, sizeof path);
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field,
                                 "%s: expected an array of %zu elements (the tensor "
                                 "must be rectangular), got %s",
                                 path, t->expected, t->type);
    case KVD_JSON_TENSOR_NOT_NUMBER:
        index_path(field, t->idx, t->depth + 1, path, sizeof path);
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field,
                                 "%s: expected a number, got %s", path, t->type);
    case KVD_JSON_TENSOR_NOT_FINITE:
        index_path(field, t->idx, t->depth + 1, path, sizeof path);
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field,
                                 "%s: not a finite f32 (got %g)", path, t->value);
    case KVD_JSON_TENSOR_COUNT:
        index_path(field, t->idx, t->depth, path, sizeof path);
        return kvd_api_error_set(err, 400, KVD_ERR_INVALID, field,
                                 "%s: expected %zu elements (the tensor must be rectangular), "
                                 "got %zu", path, t->expected, t->got);
    }
    if (check_nesting(field, shape, t->nd, t->dims, err) != 0
        || check_rows(t->count, field, row, row_desc, max_rows, err) != 0)
        return -1;
    *out = t->count ? t->data : NULL;
    *rows = t->count / row;
    if (t->count == 0)
        free(t->data);
    t->data = NULL;
    t->count = 0;
    return 0;
}

/* ---- encoding ---------------------------------------------------------- */

/* The double nearest to the 9-significant-digit decimal of x. Nine digits
 * always read back as the same f32, and cJSON then prints at most those
 * digits ("0.100000001" rather than "0.10000000149011612"). The JSON path
 * is the slow one by design (b64 is the fast path). */
static double f32_json_value(float x)
{
    if (!isfinite(x))
        return (double)x;
    char buf[32];
    snprintf(buf, sizeof buf, "%.9g", (double)x);
    const double d = strtod(buf, NULL);
    /* Only +-FLT_MAX has a 9-digit decimal above FLT_MAX (3.40282347e+38),
     * which kvd_wire_decode refuses. Its exact double would not do either:
     * cJSON prints 15 digits ("3.40282346638529e+38", also above FLT_MAX).
     * The 9-digit decimal rounded toward zero still reads back as FLT_MAX. */
    if (fabs(d) > (double)FLT_MAX)
        return copysign(3.40282346e38, d);
    return d;
}

/* Returns a new cJSON value (caller owns it) or NULL on allocation failure. */
cJSON *kvd_wire_encode(const float *x, size_t n, kvd_wire_encoding enc)
{
    if (enc == KVD_WIRE_ENCODING_B64) {
        char *text = kvd_wire_b64_encode_f32(x, n);
        if (!text)
            return NULL;
        cJSON *s = cJSON_CreateString(text);
        free(text);
        return s;
    }
    cJSON *arr = cJSON_CreateArray();
    if (!arr)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        cJSON *num = cJSON_CreateNumber(f32_json_value(x[i]));
        if (!num) {
            cJSON_Delete(arr);
            return NULL;
        }
        cJSON_AddItemToArray(arr, num);
    }
    return arr;
}

/* ---- text straight into a response buffer ------------------------------ */

bool kvd_wire_buf_reserve(kvd_wire_buf *b, size_t n)
{
    if (b->failed)
        return false;
    if (b->cap - b->len > n)
        return true;
    if (n > SIZE_MAX / 2 - b->len - 1) {
        b->failed = true;
        return false;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->failed = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void kvd_wire_buf_put(kvd_wire_buf *b, const char *s, size_t n)
{
    if (!kvd_wire_buf_reserve(b, n))
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void kvd_wire_buf_puts(kvd_wire_buf *b, const char *s)
{
    kvd_wire_buf_put(b, s, strlen(s));
}

void kvd_wire_buf_size(kvd_wire_buf *b, size_t v)
{
    char tmp[24];
    char *e = tmp + sizeof tmp, *p = e;
    do {
        *--p = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    kvd_wire_buf_put(b, p, (size_t)(e - p));
}

void kvd_wire_buf_double(kvd_wire_buf *b, double v)
{
    if (!isfinite(v)) {
        kvd_wire_buf_put(b, "null", 4);
        return;
    }
    char tmp[32];
    int k = snprintf(tmp, sizeof tmp, "%.15g", v);
    if (strtod(tmp, NULL) != v)
        k = snprintf(tmp, sizeof tmp, "%.17g", v);
    kvd_wire_buf_put(b, tmp, (size_t)k);
}

void kvd_wire_buf_free(kvd_wire_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* One f32 as JSON text at p (room for 16 bytes and a NUL); returns its
 * length. "%.9g" reads back as the same f32 (9 significant digits always
 * do); only +-FLT_MAX print above FLT_MAX, so they are written 3.40282346e+38
 * (still FLT_MAX when read back, and not refused as beyond it). */
static size_t f32_text(float x, char *p)
{
    if (!isfinite(x)) {
        memcpy(p, "null", 5);
        return 4;
    }
    if (fabsf(x) == FLT_MAX) {
        const char *t = x < 0 ? "-3.40282346e+38" : "3.40282346e+38";
        const size_t n = strlen(t);
        memcpy(p, t, n + 1);
        return n;
    }
    /* Small integers (common in tests and masks) without the formatter. */
    if (fabsf(x) < 1e6f && x == (float)(int32_t)x && !(x == 0 && signbit(x))) {
        int32_t v = (int32_t)x;
        char tmp[12];
        char *e = tmp + sizeof tmp, *q = e;
        uint32_t u = v < 0 ? (uint32_t)(-(int64_t)v) : (uint32_t)v;
        do {
            *--q = (char)('0' + u % 10);
            u /= 10;
        } while (u);
        if (v < 0)
            *--q = '-';
        const size_t n = (size_t)(e - q);
        memcpy(p, q, n);
        p[n] = '\0';
        return n;
    }
    return (size_t)snprintf(p, 17, "%.9g", (double)x);
}

void kvd_wire_buf_tensor(kvd_wire_buf *b, const float *x, size_t n, kvd_wire_encoding enc)
{
    if (enc == KVD_WIRE_ENCODING_B64) {
        if (n > (SIZE_MAX / 4 - B64_PREFIX_LEN - 8) / 2) {
            b->failed = true;
            return;
        }
        const size_t text = (n * sizeof(float) + 2) / 3 * 4;
        if (!kvd_wire_buf_reserve(b, text + B64_PREFIX_LEN + 2))
            return;
        char *p = b->p + b->len;
        memcpy(p, "\"" B64_PREFIX, B64_PREFIX_LEN + 1);
        p = b64_write(x, n, p + B64_PREFIX_LEN + 1);
        *p++ = '"';
        *p = '\0';
        b->len = (size_t)(p - b->p);
        return;
    }
    /* At most 15 characters a number ("-3.40282346e+38") and a comma. */
    if (n > (SIZE_MAX - 64) / 17) {
        b->failed = true;
        return;
    }
    if (!kvd_wire_buf_reserve(b, n * 16 + 2))
        return;
    char *p = b->p + b->len;
    *p++ = '[';
    for (size_t i = 0; i < n; i++) {
        if (i)
            *p++ = ',';
        p += f32_text(x[i], p);
    }
    *p++ = ']';
    *p = '\0';
    b->len = (size_t)(p - b->p);
}
