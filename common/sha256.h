/* common/sha256.h — SHA-256 (FIPS 180-4) of a byte string, and a comparison
 * of equal-length buffers whose time does not depend on where they differ.
 * kvd uses them to keep API keys only as digests, to match a presented key
 * without a timing side channel, and to name session ids in logs by a short
 * hash. Pure functions: no allocation, safe from any thread. */
#ifndef KVD_COMMON_SHA256_H
#define KVD_COMMON_SHA256_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVD_SHA256_BYTES 32

/* out = SHA-256(data[0..len)). data may be NULL when len is 0. */
void kvd_sha256(const void *data, size_t len, uint8_t out[KVD_SHA256_BYTES]);

/* True when a[0..n) == b[0..n). Reads every byte of both whatever they hold
 * and branches on none of them: the time depends on n only. */
bool kvd_ct_memeq(const void *a, const void *b, size_t n);

#endif
