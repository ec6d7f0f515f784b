/* server/access_log.c — one line per answered request on stderr (text or,
 * with --log-json, a JSON object), written with a single fwrite so lines
 * never interleave, and the HTTP request metrics observed at the same
 * moment (route, status, time since the request's first byte). The path is
 * logged redacted (server/redact.h): no session id; no header is logged. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <uv.h>

#include "server/internal.h"
#include "server/metrics.h"
#include "server/redact.h"

/* Longest path written to the access log (longer ones are cut). */
#define LOG_PATH_MAX 512u

/* Writes `s` into out[0..cap) as JSON string content; returns bytes used. */
static size_t json_escape(char *out, size_t cap, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < n && o + 7 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            out[o++] = '\\';
            out[o++] = 'u';
            out[o++] = '0';
            out[o++] = '0';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    return o;
}

void kvd__access_log(const kvd_http_exchange *ex, int status, size_t bytes)
{
    uint64_t ns = uv_hrtime() - ex->start_ns;
    const char *method = ex->req.method[0] ? ex->req.method : "-";
    char redacted[LOG_PATH_MAX + 1];
    const char *path = "-";
    size_t plen = 1;
    if (ex->req.path[0]) {
        plen = kvd__log_path(redacted, sizeof redacted, ex->req.path);
        path = redacted;
    }
    /* One write per line so lines from other threads never interleave. */
    char line[LOG_PATH_MAX * 6 + 256];
    int n;
    if (ex->conn->srv->opt.log_json) {
        char esc[LOG_PATH_MAX * 6 + 8];
        size_t elen = json_escape(esc, sizeof esc, path, plen);
        n = snprintf(line, sizeof line,
                     "{\"method\":\"%s\",\"path\":\"%.*s\",\"route\":\"%s\",\"status\":%d,"
                     "\"bytes\":%zu,\"us\":%llu}\n",
                     method, (int)elen, esc, ex->route, status, bytes,
                     (unsigned long long)(ns / 1000));
    } else {
        n = snprintf(line, sizeof line,
                     "kvd: access method=%s path=%.*s route=%s status=%d bytes=%zu us=%llu\n",
                     method, (int)plen, path, ex->route, status, bytes,
                     (unsigned long long)(ns / 1000));
    }
    if (n > 0)
        fwrite(line, 1, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1, stderr);
    kvd__metrics_observe_http(ex->route, status, (double)ns / 1e9);
}
