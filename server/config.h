/* server/config.h — kvd's command line and KVD_* environment (DESIGN.md §7).
 * A flag beats its environment variable, which beats the default. Parsing is
 * separate from main() so that it is tested like everything else. */
#ifndef KVD_SERVER_CONFIG_H
#define KVD_SERVER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvd_config {
    char host[256];
    int port;
    size_t memory;         /* pool bytes */
    size_t page_bytes;
    unsigned threads;      /* workers; default = online cores */
    size_t max_body;
    uint32_t max_sessions; /* 0 = derived: one per pool page, at least 1024 */
    size_t max_session_heap; /* --max-session-heap; 0 = derived: max(64MiB, memory / 4) */
    double session_ttl;    /* default ttl_seconds of new sessions */
    bool on_full_evict;    /* --on-full evict (default reject) */
    bool log_json;
    /* Connection limits and deadlines (seconds), issue 10 */
    double header_timeout; /* --header-timeout, default 10 */
    double body_timeout;   /* --body-timeout, default 30 */
    double idle_timeout;   /* --idle-timeout, default 60 */
    double write_timeout;  /* --write-timeout, default 30 */
    double drain_seconds;  /* --drain-seconds, default 30 */
    size_t max_connections;    /* --max-connections, default 1024 */
    size_t max_inflight_bytes; /* --max-inflight-bytes, default 256MiB, >= max_body */
    const char *api_key_file; /* --api-key-file, or NULL; points into argv/environ */
    const char *api_key;      /* KVD_API_KEY, or NULL: environment only, so a key
                                 never shows in a process listing */
    bool metrics_auth;        /* --metrics-auth: /metrics needs a key too */
    const char *id_prefix;    /* --id-prefix: session ids "<prefix>-<hex>" (deploy/nginx
                                 routes on it); NULL or "" = none; points into argv/environ */
    const char *state_dir;    /* --state-dir: sessions written there on SIGTERM, restored
                                 on start; NULL or "" = none; points into argv/environ */
    const char *probe_url;    /* --probe URL (checked), or NULL: probe instead of serving;
                                 points into argv */
    bool help, version;    /* print and exit */
} kvd_config;

/* Parses argv and the environment (getenv). Returns 0, or -1 with a message
 * for the user in err. */
int kvd_config_parse(kvd_config *cfg, int argc, char **argv, char *err, size_t err_len);

/* Parses "1GiB", "16KiB", "64MiB", "1G", "4096" (bytes; K/M/G and KiB/MiB/GiB
 * are powers of 1024, KB/MB/GB powers of 1000). Returns 0 or -1. */
int kvd__parse_size(const char *s, size_t *out);

/* The --help text. */
extern const char kvd_usage[];

#endif
