/* api/wire.h — tensors on the wire: flat (or nested, row-major) JSON number
 * arrays, or a string "b64:<base64 of little-endian f32>". Every decoded
 * number must be finite as an f32 (NaN, infinity, |x| > FLT_MAX are errors). */
#ifndef KVD_API_WIRE_H
#define KVD_API_WIRE_H

#include <stddef.h>

#include <cJSON.h>

#include "api/errors.h"
#include "api/json.h"

typedef enum { KVD_WIRE_ENCODING_JSON, KVD_WIRE_ENCODING_B64 } kvd_wire_encoding;

/* Decodes `item` into a malloc'd f32 array (caller frees) whose element
 * count must be a positive-or-zero multiple of `row` (the product of the
 * trailing dims, e.g. kv_heads*head_dim, described by row_desc such as
 * "kv_heads*head_dim = 2*64"); sets *rows = count / row. A nested array
 * (numpy's tolist()) is accepted if rectangular and is flattened row-major.
 * rows > max_rows is an error. On error returns -1 with err filled (400,
 * field = `field`, a message naming what was expected and what came). */
int kvd_wire_decode(const cJSON *item, const char *field, size_t row,
                      const char *row_desc, size_t max_rows,
                      float **out, size_t *rows, kvd_api_error *err);

/* kvd_wire_decode for an array decoded from the body's text
 * (kvd_json_parse_step_text): the same checks, limits and messages, in the
 * same order. On success *out takes t's numbers (t keeps none); on error
 * nothing changes but err. */
int kvd_wire_decode_tensor(kvd_json_tensor *t, const char *field, size_t row,
                           const char *row_desc, size_t max_rows, float **out, size_t *rows,
                           kvd_api_error *err);

/* Encodes n floats as a cJSON value: a flat number array (JSON) or a
 * "b64:..." string. Returns NULL on allocation failure; caller owns it. */
cJSON *kvd_wire_encode(const float *x, size_t n, kvd_wire_encoding enc);

/* Base64 (RFC 4648, with padding) of little-endian f32s, prefixed "b64:".
 * Returns malloc'd NUL-terminated text or NULL. */
char *kvd_wire_b64_encode_f32(const float *x, size_t n);

/* Decodes base64 text (without the "b64:" prefix) of len bytes into n
 * floats. Returns 0, or -1 if the text is not valid base64 or its length is
 * not a whole number of f32s (then *n is untouched). *out is malloc'd. */
int kvd_wire_b64_decode_f32(const char *text, size_t len, float **out, size_t *n);

#endif
