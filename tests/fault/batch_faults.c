/* tests/fault/batch_faults.c — allocation failures swept over POST /v1/batch
 * (issue 11). A batch of items over three sessions (standard, h2o evicting,
 * int8 with a shadow copy), one item of an unknown session and one bad item
 * runs with the Nth allocation failing (once, and from N on) for every N the
 * clean run makes. The answer must be a JSON 500/503 that changed nothing,
 * or a 200 whose every item is either what a fault-free reference run gives
 * or an item 500/503 that left its session as it was (one that says "the
 * step was applied" counts as applied). The reference is the same batch run
 * without faults, each failed item replaced by one of an unknown session (so
 * indices stay put); every item, each session's stats and next step must
 * match it. A bystander outside the batch stays bit-identical, pool pages add
 * up, and after deleting everything the pool is empty (LSan: no leak). */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "api/api.h"
#include "tests/fault/failmalloc.h"
#include "tests/fault/fault_api.h"
#include "tests/support/check_main.h"

/* ---- the sessions and the batch ---- */

#define N_SESSIONS 3
static const char *const session_body[N_SESSIONS] = {
    "{\"layers\":2," STD ",\"seed\":1}",
    "{" STD ",\"cache\":{\"eviction\":\"h2o\",\"budget\":6,\"sink\":1,\"recent\":2},\"seed\":2}",
    "{" STD ",\"cache\":{\"dtype\":\"int8\",\"eviction\":\"l2norm\",\"budget\":6,\"sink\":1},"
    "\"shadow\":true,\"seed\":3}",
};
static const size_t prefill[N_SESSIONS] = {3, 5, 5}; /* tokens stepped in at set-up (layer 0) */
static const char *const body_bystander =
    "{" STD ",\"cache\":{\"eviction\":\"recency\",\"budget\":8,\"sink\":2},\"seed\":9}";
#define UNKNOWN_ID "00000000000000000000000000000000"

/* Items: a session (index; -1: unknown), its entry, or a bad one (q one row
 * short of a query: a 400 the worker's parse gives). A session's items share
 * layer 0, so each depends on the ones before it: a failed item changes the
 * answers after it, which the reference run must then reproduce. */
typedef struct item {
    int session;
    int layer;
    size_t m, m_q;
    bool bad;
} item;
static const item items[] = {
    {0, 0, 2, 2, false}, {1, 0, 2, 1, false}, {-1, 0, 1, 1, false}, {0, 0, 1, 1, false},
    {2, 0, 1, 1, false}, {0, 0, 1, 1, true},  {1, 0, 1, 1, false},  {0, 1, 1, 1, false},
};
#define N_ITEMS (int)(sizeof items / sizeof *items)

typedef struct bfx {
    kvd_api *api;
    char *by;
    char *id[N_SESSIONS];
} bfx;

static void bfx_setup(bfx *f)
{
    f->api = fault_api_create();
    f->by = create(f->api, body_bystander);
    step_ok(f->api, f->by, step_body(0, 5, 5, false, 1));
    step_ok(f->api, f->by, step_body(0, 2, 1, false, 2));
    for (int s = 0; s < N_SESSIONS; s++) {
        f->id[s] = create(f->api, session_body[s]);
        step_ok(f->api, f->id[s], step_body(0, prefill[s], prefill[s], false, 3u + (unsigned)s));
    }
}

static void bfx_teardown(bfx *f)
{
    delete_all(f->api);
    kvd_api_destroy(f->api);
    free(f->by);
    for (int s = 0; s < N_SESSIONS; s++)
        free(f->id[s]);
}

/* The batch; items in `gone` (bit i) become items of an unknown session. */
static char *batch_body(const bfx *f, unsigned gone, bool b64)
{
    sbuf b = {0};
    sb_printf(&b, "{%s\"steps\":[", b64 ? "\"encoding\":\"b64\"," : "");
    for (int i = 0; i < N_ITEMS; i++) {
        const item *it = &items[i];
        const bool known = it->session >= 0 && !(gone >> i & 1u);
        sb_printf(&b, "%s{\"session\":\"%s\",", i ? "," : "", known ? f->id[it->session] : UNKNOWN_ID);
        if (it->bad) {
            sb_printf(&b, "\"layer\":%d,", it->layer);
            sb_array(&b, "k", it->m * KV_ROW, 40u + (unsigned)i);
            sb_printf(&b, ",");
            sb_array(&b, "v", it->m * KV_ROW, 50u + (unsigned)i);
            sb_printf(&b, ",");
            sb_array(&b, "q", it->m_q * Q_ROW - KV_ROW, 60u + (unsigned)i);
            sb_printf(&b, "}");
        } else {
            sbuf e = {0};
            sb_entry(&e, it->layer, it->m, it->m_q, false, 20u + (unsigned)i);
            sb_printf(&b, "%s", e.s + 1); /* past its '{' */
            free(e.s);
        }
    }
    sb_printf(&b, "]}");
    return b.s;
}

/* The next step every batch session and the bystander get afterwards. */
static char *next_body(void)
{
    return step_body(0, 1, 1, false, 7);
}

/* ---- what a run leaves: items, sessions, bystander ---- */

typedef struct outcome {
    char *item[N_ITEMS];       /* each item's answer, normalized */
    char *stats[N_SESSIONS];   /* each batch session's stats after the batch */
    char *next[N_SESSIONS];    /* ... and its next step's answer */
} outcome;

static void outcome_free(outcome *o)
{
    for (int i = 0; i < N_ITEMS; i++)
        free(o->item[i]);
    for (int s = 0; s < N_SESSIONS; s++) {
        free(o->stats[s]);
        free(o->next[s]);
    }
    memset(o, 0, sizeof *o);
}

/* The items of a 200 (false if the body is not {"steps":[N_ITEMS items]}). */
static bool split_items(const kvd_response *r, outcome *o)
{
    cJSON *j = r->body ? cJSON_Parse(r->body) : NULL;
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(j, "steps");
    bool ok = cJSON_IsArray(steps) && cJSON_GetArraySize(steps) == N_ITEMS;
    for (int i = 0; ok && i < N_ITEMS; i++) {
        o->item[i] = cJSON_PrintUnformatted(cJSON_GetArrayItem(steps, i));
        ok = o->item[i] != NULL;
    }
    cJSON_Delete(j);
    return ok;
}

/* Each batch session's stats and next step (after the batch; no faults). */
static void observe_sessions(bfx *f, outcome *o)
{
    for (int s = 0; s < N_SESSIONS; s++) {
        o->stats[s] = stats(f->api, f->id[s]);
        ck_assert_ptr_nonnull(o->stats[s]);
        kvd_response r = call(f->api, KVD_ROUTE_SESSION_STEP, f->id[s], next_body());
        ck_assert_msg(r.status == 200, "next step of session %d: %d %s", s, r.status, r.body);
        o->next[s] = r.body;
    }
}

/* The fault-free run of the batch with the items in `gone` replaced. */
static void reference(unsigned gone, bool b64, outcome *ref)
{
    bfx f;
    bfx_setup(&f);
    kvd_response r = call(f.api, KVD_ROUTE_BATCH, NULL, batch_body(&f, gone, b64));
    ck_assert_msg(r.status == 200, "reference batch: %d %s", r.status, r.body);
    ck_assert_msg(split_items(&r, ref), "reference batch: %s", r.body);
    free(r.body);
    observe_sessions(&f, ref);
    bfx_teardown(&f);
}

/* An item that failed: {"status":500|503,"error":{"code","message"}}.
 * Returns 0 if it is not one, 1 if the step was not applied, 2 if the
 * answer says it was. */
static int failed_item(const char *text)
{
    cJSON *j = cJSON_Parse(text);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(e, "message");
    int kind = 0;
    if (cJSON_IsNumber(st) && (st->valueint == 500 || st->valueint == 503) &&
        cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "code")) && cJSON_IsString(msg))
        kind = strstr(msg->valuestring, "the step was applied") ? 2 : 1;
    cJSON_Delete(j);
    return kind;
}

/* A whole-batch 500: the items whose steps it says were applied (as bits),
 * or 0 if it names none (then nothing may have changed). */
static unsigned applied_items(const kvd_response *r)
{
    static const char head[] = "the steps of items [";
    const char *p = r->body ? strstr(r->body, head) : NULL;
    unsigned applied = 0;
    if (!p)
        return 0;
    for (p += sizeof head - 1; *p >= '0' && *p <= '9';) {
        char *end;
        const unsigned long i = strtoul(p, &end, 10);
        harness_error = i < (unsigned long)N_ITEMS ? harness_error : "an applied item out of range";
        applied |= 1u << (i % 32u);
        p = *end == ',' ? end + 1 : end;
    }
    return applied;
}

/* ---- one run ---- */

/* How the faulted runs of a sweep ended (printed, and each kind required). */
typedef struct tally {
    long whole_clean, whole_applied; /* whole-batch 500/503: nothing changed, some items applied */
    long items_failed, items_applied; /* item 500/503s that changed nothing, that were applied */
} tally;

typedef struct golden {
    long allocations;
    tally seen;
    outcome clean;             /* the fault-free run */
    char *by_stats, *by_next;  /* the bystander after it */
} golden;

/* One run with the fail_at-th allocation failing (0: clean, fills g).
 * Returns the allocations the batch made. */
static long run_once(bool b64, long fail_at, bool sticky, golden *g)
{
    char what[96];
    snprintf(what, sizeof what, "batch%s, allocation %ld%s", b64 ? " b64" : "", fail_at, sticky ? " on" : "");
    bfx f;
    bfx_setup(&f);
    char *body = batch_body(&f, 0, b64);
    harness_error = NULL;
    failmalloc_arm(fail_at, sticky);
    kvd_response r = call(f.api, KVD_ROUTE_BATCH, NULL, body);
    const long count = failmalloc_disarm();
    ck_assert_msg(!harness_error, "%s: %s", what, harness_error);
    const bool clean = fail_at == 0 || failmalloc_failed() == 0;

    outcome got = {0};
    unsigned gone = 0; /* items that failed and left their session as it was */
    if (r.status != 200) {
        ck_assert_msg(!clean, "%s: no allocation failed, yet %d", what, r.status);
        check_error(&r, sticky, what);
        /* Nothing changed, or the answer says which items' steps were applied. */
        const unsigned applied = applied_items(&r);
        gone = ((1u << N_ITEMS) - 1) & ~applied;
        ck_assert_msg(!harness_error, "%s: %s: %s", what, harness_error, r.body);
        g->seen.whole_clean += !applied;
        g->seen.whole_applied += !!applied;
    } else {
        ck_assert_msg(split_items(&r, &got), "%s: not a batch answer: %s", what, r.body);
        for (int i = 0; fail_at && i < N_ITEMS; i++) {
            const int kind = failed_item(got.item[i]);
            if (kind == 1)
                gone |= 1u << i; /* the others are held to the reference below */
            g->seen.items_failed += kind == 1;
            g->seen.items_applied += kind == 2;
        }
    }
    free(r.body);
    check_accounting(f.api);
    observe_sessions(&f, &got);

    if (fail_at == 0) {
        g->allocations = count;
        g->clean = got;
    } else {
        outcome ref = {0};
        if (gone)
            reference(gone, b64, &ref);
        const outcome *want = gone ? &ref : &g->clean;
        for (int i = 0; i < N_ITEMS && got.item[0]; i++)
            ck_assert_msg(failed_item(got.item[i]) || str_eq(got.item[i], want->item[i]),
                          "%s: item %d differs from the reference run (items %#x failed):\n%s\n%s", what, i,
                          gone, got.item[i], want->item[i]);
        for (int s = 0; s < N_SESSIONS; s++) {
            ck_assert_msg(same_but_heap(got.stats[s], want->stats[s]),
                          "%s: session %d's stats differ from the reference run (items %#x failed):\n%s\n%s",
                          what, s, gone, got.stats[s], want->stats[s]);
            ck_assert_msg(str_eq(got.next[s], want->next[s]),
                          "%s: session %d's next step differs from the reference run (items %#x failed):\n%s\n%s",
                          what, s, gone, got.next[s], want->next[s]);
        }
        outcome_free(&ref);
        outcome_free(&got);
    }

    /* The bystander: bit-identical stats and next output. */
    char *by = stats(f.api, f.by);
    kvd_response next = call(f.api, KVD_ROUTE_SESSION_STEP, f.by, next_body());
    ck_assert_msg(next.status == 200, "%s: bystander step %d %s", what, next.status, next.body);
    if (fail_at == 0) {
        g->by_stats = by;
        g->by_next = next.body;
    } else {
        ck_assert_msg(str_eq(by, g->by_stats), "%s: bystander stats\n%s\n%s", what, by, g->by_stats);
        ck_assert_msg(str_eq(next.body, g->by_next), "%s: bystander output\n%s\n%s", what, next.body, g->by_next);
        free(by);
        free(next.body);
    }
    check_accounting(f.api);
    bfx_teardown(&f);
    return count;
}

static void sweep(bool b64, bool sticky)
{
    golden g = {0};
    run_once(b64, 0, false, &g); /* warms any lazily initialized state */
    outcome_free(&g.clean);
    free(g.by_stats);
    free(g.by_next);
    memset(&g, 0, sizeof g);
    const long k = run_once(b64, 0, false, &g);
    ck_assert_int_gt(k, 0);
    /* The clean run is the batch it is meant to be: every kind of item. */
    for (int i = 0; i < N_ITEMS; i++) {
        const int want = items[i].session < 0 ? 404 : items[i].bad ? 400 : 200;
        char prefix[16];
        snprintf(prefix, sizeof prefix, "{\"status\":%d", want);
        ck_assert_msg(!strncmp(g.clean.item[i], prefix, strlen(prefix)), "clean item %d: %s", i, g.clean.item[i]);
    }
    for (long n = 1; n <= k; n++)
        run_once(b64, n, sticky, &g);
    const tally *t = &g.seen;
    fprintf(stderr,
            "batch_faults: %-4s %s: %ld fault points; whole-batch 500s %ld (%ld naming applied items), "
            "item 500s %ld (%ld applied)\n",
            b64 ? "b64" : "json", sticky ? "from N on" : "Nth only ", k, t->whole_clean + t->whole_applied,
            t->whole_applied, t->items_failed + t->items_applied, t->items_applied);
    /* The sweep reached every kind of failure it judges. */
    ck_assert_int_gt(t->whole_clean, 0);
    ck_assert_int_gt(t->whole_applied, 0);
    if (!sticky) { /* from N on, the whole answer cannot be rendered either */
        ck_assert_int_gt(t->items_failed, 0);
        ck_assert_int_gt(t->items_applied, 0);
    }
    outcome_free(&g.clean);
    free(g.by_stats);
    free(g.by_next);
}

/* _i: bit 0 b64, bit 1 sticky */
START_TEST(test_batch)
{
    sweep(_i & 1, _i & 2);
}
END_TEST

static void setup(void)
{
    failmalloc_install_cjson();
}

static Suite *make_suite(void)
{
    Suite *s = suite_create("fault/batch_faults");
    TCase *tc = tcase_create("sweep");
    tcase_add_unchecked_fixture(tc, setup, NULL);
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, test_batch, 0, 4);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
