/* tests/integration/test_memory_pressure.c — a small pool (2 MiB in 4 KiB
 * pages) filled by 200 evictable sessions, then more sessions stepped into it
 * under --on-full reject and --on-full evict. After every request the pool's
 * pages are checked against /metrics, GET /v1/sessions and the test's own
 * page math; a refused step changes nothing; under evict the least recently
 * used idle sessions with a policy lose their unprotected tokens (exactly the
 * ones the test predicts) and still answer exactly; /readyz follows the
 * 1%-free-and-nothing-reclaimable rule. Also idle sessions expiring after
 * their ttl. Each test case runs its own kvd.
 * Over 600 lines: the two --on-full modes share one fill-and-check model of
 * the pool (the test's page math), which splitting would copy. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <check.h>

#include "tests/support/cache_session.h"
#include "tests/support/http_client.h"
#include "tests/support/kvd_client.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/check_main.h"

/* See test_eviction.c. */
#define OUTPUT_TOL_REL 1e-4

#define PAGE_BYTES 4096
#define POOL_PAGES 512          /* --memory 2MiB / --page-bytes 4096 */
#define HEAD_DIM 16             /* 28 slots per 4 KiB page */
#define FILLERS 200
#define FILLER_TOKENS 40        /* two pages; 36 unprotected: one page reclaimable */
#define SINK 4
#define BIG_PAGES 5             /* each later session steps 5 pages' worth at once */
#define MAX_BIG 200             /* a bound on the loop, never reached */
/* /readyz: ready while at least 1% of the pool's pages are free. */
#define READY_FREE_PERCENT 1
#define CASE_TIMEOUT_S 600

/* TTL case: kvd sweeps expired sessions once a second, so a session idle for
 * ttl is gone within ttl + 1 s plus scheduling; the waits below are hang
 * guards, not timing checks. A session touched every TOUCH_INTERVAL_S (half
 * its ttl) must survive. */
#define TTL_S 1
#define TOUCH_INTERVAL_S 0.5
#define SURVIVE_S 3.5
#define EXPIRY_WAIT_S 15.0

static const char *const reject_args[] = {"--page-bytes", "4096", "--memory", "2MiB", "--threads", "2",
                                          "--on-full", "reject", NULL};
static const char *const evict_args[] = {"--page-bytes", "4096", "--memory", "2MiB", "--threads", "2",
                                         "--on-full", "evict", NULL};

/* ---- the sessions the test holds, with the order they were last used ---- */

typedef struct tracked {
    cache_session cs;
    bool alive;
    unsigned long long touched;  /* value of `clock` at the last request naming it */
} tracked;

typedef struct world {
    int port;
    size_t spp;
    bool evict;                  /* --on-full evict */
    tracked *s;                  /* [cap] */
    size_t n, cap;
    unsigned long long clock;
    double rejected;             /* expected kvd_rejected_total{reason="pool_full"} */
    double reclaimed;            /* expected kvd_reclaimed_tokens_total */
} world;

static void touch(world *w, size_t i)
{
    w->s[i].touched = ++w->clock;
}

static size_t session_pages(const world *w, size_t i)
{
    return kvd_pages_for(ref_cache_total_tokens(w->s[i].cs.ref), w->spp);
}

static size_t model_used(const world *w)
{
    size_t used = 0;
    for (size_t i = 0; i < w->n; i++)
        if (w->s[i].alive)
            used += session_pages(w, i);
    return used;
}

/* After every request: used + free is the pool; the sessions' pages (GET
 * /v1/sessions bytes) add up to the used pages (no forks: nothing shared);
 * both equal the test's page math. */
static void check_accounting(world *w, const char *what)
{
    char *text = kvd_metrics_text(w->port);
    double used = kvd_metric(text, "kvd_pool_pages", "state=\"used\"");
    double free_pages = kvd_metric(text, "kvd_pool_pages", "state=\"free\"");
    free(text);
    ck_assert_msg(used + free_pages == POOL_PAGES, "%s: used %g + free %g != %d pages", what, used, free_pages,
                  POOL_PAGES);
    cJSON *list = kvd_get_json(w->port, "/v1/sessions?limit=1000", 200);
    double bytes = 0, n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(list, "sessions"))
    {
        bytes += kvd_json_num(e, "bytes");
        n++;
    }
    ck_assert_msg(cJSON_IsNull(kvd_json_at(list, "next_after")), "%s: more than one page of sessions", what);
    cJSON_Delete(list);
    ck_assert_msg(bytes == used * PAGE_BYTES, "%s: sessions hold %g bytes = %g pages, pool says %g used", what, bytes,
                  bytes / PAGE_BYTES, used);
    ck_assert_msg(used == (double)model_used(w), "%s: pool used %g, the test's page math says %zu", what, used,
                  model_used(w));
    size_t alive = 0;
    for (size_t i = 0; i < w->n; i++)
        alive += w->s[i].alive;
    ck_assert_msg(n == (double)alive, "%s: %g sessions listed, %zu alive", what, n, alive);
}

/* Every session's own stats (GET each: this touches them, in index order). */
static void check_every_session(world *w, const char *what)
{
    double pages = 0;
    for (size_t i = 0; i < w->n; i++) {
        if (!w->s[i].alive)
            continue;
        cJSON *st = cache_session_check_stats(&w->s[i].cs, what);
        touch(w, i);
        ck_assert_msg(kvd_json_num(st, "pages") == (double)session_pages(w, i),
                      "%s: session %zu holds %g pages, expected %zu", what, i, kvd_json_num(st, "pages"),
                      session_pages(w, i));
        pages += kvd_json_num(st, "pages");
        cJSON_Delete(st);
    }
    double used = kvd_metric_now(w->port, "kvd_pool_pages", "state=\"used\"");
    ck_assert_msg(pages == used, "%s: sessions' \"pages\" sum to %g, pool used %g", what, pages, used);
}

static size_t add_session(world *w, ref_evict_policy policy, uint64_t seed)
{
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 256;
        w->s = realloc(w->s, w->cap * sizeof *w->s);
        ck_assert_ptr_nonnull(w->s);
    }
    ref_cache_config cfg = {.layers = 1, .heads = 2, .kv_heads = 1, .head_dim = HEAD_DIM, .policy = policy,
                            .budget = 0, .sink = SINK, .recent = 0};
    size_t i = w->n++;
    memset(&w->s[i], 0, sizeof w->s[i]);
    cache_session_create(&w->s[i].cs, w->port, &cfg, NULL, seed, OUTPUT_TOL_REL, 0);
    w->s[i].alive = true;
    touch(w, i);
    return i;
}

typedef struct snap {
    double tokens, appended, steps, evicted;
} snap;

static snap snap_of(world *w, size_t i)
{
    cJSON *st = kvd_session_stats(w->port, w->s[i].cs.id);
    touch(w, i);
    snap s = {kvd_json_num(st, "tokens"), kvd_json_num(st, "appended"), kvd_json_num(st, "steps"),
              kvd_json_num(st, "evicted")};
    cJSON_Delete(st);
    return s;
}

static bool reclaimable(const world *w, size_t i)
{
    const ref_cache *r = w->s[i].cs.ref;
    return w->s[i].alive && ref_cache_cfg(r)->policy != REF_EVICT_NONE && ref_cache_evictable(r, 0, 0) >= w->spp;
}

/* Pages reclaiming session i would free: each session here has one stream,
 * which keeps its tokens minus the unprotected ones. */
static size_t reclaim_gain(const world *w, size_t i)
{
    const ref_cache *r = w->s[i].cs.ref;
    return session_pages(w, i) - kvd_pages_for(ref_cache_total_tokens(r) - ref_cache_evictable(r, 0, 0), w->spp);
}

/* What --on-full evict does before retrying a step that needs `need` pages
 * with `free_pages` free: if every reclaimable session together could not
 * free enough, nothing (no token is taken for a step that fails anyway);
 * otherwise the least recently used reclaimable sessions lose every
 * unprotected token, one after another, until enough pages are free.
 * Applies that to the models and returns the free pages afterwards. */
static size_t predict_reclaim(world *w, size_t stepping, size_t need, size_t free_pages, size_t *n_reclaimed)
{
    *n_reclaimed = 0;
    size_t can_free = free_pages;
    for (size_t i = 0; i < w->n; i++)
        if (i != stepping && reclaimable(w, i))
            can_free += reclaim_gain(w, i);
    if (can_free < need)
        return free_pages;
    while (free_pages < need) {
        size_t best = SIZE_MAX;
        for (size_t i = 0; i < w->n; i++)
            if (i != stepping && reclaimable(w, i) && (best == SIZE_MAX || w->s[i].touched < w->s[best].touched))
                best = i;
        if (best == SIZE_MAX)
            break;
        size_t before = session_pages(w, best);
        size_t k = ref_cache_evict(w->s[best].cs.ref, 0, 0, 0);
        w->reclaimed += (double)k;
        free_pages += before - session_pages(w, best);
        (*n_reclaimed)++;
    }
    return free_pages;
}

static void expect_exhausted(const http_response *r, const char *what)
{
    kvd_expect_error(r, 503, "resource_exhausted", NULL, NULL, what);
    const char *ra = http_header_get(r, "Retry-After");
    ck_assert_msg(ra != NULL, "%s: 503 without Retry-After", what);
    char *end;
    long secs = strtol(ra, &end, 10);
    ck_assert_msg(end != ra && *end == '\0' && secs > 0, "%s: Retry-After '%s' is not a positive integer", what, ra);
}

static int readyz(int port)
{
    http_response *r = http_request(port, "GET", "/readyz", NULL, NULL);
    int st = r->status;
    http_response_free(r);
    return st;
}

/* The /readyz answer the contract gives for the models' state. */
static int expected_readyz(const world *w)
{
    size_t free_pages = POOL_PAGES - model_used(w);
    if (free_pages * 100 >= (size_t)POOL_PAGES * READY_FREE_PERCENT)
        return 200;
    for (size_t i = 0; w->evict && i < w->n; i++)
        if (reclaimable(w, i))
            return 200;
    return 503;
}

static void check_counters(world *w, const char *what)
{
    char *text = kvd_metrics_text(w->port);
    double rej = kvd_metric(text, "kvd_rejected_total", "reason=\"pool_full\"");
    double rec = kvd_metric(text, "kvd_reclaimed_tokens_total", NULL);
    double ev = kvd_metric(text, "kvd_evictions_total", "policy=\"recency\"");
    free(text);
    ck_assert_msg(rej == w->rejected, "%s: kvd_rejected_total{reason=\"pool_full\"} %g, expected %g", what, rej,
                  w->rejected);
    ck_assert_msg(rec == w->reclaimed && ev == w->reclaimed,
                  "%s: kvd_reclaimed_tokens_total %g, kvd_evictions_total{policy=\"recency\"} %g, expected %g", what,
                  rec, ev, w->reclaimed);
    int rz = readyz(w->port), want = expected_readyz(w);
    ck_assert_msg(rz == want, "%s: /readyz %d, expected %d (%zu pages free)", what, rz, want,
                  (size_t)POOL_PAGES - model_used(w));
}

/* Steps session i with m new tokens and one block query. Under pressure:
 * predicts the outcome (fits, fits after reclaiming, or 503) and checks it,
 * including that a refused step left the session as it was. Returns the
 * status. */
static int pressure_step(world *w, size_t i, size_t m, const char *what)
{
    cache_session *cs = &w->s[i].cs;
    snap before = snap_of(w, i);
    size_t tokens = ref_cache_total_tokens(cs->ref);
    size_t need = kvd_pages_for(tokens + m, w->spp) - kvd_pages_for(tokens, w->spp);
    size_t free_pages = POOL_PAGES - model_used(w);
    size_t n_reclaimed = 0;
    bool fits = free_pages >= need;
    if (!fits) {
        /* reject: nothing happens; evict: reclaiming happens only if it
         * frees enough, and then the step is retried. */
        if (w->evict)
            fits = predict_reclaim(w, i, need, free_pages, &n_reclaimed) >= need;
    }
    step_spec s = cache_spec(cs, 0, m, 1, "block", true);
    touch(w, i);
    ref_entry_result r;
    http_response *resp = cache_session_try(cs, &s, &r, what);
    cache_spec_free(&s);
    ck_assert_msg(resp->status == (fits ? 200 : 503),
                  "%s: status %d, expected %d (%zu pages needed, %zu free, %zu sessions to reclaim): %s", what,
                  resp->status, fits ? 200 : 503, need, free_pages, n_reclaimed,
                  resp->status < 0 ? resp->error : resp->body);
    int status = resp->status;
    if (status == 503) {
        expect_exhausted(resp, what);
        w->rejected++;
        snap after = snap_of(w, i);
        ck_assert_msg(after.tokens == before.tokens && after.appended == before.appended &&
                          after.steps == before.steps && after.evicted == before.evicted,
                      "%s: the refused step changed the session: tokens %g->%g appended %g->%g steps %g->%g", what,
                      before.tokens, after.tokens, before.appended, after.appended, before.steps, after.steps);
    }
    http_response_free(resp);
    check_accounting(w, what);
    check_counters(w, what);
    return status;
}

static void fill(world *w)
{
    char what[96];
    for (size_t i = 0; i < FILLERS; i++) {
        size_t k = add_session(w, REF_EVICT_RECENCY, 1000 + i);
        snprintf(what, sizeof what, "create filler %zu", i);
        check_accounting(w, what);
        snprintf(what, sizeof what, "fill session %zu", i);
        ck_assert_int_eq(pressure_step(w, k, FILLER_TOKENS, what), 200);
    }
    ck_assert_msg(model_used(w) == FILLERS * kvd_pages_for(FILLER_TOKENS, w->spp), "test bug: fill page math");
}

/* Asserts which fillers were reclaimed: their tokens are the protected sinks
 * now, and a decode step on each still matches the reference (which only
 * sees the sinks and the new token). */
static void check_reclaimed(world *w, const char *what)
{
    char label[128];
    size_t n = 0;
    for (size_t i = 0; i < w->n; i++) {
        if (!w->s[i].alive || ref_cache_cfg(w->s[i].cs.ref)->policy == REF_EVICT_NONE ||
            ref_cache_total_tokens(w->s[i].cs.ref) != SINK)
            continue;
        snprintf(label, sizeof label, "%s: reclaimed session %zu", what, i);
        cJSON_Delete(cache_session_check_stats(&w->s[i].cs, label));
        touch(w, i);
        if (n++ < 3) { /* one more token fits in the page the sinks are in */
            snprintf(label, sizeof label, "%s: decode on reclaimed session %zu", what, i);
            ck_assert_int_eq(pressure_step(w, i, 1, label), 200);
        }
    }
    ck_assert_msg(n > 0, "%s: no session was reclaimed", what);
}

static void world_free(world *w)
{
    for (size_t i = 0; i < w->n; i++)
        cache_session_free(&w->s[i].cs);
    free(w->s);
}

static void delete_session(world *w, size_t i)
{
    kvd_delete_session(w->port, w->s[i].cs.id);
    w->s[i].alive = false;
}

START_TEST(on_full_reject)
{
    kvd_proc *p = kvd_proc_start_ck(reject_args);
    world w = {.port = kvd_proc_port(p), .spp = kvd_slots_per_page(PAGE_BYTES, HEAD_DIM), .evict = false};
    fill(&w);
    check_every_session(&w, "after the fill");
    char what[96];
    /* Big steps until one is refused (with Retry-After, nothing changed). */
    size_t refused = SIZE_MAX;
    for (size_t b = 0; b < MAX_BIG && refused == SIZE_MAX; b++) {
        size_t i = add_session(&w, REF_EVICT_NONE, 5000 + b);
        check_accounting(&w, "create a big session");
        snprintf(what, sizeof what, "big session %zu", b);
        if (pressure_step(&w, i, BIG_PAGES * w.spp, what) == 503)
            refused = i;
    }
    ck_assert_msg(refused != SIZE_MAX, "the pool never filled");
    /* Use up the last pages with single tokens; then even one is refused. */
    while (POOL_PAGES - model_used(&w) > 0)
        ck_assert_int_eq(pressure_step(&w, refused, w.spp, "use the last pages"), 200);
    ck_assert_int_eq(pressure_step(&w, refused, 1, "one token on a full pool"), 503);
    ck_assert_int_eq(pressure_step(&w, 0, w.spp, "a filler's page on a full pool"), 503);
    ck_assert_int_eq(readyz(w.port), 503);
    /* A pure query needs no page. */
    cache_session_random_step(&w.s[0].cs, 0, 0, 2, "block", "pure query on a full pool");
    touch(&w, 0);

    /* Deletes give pages back: ready again, and the refused steps fit. */
    for (size_t i = 0; i < 3; i++) {
        delete_session(&w, i);
        check_accounting(&w, "delete a filler");
        check_counters(&w, "delete a filler");
    }
    ck_assert_int_eq(readyz(w.port), 200);
    ck_assert_int_eq(pressure_step(&w, refused, 1, "one token after the deletes"), 200);
    ck_assert_int_eq(pressure_step(&w, 3, w.spp, "a filler's page after the deletes"), 200);
    check_every_session(&w, "at the end");
    world_free(&w);
    kvd_proc_stop_ck(p);
}
END_TEST

START_TEST(on_full_evict)
{
    kvd_proc *p = kvd_proc_start_ck(evict_args);
    world w = {.port = kvd_proc_port(p), .spp = kvd_slots_per_page(PAGE_BYTES, HEAD_DIM), .evict = true};
    fill(&w);
    /* Touches every filler in index order: that is now the LRU order. */
    check_every_session(&w, "after the fill");
    char what[96];
    bool first_reclaim_checked = false;
    size_t refused = SIZE_MAX;
    for (size_t b = 0; b < MAX_BIG && refused == SIZE_MAX; b++) {
        size_t i = add_session(&w, REF_EVICT_NONE, 6000 + b);
        check_accounting(&w, "create a big session");
        double reclaimed_before = w.reclaimed;
        snprintf(what, sizeof what, "big session %zu", b);
        if (pressure_step(&w, i, BIG_PAGES * w.spp, what) == 503) {
            refused = i;
        } else if (w.reclaimed > reclaimed_before && !first_reclaim_checked) {
            /* The first step that needed reclaiming: under reject it would
             * have been refused. The free pool is empty now, but sessions
             * that can still be reclaimed keep kvd ready. */
            check_reclaimed(&w, what);
            ck_assert_int_eq(readyz(w.port), 200);
            first_reclaim_checked = true;
        }
    }
    ck_assert_msg(first_reclaim_checked, "no step ever needed reclaiming");
    ck_assert_msg(refused != SIZE_MAX, "the pool never ran out of reclaimable sessions");
    /* The refused step took nothing: fewer than BIG_PAGES pages were left to
     * reclaim, and those fillers still hold them. Page-sized steps use the
     * free pages, then reclaim the rest one filler at a time. */
    bool any_left = false;
    for (size_t i = 0; i < FILLERS; i++)
        any_left |= reclaimable(&w, i);
    ck_assert_msg(any_left, "test bug: the refused step had nothing it could have taken");
    for (;;) {
        bool left = POOL_PAGES - model_used(&w) > 0;
        for (size_t i = 0; i < FILLERS && !left; i++)
            left = reclaimable(&w, i);
        if (!left)
            break;
        ck_assert_int_eq(pressure_step(&w, refused, w.spp, "use the last pages"), 200);
    }
    /* Nothing reclaimable is left: even one token is refused. */
    ck_assert_int_eq(pressure_step(&w, refused, 1, "one token, nothing reclaimable"), 503);
    ck_assert_int_eq(readyz(w.port), 503);
    check_reclaimed(&w, "every filler reclaimed");
    check_every_session(&w, "nothing reclaimable");

    size_t deleted = 0;
    for (size_t i = 0; i < w.n && deleted < 2; i++)
        if (ref_cache_cfg(w.s[i].cs.ref)->policy == REF_EVICT_NONE && w.s[i].alive && i != refused) {
            delete_session(&w, i);
            deleted++;
            check_accounting(&w, "delete a big session");
            check_counters(&w, "delete a big session");
        }
    ck_assert_int_eq(readyz(w.port), 200);
    ck_assert_int_eq(pressure_step(&w, refused, BIG_PAGES * w.spp, "a big step after the deletes"), 200);
    check_every_session(&w, "at the end");
    world_free(&w);
    kvd_proc_stop_ck(p);
}
END_TEST

/* --on-full evict never takes tokens from a session whose pages are shared
 * with a fork (parent or child), even when it is the least recently used. */
START_TEST(evict_skips_forks)
{
    static const char *const args[] = {"--page-bytes", "4096", "--memory", "64KiB", "--threads", "2",
                                       "--on-full", "evict", NULL};
    enum { SMALL_POOL = 16 };
    kvd_proc *p = kvd_proc_start_ck(args);
    int port = kvd_proc_port(p);
    const size_t spp = kvd_slots_per_page(PAGE_BYTES, HEAD_DIM);
    ref_cache_config pol = {.layers = 1, .heads = 2, .kv_heads = 1, .head_dim = HEAD_DIM, .policy = REF_EVICT_RECENCY,
                            .sink = SINK};
    ref_cache_config none = pol;
    none.policy = REF_EVICT_NONE;
    cache_session a, b, c, d;
    cache_session_create(&a, port, &pol, NULL, 11, OUTPUT_TOL_REL, 0);
    cache_session_random_step(&a, 0, FILLER_TOKENS, 1, "block", "a");
    char path[96];
    snprintf(path, sizeof path, "/v1/sessions/%s/fork", a.id);
    http_response *r = http_request(port, "POST", path, NULL, NULL);
    ck_assert_msg(r->status == 201, "fork: %d %s", r->status, r->status < 0 ? r->error : r->body);
    cJSON *j = http_response_json(r);
    cache_session_adopt(&b, port, kvd_json_str(j, "id"), a.ref, 12, OUTPUT_TOL_REL, 0);
    cJSON_Delete(j);
    http_response_free(r);
    cache_session_create(&c, port, &pol, NULL, 13, OUTPUT_TOL_REL, 0);
    cache_session_random_step(&c, 0, FILLER_TOKENS, 1, "block", "c");
    const double shared = (double)kvd_pages_for(FILLER_TOKENS, spp);
    ck_assert_msg(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\"") == 2 * shared, "a+b share, c: used");

    /* d fills the pool; its next page makes kvd reclaim: a and b are older
     * but share their pages, so only c loses its unprotected tokens. */
    cache_session_create(&d, port, &none, NULL, 14, OUTPUT_TOL_REL, 0);
    cache_session_random_step(&d, 0, (SMALL_POOL - 2 * (size_t)shared) * spp, 1, "block", "d fills the pool");
    ck_assert_msg(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\"") == SMALL_POOL, "pool not full");
    ck_assert_int_eq(readyz(port), 200); /* c is reclaimable */
    size_t c_evicted = ref_cache_evict(c.ref, 0, 0, 0);
    cache_session_random_step(&d, 0, spp, 1, "block", "d's page after reclaiming c");
    ck_assert_msg(kvd_metric_now(port, "kvd_reclaimed_tokens_total", NULL) == (double)c_evicted,
                  "reclaimed tokens %g, expected c's %zu", kvd_metric_now(port, "kvd_reclaimed_tokens_total", NULL),
                  c_evicted);
    cJSON_Delete(cache_session_check_stats(&a, "the fork's parent is not reclaimed"));
    cJSON_Delete(cache_session_check_stats(&b, "the fork is not reclaimed"));
    cJSON_Delete(cache_session_check_stats(&c, "c reclaimed"));

    /* Nothing reclaimable is left: refused, and not ready. */
    cJSON *before = kvd_session_stats(port, d.id);
    step_spec s = cache_spec(&d, 0, spp, 1, "block", true);
    r = cache_session_try(&d, &s, NULL, "d with nothing reclaimable");
    cache_spec_free(&s);
    expect_exhausted(r, "d with nothing reclaimable");
    http_response_free(r);
    cJSON *after = kvd_session_stats(port, d.id);
    ck_assert_msg(kvd_json_num(after, "tokens") == kvd_json_num(before, "tokens") &&
                      kvd_json_num(after, "steps") == kvd_json_num(before, "steps"),
                  "the refused step changed d");
    cJSON_Delete(before);
    cJSON_Delete(after);
    ck_assert_int_eq(readyz(port), 503);
    /* Everyone still answers exactly (pure queries and a token in a page
     * that has room need no page). */
    cache_session_random_step(&a, 0, 0, 2, "block", "a pure query");
    cache_session_random_step(&b, 0, 0, 2, "block", "b pure query");
    cache_session_random_step(&c, 0, 1, 1, "causal", "c decode after its reclaim");
    cJSON_Delete(cache_session_check_stats(&c, "c at the end"));
    cache_session_free(&a);
    cache_session_free(&b);
    cache_session_free(&c);
    cache_session_free(&d);
    kvd_proc_stop_ck(p);
}
END_TEST

/* ---- ttl ------------------------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static int get_status(int port, const char *id)
{
    char path[96];
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    http_response *r = http_request(port, "GET", path, NULL, NULL);
    int st = r->status;
    http_response_free(r);
    return st;
}

/* Waits (touching `keep` every TOUCH_INTERVAL_S, if non-NULL) until
 * kvd_sessions_expired_total reaches `count` and at least `min_s` passed. */
static void wait_expired(int port, double count, cache_session *keep, double min_s, const char *what)
{
    double t0 = now_s(), last_touch = t0;
    for (;;) {
        double got = kvd_metric_now(port, "kvd_sessions_expired_total", NULL);
        ck_assert_msg(got <= count, "%s: kvd_sessions_expired_total %g, expected at most %g", what, got, count);
        if (got == count && now_s() - t0 >= min_s)
            return;
        ck_assert_msg(now_s() - t0 < EXPIRY_WAIT_S, "%s: no expiry within %g s (expired %g)", what, EXPIRY_WAIT_S,
                      got);
        if (keep && now_s() - last_touch >= TOUCH_INTERVAL_S) {
            ck_assert_msg(get_status(port, keep->id) == 200, "%s: a session touched every %g s expired", what,
                          TOUCH_INTERVAL_S);
            last_touch = now_s();
        }
        sleep_s(TOUCH_INTERVAL_S / 5);
    }
}

START_TEST(ttl_expiry)
{
    static const char *const args[] = {"--page-bytes", "4096", "--memory", "2MiB", "--session-ttl", "1", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    int port = kvd_proc_port(p);
    const size_t spp = kvd_slots_per_page(PAGE_BYTES, HEAD_DIM);
    ref_cache_config cfg = {.layers = 1, .heads = 2, .kv_heads = 1, .head_dim = HEAD_DIM, .policy = REF_EVICT_NONE};
    cache_session a, b, c;
    cache_session_create(&a, port, &cfg, NULL, 1, OUTPUT_TOL_REL, 0);                   /* --session-ttl 1 */
    cache_session_create(&b, port, &cfg, "\"ttl_seconds\":1", 2, OUTPUT_TOL_REL, 0);    /* touched */
    cache_session_create(&c, port, &cfg, "\"ttl_seconds\":600", 3, OUTPUT_TOL_REL, 0);  /* long ttl */
    cache_session_random_step(&b, 0, 30, 1, "block", "b");
    cache_session_random_step(&c, 0, 30, 1, "block", "c");
    cache_session_random_step(&a, 0, 2 * spp + 1, 1, "block", "a"); /* 3 pages; last: its idle clock starts */
    const double ttl[3] = {TTL_S, TTL_S, 600};
    cache_session *all[3] = {&a, &b, &c};
    for (int i = 0; i < 3; i++) {
        cJSON *st = kvd_session_stats(port, all[i]->id);
        ck_assert_msg(kvd_json_num(st, "config.ttl_seconds") == ttl[i], "session %d: ttl_seconds %g, expected %g", i,
                      kvd_json_num(st, "config.ttl_seconds"), ttl[i]);
        cJSON_Delete(st);
    }
    const double pages_bc = (double)(kvd_pages_for(30, spp) * 2);
    ck_assert_msg(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\"") == pages_bc + 3, "pages before expiry");

    /* a (idle, never named again) expires; b (touched) and c survive. */
    wait_expired(port, 1, &b, SURVIVE_S, "a idle");
    ck_assert_int_eq(get_status(port, a.id), 404);
    step_spec s = cache_spec(&a, 0, 1, 1, NULL, true);
    http_response *r = cache_session_try(&a, &s, NULL, "step on an expired session");
    kvd_expect_error(r, 404, "not_found", NULL, NULL, "step on an expired session");
    http_response_free(r);
    cache_spec_free(&s);
    char *text = kvd_metrics_text(port);
    const double used = kvd_metric(text, "kvd_pool_pages", "state=\"used\"");
    ck_assert_msg(used == pages_bc, "a's pages were not freed: used %g, expected %g", used, pages_bc);
    ck_assert_msg(kvd_metric(text, "kvd_sessions_expired_total", NULL) == 1, "expired total %g",
                  kvd_metric(text, "kvd_sessions_expired_total", NULL));
    ck_assert_msg(kvd_metric(text, "kvd_sessions", NULL) == 2, "kvd_sessions %g",
                  kvd_metric(text, "kvd_sessions", NULL));
    free(text);
    cache_session_random_step(&b, 0, 1, 1, NULL, "b after surviving");
    cJSON_Delete(cache_session_check_stats(&b, "b after surviving"));
    cache_session_random_step(&c, 0, 1, 1, NULL, "c after a's expiry");

    /* b left alone expires by its own ttl_seconds; c stays. */
    wait_expired(port, 2, NULL, 0, "b idle");
    ck_assert_int_eq(get_status(port, b.id), 404);
    ck_assert_int_eq(get_status(port, c.id), 200);
    ck_assert_msg(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\"") ==
                      (double)kvd_pages_for(ref_cache_total_tokens(c.ref), spp),
                  "b's pages were not freed");
    cache_session_random_step(&c, 0, 1, 1, NULL, "c at the end");
    cache_session_free(&a);
    cache_session_free(&b);
    cache_session_free(&c);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *pressure_suite(void)
{
    Suite *s = suite_create("integration_memory_pressure");
    TCase *tc = tcase_create("pressure");
    tcase_set_timeout(tc, CASE_TIMEOUT_S);
    tcase_add_test(tc, on_full_reject);
    tcase_add_test(tc, on_full_evict);
    tcase_add_test(tc, evict_skips_forks);
    tcase_add_test(tc, ttl_expiry);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(pressure_suite)
