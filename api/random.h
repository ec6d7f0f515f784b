/* api/random.h — randomness for session ids and seeds (api-internal). */
#ifndef KVD_API_RANDOM_H
#define KVD_API_RANDOM_H

#include <stddef.h>

/* Fills buf with n bytes from the kernel's CSPRNG (getrandom, retried on
 * EINTR and short reads). Returns 0 or a negative errno. */
int kvd__api_random_bytes(void *buf, size_t n);

#endif
