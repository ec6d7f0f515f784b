/* tests/integration/router_scaleout.c — three kvd replicas behind nginx with
 * the shipped router config (deploy/nginx/kvd-router.conf, its upstream
 * addresses and listen port replaced by loopback ports): 100 sessions made and
 * stepped through the router (every output checked against the reference)
 * each stay on one replica (each replica lists exactly its own, which ran all
 * of their steps; the others do not know them), all three get a share, and
 * after one replica is stopped with SIGTERM only its sessions fail (502/503
 * from the router) while the others keep answering correctly and creates go to
 * the survivors. Not a ctest: it needs nginx (`make test-router` installs it).
 * Environment: KVD_BINARY, KVD_ROUTER_CONF, KVD_ROUTER_WORKDIR, NGINX. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <check.h>

#include "tests/support/check_main.h"
#include "tests/support/checked_session.h"
#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"

#define N_REPLICAS 3
#define N_SESSIONS 100
#define MIN_PER_REPLICA 15    /* round robin gives about 33 each */
#define STEPS_BEFORE 3        /* steps per session before the stop (one layer: 3 entries) */
#define N_LATE_CREATES 12     /* creates through the router after the stop */
#define VICTIM 1              /* the replica stopped */
#define CASE_TIMEOUT_S 300
#define ROUTER_START_MS 15000
#define ROUTER_STOP_MS 10000

/* One small shape for every session: GQA, 4 query heads over 2 kv heads. */
#define LAYERS 1
#define HEADS 4
#define KV_HEADS 2
#define HEAD_DIM 8

static const char *const prefixes[N_REPLICAS] = {"kvd-0", "kvd-1", "kvd-2"};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(fread(s, 1, (size_t)n, f), n);
    s[n] = '\0';
    fclose(f);
    return s;
}

/* Replaces every `from` in *text with `to`; returns how many. */
static int replace_all(char **text, const char *from, const char *to)
{
    int count = 0;
    size_t fl = strlen(from), tl = strlen(to);
    for (char *p = strstr(*text, from); p; p = strstr(*text + (p - *text) + tl, from), count++) {
        size_t at = (size_t)(p - *text), len = strlen(*text);
        char *s = malloc(len - fl + tl + 1);
        ck_assert_ptr_nonnull(s);
        memcpy(s, *text, at);
        memcpy(s + at, to, tl);
        memcpy(s + at + tl, p + fl, len - at - fl + 1);
        free(*text);
        *text = s;
        p = s + at;
    }
    return count;
}

/* A loopback port nothing listens on now (nginx binds it right after). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

typedef struct router {
    pid_t pid;         /* nginx master; leads its own process group */
    int port;
    char dir[512];     /* its -p prefix: config, pid, logs */
    bool reaped;
    int status;
} router;

static char *router_log(const router *r)
{
    char path[600];
    snprintf(path, sizeof path, "%s/nginx.log", r->dir);
    return read_file(path);
}

/* Writes the shipped config with the replicas' ports and the router's, and
 * starts nginx in the foreground on it. */
static void router_start(router *r, const int ports[N_REPLICAS])
{
    const char *conf = getenv("KVD_ROUTER_CONF");
    const char *work = getenv("KVD_ROUTER_WORKDIR");
    const char *nginx = getenv("NGINX");
    ck_assert_msg(conf && work, "set KVD_ROUTER_CONF and KVD_ROUTER_WORKDIR (scripts/test-router.sh does)");
    if (!nginx)
        nginx = "nginx";
    memset(r, 0, sizeof *r);
    snprintf(r->dir, sizeof r->dir, "%s/router.XXXXXX", work);
    ck_assert_msg(mkdtemp(r->dir) != NULL, "mkdtemp %s: %s", r->dir, strerror(errno));
    chmod(r->dir, 0755); /* nginx workers run as nobody under root */
    r->port = free_port();

    char *text = read_file(conf);
    for (int i = 0; i < N_REPLICAS; i++) {
        char from[64], to[64];
        snprintf(from, sizeof from, "%s.kvd:8080", prefixes[i]);
        snprintf(to, sizeof to, "127.0.0.1:%d", ports[i]);
        /* its own upstream, round robin and the consistent-hash fallback */
        int n = replace_all(&text, from, to);
        ck_assert_msg(n == 3, "%s: '%s' appears %d times, want 3", conf, from, n);
    }
    char listen[64];
    snprintf(listen, sizeof listen, "listen 127.0.0.1:%d;", r->port);
    ck_assert_msg(replace_all(&text, "listen 8080;", listen) == 1, "%s: no single 'listen 8080;'", conf);
    ck_assert_msg(strstr(text, ".kvd:8080") == NULL, "%s names a replica the test does not run", conf);
    char path[600];
    snprintf(path, sizeof path, "%s/kvd-router.conf", r->dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    free(text);

    char prefix[600], log[600];
    snprintf(prefix, sizeof prefix, "%s/", r->dir);
    snprintf(log, sizeof log, "%s/nginx.log", r->dir);
    pid_t parent = getpid();
    r->pid = fork();
    ck_assert_int_ge(r->pid, 0);
    if (r->pid == 0) {
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* the master stops its workers */
        if (getppid() != parent)
            _exit(1);
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
        execlp(nginx, nginx, "-p", prefix, "-c", path, "-e", "stderr", "-g", "daemon off;", (char *)NULL);
        _exit(127);
    }
    setpgid(r->pid, r->pid);
    /* Up when its own health location answers (it needs no replica). */
    long long deadline = now_ms() + ROUTER_START_MS;
    for (;;) {
        int st;
        if (waitpid(r->pid, &st, WNOHANG) == r->pid) {
            r->reaped = true;
            char *l = router_log(r);
            ck_abort_msg("nginx exited at start (status %d):\n%s", st, l);
        }
        http_response *h = http_request(r->port, "GET", "/router/healthz", NULL, NULL);
        int status = h->status;
        http_response_free(h);
        if (status == 200)
            break;
        ck_assert_msg(now_ms() < deadline, "nginx did not answer on port %d in %d ms", r->port, ROUTER_START_MS);
        sleep_ms(50);
    }
}

/* SIGQUIT (graceful), then SIGKILL to the whole group if it lingers.
 * Returns true if the master exited 0 by itself. */
static bool router_stop(router *r)
{
    if (r->reaped)
        return false;
    kill(r->pid, SIGQUIT);
    long long deadline = now_ms() + ROUTER_STOP_MS;
    int st = 0;
    while (waitpid(r->pid, &st, WNOHANG) != r->pid) {
        if (now_ms() > deadline) {
            kill(-r->pid, SIGKILL);
            waitpid(r->pid, &st, 0);
            r->reaped = true;
            return false;
        }
        sleep_ms(20);
    }
    r->reaped = true;
    kill(-r->pid, SIGKILL); /* any worker left behind */
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static int replica_of(const char *id)
{
    for (int i = 0; i < N_REPLICAS; i++) {
        size_t n = strlen(prefixes[i]);
        if (strncmp(id, prefixes[i], n) == 0 && id[n] == '-' && kvd_is_session_id(id + n + 1))
            return i;
    }
    return -1;
}

static bool holds(const checked_session *cs, int n, const char *id)
{
    for (int i = 0; i < n; i++)
        if (strcmp(cs[i].id, id) == 0)
            return true;
    return false;
}

/* Asserts replica r (asked directly) lists exactly the sessions of cs[0..n)
 * whose prefix is its own, and returns how many that is. */
static int check_listing(int port, int r, const checked_session *cs, int n)
{
    cJSON *list = kvd_get_json(port, "/v1/sessions?limit=1000", 200);
    const cJSON *arr = kvd_json_at(list, "sessions");
    int mine = 0;
    for (int i = 0; i < n; i++)
        mine += replica_of(cs[i].id) == r;
    ck_assert_msg(cJSON_GetArraySize(arr) == mine, "replica %s lists %d sessions, made %d", prefixes[r],
                  cJSON_GetArraySize(arr), mine);
    ck_assert_int_eq((long)kvd_json_num(list, "total"), mine);
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        const char *id = kvd_json_str(e, "id");
        ck_assert_msg(id && replica_of(id) == r && holds(cs, n, id), "replica %s lists %s, not one of its own",
                      prefixes[r], id ? id : "(no id)");
    }
    cJSON_Delete(list);
    return mine;
}

/* A valid one-token step body of the sessions' shape (outputs not checked). */
static char *plain_step_body(void)
{
    sbuf b;
    sb_init(&b);
    const char *names[3] = {"k", "v", "q"};
    const int counts[3] = {KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, HEADS * HEAD_DIM};
    sb_puts(&b, "{");
    for (int t = 0; t < 3; t++) {
        sb_printf(&b, "%s\"%s\":[", t ? "," : "", names[t]);
        for (int i = 0; i < counts[t]; i++)
            sb_printf(&b, "%s%d", i ? "," : "", (i % 3) - 1);
        sb_puts(&b, "]");
    }
    sb_puts(&b, "}");
    return b.s;
}

START_TEST(sessions_stay_on_their_replica)
{
    kvd_proc *kvd[N_REPLICAS];
    int ports[N_REPLICAS];
    for (int i = 0; i < N_REPLICAS; i++) {
        const char *const args[] = {"--id-prefix", prefixes[i], "--threads", "1", "--memory", "64MiB", NULL};
        kvd[i] = kvd_proc_start_ck(args);
        ports[i] = kvd_proc_port(kvd[i]);
    }
    router rt;
    router_start(&rt, ports);

    /* 100 sessions, made and stepped through the router only. */
    static checked_session cs[N_SESSIONS + N_LATE_CREATES];
    int per[N_REPLICAS] = {0};
    for (int i = 0; i < N_SESSIONS; i++) {
        cs_create(&cs[i], rt.port, LAYERS, HEADS, KV_HEADS, HEAD_DIM, 0, NULL, 1000 + (uint64_t)i, 1e-5);
        int r = replica_of(cs[i].id);
        ck_assert_msg(r >= 0, "session %d: id %s has no replica prefix", i, cs[i].id);
        per[r]++;
        cs_random_step(&cs[i], 0, 5, 5, "causal", false, "json", "prefill via router");
        cs_random_step(&cs[i], 0, 1, 1, "causal", true, "b64", "decode 1 via router");
        cs_random_step(&cs[i], 0, 1, 1, "causal", false, "json", "decode 2 via router");
    }
    for (int r = 0; r < N_REPLICAS; r++) {
        printf("router_scaleout: replica %s created %d of %d sessions\n", prefixes[r], per[r], N_SESSIONS);
        ck_assert_msg(per[r] >= MIN_PER_REPLICA, "replica %s got %d sessions, want >= %d", prefixes[r], per[r],
                      MIN_PER_REPLICA);
    }

    /* Asked directly: each replica lists exactly its own sessions and ran
     * every one of their steps; the others do not know them. */
    for (int r = 0; r < N_REPLICAS; r++)
        ck_assert_int_eq(check_listing(ports[r], r, cs, N_SESSIONS), per[r]);
    for (int i = 0; i < N_SESSIONS; i++) {
        const int home = replica_of(cs[i].id);
        char path[160];
        snprintf(path, sizeof path, "/v1/sessions/%s", cs[i].id);
        for (int r = 0; r < N_REPLICAS; r++) {
            cJSON *st = kvd_get_json(ports[r], path, r == home ? 200 : 404);
            if (r == home) {
                ck_assert_msg(kvd_json_num(st, "steps") == STEPS_BEFORE, "session %s ran %g steps on %s, want %d",
                              cs[i].id, kvd_json_num(st, "steps"), prefixes[r], STEPS_BEFORE);
                ck_assert_msg(kvd_json_num(st, "tokens") == KV_HEADS * 7.0, "session %s: %g tokens", cs[i].id,
                              kvd_json_num(st, "tokens"));
            }
            cJSON_Delete(st);
        }
    }

    /* Stop one replica: SIGTERM, a clean exit. */
    int status = kvd_proc_stop(kvd[VICTIM], KVD_PROC_STOP_TIMEOUT_MS);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "replica %s did not exit 0 on SIGTERM",
                  prefixes[VICTIM]);

    /* Its sessions now fail at the router; every other session answers
     * correctly, checked against its reference. */
    char *body = plain_step_body();
    int failed = 0, answered = 0;
    for (int i = 0; i < N_SESSIONS; i++) {
        if (replica_of(cs[i].id) == VICTIM) {
            http_response *r = kvd_step(rt.port, cs[i].id, body);
            ck_assert_msg(r->status == 502 || r->status == 503, "step of %s (stopped replica) via router: %d %s",
                          cs[i].id, r->status, r->body ? r->body : r->error);
            http_response_free(r);
            char path[160];
            snprintf(path, sizeof path, "/v1/sessions/%s", cs[i].id);
            r = http_request(rt.port, "GET", path, NULL, NULL);
            ck_assert_msg(r->status == 502 || r->status == 503, "stats of %s (stopped replica) via router: %d",
                          cs[i].id, r->status);
            http_response_free(r);
            failed++;
        } else {
            cs_random_step(&cs[i], 0, 2, 2, "causal", false, "json", "step via router after the stop");
            cJSON *st = cs_check_stats(&cs[i], "stats via router after the stop");
            cJSON_Delete(st);
            answered++;
        }
    }
    free(body);
    printf("router_scaleout: after stopping %s: %d sessions answered correctly, %d got 502/503\n",
           prefixes[VICTIM], answered, failed);
    ck_assert_int_eq(failed, per[VICTIM]);

    /* New sessions go to the survivors and work. */
    for (int i = N_SESSIONS; i < N_SESSIONS + N_LATE_CREATES; i++) {
        cs_create(&cs[i], rt.port, LAYERS, HEADS, KV_HEADS, HEAD_DIM, 0, NULL, 1000 + (uint64_t)i, 1e-5);
        int r = replica_of(cs[i].id);
        ck_assert_msg(r >= 0 && r != VICTIM, "create after the stop landed on %s", cs[i].id);
        cs_random_step(&cs[i], 0, 3, 3, "causal", false, "json", "late session via router");
    }
    for (int r = 0; r < N_REPLICAS; r++)
        if (r != VICTIM)
            check_listing(ports[r], r, cs, N_SESSIONS + N_LATE_CREATES);

    bool clean = router_stop(&rt);
    char *log = router_log(&rt);
    ck_assert_msg(clean, "nginx did not stop cleanly:\n%s", log);
    free(log);
    for (int r = 0; r < N_REPLICAS; r++)
        if (r != VICTIM)
            kvd_proc_stop_ck(kvd[r]);
    kvd_proc_free(kvd[VICTIM]);
    for (int i = 0; i < N_SESSIONS + N_LATE_CREATES; i++)
        cs_free(&cs[i]);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("router_scaleout");
    TCase *tc = tcase_create("router_scaleout");
    tcase_set_timeout(tc, CASE_TIMEOUT_S);
    tcase_add_test(tc, sessions_stay_on_their_replica);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
