/* tests/support/http_client.h — a blocking HTTP/1.1 client for loopback tests:
 * one request per fresh connection (http_request), or a persistent connection
 * on which the test writes raw bytes (keep-alive, pipelining, chunked bodies,
 * malformed requests) and reads responses one at a time, in order. Every read
 * has a deadline so a server that never answers fails the test, not hangs it. */
#ifndef KVD_TEST_HTTP_CLIENT_H
#define KVD_TEST_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include <cJSON.h>

/* Receive deadline for one response. Generous: a step under ASan on two busy
 * cores is slow, and a deadline is only a hang guard, not a timing check. */
#define HTTP_TIMEOUT_MS 60000
#define HTTP_MAX_HEADERS 64

typedef struct http_header {
    char *name;
    char *value;
} http_header;

typedef struct http_response {
    int status;                 /* -1: no complete response (see error) */
    char error[128];            /* why status is -1 */
    http_header headers[HTTP_MAX_HEADERS];
    size_t n_headers;
    char *body;                 /* NUL-terminated (de-chunked); never NULL when status > 0 */
    size_t body_len;
} http_response;

/* Case-insensitive header lookup; NULL if absent. */
const char *http_header_get(const http_response *r, const char *name);
/* The body parsed as JSON (caller cJSON_Deletes), or NULL. */
cJSON *http_response_json(const http_response *r);
void http_response_free(http_response *r);

/* Builds a raw request: request line, "Host", "Content-Type" (if non-NULL),
 * "Content-Length" (if body is non-NULL), extra_headers verbatim (each line
 * ending in \r\n, or NULL), the blank line and the body. Caller frees;
 * *len gets the byte count. */
char *http_format_request(const char *method, const char *path, const char *content_type,
                          const char *extra_headers, const void *body, size_t body_len, size_t *len);

/* One request on a new connection that is closed afterwards. body may be
 * NULL (no body, no Content-Length). Never returns NULL. */
http_response *http_request(int port, const char *method, const char *path, const char *content_type,
                            const char *body);
http_response *http_request_n(int port, const char *method, const char *path, const char *content_type,
                              const void *body, size_t body_len, const char *extra_headers);
/* Sends raw bytes on a new connection and reads one response. */
http_response *http_raw(int port, const void *data, size_t len);

/* Persistent connection. */
typedef struct http_conn http_conn;

/* Connects to 127.0.0.1:port; NULL on failure. */
http_conn *http_conn_open(int port);
/* Writes all bytes. Returns 0 or -1 (peer gone). */
int http_conn_send(http_conn *c, const void *data, size_t len);
/* Reads the next response on the connection (bytes after it stay buffered
 * for the next call). Never returns NULL; status -1 on timeout, EOF before a
 * complete response, or a malformed response. */
http_response *http_conn_read(http_conn *c, int timeout_ms);
/* Waits up to timeout_ms for the peer to close: 1 if it closed (EOF or
 * reset) with no further bytes, 0 if still open at the deadline, -1 if it
 * sent more bytes instead. */
int http_conn_wait_closed(http_conn *c, int timeout_ms);
void http_conn_close(http_conn *c);

#endif
