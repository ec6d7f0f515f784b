/* tests/integration/test_snapshot.c — snapshots over HTTP and --state-dir:
 * a snapshot restored on another kvd (another page size) keeps its id and
 * its next step's output is byte-identical to the original's; 409 for an id
 * in use; truncated, flipped, foreign bytes and a wrong Content-Type are
 * refused with nothing created; a pool too small is a 503; other keys get
 * 404 and a restore belongs to the restoring key. --state-dir: SIGTERM and
 * restart continue bit-identically beside a kvd never restarted (a subgen
 * session too, and one restored elsewhere); a SIGKILL
 * while a file is half-written leaves nothing that loads half-written; a
 * corrupted file is skipped with a log line and the rest load. */
#define _GNU_SOURCE
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <check.h>

#include "tests/support/check_main.h"
#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"

#define OCTET "application/octet-stream"
#define SESSION_BODY "{\"layers\":2,\"heads\":4,\"kv_heads\":2,\"head_dim\":16,\"seed\":5,\"shadow\":true," \
                     "\"cache\":{\"dtype\":\"int4\",\"group\":8,\"eviction\":\"h2o\",\"budget\":24,\"sink\":2,\"recent\":6}}"
#define SUBGEN_BODY "{\"layers\":2,\"heads\":4,\"kv_heads\":2,\"head_dim\":16,\"seed\":9,\"shadow\":true," \
                    "\"cache\":{\"eviction\":\"subgen\",\"delta\":1.0,\"cluster_samples\":4,\"value_samples\":16," \
                    "\"sink\":2,\"recent\":6}}"
#define KIVI_BODY "{\"heads\":2,\"kv_heads\":1,\"head_dim\":16,\"cache\":{\"dtype\":\"kivi2\",\"group\":8,\"residual\":8," \
                  "\"eviction\":\"l2norm\",\"budget\":20,\"recent\":4}}"

/* A step body of m tokens on `layer` for a session of kv_heads=2 (or 1),
 * heads 4 (or 2), head_dim 16, with deterministic values from seed. */
static char *step_body(unsigned seed, int layer, int m, int kvh, int heads)
{
    size_t cap = 64 + (size_t)m * (2 * kvh + heads) * 16 * 16;
    char *b = malloc(cap), *p = b;
    uint64_t s = seed * 2654435761u + 1;
    p += sprintf(p, "{\"layer\":%d,\"encoding\":\"b64\"", layer);
    const char *names[3] = {"k", "v", "q"};
    for (int t = 0; t < 3; t++) {
        p += sprintf(p, ",\"%s\":[", names[t]);
        const int n = m * (t < 2 ? kvh : heads) * 16;
        for (int i = 0; i < n; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            p += sprintf(p, "%s%.4f", i ? "," : "", (double)((s >> 40) % 2000) / 1000.0 - 1.0);
        }
        *p++ = ']';
    }
    strcpy(p, "}");
    return b;
}

/* Steps the session and returns its "o" (b64 string, caller frees). */
static char *step_o(int port, const char *id, unsigned seed, int layer, int m, int kvh, int heads)
{
    char *body = step_body(seed, layer, m, kvh, heads);
    cJSON *r = kvd_step_ok(port, id, body);
    free(body);
    const char *o = kvd_json_str(r, "o");
    ck_assert_ptr_nonnull(o);
    char *copy = strdup(o);
    cJSON_Delete(r);
    return copy;
}

static void feed(int port, const char *id, unsigned first, int n, int kvh, int heads, int layers)
{
    for (int i = 0; i < n; i++)
        for (int l = 0; l < layers; l++)
            free(step_o(port, id, first + (unsigned)i * 7 + (unsigned)l, l, 5, kvh, heads));
}

static http_response *snapshot(int port, const char *id, const char *auth)
{
    char path[160];
    snprintf(path, sizeof path, "/v1/sessions/%s/snapshot", id);
    return http_request_n(port, "GET", path, NULL, NULL, 0, auth);
}

static http_response *restore(int port, const void *bytes, size_t len, const char *ctype, const char *auth)
{
    return http_request_n(port, "POST", "/v1/sessions/restore", ctype, bytes, len, auth);
}

static void expect_same_next_steps(int pa, const char *a, int pb, const char *b, int kvh, int heads, int layers)
{
    for (int i = 0; i < 3; i++)
        for (int l = 0; l < layers; l++) {
            char *oa = step_o(pa, a, 500 + (unsigned)i, l, 3, kvh, heads);
            char *ob = step_o(pb, b, 500 + (unsigned)i, l, 3, kvh, heads);
            ck_assert_str_eq(oa, ob); /* the b64 of the f32 bytes: bit for bit */
            free(oa);
            free(ob);
        }
}

START_TEST(restore_elsewhere_is_bit_identical)
{
    static const char *const a_args[] = {"--page-bytes", "4096", "--memory", "16MiB", "--threads", "2", NULL};
    static const char *const b_args[] = {"--page-bytes", "8192", "--memory", "16MiB", "--threads", "2", NULL};
    kvd_proc *A = kvd_proc_start_ck(a_args), *B = kvd_proc_start_ck(b_args);
    const int pa = kvd_proc_port(A), pb = kvd_proc_port(B);
    const char *bodies[3] = {SESSION_BODY, KIVI_BODY, SUBGEN_BODY};
    const char *dtype[3] = {"int4", "kivi2", "f32"};
    const int kvh[3] = {2, 1, 2}, heads[3] = {4, 2, 4}, layers[3] = {2, 1, 2};
    for (int c = 0; c < 3; c++) {
        char *id = kvd_create_session(pa, bodies[c], NULL);
        feed(pa, id, 10, 8, kvh[c], heads[c], layers[c]); /* 40 tokens a stream: evicting */
        http_response *s = snapshot(pa, id, NULL);
        ck_assert_int_eq(s->status, 200);
        ck_assert_str_eq(http_header_get(s, "Content-Type"), OCTET);
        ck_assert_mem_eq(s->body, "KVDSNAP1", 8);
        http_response *r = restore(pb, s->body, s->body_len, OCTET, NULL);
        ck_assert_msg(r->status == 201, "%d %s", r->status, r->body);
        cJSON *j = http_response_json(r);
        ck_assert_str_eq(kvd_json_str(j, "id"), id);
        ck_assert_str_eq(kvd_json_str(j, "config.cache.dtype"), dtype[c]);
        cJSON_Delete(j);
        http_response_free(r);
        /* The id is in use now, on both. */
        r = restore(pb, s->body, s->body_len, OCTET, NULL);
        kvd_expect_error(r, 409, "conflict", "id", NULL, "restore twice");
        http_response_free(r);
        r = restore(pa, s->body, s->body_len, OCTET, NULL);
        kvd_expect_error(r, 409, "conflict", "id", NULL, "restore onto the original");
        http_response_free(r);
        http_response_free(s);
        cJSON *sa = kvd_session_stats(pa, id), *sb = kvd_session_stats(pb, id);
        static const char *const same[] = {"tokens", "appended", "evicted", "steps", "clusters", "shadow.steps"};
        for (int k = 0; k < (c == 2 ? 6 : 4); k++)
            ck_assert_double_eq(kvd_json_num(sa, same[k]), kvd_json_num(sb, same[k]));
        ck_assert_double_gt(kvd_json_num(sa, "evicted"), 0);
        cJSON_Delete(sa);
        cJSON_Delete(sb);
        expect_same_next_steps(pa, id, pb, id, kvh[c], heads[c], layers[c]);
        free(id);
    }
    kvd_proc_stop_ck(A);
    kvd_proc_stop_ck(B);
}
END_TEST

START_TEST(bad_snapshots_create_nothing)
{
    static const char *const args[] = {"--page-bytes", "4096", "--memory", "4MiB", "--threads", "1", NULL};
    kvd_proc *P = kvd_proc_start_ck(args);
    const int port = kvd_proc_port(P);
    /* f32, head_dim 16, 550 tokens of 136 bytes: a snapshot over the 64 KiB
     * small-body cap, which restore must not apply. */
    char *id = kvd_create_session(port, "{\"heads\":2,\"kv_heads\":1,\"head_dim\":16}", NULL);
    feed(port, id, 1, 110, 1, 2, 1);
    http_response *s = snapshot(port, id, NULL);
    ck_assert_int_eq(s->status, 200);
    ck_assert_uint_gt(s->body_len, 64 * 1024);
    kvd_delete_session(port, id);
    const double used = kvd_metric_now(port, "kvd_pool_pages", "state=\"used\"");
    ck_assert_double_eq(used, 0);
    http_response *r = restore(port, s->body, s->body_len - 1, OCTET, NULL);
    kvd_expect_error(r, 400, "invalid_argument", NULL, "truncated", "truncated");
    http_response_free(r);
    const size_t at[] = {3, 8, 20, 100, s->body_len / 2, s->body_len - 1};
    for (size_t i = 0; i < sizeof at / sizeof *at; i++) {
        s->body[at[i]] ^= 0x10;
        r = restore(port, s->body, s->body_len, OCTET, NULL);
        kvd_expect_error(r, 400, "invalid_argument", NULL, "snapshot refused", "flipped byte");
        http_response_free(r);
        s->body[at[i]] ^= 0x10;
    }
    r = restore(port, "{\"not\":\"a snapshot\"}", 20, OCTET, NULL);
    kvd_expect_error(r, 400, "invalid_argument", NULL, "bad magic", "foreign");
    http_response_free(r);
    r = restore(port, s->body, s->body_len, KVD_JSON, NULL);
    kvd_expect_error(r, 415, "unsupported_media_type", NULL, NULL, "json content type");
    http_response_free(r);
    cJSON *list = kvd_get_json(port, "/v1/sessions", 200);
    ck_assert_double_eq(kvd_json_num(list, "total"), 0);
    cJSON_Delete(list);
    ck_assert_double_eq(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\""), 0);
    /* The intact one restores (after all the refusals), and a missing id is a 404. */
    r = restore(port, s->body, s->body_len, OCTET, NULL);
    ck_assert_int_eq(r->status, 201);
    http_response_free(r);
    http_response *nf = snapshot(port, "00000000000000000000000000000000", NULL);
    kvd_expect_error(nf, 404, "not_found", NULL, NULL, "no such session");
    http_response_free(nf);
    http_response_free(s);
    free(id);
    kvd_proc_stop_ck(P);
}
END_TEST

START_TEST(pool_full_and_keys)
{
    static const char *const big[] = {"--page-bytes", "4096", "--memory", "4MiB", "--threads", "1", NULL};
    static const char *const tiny[] = {"--page-bytes", "4096", "--memory", "16KiB", "--threads", "1", NULL};
    setenv("KVD_API_KEY", "key-one", 1);
    kvd_proc *P = kvd_proc_start_ck(big);
    unsetenv("KVD_API_KEY");
    kvd_proc *T = kvd_proc_start_ck(tiny);
    const int port = kvd_proc_port(P), tp = kvd_proc_port(T);
    const char *k1 = "Authorization: Bearer key-one\r\n";
    const char *cb = "{\"heads\":2,\"kv_heads\":1,\"head_dim\":16}";
    http_response *c = http_request_n(port, "POST", "/v1/sessions", KVD_JSON, cb, strlen(cb), k1);
    ck_assert_int_eq(c->status, 201);
    cJSON *cj = http_response_json(c);
    char *id = strdup(kvd_json_str(cj, "id"));
    cJSON_Delete(cj);
    http_response_free(c);
    char *body = step_body(3, 0, 200, 1, 2);
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/step", id);
    http_response *st = http_request_n(port, "POST", path, KVD_JSON, body, strlen(body), k1);
    ck_assert_int_eq(st->status, 200);
    http_response_free(st);
    free(body);
    http_response *s = snapshot(port, id, k1);
    ck_assert_int_eq(s->status, 200);
    http_response *r = snapshot(port, id, NULL);
    ck_assert_int_eq(r->status, 401);
    http_response_free(r);
    /* 200 tokens of f32 head_dim 16 need more than the 4 pages of T. */
    r = restore(tp, s->body, s->body_len, OCTET, NULL);
    kvd_expect_error(r, 503, "resource_exhausted", NULL, NULL, "pool too small");
    http_response_free(r);
    ck_assert_double_eq(kvd_metric_now(tp, "kvd_pool_pages", "state=\"used\""), 0);
    cJSON *list = kvd_get_json(tp, "/v1/sessions", 200);
    ck_assert_double_eq(kvd_json_num(list, "total"), 0);
    cJSON_Delete(list);
    http_response_free(s);
    free(id);
    kvd_proc_stop_ck(P);
    kvd_proc_stop_ck(T);
}
END_TEST

START_TEST(other_keys_see_nothing)
{
    static const char *const args[] = {"--page-bytes", "4096", "--memory", "4MiB", "--threads", "1", NULL};
    char dir[] = "/tmp/kvd-snapkeys-XXXXXX", keyfile[128];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(keyfile, sizeof keyfile, "%s/keys", dir);
    FILE *f = fopen(keyfile, "w");
    fputs("key-one\nkey-two\n", f);
    fclose(f);
    const char *const kargs[] = {"--page-bytes", "4096", "--memory", "4MiB", "--threads", "1",
                                 "--api-key-file", keyfile, NULL};
    (void)args;
    kvd_proc *P = kvd_proc_start_ck(kargs);
    const int port = kvd_proc_port(P);
    const char *k1 = "Authorization: Bearer key-one\r\n", *k2 = "Authorization: Bearer key-two\r\n";
    http_response *c = http_request_n(port, "POST", "/v1/sessions", KVD_JSON, "{}", 2, k1);
    ck_assert_int_eq(c->status, 201);
    cJSON *cj = http_response_json(c);
    char *id = strdup(kvd_json_str(cj, "id"));
    cJSON_Delete(cj);
    http_response_free(c);
    http_response *s = snapshot(port, id, k2);
    kvd_expect_error(s, 404, "not_found", NULL, NULL, "another key's snapshot");
    http_response_free(s);
    s = snapshot(port, id, k1);
    ck_assert_int_eq(s->status, 200);
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    http_response *d = http_request_n(port, "DELETE", path, NULL, NULL, 0, k1);
    ck_assert_int_eq(d->status, 200);
    http_response_free(d);
    http_response *r = restore(port, s->body, s->body_len, OCTET, k2);
    ck_assert_int_eq(r->status, 201);
    http_response_free(r);
    http_response *g = http_request_n(port, "GET", path, NULL, NULL, 0, k1);
    ck_assert_int_eq(g->status, 404); /* the restoring key owns it now */
    http_response_free(g);
    g = http_request_n(port, "GET", path, NULL, NULL, 0, k2);
    ck_assert_int_eq(g->status, 200);
    http_response_free(g);
    http_response_free(s);
    free(id);
    kvd_proc_stop_ck(P);
    unlink(keyfile);
    rmdir(dir);
}
END_TEST

/* Files in dir whose names end in suffix (and, with dot, start with '.'). */
static int count_files(const char *dir, const char *suffix, bool dot)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        const size_t l = strlen(e->d_name), k = strlen(suffix);
        if (l > k && strcmp(e->d_name + l - k, suffix) == 0 && (e->d_name[0] == '.') == dot)
            n++;
    }
    closedir(d);
    return n;
}

static void wipe(const char *dir)
{
    DIR *d = opendir(dir);
    char p[512];
    for (struct dirent *e; d && (e = readdir(d));) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

START_TEST(state_dir_restart_is_bit_identical)
{
    char dir[] = "/tmp/kvd-state-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    const char *const sargs[] = {"--page-bytes", "4096", "--memory", "16MiB", "--threads", "2",
                                 "--state-dir", dir, NULL};
    static const char *const plain[] = {"--page-bytes", "4096", "--memory", "16MiB", "--threads", "2", NULL};
    kvd_proc *A = kvd_proc_start_ck(sargs), *C = kvd_proc_start_ck(plain);
    int pa = kvd_proc_port(A);
    const int pc = kvd_proc_port(C);
    char *a = kvd_create_session(pa, SESSION_BODY, NULL), *c = kvd_create_session(pc, SESSION_BODY, NULL);
    /* and a subgen session: its sketch survives the restart too */
    char *ga = kvd_create_session(pa, SUBGEN_BODY, NULL), *gc = kvd_create_session(pc, SUBGEN_BODY, NULL);
    feed(pa, a, 30, 6, 2, 4, 2);
    feed(pc, c, 30, 6, 2, 4, 2);
    feed(pa, ga, 60, 8, 2, 4, 2);
    feed(pc, gc, 60, 8, 2, 4, 2);
    kvd_proc_stop_ck(A); /* SIGTERM: drain, write, exit 0 */
    ck_assert_int_eq(count_files(dir, ".kvds", false), 2);
    A = kvd_proc_start_ck(sargs);
    pa = kvd_proc_port(A);
    char *log = kvd_proc_stderr(A);
    ck_assert_msg(strstr(log, "restored 2 sessions from"), "%s", log);
    free(log);
    ck_assert_int_eq(count_files(dir, ".kvds", false), 0); /* deleted once restored */
    expect_same_next_steps(pa, a, pc, c, 2, 4, 2);
    expect_same_next_steps(pa, ga, pc, gc, 2, 4, 2);
    cJSON *st = kvd_session_stats(pa, ga);
    ck_assert_double_gt(kvd_json_num(st, "clusters"), 0);
    ck_assert_double_gt(kvd_json_num(st, "evicted"), 0);
    cJSON_Delete(st);
    kvd_proc_stop_ck(A);
    kvd_proc_stop_ck(C);
    free(a);
    free(c);
    free(ga);
    free(gc);
    wipe(dir);
}
END_TEST

/* Waits until the server's stderr holds `needle` at least n times. */
static void wait_log(kvd_proc *p, const char *needle, int n)
{
    for (int tries = 0; tries < 6000; tries++) {
        char *log = kvd_proc_stderr(p);
        int k = 0;
        for (const char *at = log; (at = strstr(at, needle)); at++)
            k++;
        free(log);
        if (k >= n)
            return;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    ck_abort_msg("never saw %d x '%s'", n, needle);
}

START_TEST(sigkill_mid_write_and_corrupt_files)
{
    char dir[] = "/tmp/kvd-state-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    const char *const sargs[] = {"--page-bytes", "4096", "--memory", "16MiB", "--threads", "1",
                                 "--state-dir", dir, NULL};
    setenv("KVD_TEST_STATE_PAUSE_MS", "60000", 1);
    kvd_proc *A = kvd_proc_start_ck(sargs);
    unsetenv("KVD_TEST_STATE_PAUSE_MS");
    const int pa = kvd_proc_port(A);
    char *ids[3];
    for (int i = 0; i < 3; i++) {
        ids[i] = kvd_create_session(pa, KIVI_BODY, NULL);
        feed(pa, ids[i], 40 + (unsigned)i, 4, 1, 2, 1);
    }
    kvd_proc_signal(A, SIGTERM);
    wait_log(A, "kvd: state: writing", 1); /* the first file is half-written, paused */
    kvd_proc_signal(A, SIGKILL);
    kvd_proc_free(A);
    ck_assert_int_eq(count_files(dir, ".kvds", false), 0);
    ck_assert_int_eq(count_files(dir, ".kvds.tmp", true), 1);

    /* Plant what a careless writer could leave: the half-written temp file
     * under a restorable name, and garbage. A good file beside them. */
    char tmp_path[512], bad[512], half[512];
    DIR *d = opendir(dir);
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] == '.' && strstr(e->d_name, ".kvds.tmp"))
            snprintf(tmp_path, sizeof tmp_path, "%s/%s", dir, e->d_name);
    closedir(d);
    snprintf(half, sizeof half, "%s/half.kvds", dir);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", tmp_path, half);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(bad, sizeof bad, "%s/garbage.kvds", dir);
    FILE *f = fopen(bad, "w");
    fputs("KVDSNAP1 but nothing else of use", f);
    fclose(f);
    const char *const sargs2[] = {"--page-bytes", "4096", "--memory", "16MiB", "--threads", "1",
                                  "--state-dir", dir, NULL};
    kvd_proc *B = kvd_proc_start_ck(sargs2);
    int pb = kvd_proc_port(B);
    char *good = kvd_create_session(pb, KIVI_BODY, NULL);
    feed(pb, good, 77, 3, 1, 2, 1);
    kvd_proc_stop_ck(B); /* writes good.kvds */
    ck_assert_int_eq(count_files(dir, ".kvds", false), 3); /* good, half, garbage */
    B = kvd_proc_start_ck(sargs2);
    pb = kvd_proc_port(B);
    char *log = kvd_proc_stderr(B);
    ck_assert_msg(strstr(log, "skipping") && strstr(log, "half.kvds") && strstr(log, "garbage.kvds"), "%s", log);
    ck_assert_msg(strstr(log, "restored 1 session from"), "%s", log);
    ck_assert_msg(strstr(log, "removing the unfinished") || count_files(dir, ".kvds.tmp", true) == 0, "%s", log);
    free(log);
    ck_assert_int_eq(count_files(dir, ".kvds.tmp", true), 0);
    cJSON *st = kvd_session_stats(pb, good);
    ck_assert_double_eq(kvd_json_num(st, "appended"), 15);
    cJSON_Delete(st);
    for (int i = 0; i < 3; i++) { /* never saved whole: gone, not half there */
        char path[128];
        snprintf(path, sizeof path, "/v1/sessions/%s", ids[i]);
        cJSON_Delete(kvd_get_json(pb, path, 404));
        free(ids[i]);
    }
    cJSON *list = kvd_get_json(pb, "/v1/sessions", 200);
    ck_assert_double_eq(kvd_json_num(list, "total"), 1);
    cJSON_Delete(list);
    kvd_proc_stop_ck(B);
    free(good);
    wipe(dir);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("snapshot");
    TCase *tc = tcase_create("snapshot");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, restore_elsewhere_is_bit_identical);
    tcase_add_test(tc, bad_snapshots_create_nothing);
    tcase_add_test(tc, pool_full_and_keys);
    tcase_add_test(tc, other_keys_see_nothing);
    tcase_add_test(tc, state_dir_restart_is_bit_identical);
    tcase_add_test(tc, sigkill_mid_write_and_corrupt_files);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
