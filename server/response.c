/* server/response.c — serializing an answer: the status line and headers
 * (Content-Type, Content-Length, Connection, Retry-After, WWW-Authenticate,
 * Allow) of an exchange's response, the keep-alive/close decision, and JSON
 * error answers for what the HTTP layer itself refuses. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/errors.h"
#include "common/fifo.h"
#include "server/internal.h"

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

void kvd__exchange_answer(kvd_http_exchange *ex, int status, const char *ctype, char *body,
                          size_t body_len, bool body_static, unsigned retry_after_s,
                          const char *allow)
{
    kvd__conn *conn = ex->conn;
    kvd_http_server *srv = conn->srv;
    if (!body)
        body_len = 0;
    if (status == 204) { /* RFC 9110 §8.6: no Content-Length, no body */
        if (!body_static)
            free(body);
        body = NULL;
        body_len = 0;
        body_static = true;
    }
    if (!ctype || strlen(ctype) > 128)
        ctype = "application/json";
    /* When draining or after the client's EOF, the last queued answer of a connection with nothing
     * else under way tells the client to go away. */
    bool last = &ex->link == conn->queue.tail && !conn->cur && conn->pending_len == 0;
    if (!ex->keep_alive || (last && (srv->draining || conn->eof)))
        ex->close_after = true;
    if (ex->close_after)
        conn->stopped = true;

    int n = snprintf(ex->head, sizeof ex->head, "HTTP/1.1 %d %s\r\n", status,
                     reason_phrase(status));
    if (status != 204)
        n += snprintf(ex->head + n, sizeof ex->head - (size_t)n,
                      "Content-Type: %s\r\nContent-Length: %zu\r\n", ctype, body_len);
    n += snprintf(ex->head + n, sizeof ex->head - (size_t)n, "Connection: %s\r\n",
                  ex->close_after ? "close" : "keep-alive");
    if (retry_after_s > 0)
        n += snprintf(ex->head + n, sizeof ex->head - (size_t)n, "Retry-After: %u\r\n",
                      retry_after_s);
    if (status == 401)
        n += snprintf(ex->head + n, sizeof ex->head - (size_t)n,
                      "WWW-Authenticate: Bearer\r\n");
    if (allow)
        n += snprintf(ex->head + n, sizeof ex->head - (size_t)n, "Allow: %s\r\n", allow);
    n += snprintf(ex->head + n, sizeof ex->head - (size_t)n, "\r\n");
    ex->head_len = (size_t)n; /* at most ~350 bytes: ctype is bounded above */

    /* The request body is done with: free it now, not when the answer is
     * written (a client that does not read would hold it), and take it off
     * the in-flight budget. */
    kvd__buf_free(&ex->body);
    ex->req.body = "";
    ex->req.body_len = 0;
    kvd__exchange_uncount(ex);
    ex->resp_body = body;
    ex->resp_body_len = body_len;
    ex->resp_static = body_static;
    ex->answered = true;
    kvd__conn_flush(conn);
}

void kvd__exchange_answer_error(kvd_http_exchange *ex, int status, const char *code,
                                const char *message)
{
    kvd__exchange_answer_error_retry(ex, status, code, message, 0);
}

void kvd__exchange_answer_error_retry(kvd_http_exchange *ex, int status, const char *code,
                                      const char *message, unsigned retry_after_s)
{
    static char fallback[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
    kvd_api_error err;
    kvd_api_error_set(&err, status, code, NULL, "%s", message);
    size_t len = 0;
    char *json = kvd_api_error_json(&err, &len);
    kvd__access_log(ex, status, json ? len : sizeof fallback - 1);
    if (json)
        kvd__exchange_answer(ex, status, "application/json", json, len, false, retry_after_s,
                             NULL);
    else
        kvd__exchange_answer(ex, status, "application/json", fallback, sizeof fallback - 1, true,
                             retry_after_s, NULL);
}
