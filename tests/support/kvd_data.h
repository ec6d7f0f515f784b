/* tests/support/kvd_data.h — test data for kvd's wire format: a seeded PRNG,
 * a growable string buffer, f32 tensors as JSON arrays or "b64:" strings
 * (little-endian f32, RFC 4648 base64), step bodies (one layer or "steps"),
 * and decoding the "o" tensor of a step response. Written from DESIGN.md §3;
 * it shares no code with kvd's own encoder/decoder. */
#ifndef KVD_TEST_DATA_H
#define KVD_TEST_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>

/* splitmix64: tiny, seedable, good enough for test vectors. */
typedef struct rng {
    uint64_t state;
} rng;

void rng_seed(rng *r, uint64_t seed);
uint64_t rng_next(rng *r);
/* Uniform in [lo, hi). */
double rng_uniform(rng *r, double lo, double hi);
/* Fills x[0..n) with uniform values in [lo, hi). */
void rng_fill(rng *r, float *x, size_t n, float lo, float hi);
/* malloc'd n floats uniform in [lo, hi) (never NULL; n = 0 gives a valid
 * pointer). */
float *rng_tensor(rng *r, size_t n, float lo, float hi);

/* Growable NUL-terminated string. */
typedef struct sbuf {
    char *s;
    size_t len, cap;
} sbuf;

void sb_init(sbuf *b);
void sb_putn(sbuf *b, const char *s, size_t n);
void sb_puts(sbuf *b, const char *s);
void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Returns the string (caller frees) and resets b. */
char *sb_take(sbuf *b);
void sb_free(sbuf *b);

/* Appends [x0,x1,...] with 9 significant digits (round-trips every f32). */
void sb_floats_json(sbuf *b, const float *x, size_t n);
/* Appends "b64:<base64 of little-endian f32>" including the quotes. */
void sb_floats_b64(sbuf *b, const float *x, size_t n);
/* Base64 of raw bytes (no prefix), malloc'd. */
char *b64_encode(const void *data, size_t len);
/* Decodes base64 (with padding); returns malloc'd bytes and *len, or NULL if
 * the text is not valid base64. */
unsigned char *b64_decode(const char *text, size_t text_len, size_t *len);

/* One layer's step as the test wants it on the wire. */
typedef struct step_spec {
    long layer;
    const float *k, *v;   /* [m][kv_heads][head_dim] */
    size_t m;
    const float *q;       /* [m_q][heads][head_dim] */
    size_t m_q;
    const char *mask;     /* "causal", "block", or NULL to leave it to the server */
    bool b64;             /* tensors as "b64:..." (an empty tensor is always []) */
} step_spec;

/* Appends the step object {"layer":..,"k":..,"v":..,"q":..[,"mask":..]}.
 * kv_row = kv_heads*head_dim, q_row = heads*head_dim. */
void sb_step_object(sbuf *b, const step_spec *s, size_t kv_row, size_t q_row);
/* Writes one step object of some kind of spec (standard or tensor). */
typedef void (*step_writer)(sbuf *b, const void *spec, size_t kv_row, size_t q_row);
/* The body of one step object, or of {"steps": [n objects]} from an array of
 * specs spec_size bytes apart; encoding NULL leaves "encoding" out. Caller
 * frees. Every body builder below is one of these. */
char *body_one(step_writer w, const void *spec, size_t kv_row, size_t q_row, const char *encoding);
char *body_many(step_writer w, const void *specs, size_t spec_size, size_t n, size_t kv_row, size_t q_row,
                const char *encoding);
/* A one-layer body; encoding NULL leaves "encoding" out. Caller frees. */
char *step_body(const step_spec *s, size_t kv_row, size_t q_row, const char *encoding);
/* A {"steps":[...]} body. Caller frees. */
char *steps_body(const step_spec *s, size_t n, size_t kv_row, size_t q_row, const char *encoding);

/* Decodes a response tensor: a JSON number array or a "b64:" string.
 * Returns 0 with *out (malloc'd, caller frees) and *n, or -1. */
int tensor_from_json(const cJSON *item, float **out, size_t *n);

#endif
