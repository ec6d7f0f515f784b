/* tests/support/checked_session.h — a kvd session shadowed by the double-
 * precision reference (ref_attention.h): every step the test sends is also
 * applied to the reference, and every answer ("o", "tokens", "evicted") is
 * compared with it, so a test reads as a list of steps. */
#ifndef KVD_TEST_CHECKED_SESSION_H
#define KVD_TEST_CHECKED_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>

#include "tests/support/kvd_data.h"
#include "tests/support/ref_attention.h"

typedef struct checked_session {
    int port;
    char *id;                 /* [<--id-prefix>-]<32 hex>, malloc'd */
    size_t layers, heads, kv_heads, head_dim;
    size_t kv_row, q_row;     /* kv_heads*head_dim, heads*head_dim */
    ref_session *ref;
    rng r;
    double tol_rel;           /* allowed max |o - ref| / max|v| */
    size_t steps_sent;        /* successful step requests */
} checked_session;

/* Creates the session on the server (asserting 201) with the given shape;
 * `extra_json` (e.g. "\"scale\":0.5", or NULL) is added to the create body.
 * scale <= 0 means the default 1/sqrt(head_dim) for the reference. */
void cs_create(checked_session *cs, int port, size_t layers, size_t heads, size_t kv_heads, size_t head_dim,
               double scale, const char *extra_json, uint64_t seed, double tol_rel);
/* Frees the local state (does not delete the server's session). */
void cs_free(checked_session *cs);

/* A step with fresh random data: k, v uniform in [-1, 1), q in [-2, 2)
 * (so softmax is neither flat nor one-hot). Free with cs_spec_free. */
step_spec cs_spec(checked_session *cs, long layer, size_t m, size_t m_q, const char *mask, bool b64);
void cs_spec_free(step_spec *s);

/* Applies specs to the reference and returns the body to send (caller
 * frees) and the expected outputs *want (n arrays, caller frees with
 * cs_want_free). multi: a {"steps": [...]} body even for n = 1; otherwise n
 * must be 1. */
char *cs_prepare(checked_session *cs, const step_spec *specs, size_t n, bool multi, const char *encoding,
                 double ***want);
/* Checks a 200 response body against the prepared outputs. */
void cs_verify(checked_session *cs, const step_spec *specs, size_t n, bool multi, const char *encoding,
               double **want, const cJSON *resp, const char *what);
void cs_want_free(double **want, size_t n);

/* cs_prepare + POST + cs_verify. */
void cs_steps(checked_session *cs, const step_spec *specs, size_t n, bool multi, const char *encoding,
              const char *what);
/* One random step (cs_spec + cs_steps). */
void cs_random_step(checked_session *cs, long layer, size_t m, size_t m_q, const char *mask, bool b64_in,
                    const char *encoding, const char *what);

/* Asserts the server's stats match the reference: "tokens" and "appended"
 * (summed over streams), and each layer's per-kv-head "tokens". Returns the
 * stats (caller cJSON_Deletes). */
cJSON *cs_check_stats(checked_session *cs, const char *what);

#endif
