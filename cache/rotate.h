/* cache/rotate.h — rotated quantization (cache.rotate "hadamard"; QuaRot,
 * Ashkboos et al. 2024, arXiv 2404.00456): the step engine stores H k and
 * H v, attends with H q, and answers H^T o', where for the stream of
 * (layer, kv head g)
 *     H = (1/sqrt(d)) W diag(s),   W the Sylvester Hadamard matrix (attention/hadamard.h),
 *     s_c = -1 if bit c % 64 of word c / 64 is set, else +1, words w = 0, 1, ...:
 *         key_g  = splitmix64(seed) ^ splitmix64((layer << 32) | g)
 *         word_w = splitmix64(key_g + w)
 *     splitmix64(z): z += 0x9e3779b97f4a7c15; z = (z ^ z >> 30) * 0xbf58476d1ce4e5b9;
 *                    z = (z ^ z >> 27) * 0x94d049bb133111eb; return z ^ z >> 31
 * (seed: the session's). H is orthonormal, so <H q, H k> = <q, k> and
 * sum_j p_j H v_j = H o: scores and output are unchanged in exact arithmetic,
 * while a key's few large channels are spread over all d channels before the
 * dtype rounds them. The cache is never de-rotated. */
#ifndef KVD_CACHE_ROTATE_H
#define KVD_CACHE_ROTATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/entry.h"
#include "cache/session.h"

/* key_g above for (layer, kv_head) under seed: it names one H. */
uint64_t kvd_rotate_key(uint64_t seed, uint32_t layer, uint32_t kv_head);

/* True when s_c = -1 for the H of key. */
bool kvd_rotate_sign_negative(uint64_t key, size_t c);

/* x <- H x and x <- H^T x for one row of d numbers (d a power of two), in
 * f32: signs, then the butterfly, then 1/sqrt(d) (exact when d is a power of
 * 4); back: butterfly, 1/sqrt(d), signs. */
void kvd_rotate_row(uint64_t key, float *x, size_t d);
void kvd_rotate_row_back(uint64_t key, float *x, size_t d);

/* Which configs may rotate: kvd_session_check_rotate (cache/session.h). */

/* ---- Private to cache/ (the step engine). ---- */

/* The entries as the rotated cache takes them: a copy of each entry whose
 * k, v (keys and values of kv head g rotated by g's H) and q (query head h
 * by the H of its kv head h / (heads / kv_heads)) point into one new buffer.
 * Returns the entries array (free with kvd__rotate_entries_free) or NULL when
 * memory fails. Standard attention only (tensor sessions refuse rotation). */
kvd_step_entry *kvd__rotate_entries(const kvd_session_config *cfg, const kvd_step_entry *entries, size_t n);
void kvd__rotate_entries_free(kvd_step_entry *rotated);

/* o[m_q][heads][d] <- each query head's row times the H^T of its kv head in
 * `layer`: the rotated attention's output back in the basis it was sent in. */
void kvd__rotate_output_back(const kvd_session_config *cfg, uint32_t layer, float *o, size_t m_q);

#endif
