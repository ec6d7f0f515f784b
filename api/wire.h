/* api/wire.h — tensors on the wire: flat or [m, heads, head_dim]-nested JSON
 * number arrays, or a string "b64:<base64 of little-endian f32>". Every decoded
 * number must be finite as an f32 (NaN, infinity, |x| > FLT_MAX are errors). */
#ifndef KVD_API_WIRE_H
#define KVD_API_WIRE_H

#include <stdbool.h>
#include <stddef.h>

#include <cJSON.h>

#include "api/errors.h"
#include "api/json.h"

typedef enum { KVD_WIRE_ENCODING_JSON, KVD_WIRE_ENCODING_B64 } kvd_wire_encoding;

/* The shape a tensor field must have: [rows, heads, head_dim], rows free
 * (m new tokens for k/v, m_q queries for q). Names are for messages. */
typedef struct kvd_wire_shape {
    size_t heads;           /* kv_heads for k, v, k1, k2, v1, v2; heads for q */
    size_t head_dim;
    const char *rows_name;  /* "m" or "m_q" (NULL: "m") */
    const char *heads_name; /* "kv_heads" or "heads" (NULL: no names in messages) */
} kvd_wire_shape;

/* Decodes `item` into a malloc'd f32 array (caller frees) and sets *rows.
 * The accepted forms (the shape rules; both decode paths apply them, with
 * the same messages, in the same order):
 * - "b64:..." or a flat number array: any multiple of heads*head_dim
 *   numbers; rows = count / (heads*head_dim);
 * - a nested array (numpy's tolist()), first rectangular (every element
 *   checked against the first at each depth) and then exactly
 *   [rows, heads, head_dim] (3 deep) or [rows, heads*head_dim] (2 deep);
 *   anything else — [m, heads, head_dim] sent for k, 4 deep, [1, 0] — is a
 *   400 naming both shapes ("k: expected [m, 2, 64], got [3, 8, 64] ...").
 * rows > max_rows is an error. On error returns -1 with err filled (400,
 * field = `field`, a message naming what was expected and what came). */
int kvd_wire_decode(const cJSON *item, const char *field, const kvd_wire_shape *shape,
                    size_t max_rows, float **out, size_t *rows, kvd_api_error *err);

/* kvd_wire_decode for a "b64:" string given as the len bytes of base64 after
 * its prefix (api/json.h kvd_json_b64: read in place in the body): the same
 * checks, errors and result. */
int kvd_wire_decode_b64(const char *text, size_t len, const char *field, const kvd_wire_shape *shape,
                        size_t max_rows, float **out, size_t *rows, kvd_api_error *err);

/* kvd_wire_decode for an array decoded from the body's text
 * (kvd_json_parse_step_text): the same checks, limits and messages, in the
 * same order. On success *out takes t's numbers (t keeps none); on error
 * nothing changes but err. */
int kvd_wire_decode_tensor(kvd_json_tensor *t, const char *field, const kvd_wire_shape *shape,
                           size_t max_rows, float **out, size_t *rows, kvd_api_error *err);

/* Encodes n floats as a cJSON value: a flat number array (JSON) or a
 * "b64:..." string. Returns NULL on allocation failure; caller owns it. */
cJSON *kvd_wire_encode(const float *x, size_t n, kvd_wire_encoding enc);

/* A growable text buffer that responses are written straight into (no
 * cJSON tree, one allocation that the response then owns). Once an
 * allocation fails, `failed` is set and later writes do nothing. */
typedef struct kvd_wire_buf {
    char *p;     /* NUL-terminated text (malloc'd; NULL until written) */
    size_t len;
    size_t cap;
    bool failed;
} kvd_wire_buf;

/* Makes room for n more bytes (and the NUL); false once failed. */
bool kvd_wire_buf_reserve(kvd_wire_buf *b, size_t n);
void kvd_wire_buf_put(kvd_wire_buf *b, const char *s, size_t n);
void kvd_wire_buf_puts(kvd_wire_buf *b, const char *s);
void kvd_wire_buf_size(kvd_wire_buf *b, size_t v);   /* a decimal integer */
void kvd_wire_buf_double(kvd_wire_buf *b, double v); /* shortest of %.15g / %.17g; null if not finite */
void kvd_wire_buf_free(kvd_wire_buf *b);

/* The JSON text of n floats, appended: a flat number array (each number
 * formatted once with "%.9g", which reads back as the same f32; +-FLT_MAX as
 * 3.40282346e+38, a non-finite value as null) or a "b64:..." string. The
 * text is what kvd_wire_encode + cJSON_PrintUnformatted give, but for -0,
 * written "-0", and integers of 10+ digits, written in e-notation. */
void kvd_wire_buf_tensor(kvd_wire_buf *b, const float *x, size_t n, kvd_wire_encoding enc);

/* Base64 (RFC 4648, with padding) of little-endian f32s, prefixed "b64:".
 * Returns malloc'd NUL-terminated text or NULL. */
char *kvd_wire_b64_encode_f32(const float *x, size_t n);

/* Decodes base64 text (without the "b64:" prefix) of len bytes into n
 * floats. Returns 0, or -1 if the text is not valid base64 or its length is
 * not a whole number of f32s (then *n is untouched). *out is malloc'd. */
int kvd_wire_b64_decode_f32(const char *text, size_t len, float **out, size_t *n);

#endif
