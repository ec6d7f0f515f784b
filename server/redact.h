/* server/redact.h — what the logs may show of a request target: its path
 * with every segment that is not one of the API's fixed words replaced by a
 * short hash, so no session id (nor a key or anything else a client put in
 * the path by mistake) ever reaches a log line. */
#ifndef KVD_SERVER_REDACT_H
#define KVD_SERVER_REDACT_H

#include <stddef.h>

/* Hex digits of the hash a replaced segment shows, after a '~'. */
#define KVD_LOG_HASH_HEX 8

/* Writes `path` into out (cap bytes, NUL-terminated) with each '/'-separated
 * segment other than v1, sessions, step, fork, snapshot, restore, batch,
 * info, healthz, readyz and metrics (and empty ones) written as '~' and the
 * first KVD_LOG_HASH_HEX hex digits of the SHA-256 of the segment as sent:
 * "/v1/sessions/<id>/step" -> "/v1/sessions/~1a2b3c4d/step". A path that does
 * not fit ends in "/..." after its last whole segment. Returns the length. */
size_t kvd__log_path(char *out, size_t cap, const char *path);

#endif
