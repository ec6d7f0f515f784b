/* tests/load/load.h — the soak load generator's shared types (`make test-soak`):
 * the request kinds and their latency records, the session configs the traffic
 * uses, one client (a keep-alive connection with the sessions it owns), and the
 * run's counters. wire.c moves bytes, traffic.c decides and checks requests,
 * probe.c reads /proc and kvd's own accounting, soak.c runs the phases. */
#ifndef KVD_LOAD_H
#define KVD_LOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tests/support/kvd_data.h"
#include "tests/support/ref_attention.h"

/* Output tolerance of checked sessions, relative to max|v| (as test_decode.c). */
#define SOAK_TOL_REL 1e-4
#define SOAK_ID_MAX 96
/* Sessions one client holds at once: its main session and one fork child. */
#define SOAK_SLOTS 2
/* Unexpected answers printed in full before only counting them. */
#define SOAK_PRINT_MAX 10
/* Recently deleted ids kept to ask for again (each must be a 404). */
#define SOAK_GONE 64

typedef enum {
    K_CREATE, K_STEP, K_STEPS, K_FORK, K_DELETE, K_STATS, K_LIST, K_METRICS, K_HEALTHZ, K_COUNT
} req_kind;
extern const char *const soak_kind_name[K_COUNT];

/* A create body the traffic uses; the shape fields repeat what the body says. */
typedef struct soak_config {
    const char *name;
    const char *body;
    unsigned weight;        /* relative share of creates */
    size_t layers, heads, kv_heads, head_dim;
    bool tensor;            /* k1, k2, v1, v2 instead of k, v */
    bool forkable;          /* KIVI and tensor sessions do not fork (a 400) */
    bool checkable;         /* f32, no eviction: the double reference applies */
    size_t max_tokens;      /* per stream before the session is deleted; 0 = none */
} soak_config;
extern const soak_config soak_configs[];
extern const size_t soak_n_configs;

typedef struct soak_session {
    char id[SOAK_ID_MAX];   /* "" = slot empty */
    int cfg;
    int steps_left;         /* step requests before the session is deleted */
    size_t tokens[2];       /* appended per layer as far as this client knows */
    ref_session *ref;       /* the double reference; NULL if not checked */
    long reg;               /* index in the registry of live sessions, -1 if not in it */
    bool deleting;          /* a DELETE is on its way */
} soak_session;

typedef enum { ST_OFF, ST_CONNECTING, ST_SENDING, ST_READING, ST_IDLE } client_state;
typedef enum { AB_NONE, AB_HALF, AB_FIRE } abandon_mode;

typedef struct client {
    int idx;
    int fd;
    client_state st;
    bool watch_out;         /* epoll watches EPOLLOUT (else EPOLLIN) */
    char *out;              /* the request being written; out_off bytes sent */
    size_t out_len, out_off;
    char *in;               /* response bytes received so far */
    size_t in_len, in_cap;
    double t_start;         /* monotonic seconds at the first byte written */
    /* The request under way. */
    req_kind kind;
    int slot;               /* own session it is about, or -1 */
    bool foreign;           /* about another client's session: a raced 404 is fine */
    bool gone;              /* about a deleted session: only a 404 is right */
    char foreign_id[SOAK_ID_MAX];
    int foreign_cfg;
    double *want;           /* expected "o" of every entry, concatenated; NULL if unchecked */
    size_t entry_o[2];      /* "o" length of each entry */
    size_t n_entries;       /* 0: a single-layer body; else a "steps" body of this many */
    abandon_mode abandon;   /* provoked: close right after sending (AB_HALF: half a request) */
    unsigned left_on_conn;  /* requests before this connection is recycled */
    soak_session sess[SOAK_SLOTS];
    rng r;
} client;

/* Latencies of one kind, in milliseconds. */
typedef struct lat_rec {
    float *ms;
    size_t n, cap;
    double max_ms, max_at; /* the slowest and when it finished (s into the run) */
} lat_rec;

typedef enum { PH_RUN, PH_PAUSE, PH_CLEANUP, PH_DONE } soak_phase;

typedef struct soak {
    int port;
    int pid;
    size_t n_clients;
    double seconds;
    double t0;              /* monotonic start of the run */
    uint64_t seed;
    int epfd;
    soak_phase phase;
    client *clients;
    /* Registry of live sessions, for requests about another client's session. */
    soak_session **reg;
    struct { int client, slot; } *reg_owner;
    size_t n_reg, cap_reg;
    size_t live;            /* sessions created and not yet deleted, as answered */
    /* Counters. */
    lat_rec lat[K_COUNT];
    unsigned long status[K_COUNT][6]; /* by class: [0] other, [1..5] 1xx..5xx */
    unsigned long exhausted[K_COUNT]; /* 503 resource_exhausted (counted, allowed) */
    unsigned long raced_404, gone_404;
    char gone[SOAK_GONE][SOAK_ID_MAX];
    size_t n_gone;
    unsigned long unexpected;
    unsigned long conn_errors;
    unsigned long run_requests; /* answered while the run phase lasted */
    unsigned long conns_opened, recycled, half_sent, fire_and_close, server_closes;
    unsigned long checked_entries, checks_lost;
    size_t checked_sessions;
    double max_err_rel;
    unsigned long bad_outputs; /* a checked output off the reference, or a malformed "o" */
} soak;

extern soak S;

double soak_now(void);
void lat_add(lat_rec *l, double ms, double at);
/* The p-quantile (0..1) of l (sorts it). */
double lat_quantile(lat_rec *l, double p);

/* wire.c: the connection of one client. */
int wire_connect(client *c);                       /* 0, or -1 (counted) */
void wire_close(client *c);
/* Sends what the socket takes of c->out: 1 all sent, 0 some left, -1 failed. */
int wire_send(client *c);
/* Reads what is there; 1 with *status, *body (NUL-terminated, in c->in) and
 * *close_after when a response is complete, 0 if more is needed, -1 on EOF or error. */
int wire_read(client *c, int *status, const char **body, size_t *body_len, bool *close_after);
/* Drops the response just handled from c->in. */
void wire_consume(client *c);
/* Watches the socket for writing (true) or reading (false). */
void wire_watch(client *c, bool want_out);

/* traffic.c: what a client sends next and how its answer is checked. */
void traffic_init(client *c, int idx, uint64_t seed);
/* Builds the client's next request into c->out; false if it has nothing to
 * do in this phase (it goes idle). */
bool traffic_next(client *c);
/* Checks the answer to c's request and updates its sessions. */
void traffic_answer(client *c, int status, const char *body, size_t body_len);
/* The request was sent and abandoned on purpose (no answer will come). */
void traffic_abandoned(client *c);
/* The connection failed before the answer (counted as an error elsewhere). */
void traffic_lost(client *c);
void traffic_free(client *c);
size_t traffic_sessions(const client *c);

/* probe.c: kvd seen from outside. */
long probe_rss_kib(int pid);          /* VmRSS, -1 if unreadable */
long probe_fds(int pid);              /* entries of /proc/PID/fd, -1 if unreadable */
double probe_cpu_s(int pid);          /* user + system CPU seconds of PID, NAN if unreadable */
/* Page accounting at a quiescent moment: every listed session's pages against
 * pool used. Prints the figures; true if they balance. */
bool probe_accounting(int port, size_t expect_sessions, bool final);
bool probe_healthy(int port);
/* TcpExt ListenOverflows of this network namespace (/proc/net/netstat), -1 if unreadable. */
long probe_listen_overflows(void);

#endif
