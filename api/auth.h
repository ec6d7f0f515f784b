/* api/auth.h — API keys (DESIGN.md §3, 401): the set of keys kvd accepts,
 * kept only as SHA-256 digests, read from an --api-key-file and KVD_API_KEY;
 * matching an `Authorization: Bearer <key>` header against every digest in
 * constant time; and the owner id a session is created under. With no key
 * configured every request is the one anonymous owner and nothing is checked. */
#ifndef KVD_API_AUTH_H
#define KVD_API_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/api.h"
#include "common/sha256.h"

/* Owner of a request or a session: KVD_OWNER_ANON when no keys are
 * configured, 1..n (the key's place in the set) when they are, and
 * KVD_OWNER_DENIED for a request without a valid key. */
#define KVD_OWNER_ANON 0u
#define KVD_OWNER_DENIED UINT32_MAX

/* Bounds that keep a key file sane and the per-request match cheap (one
 * SHA-256 of the presented key plus 32 bytes compared per configured key). */
#define KVD_AUTH_KEY_MAX 1024u    /* bytes in one key */
#define KVD_AUTH_KEYS_MAX 4096u   /* keys in the set */

struct kvd_auth_keys {
    uint8_t (*digest)[KVD_SHA256_BYTES]; /* n digests, distinct; malloc'd */
    size_t n;
};

/* Adds one key (len bytes, not NUL-terminated). A key is 1..KVD_AUTH_KEY_MAX
 * visible ASCII characters (0x21..0x7e: what fits a Bearer token without
 * quoting). A key already in the set is not added twice. Returns 0, or -1
 * with a message in err that never quotes the key. */
int kvd_auth_keys_add(kvd_auth_keys *keys, const char *key, size_t len, char *err, size_t err_len);

/* Adds the keys of a key file's text: one key a line; blank lines and lines
 * whose first non-blank character is '#' are skipped; spaces, tabs and a
 * '\r' around a key are trimmed. `source` names the text in messages.
 * Returns how many lines held a key, or -1 with the line number in err. */
int kvd_auth_keys_parse(kvd_auth_keys *keys, const char *text, size_t len, const char *source,
                        char *err, size_t err_len);

/* Reads a key file with kvd_auth_keys_parse. A file that cannot be read or
 * holds no key is an error (-1, err set). Returns the number of keys read. */
int kvd_auth_keys_load_file(kvd_auth_keys *keys, const char *path, char *err, size_t err_len);

void kvd_auth_keys_free(kvd_auth_keys *keys);

/* The owner an Authorization header value stands for: KVD_OWNER_ANON when
 * keys is NULL or empty; else 1..n for `Bearer <key>` (scheme in any case,
 * blanks around the key) with a key of the set, KVD_OWNER_DENIED otherwise.
 * Every digest is compared whatever matched, without early exit, so the
 * time depends only on the presented key's length and the size of the set. */
uint32_t kvd_auth_owner(const kvd_auth_keys *keys, const char *authorization);

/* The API's view (loop thread): true when keys are configured. */
bool kvd_api_auth_enabled(const kvd_api *api);
/* The owner of a request to the API (kvd_auth_owner over its keys). */
uint32_t kvd_api_owner(const kvd_api *api, const char *authorization);
/* Fills resp with the 401 `unauthenticated` error; the server adds
 * `WWW-Authenticate: Bearer` to every 401. The header is never echoed. */
void kvd_api_respond_unauthenticated(kvd_response *resp, const char *authorization);

#endif
