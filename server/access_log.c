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

/* Length of the well-formed UTF-8 sequence at s[0..n) (RFC 3629: no
 * overlong forms, no surrogates, nothing past U+10FFFF), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf; /* bounds of the second byte */
    if (c >= 0xc2 && c <= 0xdf)
        len = 2;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
    else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return len;
}

/* Well-formed UTF-8 is copied; every other byte >= 0x80 (invalid UTF-8
 * from a client) is written as \u00XX, so the line stays valid JSON and
 * the byte's value stays visible. */
size_t kvd__log_json_escape(char *out, size_t cap, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (size_t i = 0; i < n && o + 7 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        size_t u = c >= 0x80 ? utf8_len((const unsigned char *)s + i, n - i) : 0;
        if (u > 0) {
            memcpy(out + o, s + i, u);
            o += u;
            i += u - 1;
        } else if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c >= 0x7f) {
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
        size_t elen = kvd__log_json_escape(esc, sizeof esc, path, plen);
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
