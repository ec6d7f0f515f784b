/* server/internal.h — what the HTTP layer's files share and nobody else sees:
 * the server, connection and exchange structs and the kvd__ functions that
 * cross between listen.c, conn.c, parse.c, response.c and access_log.c.
 * Memory: a connection is freed only when its handle is closed AND no
 * exchange refers to it (refcount); an exchange lives until answered. */
#ifndef KVD_SERVER_INTERNAL_H
#define KVD_SERVER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>
#include <uv.h>

#include "common/fifo.h"
#include "server/http.h"

/* Request line plus all header fields and values of one request. 16 KiB is
 * what common servers accept by default; our requests carry a few short
 * headers, so anything larger is a mistake or an attack. */
#define KVD__HTTP_MAX_HEADER_BYTES (16u * 1024u)
/* The one read buffer of the loop (reads are parsed before the next read). */
#define KVD__HTTP_READ_BUF_BYTES (64u * 1024u)
/* Header names we look at are short; longer names are ignored. */
#define KVD__HTTP_FIELD_MAX 32u

/* A growable byte buffer: p[0..len) data, capacity cap (one byte kept for the NUL). */
typedef struct kvd__buf {
    char *p;
    size_t len;
    size_t cap;
} kvd__buf;

typedef struct kvd__conn kvd__conn;
typedef struct kvd__sink kvd__sink;

struct kvd_http_exchange {
    kvd_fifo_link link;        /* connection's queue, request order */
    kvd__conn *conn;
    kvd_http_request req;      /* strings point into the buffers below */
    const char *route;         /* static label for log and metrics */
    uint64_t start_ns;         /* uv_hrtime() at the request's first byte */
    kvd__buf url;              /* request target, NUL-terminated, split at '?' */
    kvd__buf ctype;            /* Content-Type value */
    kvd__buf auth;             /* Authorization value */
    kvd__buf expect;           /* Expect value */
    kvd__buf body;             /* de-chunked body, NUL-terminated */
    bool headers_done;         /* later header callbacks are chunked trailers */
    bool has_ctype, has_auth, has_expect;
    bool keep_alive;           /* the client allows another request after this */
    bool is_head;
    bool answered;             /* response built, waiting for its turn */
    bool written;              /* write issued */
    bool close_after;          /* close the connection once this is written */
    size_t counted;            /* body bytes counted in srv->inflight_bytes */
    char *resp_body;           /* owned unless resp_static */
    size_t resp_body_len;
    bool resp_static;
    char head[512];            /* status line and headers of the response */
    size_t head_len;
    uv_write_t wreq;
};

struct kvd__conn {
    uv_tcp_t tcp;                  /* unused (never initialised) when sink is set */
    kvd__sink *sink;               /* NULL for a socket; else writes go here (tests) */
    llhttp_t parser;
    kvd_http_server *srv;
    kvd__conn *prev, *next;        /* server's list of open connections */
    kvd_fifo queue;                /* dispatched exchanges not yet written out */
    kvd_http_exchange *cur;        /* request being parsed */
    kvd_http_exchange *ready;      /* parsed, not yet handed to the handler */
    char field[KVD__HTTP_FIELD_MAX]; /* current header name (bounded) */
    size_t field_len;
    bool field_long;
    kvd__buf *value_target;        /* where the current header value goes, or NULL */
    size_t header_bytes;           /* request line + headers of cur so far */
    int fail_status;               /* status for an error raised in a callback */
    const char *fail_reason;       /* its message (static), or NULL for llhttp's */
    /* The strict scan of a request head (parse.c) that llhttp's parser does
     * not do: every LF preceded by CR, no bare CR, one space between the
     * parts of the request line, no obs-fold. Runs ahead of llhttp over the head only. */
    bool head_scan;                /* scanning (a head is expected or under way) */
    bool head_text;                /* a byte other than CR/LF seen in this head */
    bool head_line1;               /* still in the request line */
    unsigned head_crlf;            /* CR/LF bytes in a row ending the head so far */
    char head_prev;                /* the byte before */
    char *pending;                 /* unparsed bytes kept while paused */
    size_t pending_len;
    unsigned refs;                 /* 1 for the open handle + 1 per exchange */
    bool closing;                  /* close started */
    bool reading;
    bool stopped;                  /* parse nothing more on this connection */
    bool eof;                      /* the client half-closed: answer, then close */
    bool in_feed;                  /* inside the parse loop (guards re-entry) */
    bool cont_inflight;            /* a 100 Continue write is queued */
    uv_write_t cont_req;
    /* Deadlines (deadline.c); the timer exists for socket connections only. */
    uv_timer_t timer;
    bool timer_init;
    int phase;                     /* what the armed deadline is for */
    uint64_t phase_key;            /* restart when it changes (progress) */
    uint64_t req_seq;              /* requests begun */
    uint64_t body_seen;            /* body bytes received (progress) */
    size_t write_left;             /* write queue bytes when the write deadline armed */
    bool deadline_deferred;        /* this deadline already waited once for unread bytes */
};

struct kvd_http_server {
    uv_loop_t *loop;               /* NULL for a loopback server (tests) */
    uv_tcp_t listener;
    kvd_http_options opt;
    kvd_http_handler handler;
    void *ctx;
    llhttp_settings_t settings;    /* must outlive every parser */
    kvd__conn *conns;              /* open connections */
    size_t nconns;                 /* allocated connections (open or closing) */
    int port;
    bool draining;
    bool listener_closed;
    bool finished;
    bool spare_busy;
    bool drain_busy;               /* drain timer open (closed before finishing) */
    bool drain_closing;
    uv_timer_t drain;              /* opt.drain_ms after shutdown: close everything */
    size_t inflight_bytes;         /* request body bytes read, not yet answered */
    uv_tcp_t spare;                /* accepts and drops a client when calloc fails */
    void (*on_closed)(void *arg);
    void *closed_arg;
    char readbuf[KVD__HTTP_READ_BUF_BYTES];
};

/* ---- parse.c: buffers and the llhttp callbacks ---- */

/* Makes room for `extra` more bytes plus a NUL, never past `limit` bytes of
 * data. Returns 0, or -1 on overflow/allocation failure. */
int kvd__buf_reserve(kvd__buf *b, size_t extra, size_t limit);
int kvd__buf_append(kvd__buf *b, const char *s, size_t n, size_t limit);
/* NUL-terminates; returns the string, or NULL on allocation failure. */
const char *kvd__buf_cstr(kvd__buf *b);
void kvd__buf_free(kvd__buf *b);

/* Fills settings with the request callbacks (parser->data is the kvd__conn). */
void kvd__parse_settings_init(llhttp_settings_t *settings);
/* Scans data[0..len) of conn's request head for what the strict parser lets
 * through (bare LF or CR, extra spaces in the request line). Returns 0, or
 * -1 with conn->fail_status and fail_reason set. */
int kvd__parse_scan_head(kvd__conn *conn, const char *data, size_t len);

/* ---- conn.c: one connection ---- */

/* Allocates a connection of srv (refs 1, linked into srv's list, parser
 * initialised); the caller binds its transport. NULL when out of memory. */
kvd__conn *kvd__conn_new(kvd_http_server *srv);
/* Frees a connection whose transport was never opened (refs 1, no exchange). */
void kvd__conn_discard(kvd__conn *conn);
void kvd__conn_read_start(kvd__conn *conn);
/* Bytes read from the peer: parses, dispatches, applies back-pressure. */
void kvd__conn_on_bytes(kvd__conn *conn, const char *data, size_t len);
/* The peer sent EOF: answers what was read in full, then closes. */
void kvd__conn_on_eof(kvd__conn *conn);
/* Starts closing (idempotent); the connection is freed once its handle is
 * closed and no exchange refers to it. */
void kvd__conn_close(kvd__conn *conn);
/* Closes the connection if it has nothing left to do (see conn.c). */
void kvd__conn_check_idle(kvd__conn *conn);
/* Writes every answered exchange whose predecessors are written, in order. */
void kvd__conn_flush(kvd__conn *conn);
/* Queues bufs on the connection's transport (a socket or a sink); cb runs
 * later on the loop, never inside this call. Returns 0 or a libuv error. */
int kvd__conn_write(kvd__conn *conn, uv_write_t *req, const uv_buf_t *bufs, unsigned nbufs,
                    uv_write_cb cb);
/* A new exchange of conn (takes a reference on conn); NULL when out of memory. */
kvd_http_exchange *kvd__exchange_new(kvd__conn *conn);
/* Frees the exchange; the caller then drops its connection reference. */
void kvd__exchange_free(kvd_http_exchange *ex);

/* ---- deadline.c: per-connection timeouts ---- */

/* Re-arms conn's deadline for what it is doing now (reading a head, a
 * body, idle keep-alive, a write the client does not take, or nothing we
 * wait on). Cheap; called after every change of state. */
void kvd__conn_deadline_update(kvd__conn *conn);
/* Closes conn's timer (if any) with conn's reference; part of closing. */
void kvd__conn_deadline_close(kvd__conn *conn, uv_close_cb cb);
/* Takes ex's counted body bytes off the server's in-flight total. */
void kvd__exchange_uncount(kvd_http_exchange *ex);

/* ---- listen.c: the server ---- */

/* Calls on_closed and frees srv once draining has closed everything. */
void kvd__server_maybe_finish(kvd_http_server *srv);

/* ---- response.c ---- */

/* Builds the status line and headers, stores the response in ex (taking
 * body unless body_static) and writes what is in order. Must not be used on
 * a closing connection. */
void kvd__exchange_answer(kvd_http_exchange *ex, int status, const char *ctype, char *body,
                          size_t body_len, bool body_static, unsigned retry_after_s,
                          const char *allow);
/* Answers ex with a JSON error (a static fallback body if rendering fails)
 * and logs it. */
void kvd__exchange_answer_error(kvd_http_exchange *ex, int status, const char *code,
                                const char *message);
/* The same with a Retry-After header (seconds, 0 for none). */
void kvd__exchange_answer_error_retry(kvd_http_exchange *ex, int status, const char *code,
                                      const char *message, unsigned retry_after_s);

/* ---- access_log.c ---- */

/* Writes s[0..n) into out[0..cap) as JSON string content (quotes,
 * backslashes and control bytes escaped; bytes that are not well-formed
 * UTF-8 as \u00XX); stops before overflowing. Returns the bytes written. */
size_t kvd__log_json_escape(char *out, size_t cap, const char *s, size_t n);
/* One access-log line on stderr and the request metrics for ex's answer. */
void kvd__access_log(const kvd_http_exchange *ex, int status, size_t bytes);

/* ---- loopback.c: the transport of a connection with no socket ---- */

/* Appends the bytes to the sink; cb runs when the test runs the loopback. */
int kvd__sink_write(kvd__sink *sink, uv_write_t *req, const uv_buf_t *bufs, unsigned nbufs,
                    uv_write_cb cb);
/* Records the close; cb runs after every pending write callback. */
void kvd__sink_close(kvd__sink *sink, uv_close_cb cb);

#endif
