/* tests/load/probe.c — kvd seen from outside during the soak: VmRSS and the
 * open descriptors of its process (/proc/PID), /healthz, and the page
 * accounting at a quiescent moment: every listed session's pages (GET stats)
 * against kvd_pool_pages{state="used"} and kvd_sessions from /metrics. These
 * use the blocking test client, one request per connection, off the hot loop. */
#include "tests/load/load.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>

#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"

long probe_rss_kib(int pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kib = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

long probe_fds(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

double probe_cpu_s(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return NAN;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields after the command (which may hold spaces) start past its ')':
     * state is field 3, utime 14 and stime 15. */
    const char *p = strrchr(buf, ')');
    unsigned long long ut, st;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return NAN;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

long probe_listen_overflows(void)
{
    FILE *f = fopen("/proc/net/netstat", "r");
    if (!f)
        return -1;
    /* Pairs of lines: "TcpExt: Name1 Name2 ..." then "TcpExt: v1 v2 ...". */
    static char names[8192], values[8192];
    long out = -1;
    while (out < 0 && fgets(names, sizeof names, f) && fgets(values, sizeof values, f)) {
        if (strncmp(names, "TcpExt:", 7) != 0)
            continue;
        char *sn, *sv;
        char *n = strtok_r(names, " \n", &sn), *v = strtok_r(values, " \n", &sv);
        while (n && v) {
            if (strcmp(n, "ListenOverflows") == 0) {
                out = atol(v);
                break;
            }
            n = strtok_r(NULL, " \n", &sn);
            v = strtok_r(NULL, " \n", &sv);
        }
    }
    fclose(f);
    return out;
}

bool probe_healthy(int port)
{
    http_response *r = http_request(port, "GET", "/healthz", NULL, NULL);
    bool ok = r->status == 200;
    http_response_free(r);
    return ok;
}

typedef struct tally {
    size_t listed, total_field;
    double pages, shared, shadow_bytes, used, sessions_metric;
    bool error;
} tally;

/* Every page of GET /v1/sessions, and GET stats of each session listed. */
static void take_tally(int port, tally *t)
{
    memset(t, 0, sizeof *t);
    char after[SOAK_ID_MAX + 1] = "";
    for (;;) {
        char path[256];
        snprintf(path, sizeof path, "/v1/sessions?limit=1000%s%s", after[0] ? "&after=" : "", after);
        http_response *r = http_request(port, "GET", path, NULL, NULL);
        cJSON *j = r->status == 200 ? http_response_json(r) : NULL;
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "sessions");
        if (!cJSON_IsArray(list)) {
            fprintf(stderr, "soak: accounting: list answered %d\n", r->status);
            t->error = true;
            cJSON_Delete(j);
            http_response_free(r);
            return;
        }
        t->total_field = (size_t)kvd_json_num(j, "total");
        const cJSON *e;
        cJSON_ArrayForEach(e, list)
        {
            const char *id = kvd_json_str(e, "id");
            snprintf(path, sizeof path, "/v1/sessions/%s", id ? id : "?");
            http_response *sr = http_request(port, "GET", path, NULL, NULL);
            cJSON *sj = sr->status == 200 ? http_response_json(sr) : NULL;
            if (!sj) {
                fprintf(stderr, "soak: accounting: stats of a listed session answered %d\n", sr->status);
                t->error = true;
            } else {
                t->pages += kvd_json_num(sj, "pages");
                t->shared += kvd_json_num(sj, "shared_pages");
                t->shadow_bytes += kvd_json_num(sj, "shadow_bytes");
            }
            cJSON_Delete(sj);
            http_response_free(sr);
            t->listed++;
        }
        const char *next = kvd_json_str(j, "next_after");
        if (next)
            snprintf(after, sizeof after, "%s", next);
        cJSON_Delete(j);
        http_response_free(r);
        if (!next)
            break;
    }
    http_response *m = http_request(port, "GET", "/metrics", NULL, NULL);
    if (m->status != 200) {
        t->error = true;
    } else {
        t->used = kvd_metric(m->body, "kvd_pool_pages", "state=\"used\"");
        t->sessions_metric = kvd_metric(m->body, "kvd_sessions", NULL);
    }
    http_response_free(m);
}

/* Pages flagged shared are counted in every session that holds them, so the
 * sum of session pages equals pool used exactly only when no page is flagged;
 * otherwise used lies in [sum - flagged, sum]. No soak config uses shadow
 * mode, so shadow pages must be 0. */
static bool balanced(const tally *t, size_t expect)
{
    if (t->error || t->listed != expect || t->total_field != expect || t->sessions_metric != (double)expect ||
        t->shadow_bytes != 0)
        return false;
    if (t->shared == 0)
        return t->used == t->pages;
    return t->used <= t->pages && t->used >= t->pages - t->shared;
}

bool probe_accounting(int port, size_t expect, bool final)
{
    tally t;
    /* A step sent by a client that closed at once may still be running on a
     * worker: retry for a while before calling it unbalanced. */
    bool ok = false;
    for (int attempt = 0; attempt < 50 && !ok; attempt++) {
        if (attempt)
            usleep(100 * 1000);
        take_tally(port, &t);
        ok = balanced(&t, expect) && (!final || t.used == 0);
    }
    printf("soak: accounting %s: generator's live sessions %zu, listed %zu (total %zu), kvd_sessions %.0f; "
           "sum of session pages %.0f (flagged shared %.0f), pool used %.0f -> %s\n",
           final ? "at the end" : "at the quiescent point", expect, t.listed, t.total_field, t.sessions_metric,
           t.pages, t.shared, t.used,
           ok ? (t.shared == 0 ? "balanced (exact)" : "balanced (within the shared pages)") : "UNBALANCED");
    return ok;
}
