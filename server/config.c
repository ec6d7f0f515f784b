/* server/config.c — flags and KVD_* environment variables, with their
 * defaults and bounds. Every flag is `--name value` or `--name=value`; its
 * variable is KVD_NAME with dashes as underscores (--page-bytes: KVD_PAGE_BYTES). */
#include "server/config.h"
#include "server/probe.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "api/api.h"
#include "server/router.h"

/* The longest id (with the longest --id-prefix) must fit the router's id segment. */
_Static_assert(KVD_SESSION_ID_MAX <= KVD_ROUTER_ID_MAX, "a prefixed session id fits the router");

const char kvd_usage[] =
    "usage: kvd [options]   (each option also from the environment, e.g. KVD_PORT)\n"
    "  --host ADDR          listen address (default 127.0.0.1; IPv6 allowed)\n"
    "  --port N             TCP port, 0 = ephemeral (default 8080)\n"
    "  --api-key-file F     API keys, one a line ('#' comments); with keys (this\n"
    "                       and/or KVD_API_KEY, the union) every /v1 request needs\n"
    "                       Authorization: Bearer <key> (default: no keys, open)\n"
    "  --metrics-auth       /metrics needs a key too (default: public)\n"
    "  --memory SIZE        KV pool bytes, e.g. 1GiB, 512MiB (default 1GiB)\n"
    "  --page-bytes SIZE    page size, multiple of 64, >= 1KiB (default 16KiB)\n"
    "  --threads N          attention worker threads (default: online cores)\n"
    "  --max-body SIZE      largest request body (default 64MiB)\n"
    "  --max-sessions N     live sessions allowed; 0 = one per pool page, at least 1024\n"
    "                       (default 0)\n"
    "  --max-session-heap SIZE  ordinary heap all sessions may hold outside the pool\n"
    "                       (stream tables, eviction indexes); a create or fork past\n"
    "                       it gets 503; 0 = max(64MiB, --memory / 4) (default 0)\n"
    "  --session-ttl SECS   idle seconds before a session expires, unless its\n"
    "                       create body sets ttl_seconds (default 600)\n"
    "  --on-full MODE       pool full: reject (503 at once) or evict (take tokens\n"
    "                       from idle LRU sessions with a policy first, only when\n"
    "                       that makes room) (default reject)\n"
    "  --log-format FMT     access log: text or json (default text)\n"
    "  --max-connections N  open connections; past it a new one gets 503 and\n"
    "                       close (default 1024)\n"
    "  --max-inflight-bytes SIZE  request body bytes read but not yet answered,\n"
    "                       all connections; past it 503 + Retry-After and close\n"
    "                       (default 256MiB, at least --max-body)\n"
    "  --header-timeout SECS  receive a request's head (from accept or its first\n"
    "                       byte) within this, or the connection closes (default 10)\n"
    "  --body-timeout SECS  longest gap between bytes of a request body (default 30)\n"
    "  --idle-timeout SECS  keep-alive connection with nothing under way (default 60)\n"
    "  --write-timeout SECS client taking no response bytes for this long (default 30)\n"
    "  --drain-seconds SECS on SIGTERM, close what is still open after this (default 30)\n"
    "  --id-prefix P        session ids become P-<32 hex> (P: 1-31 of a-z 0-9 -),\n"
    "                       for a router that sends each id to its replica (default:\n"
    "                       none, ids are 32 hex digits)\n"
    "  --state-dir DIR      on SIGTERM, after in-flight requests finish, write every\n"
    "                       session to DIR/<id>.kvds (temp file, fsync, rename);\n"
    "                       on start restore every DIR/*.kvds and delete it\n"
    "                       (default: none, sessions end with the process)\n"
    "  --probe URL          instead of serving: GET http://HOST[:PORT][/PATH] once\n"
    "                       (2 s at most) and exit 0 on a 2xx answer, 1 otherwise\n"
    "                       with the reason on stderr, 2 on a bad URL; for a\n"
    "                       container HEALTHCHECK without curl. Not read from the\n"
    "                       environment: KVD_PROBE would make a server a probe\n"
    "  --help, --version\n";

int kvd__parse_size(const char *s, size_t *out)
{
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    unsigned long long mul = 1;
    if (*end) {
        static const struct { const char *suffix; unsigned long long mul; } units[] = {
            {"B", 1ULL},
            {"K", 1ULL << 10}, {"KiB", 1ULL << 10}, {"KB", 1000ULL},
            {"M", 1ULL << 20}, {"MiB", 1ULL << 20}, {"MB", 1000000ULL},
            {"G", 1ULL << 30}, {"GiB", 1ULL << 30}, {"GB", 1000000000ULL},
            {"T", 1ULL << 40}, {"TiB", 1ULL << 40}, {"TB", 1000000000000ULL},
        };
        size_t i;
        for (i = 0; i < sizeof units / sizeof units[0]; i++)
            if (strcasecmp(end, units[i].suffix) == 0 &&
                (strlen(end) < 3 || strcmp(end, units[i].suffix) == 0))
                break;
        if (i == sizeof units / sizeof units[0])
            return -1;
        mul = units[i].mul;
    }
    if (v > SIZE_MAX / mul)
        return -1;
    *out = (size_t)(v * mul);
    return 0;
}

static int parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
    if (!s || !isdigit((unsigned char)*s))
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v > max)
        return -1;
    *out = v;
    return 0;
}

typedef enum { OPT_HOST, OPT_PORT, OPT_MEMORY, OPT_PAGE_BYTES, OPT_THREADS, OPT_MAX_BODY,
               OPT_MAX_SESSIONS, OPT_MAX_SESSION_HEAP, OPT_SESSION_TTL, OPT_ON_FULL, OPT_LOG_FORMAT,
               OPT_MAX_CONNECTIONS, OPT_MAX_INFLIGHT, OPT_HEADER_TIMEOUT, OPT_BODY_TIMEOUT,
               OPT_IDLE_TIMEOUT, OPT_WRITE_TIMEOUT, OPT_DRAIN_SECONDS,
               OPT_API_KEY_FILE, OPT_METRICS_AUTH, OPT_ID_PREFIX, OPT_STATE_DIR,
               OPT_PROBE, OPT_COUNT } opt_id;

/* env is NULL for a flag that selects what the process does (--probe) rather
 * than how the server runs: the image's HEALTHCHECK shares the server's
 * environment, so such a variable would turn the server itself into a probe. */

static const struct { const char *flag, *env; } options[OPT_COUNT] = {
    [OPT_HOST] = {"host", "KVD_HOST"},
    [OPT_PORT] = {"port", "KVD_PORT"},
    [OPT_MEMORY] = {"memory", "KVD_MEMORY"},
    [OPT_PAGE_BYTES] = {"page-bytes", "KVD_PAGE_BYTES"},
    [OPT_THREADS] = {"threads", "KVD_THREADS"},
    [OPT_MAX_BODY] = {"max-body", "KVD_MAX_BODY"},
    [OPT_MAX_SESSIONS] = {"max-sessions", "KVD_MAX_SESSIONS"},
    [OPT_MAX_SESSION_HEAP] = {"max-session-heap", "KVD_MAX_SESSION_HEAP"},
    [OPT_SESSION_TTL] = {"session-ttl", "KVD_SESSION_TTL"},
    [OPT_ON_FULL] = {"on-full", "KVD_ON_FULL"},
    [OPT_LOG_FORMAT] = {"log-format", "KVD_LOG_FORMAT"},
    [OPT_MAX_CONNECTIONS] = {"max-connections", "KVD_MAX_CONNECTIONS"},
    [OPT_MAX_INFLIGHT] = {"max-inflight-bytes", "KVD_MAX_INFLIGHT_BYTES"},
    [OPT_HEADER_TIMEOUT] = {"header-timeout", "KVD_HEADER_TIMEOUT"},
    [OPT_BODY_TIMEOUT] = {"body-timeout", "KVD_BODY_TIMEOUT"},
    [OPT_IDLE_TIMEOUT] = {"idle-timeout", "KVD_IDLE_TIMEOUT"},
    [OPT_WRITE_TIMEOUT] = {"write-timeout", "KVD_WRITE_TIMEOUT"},
    [OPT_DRAIN_SECONDS] = {"drain-seconds", "KVD_DRAIN_SECONDS"},
    [OPT_API_KEY_FILE] = {"api-key-file", "KVD_API_KEY_FILE"},
    [OPT_METRICS_AUTH] = {"metrics-auth", "KVD_METRICS_AUTH"},
    [OPT_ID_PREFIX] = {"id-prefix", "KVD_ID_PREFIX"},
    [OPT_STATE_DIR] = {"state-dir", "KVD_STATE_DIR"},
    [OPT_PROBE] = {"probe", NULL},
};

/* Seconds in (0, 1 day], fractions allowed (tests use short ones). */
static int parse_seconds(const char *v, double *out)
{
    char *end;
    errno = 0;
    double t = strtod(v, &end);
    if (errno || end == v || *end || !(t > 0 && t <= 86400.0))
        return -1;
    *out = t;
    return 0;
}

static int apply(kvd_config *cfg, opt_id id, const char *v, char *err, size_t err_len)
{
    unsigned long long n;
    size_t sz;
    switch (id) {
    case OPT_HOST:
        if (strlen(v) == 0 || strlen(v) >= sizeof cfg->host)
            goto bad;
        strcpy(cfg->host, v);
        return 0;
    case OPT_PORT:
        if (parse_uint(v, 65535, &n))
            goto bad;
        cfg->port = (int)n;
        return 0;
    case OPT_MEMORY:
        if (kvd__parse_size(v, &sz) || sz == 0)
            goto bad;
        cfg->memory = sz;
        return 0;
    case OPT_PAGE_BYTES:
        /* The pool checks alignment and minimum; bound it here so a page
         * count is never zero for the sake of a typo. */
        if (kvd__parse_size(v, &sz) || sz < 1024 || sz % 64 || sz > (1u << 30))
            goto bad;
        cfg->page_bytes = sz;
        return 0;
    case OPT_THREADS:
        if (parse_uint(v, 1024, &n) || n == 0)
            goto bad;
        cfg->threads = (unsigned)n;
        return 0;
    case OPT_MAX_BODY:
        if (kvd__parse_size(v, &sz) || sz < 1024 || sz > ((size_t)1 << 32))
            goto bad;
        cfg->max_body = sz;
        return 0;
    case OPT_MAX_SESSIONS:
        if (parse_uint(v, UINT32_MAX, &n))
            goto bad;
        cfg->max_sessions = (uint32_t)n;
        return 0;
    case OPT_MAX_SESSION_HEAP:
        /* 0 derives it from --memory; otherwise at least 1 MiB, which holds
         * an empty session of a typical shape, so a typo is not a server
         * that refuses every create. */
        if (kvd__parse_size(v, &sz) || (sz != 0 && sz < ((size_t)1 << 20)))
            goto bad;
        cfg->max_session_heap = sz;
        return 0;
    case OPT_SESSION_TTL: {
        /* Same bounds as a create body's ttl_seconds: (0, 30 days]. */
        char *end;
        errno = 0;
        double t = strtod(v, &end);
        if (errno || end == v || *end || !(t > 0 && t <= 30.0 * 24 * 3600))
            goto bad;
        cfg->session_ttl = t;
        return 0;
    }
    case OPT_ON_FULL:
        if (strcmp(v, "reject") == 0)
            cfg->on_full_evict = false;
        else if (strcmp(v, "evict") == 0)
            cfg->on_full_evict = true;
        else
            goto bad;
        return 0;
    case OPT_LOG_FORMAT:
        if (strcmp(v, "text") == 0)
            cfg->log_json = false;
        else if (strcmp(v, "json") == 0)
            cfg->log_json = true;
        else
            goto bad;
        return 0;
    case OPT_MAX_CONNECTIONS:
        if (parse_uint(v, 1000000, &n) || n == 0)
            goto bad;
        cfg->max_connections = (size_t)n;
        return 0;
    case OPT_MAX_INFLIGHT:
        if (kvd__parse_size(v, &sz) || sz < 1024)
            goto bad;
        cfg->max_inflight_bytes = sz;
        return 0;
    case OPT_HEADER_TIMEOUT:
        if (parse_seconds(v, &cfg->header_timeout))
            goto bad;
        return 0;
    case OPT_BODY_TIMEOUT:
        if (parse_seconds(v, &cfg->body_timeout))
            goto bad;
        return 0;
    case OPT_IDLE_TIMEOUT:
        if (parse_seconds(v, &cfg->idle_timeout))
            goto bad;
        return 0;
    case OPT_WRITE_TIMEOUT:
        if (parse_seconds(v, &cfg->write_timeout))
            goto bad;
        return 0;
    case OPT_DRAIN_SECONDS:
        if (parse_seconds(v, &cfg->drain_seconds))
            goto bad;
        return 0;
    case OPT_API_KEY_FILE:
        if (!*v)
            goto bad;
        cfg->api_key_file = v;
        return 0;
    case OPT_METRICS_AUTH: /* a switch: bare on the command line, a boolean in the environment */
        if (strcmp(v, "1") == 0 || strcmp(v, "true") == 0 || strcmp(v, "yes") == 0)
            cfg->metrics_auth = true;
        else if (strcmp(v, "0") == 0 || strcmp(v, "false") == 0 || strcmp(v, "no") == 0)
            cfg->metrics_auth = false;
        else
            goto bad;
        return 0;
    case OPT_ID_PREFIX: /* "" (e.g. KVD_ID_PREFIX= in a manifest) means none */
        if (*v && !kvd_api_id_prefix_valid(v))
            goto bad;
        cfg->id_prefix = v;
        return 0;
    case OPT_STATE_DIR: /* "" (KVD_STATE_DIR= in a manifest) means none; checked at start */
        cfg->state_dir = v;
        return 0;
    case OPT_PROBE: {
        kvd_probe_target t; /* checked here so that a bad URL is a usage error */
        if (kvd__probe_parse_url(v, &t, err, err_len))
            return -1;
        cfg->probe_url = v;
        return 0;
    }
    case OPT_COUNT:
        break;
    }
bad:
    snprintf(err, err_len, "kvd: bad value for --%s: '%s' (see --help)", options[id].flag, v);
    return -1;
}

int kvd_config_parse(kvd_config *cfg, int argc, char **argv, char *err, size_t err_len)
{
    memset(cfg, 0, sizeof *cfg);
    strcpy(cfg->host, "127.0.0.1");
    cfg->port = 8080;
    cfg->memory = (size_t)1 << 30;
    cfg->page_bytes = 16 * 1024;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->threads = cores > 0 ? (unsigned)cores : 1;
    cfg->max_body = (size_t)64 << 20;
    cfg->session_ttl = 600;
    cfg->header_timeout = 10;
    cfg->body_timeout = 30;
    cfg->idle_timeout = 60;
    cfg->write_timeout = 30;
    cfg->drain_seconds = 30;
    cfg->max_connections = 1024;
    cfg->max_inflight_bytes = (size_t)256 << 20;

    for (int id = 0; id < OPT_COUNT; id++) {
        const char *v = options[id].env ? getenv(options[id].env) : NULL;
        if (v && apply(cfg, (opt_id)id, v, err, err_len))
            return -1;
    }
    cfg->api_key = getenv("KVD_API_KEY"); /* checked (never echoed) by server/auth.c */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            cfg->help = true;
            continue;
        }
        if (strcmp(a, "--version") == 0) {
            cfg->version = true;
            continue;
        }
        if (strncmp(a, "--", 2) != 0)
            goto unknown;
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        int id;
        for (id = 0; id < OPT_COUNT; id++)
            if (strlen(options[id].flag) == name_len && strncmp(options[id].flag, name, name_len) == 0)
                break;
        if (id == OPT_COUNT)
            goto unknown;
        const char *v = eq ? eq + 1 : id == OPT_METRICS_AUTH ? "true" : (i + 1 < argc ? argv[++i] : NULL);
        if (!v) {
            snprintf(err, err_len, "kvd: --%s needs a value", options[id].flag);
            return -1;
        }
        if (apply(cfg, (opt_id)id, v, err, err_len))
            return -1;
        continue;
    unknown:
        snprintf(err, err_len, "kvd: unknown option '%s' (see --help)", a);
        return -1;
    }
    if (cfg->max_inflight_bytes < cfg->max_body) {
        snprintf(err, err_len,
                 "kvd: --max-inflight-bytes (%zu) is smaller than --max-body (%zu): a body "
                 "within --max-body would never be accepted", cfg->max_inflight_bytes,
                 cfg->max_body);
        return -1;
    }
    if (cfg->memory < cfg->page_bytes) {
        snprintf(err, err_len, "kvd: --memory (%zu) is smaller than one page (%zu)", cfg->memory,
                 cfg->page_bytes);
        return -1;
    }
    return 0;
}
