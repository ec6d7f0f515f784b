/* server/auth.h — kvd's API keys at start-up: the key set made from
 * --api-key-file and KVD_API_KEY (their union), the checks that make a bad
 * key configuration a start-up error, and the warning for a listener
 * reachable from other machines with no key. Matching is api/auth.h's. */
#ifndef KVD_SERVER_AUTH_H
#define KVD_SERVER_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "api/auth.h"
#include "server/config.h"

/* Fills keys (empty on entry) from cfg->api_key_file and cfg->api_key, both
 * optional. Errors (-1, message in err, never quoting a key): an unreadable
 * file or one without a key, a malformed key, KVD_API_KEY set but blank,
 * --metrics-auth with no key at all. Returns 0. */
int kvd__auth_load(const kvd_config *cfg, kvd_auth_keys *keys, char *err, size_t err_len);

/* True for a numeric loopback address: 127.0.0.0/8, ::1, ::ffff:127.x.y.z. */
bool kvd__host_is_loopback(const char *host);

/* The start-up warning for cfg with these keys (a line without '\n'), or
 * NULL when none is due: only a non-loopback --host with no key warns. */
const char *kvd__auth_warning(const kvd_config *cfg, const kvd_auth_keys *keys);

#endif
