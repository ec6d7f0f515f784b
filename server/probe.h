/* server/probe.h — `kvd --probe URL`: one blocking HTTP/1.1 GET over a TCP
 * socket, for a container HEALTHCHECK or a liveness script that has no curl.
 * A 2xx answer is healthy; anything else (refused, timed out, another status,
 * not HTTP) is not, with a one-line reason. Plain sockets, no new library. */
#ifndef KVD_SERVER_PROBE_H
#define KVD_SERVER_PROBE_H

#include <stddef.h>

/* The whole probe (resolve, connect, send, read the status line) within this
 * unless the caller says otherwise: a health check answers at once or not at all. */
#define KVD_PROBE_TIMEOUT_MS 2000

/* What a probe URL names: http://HOST[:PORT][/PATH], HOST a name, an IPv4
 * address or [IPv6]; PORT 1..65535 (default 80); PATH from the first '/',
 * printable ASCII without spaces (default "/"). */
typedef struct kvd_probe_target {
    char host[256];        /* without the brackets of an IPv6 literal */
    char port[6];          /* decimal */
    char path[1024];
    char host_header[264]; /* HOST[:PORT] as the URL wrote it, brackets kept */
} kvd_probe_target;

/* Parses url into *t. Returns 0, or -1 with the reason in err. Used by the
 * command-line parser, so a bad --probe is a usage error (exit 2). */
int kvd__probe_parse_url(const char *url, kvd_probe_target *t, char *err, size_t err_len);

/* GETs t's path from t's host within timeout_ms. Returns 0 when the answer's
 * status is 2xx; otherwise 1 with the reason (e.g. "connection refused",
 * "HTTP 404", "timed out after 2000 ms while connecting") in why. Blocks the
 * calling thread; never raises SIGPIPE. A host name is resolved with
 * getaddrinfo, which the deadline cannot cut short: probe an address. */
int kvd__probe_run(const kvd_probe_target *t, int timeout_ms, char *why, size_t why_len);

#endif
