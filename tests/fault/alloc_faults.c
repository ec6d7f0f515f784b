/* tests/fault/alloc_faults.c — allocation failures swept over every request
 * kind (issue 11): for each scenario a clean run counts the K allocations of
 * one request, then for N = 1..K the request runs with the Nth failing (once,
 * and from N on). The answer must be the clean run's 2xx or a JSON 500/503;
 * the pool's pages must add up to the live sessions'; a bystander session's
 * stats and next output must be bit-identical to the clean run's; and after
 * deleting everything the pool is empty (LSan checks the heap in the ASan
 * build). The API runs without HTTP, on a synchronous fake executor.
 * Snapshots answer bytes: a 2xx must equal, byte for byte, a clean snapshot
 * of the same session taken just before; a restore that fails creates
 * nothing, one that succeeds restores a session whose next output is the
 * clean run's. The harness is tests/fault/fault_api.c; POST /v1/batch has
 * its own sweep (batch_faults.c). */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "api/api.h"
#include "cache/pool.h"
#include "tests/fault/failmalloc.h"
#include "tests/fault/fault_api.h"
#include "tests/support/check_main.h"

/* ---- the fixture: an API, a bystander, the scenario's sessions ---- */

typedef struct fx {
    kvd_api *api;
    char *by;       /* the bystander: must never notice the faults */
    char *target;   /* the scenario's session (NULL if none) */
    char *child;    /* a fork of target (NULL if none) */
    char *snap;     /* OP_SNAPSHOT, OP_RESTORE: the target's snapshot, clean */
    size_t snap_len;
} fx;


/* ---- scenarios ---- */

static const char *const body_standard = "{\"layers\":2," STD ",\"seed\":1}";
static const char *const body_h2o =
    "{" STD ",\"cache\":{\"eviction\":\"h2o\",\"budget\":6,\"sink\":1,\"recent\":2},\"seed\":2}";
static const char *const body_shadow =
    "{" STD ",\"cache\":{\"dtype\":\"int8\",\"eviction\":\"l2norm\",\"budget\":6,\"sink\":1},"
    "\"shadow\":true,\"seed\":3}";
static const char *const body_kivi = "{" STD ",\"cache\":{\"dtype\":\"kivi2\",\"group\":4,\"residual\":4},\"seed\":4}";
static const char *const body_tensor2 = "{\"attention\":\"tensor\",\"tensor_cache\":\"two\"," STD ",\"seed\":5}";
static const char *const body_tensor4 =
    "{\"attention\":\"tensor\",\"tensor_cache\":\"four\"," STD ",\"cache\":{\"eviction\":\"recency\","
    "\"budget\":4,\"sink\":1},\"seed\":6}";
/* int8 four-cache: its step also takes the plan's f32 rows (cache/plan.c
 * plan_tensor_rows) that the SIMD kernels read. */
static const char *const body_tensor4q =
    "{\"attention\":\"tensor\",\"tensor_cache\":\"four\"," STD ",\"cache\":{\"dtype\":\"int8\"},\"seed\":8}";
/* SubGen4Cache with its exact four-cache copy: the sketch's plan (a dry run
 * of the cluster assignment), its snapshot record and the tensor shadow. */
static const char *const body_subgen =
    "{\"attention\":\"tensor\"," STD ",\"shadow\":true,\"cache\":{\"eviction\":\"subgen\",\"sink\":1,"
    "\"recent\":1,\"cluster_samples\":2,\"value_samples\":4},\"seed\":7}";
/* Standard subgen at its cluster cap (keys far apart at delta 0.01): a
 * step's dry run predicts "joins the nearest", the restore checks the cap. */
static const char *const body_subgen_cap =
    "{" STD ",\"cache\":{\"eviction\":\"subgen\",\"sink\":1,\"recent\":1,\"delta\":0.01,"
    "\"cluster_samples\":2,\"value_samples\":4,\"max_clusters\":2},\"seed\":10}";
static const char *const body_bystander =
    "{" STD ",\"cache\":{\"eviction\":\"recency\",\"budget\":8,\"sink\":2},\"seed\":9}";

typedef enum {
    OP_CREATE,
    OP_STEP,
    OP_STEP_CHILD,
    OP_FORK,
    OP_STATS,
    OP_LIST,
    OP_DELETE,
    OP_INFO,
    OP_SNAPSHOT, /* GET .../snapshot of the target */
    OP_RESTORE,  /* POST /v1/sessions/restore of the target's snapshot (target deleted in set-up) */
} op_kind;

typedef struct scenario {
    const char *name;
    const char *target;   /* create body of the target session (set-up); NULL: none */
    size_t setup_tokens;  /* prefilled into the target (layer 0) */
    bool fork_target;     /* set-up forks the target (pages shared from then on) */
    op_kind op;
    const char *create;   /* OP_CREATE: its body */
    bool tensor;          /* steps carry k1, k2, v1, v2 */
    size_t m, m_q;        /* OP_STEP: tokens and queries */
    bool multi;           /* OP_STEP: a "steps" body over layers 0 and 1, b64 output */
} scenario;

static const scenario scenarios[] = {
    {"create standard", NULL, 0, false, OP_CREATE, .create = "{\"layers\":2," STD ",\"seed\":1}"},
    {"create h2o", NULL, 0, false, OP_CREATE, .create = "{" STD ",\"cache\":{\"eviction\":\"h2o\",\"budget\":6,"
                                                         "\"sink\":1,\"recent\":2},\"seed\":2}"},
    {"create int8 l2norm shadow", NULL, 0, false, OP_CREATE,
     .create = "{" STD ",\"cache\":{\"dtype\":\"int8\",\"eviction\":\"l2norm\",\"budget\":6,\"sink\":1},"
               "\"shadow\":true,\"seed\":3}"},
    {"create kivi2", NULL, 0, false, OP_CREATE,
     .create = "{" STD ",\"cache\":{\"dtype\":\"kivi2\",\"group\":4,\"residual\":4},\"seed\":4}"},
    {"create tensor two-cache", NULL, 0, false, OP_CREATE,
     .create = "{\"attention\":\"tensor\",\"tensor_cache\":\"two\"," STD ",\"seed\":5}"},
    {"step single", "std", 3, false, OP_STEP, .m = 2, .m_q = 2},
    {"step steps form (b64)", "std", 3, false, OP_STEP, .m = 2, .m_q = 1, .multi = true},
    {"step h2o eviction", "h2o", 5, false, OP_STEP, .m = 4, .m_q = 2},
    {"step int8 l2norm shadow", "shadow", 5, false, OP_STEP, .m = 3, .m_q = 1},
    {"step kivi2", "kivi", 6, false, OP_STEP, .m = 3, .m_q = 1},
    {"step tensor two-cache", "tensor2", 2, false, OP_STEP, .tensor = true, .m = 2, .m_q = 1},
    {"step tensor four-cache recency", "tensor4", 4, false, OP_STEP, .tensor = true, .m = 2, .m_q = 1},
    {"step tensor four-cache int8", "tensor4q", 4, false, OP_STEP, .tensor = true, .m = 2, .m_q = 1},
    {"fork", "std", 3, false, OP_FORK, .create = NULL},
    {"fork shadow", "shadow", 5, false, OP_FORK, .create = NULL},
    {"step a fork (copy on write)", "std", 3, true, OP_STEP_CHILD, .m = 1, .m_q = 1},
    {"stats", "shadow", 5, false, OP_STATS, .create = NULL},
    {"list", "std", 3, false, OP_LIST, .create = NULL},
    {"info", NULL, 0, false, OP_INFO, .create = NULL},
    {"delete", "std", 3, false, OP_DELETE, .create = NULL},
    {"delete a forked parent", "std", 3, true, OP_DELETE, .create = NULL},
    {"snapshot standard", "std", 3, false, OP_SNAPSHOT, .create = NULL},
    {"snapshot int8 l2norm shadow", "shadow", 5, false, OP_SNAPSHOT, .create = NULL},
    {"snapshot kivi2", "kivi", 6, false, OP_SNAPSHOT, .create = NULL},
    {"snapshot tensor two-cache", "tensor2", 2, false, OP_SNAPSHOT, .tensor = true},
    {"restore standard", "std", 3, false, OP_RESTORE, .create = NULL},
    {"restore int8 l2norm shadow", "shadow", 5, false, OP_RESTORE, .create = NULL},
    {"restore kivi2", "kivi", 6, false, OP_RESTORE, .create = NULL},
    {"restore tensor two-cache", "tensor2", 2, false, OP_RESTORE, .tensor = true},
    {"step subgen tensor shadow", "subgen", 4, false, OP_STEP, .tensor = true, .m = 3, .m_q = 1},
    {"snapshot subgen tensor shadow", "subgen", 4, false, OP_SNAPSHOT, .tensor = true},
    {"restore subgen tensor shadow", "subgen", 4, false, OP_RESTORE, .tensor = true},
    {"fork tensor two-cache", "tensor2", 2, false, OP_FORK, .tensor = true},
    {"fork tensor four-cache recency", "tensor4", 4, false, OP_FORK, .tensor = true},
    {"step a forked tensor two-cache", "tensor2", 2, true, OP_STEP_CHILD, .tensor = true, .m = 2, .m_q = 1},
    {"step a forked tensor four-cache (evicts)", "tensor4", 4, true, OP_STEP_CHILD, .tensor = true, .m = 2,
     .m_q = 1},
    {"fork subgen tensor shadow (sketch copied)", "subgen", 4, false, OP_FORK, .tensor = true},
    {"step a forked subgen tensor shadow", "subgen", 4, true, OP_STEP_CHILD, .tensor = true, .m = 3, .m_q = 1},
    {"step subgen capped", "subgencap", 6, false, OP_STEP, .m = 4, .m_q = 1},
    {"snapshot subgen capped", "subgencap", 6, false, OP_SNAPSHOT, .create = NULL},
    {"restore subgen capped", "subgencap", 6, false, OP_RESTORE, .create = NULL},
    {"fork kivi2", "kivi", 6, false, OP_FORK, .create = NULL},
    {"step a forked kivi2 (settles)", "kivi", 6, true, OP_STEP_CHILD, .m = 3, .m_q = 1},
};
#define N_SCENARIOS (int)(sizeof scenarios / sizeof *scenarios)

static const char *target_body(const char *name)
{
    return !strcmp(name, "std")       ? body_standard
           : !strcmp(name, "h2o")     ? body_h2o
           : !strcmp(name, "shadow")  ? body_shadow
           : !strcmp(name, "kivi")    ? body_kivi
           : !strcmp(name, "tensor2") ? body_tensor2
           : !strcmp(name, "subgen")  ? body_subgen
           : !strcmp(name, "subgencap") ? body_subgen_cap
           : !strcmp(name, "tensor4q") ? body_tensor4q
                                      : body_tensor4;
}

static void fx_setup(fx *f, const scenario *sc)
{
    f->api = fault_api_create();
    f->by = create(f->api, body_bystander);
    step_ok(f->api, f->by, step_body(0, 5, 5, false, 1));
    step_ok(f->api, f->by, step_body(0, 2, 1, false, 2));
    f->target = f->child = f->snap = NULL;
    f->snap_len = 0;
    if (sc->target) {
        f->target = create(f->api, target_body(sc->target));
        step_ok(f->api, f->target, step_body(0, sc->setup_tokens, sc->setup_tokens, sc->tensor, 3));
        if (sc->fork_target)
            f->child = fork_ok(f->api, f->target);
    }
    if (sc->op == OP_SNAPSHOT || sc->op == OP_RESTORE)
        f->snap = snapshot_ok(f->api, f->target, &f->snap_len);
    if (sc->op == OP_RESTORE) { /* the id is free again; the restore brings it back */
        kvd_response r = call(f->api, KVD_ROUTE_SESSION_DELETE, f->target, NULL);
        ck_assert_int_eq(r.status, 200);
        free(r.body);
        ck_assert_ptr_null(stats(f->api, f->target));
    }
}

/* The body of the request the faults hit (made before they are armed). */
static char *act_body(const scenario *sc)
{
    switch (sc->op) {
    case OP_CREATE:
        return xstrdup(sc->create);
    case OP_STEP:
    case OP_STEP_CHILD: {
        char *body;
        if (sc->multi) {
            sbuf b = {0};
            sb_printf(&b, "{\"encoding\":\"b64\",\"steps\":[");
            sb_entry(&b, 0, sc->m, sc->m_q, sc->tensor, 4);
            sb_printf(&b, ",");
            sb_entry(&b, 1, sc->m, sc->m_q, sc->tensor, 5);
            sb_printf(&b, "]}");
            body = b.s;
        } else {
            body = step_body(0, sc->m, sc->m_q, sc->tensor, 4);
        }
        return body;
    }
    default:
        return NULL;
    }
}

/* OP_RESTORE's body: a malloc'd copy of the snapshot, NUL-terminated. */
static char *restore_body(const fx *f)
{
    char *b = malloc(f->snap_len + 1);
    ck_assert_ptr_nonnull(b);
    memcpy(b, f->snap, f->snap_len + 1);
    return b;
}

/* The one request the faults hit (no Check assertion in here). */
static kvd_response act(fx *f, const scenario *sc, char *body)
{
    switch (sc->op) {
    case OP_CREATE:
        return call(f->api, KVD_ROUTE_SESSION_CREATE, NULL, body);
    case OP_STEP:
    case OP_STEP_CHILD:
        return call(f->api, KVD_ROUTE_SESSION_STEP, sc->op == OP_STEP ? f->target : f->child, body);
    case OP_FORK:
        return call(f->api, KVD_ROUTE_SESSION_FORK, f->target, NULL);
    case OP_STATS:
        return call(f->api, KVD_ROUTE_SESSION_GET, f->target, NULL);
    case OP_LIST:
        return call(f->api, KVD_ROUTE_SESSION_LIST, NULL, NULL);
    case OP_DELETE:
        return call(f->api, KVD_ROUTE_SESSION_DELETE, f->target, NULL);
    case OP_INFO:
        return call(f->api, KVD_ROUTE_INFO, NULL, NULL);
    case OP_SNAPSHOT:
        return call(f->api, KVD_ROUTE_SESSION_SNAPSHOT, f->target, NULL);
    case OP_RESTORE:
        return call_bytes(f->api, KVD_ROUTE_SESSION_RESTORE, NULL, body, f->snap_len, "application/octet-stream");
    }
    return (kvd_response){.status = -1};
}

/* What the clean run saw: everything a faulted run is held to. */
typedef struct golden {
    long allocations;
    int status;
    char *body;          /* normalized answer */
    size_t pages_before, pages_after, sessions_before, sessions_after;
    char *target_after;  /* normalized stats of the target after the request */
    char *by_stats;      /* the bystander's stats ... */
    char *by_next;       /* ... and its next step's raw answer */
    char *target_next;   /* OP_RESTORE: the restored session's next step's raw answer */
} golden;

static void golden_free(golden *g)
{
    free(g->body);
    free(g->target_after);
    free(g->by_stats);
    free(g->by_next);
    free(g->target_next);
    memset(g, 0, sizeof *g);
}


/* One run of the scenario, the fail_at-th allocation failing (0: clean, which
 * fills g). Returns the allocations the request made. */
static long run_once(const scenario *sc, long fail_at, bool sticky, golden *g)
{
    char what[160];
    snprintf(what, sizeof what, "%s, allocation %ld%s", sc->name, fail_at, sticky ? " on" : "");
    fx f;
    fx_setup(&f, sc);
    const kvd_pool *pool = kvd_api_pool(f.api);
    const size_t pages_before = kvd_pool_pages_used(pool), sessions_before = kvd_api_session_count(f.api);
    char *target_before = f.target ? stats(f.api, f.target) : NULL;

    char *body = sc->op == OP_RESTORE ? restore_body(&f) : act_body(sc);
    harness_error = NULL;
    failmalloc_arm(fail_at, sticky);
    kvd_response r = act(&f, sc, body);
    const long count = failmalloc_disarm();
    ck_assert_msg(!harness_error, "%s: %s", what, harness_error);
    const bool clean = fail_at == 0 || failmalloc_failed() == 0;

    const size_t pages_after = kvd_pool_pages_used(pool), sessions_after = kvd_api_session_count(f.api);
    char *target_after = f.target ? stats(f.api, f.target) : NULL;
    if (fail_at == 0) {
        ck_assert_msg(r.status >= 200 && r.status < 300, "%s: clean run answered %d", what, r.status);
        g->allocations = count;
        g->status = r.status;
        if (sc->op == OP_SNAPSHOT) {
            ck_assert_msg(r.body_len == f.snap_len && !memcmp(r.body, f.snap, f.snap_len),
                          "%s: the clean snapshot differs from the set-up's", what);
            g->body = NULL;
        } else {
            g->body = normalize(r.body);
        }
        g->pages_before = pages_before;
        g->pages_after = pages_after;
        g->sessions_before = sessions_before;
        g->sessions_after = sessions_after;
        g->target_after = target_after ? xstrdup(target_after) : NULL;
    } else if (r.status == g->status && sc->op == OP_SNAPSHOT) {
        /* Bytes, not JSON: the same bytes as a clean snapshot of the session
         * (the id differs between runs, so not the golden run's). */
        ck_assert_msg(r.content_type && !strcmp(r.content_type, "application/octet-stream"), "%s: type %s", what,
                      r.content_type ? r.content_type : "none");
        ck_assert_msg(r.body_len == f.snap_len && !memcmp(r.body, f.snap, f.snap_len),
                      "%s: snapshot of %zu bytes differs from the clean one of %zu", what, r.body_len, f.snap_len);
    } else if (r.status == g->status) {
        /* Success is the whole answer or nothing: never a 2xx with a gap. */
        char *n = normalize(r.body);
        ck_assert_msg(str_eq(n, g->body), "%s: 2xx differs from the clean run:\n%s\n%s", what, n, g->body);
        free(n);
    } else {
        ck_assert_msg(!clean, "%s: no allocation failed, yet %d", what, r.status);
        check_error(&r, sticky, what);
    }
    free(r.body);

    /* Pages and sessions: as before the request or as after a clean one. */
    const bool ok = r.status == g->status;
    ck_assert_msg(pages_before == g->pages_before && sessions_before == g->sessions_before, "%s: set-up", what);
    ck_assert_msg(ok ? pages_after == g->pages_after
                     : (pages_after == pages_before || pages_after == g->pages_after),
                  "%s: %zu pages used (before %zu, clean %zu)", what, pages_after, pages_before, g->pages_after);
    ck_assert_msg(ok ? sessions_after == g->sessions_after
                     : (sessions_after == sessions_before || sessions_after == g->sessions_after),
                  "%s: %zu sessions", what, sessions_after);
    if (!ok && (sc->op == OP_CREATE || sc->op == OP_FORK || sc->op == OP_RESTORE))
        ck_assert_msg(sessions_after == sessions_before && pages_after == pages_before,
                      "%s: a failed create, fork or restore left something behind", what);
    if (sc->op == OP_RESTORE)
        ck_assert_msg(ok ? str_eq(target_after, g->target_after) : target_after == NULL,
                      "%s: restored session's stats\n%s\nclean %s", what, target_after, g->target_after);
    /* The target: untouched, or changed exactly as the clean run changed it
     * (a step whose answer could not be rendered was applied). */
    if (sc->op != OP_DELETE && target_before)
        ck_assert_msg(str_eq(target_after, g->target_after) || (!ok && same_but_heap(target_after, target_before)),
                      "%s: target stats\n%s\nbefore %s\nclean  %s", what, target_after, target_before,
                      g->target_after);
    free(target_before);
    free(target_after);
    if (!f.child && !(sc->op == OP_FORK && sessions_after > sessions_before))
        check_accounting(f.api);

    /* A restored session: its next output is the clean run's (the bytes
     * came back whole). */
    if (sc->op == OP_RESTORE && ok) {
        kvd_response tn = call(f.api, KVD_ROUTE_SESSION_STEP, f.target, step_body(0, 1, 1, sc->tensor, 7));
        ck_assert_msg(tn.status == 200, "%s: restored session's step %d %s", what, tn.status, tn.body);
        if (fail_at == 0)
            g->target_next = tn.body;
        else {
            ck_assert_msg(str_eq(tn.body, g->target_next), "%s: restored session's output\n%s\n%s", what,
                          tn.body, g->target_next);
            free(tn.body);
        }
    }

    /* The bystander: bit-identical stats and next output. */
    char *by = stats(f.api, f.by);
    kvd_response next = call(f.api, KVD_ROUTE_SESSION_STEP, f.by,
                             xstrdup("{\"encoding\":\"b64\",\"k\":\"b64:AACAPwAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\","
                                     "\"v\":\"b64:AAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\","
                                     "\"q\":[1,0,0,0,0,0,0,0, 0,1,0,0,0,0,0,0]}"));
    ck_assert_msg(next.status == 200, "%s: bystander step %d %s", what, next.status, next.body);
    if (fail_at == 0) {
        g->by_stats = by;
        g->by_next = next.body;
    } else {
        ck_assert_msg(str_eq(by, g->by_stats), "%s: bystander stats\n%s\n%s", what, by, g->by_stats);
        ck_assert_msg(str_eq(next.body, g->by_next), "%s: bystander output\n%s\n%s", what, next.body,
                      g->by_next);
        free(by);
        free(next.body);
    }

    delete_all(f.api);
    kvd_api_destroy(f.api);
    free(f.by);
    free(f.target);
    free(f.child);
    free(f.snap);
    return count;
}

/* The sweep of one scenario in one mode. */
static void sweep(const scenario *sc, bool sticky)
{
    golden g = {0};
    run_once(sc, 0, false, &g); /* warms any lazily initialized state */
    golden_free(&g);
    const long k = run_once(sc, 0, false, &g);
    ck_assert_int_gt(k, 0);
    for (long n = 1; n <= k; n++)
        run_once(sc, n, sticky, &g);
    fprintf(stderr, "alloc_faults: %-32s %s: %ld fault points\n", sc->name, sticky ? "from N on" : "Nth only ",
            k);
    golden_free(&g);
}

START_TEST(test_once)
{
    sweep(&scenarios[_i], false);
}
END_TEST

START_TEST(test_sticky)
{
    sweep(&scenarios[_i], true);
}
END_TEST

/* kvd_api_create itself: -ENOMEM and nothing held, at every allocation. */
START_TEST(test_api_create)
{
    kvd_api *api;
    failmalloc_arm(0, false);
    int rc0 = fault_api_create_bare(&api);
    const long k = failmalloc_disarm();
    ck_assert_int_eq(rc0, 0);
    kvd_api_destroy(api);
    for (long n = 1; n <= k; n++) {
        failmalloc_arm(n, _i);
        int rc = fault_api_create_bare(&api);
        failmalloc_disarm();
        ck_assert_msg(rc == -12 /* -ENOMEM */, "allocation %ld of %ld: %d", n, k, rc);
    }
}
END_TEST

static void setup(void)
{
    failmalloc_install_cjson();
}

static Suite *make_suite(void)
{
    Suite *s = suite_create("fault/alloc_faults");
    TCase *tc = tcase_create("sweep");
    tcase_add_unchecked_fixture(tc, setup, NULL);
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_api_create, 0, 2);
    tcase_add_loop_test(tc, test_once, 0, N_SCENARIOS);
    tcase_add_loop_test(tc, test_sticky, 0, N_SCENARIOS);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
