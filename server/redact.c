/* server/redact.c — the access log's view of a path (server/redact.h): the
 * API's own words kept, everything else a client chose (session ids above
 * all) hashed. An allow-list rather than "hash what looks like an id", so a
 * typo'd route or a key pasted into a URL is hashed too. */
#include "server/redact.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "common/sha256.h"

static bool is_api_word(const char *s, size_t n)
{
    static const char *const words[] = {"v1",    "sessions", "step", "fork",   "snapshot", "restore",
                                        "batch", "info",     "healthz", "readyz", "metrics"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strlen(words[i]) == n && memcmp(words[i], s, n) == 0)
            return true;
    return false;
}

size_t kvd__log_path(char *out, size_t cap, const char *path)
{
    static const char hex[] = "0123456789abcdef";
    static const char more[] = "/...";
    if (cap == 0)
        return 0;
    size_t o = 0;
    const char *p = path;
    bool first = true;
    for (;;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        bool keep = n == 0 || is_api_word(p, n);
        size_t need = (first ? 0 : 1) + (keep ? n : 1 + KVD_LOG_HASH_HEX);
        /* Room for this segment and, if more follow, for the marker. */
        if (o + need + (slash ? sizeof more - 1 : 0) >= cap) {
            if (o + sizeof more - 1 < cap) {
                memcpy(out + o, more, sizeof more - 1);
                o += sizeof more - 1;
            }
            break;
        }
        if (!first)
            out[o++] = '/';
        if (keep) {
            memcpy(out + o, p, n);
            o += n;
        } else {
            uint8_t d[KVD_SHA256_BYTES];
            kvd_sha256(p, n, d);
            out[o++] = '~';
            for (int i = 0; i < KVD_LOG_HASH_HEX; i++)
                out[o++] = hex[(d[i / 2] >> (i % 2 ? 0 : 4)) & 15];
        }
        if (!slash)
            break;
        p = slash + 1;
        first = false;
    }
    out[o] = '\0';
    return o;
}
