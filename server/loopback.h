/* server/loopback.h — a test seam for the server's own tests: an HTTP
 * server with no listener and one connection with no socket. Bytes go in
 * with kvd__loopback_feed, what the connection writes collects in a sink,
 * and write/close completions run when the test says so, so framing tests
 * are deterministic (no sockets, no timing). Loop thread rules as usual. */
#ifndef KVD_SERVER_LOOPBACK_H
#define KVD_SERVER_LOOPBACK_H

#include <stdbool.h>
#include <stddef.h>

#include "server/http.h"

typedef struct kvd__loopback kvd__loopback;

/* opt->host and opt->port are ignored. NULL when out of memory. */
kvd__loopback *kvd__loopback_open(const kvd_http_options *opt, kvd_http_handler handler,
                                  void *ctx);

/* Appends data[0..len) to what the peer has sent, then runs the loop
 * (kvd__loopback_run): while the connection reads, everything unread is
 * delivered as one read; while it is paused (back-pressure) bytes wait, as
 * in a socket's receive buffer, and are never read once it stops for good. */
void kvd__loopback_feed(kvd__loopback *lb, const char *data, size_t len);

/* The peer half-closes after what it has sent: delivered as EOF once the
 * connection has read everything before it (as a socket would). */
void kvd__loopback_eof(kvd__loopback *lb);

/* Runs pending write callbacks, the close callback, and reads of waiting
 * bytes, until none is left: what the event loop would do next. */
void kvd__loopback_run(kvd__loopback *lb);

/* Everything written so far (not NUL-terminated; owned by lb). */
const char *kvd__loopback_output(const kvd__loopback *lb, size_t *len);

/* The connection's close callback has run. */
bool kvd__loopback_closed(const kvd__loopback *lb);

/* The connection wants bytes (false while paused by back-pressure or after
 * it stopped parsing). */
bool kvd__loopback_reading(const kvd__loopback *lb);

/* Closes the connection if open, runs completions and frees everything.
 * Every exchange must have been answered first; returns false (and leaks
 * the server) if one was not. */
bool kvd__loopback_free(kvd__loopback *lb);

#endif
