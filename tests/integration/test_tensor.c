/* tests/integration/test_tensor.c — tensor (2-simplicial) attention over real
 * HTTP (DESIGN.md §3, §5): the four-cache and the two-cache fed identical
 * steps must agree with each other and with a brute-force double reference
 * over pairs (ref_tensor.h) — GQA, small pages so every cache spans many
 * pages, causal prefill, decode, a block (VAR scale) step, pure queries, the
 * multi-layer "steps" form, JSON and b64 both ways; four-cache windows
 * (W = 1, 3, 8) with the end-of-request drop; memory growth n*d versus n^2*d
 * with exact page counts; and bad input (the 400s with their fields) and a
 * full pool (503 with the session unchanged, then a smaller step that fits).
 * Each test case runs its own kvd.
 * Over 600 lines: every case shares the four-vs-two-vs-reference harness
 * (one session of each layout fed identical steps) defined here. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "tests/support/kvd_client.h"
#include "tests/support/kvd_data.h"
#include "tests/support/kvd_proc.h"
#include "tests/support/ref_tensor.h"
#include "tests/support/tensor_body.h"
#include "tests/support/check_main.h"

/* Output tolerance, absolute. Every output is a convex combination of the
 * products v1_j (.) v2_k with |v| <= 1, so it lies in [-1, 1]. kvd computes
 * in f32: a score sums d <= 16 products q*k1*k2 (|q| <= 2, |k| <= 1, scale
 * <= 0.36), rounding ~ d * 2^-24 * 2 * 0.36 ~ 7e-7 absolute, which moves
 * each softmax weight by that much relatively; accumulating the weighted
 * rows of up to n^2 ~ 2000 pairs in f32 adds at worst ~ n^2 * 2^-24 ~ 1.2e-4
 * (linear worst case; a random walk gives ~ 3e-6). 2e-4 is above that worst
 * case. A real bug — one token too many or too few on either side of a
 * pair, a wrong kv head, a wrong window edge, a wrong scale — shifts 2/n of
 * the pair mass (n <= 45) and moves o by ~1e-3 or more. The same bound holds
 * between the two layouts (each is within ~1e-4 of the exact value). */
#define OUTPUT_TOL 2e-4

/* Memory ratios (DESIGN.md §5: four-cache O(n d), two-cache O(n^2 d)) when
 * the tokens double from 32 to 64, with pages small enough (7 slots) that
 * page slack is a few percent: exact pages are also asserted from the
 * layout, these bounds are the design-level statement. */
#define FOUR_RATIO_LO 1.8
#define FOUR_RATIO_HI 2.2
#define TWO_RATIO_LO 3.5
#define TWO_RATIO_HI 4.5

#define CASE_TIMEOUT_S 240
#define MAX_SESSIONS 2
#define MAX_ENTRIES 4

/* Slots one f32 page holds (cache/stream.h's documented layout): K region
 * and V region of head_dim f32 each per slot, each region padded to 64
 * bytes, then 8 bytes of slot metadata per slot. The pair-row stream of the
 * two-cache uses the same layout (one pair row per slot). */
static size_t align64(size_t x)
{
    return (x + 63) / 64 * 64;
}

static size_t slots_per_page(size_t page_bytes, size_t d)
{
    size_t s = page_bytes / (2 * 4 * d + 8);
    while (s > 0 && 2 * align64(s * 4 * d) + 8 * s > page_bytes)
        s--;
    return s;
}

static size_t ceil_div(size_t a, size_t b)
{
    return (a + b - 1) / b;
}

/* One or two sessions (four- and/or two-cache) fed identical requests, one
 * reference for all of them. */
typedef struct tgroup {
    int port;
    size_t n;
    char *ids[MAX_SESSIONS];
    bool two[MAX_SESSIONS];
    size_t layers, heads, kv_heads, head_dim, window, page_bytes;
    size_t kv_row, q_row;
    ref_tensor *ref;
    rng r;
    double worst;       /* largest |o - reference| seen */
    double worst_cross; /* largest |o_four - o_two| seen */
} tgroup;

static char *create_body(const tgroup *tg, bool two, double scale)
{
    sbuf b;
    sb_init(&b);
    sb_printf(&b,
              "{\"attention\":\"tensor\",\"tensor_cache\":\"%s\",\"layers\":%zu,\"heads\":%zu,"
              "\"kv_heads\":%zu,\"head_dim\":%zu",
              two ? "two" : "four", tg->layers, tg->heads, tg->kv_heads, tg->head_dim);
    if (tg->window)
        sb_printf(&b, ",\"window\":%zu", tg->window);
    if (scale > 0)
        sb_printf(&b, ",\"scale\":%.17g", scale);
    sb_puts(&b, "}");
    return sb_take(&b);
}

/* caches: "four", "two" or "both". scale <= 0: the default. */
static void tg_create(tgroup *tg, int port, const char *caches, size_t layers, size_t heads, size_t kv_heads,
                      size_t head_dim, size_t window, double scale, size_t page_bytes, uint64_t seed)
{
    memset(tg, 0, sizeof *tg);
    tg->port = port;
    tg->layers = layers;
    tg->heads = heads;
    tg->kv_heads = kv_heads;
    tg->head_dim = head_dim;
    tg->window = window;
    tg->page_bytes = page_bytes;
    tg->kv_row = kv_heads * head_dim;
    tg->q_row = heads * head_dim;
    rng_seed(&tg->r, seed);
    tg->ref = ref_tensor_new(layers, heads, kv_heads, head_dim, scale, window);
    if (strcmp(caches, "two") != 0)
        tg->two[tg->n++] = false;
    if (strcmp(caches, "four") != 0)
        tg->two[tg->n++] = true;
    for (size_t s = 0; s < tg->n; s++) {
        char *body = create_body(tg, tg->two[s], scale);
        cJSON *resp = NULL;
        tg->ids[s] = kvd_create_session(port, body, &resp);
        const char *what = tg->two[s] ? "two" : "four";
        ck_assert_msg(kvd_json_str(resp, "config.attention") &&
                          strcmp(kvd_json_str(resp, "config.attention"), "tensor") == 0,
                      "%s: config.attention is not \"tensor\"", what);
        ck_assert_msg(kvd_json_str(resp, "config.tensor_cache") &&
                          strcmp(kvd_json_str(resp, "config.tensor_cache"), what) == 0,
                      "%s: config.tensor_cache %s", what,
                      kvd_json_str(resp, "config.tensor_cache") ? kvd_json_str(resp, "config.tensor_cache")
                                                                : "(none)");
        ck_assert_msg(kvd_json_num(resp, "config.window") == (double)window, "%s: config.window %g, sent %zu",
                      what, kvd_json_num(resp, "config.window"), window);
        double want_scale = scale > 0 ? scale : 1.0 / sqrt((double)head_dim);
        ck_assert_msg(fabs(kvd_json_num(resp, "config.scale") - want_scale) < 1e-7, "%s: config.scale %g, want %g",
                      what, kvd_json_num(resp, "config.scale"), want_scale);
        ck_assert_msg(kvd_json_num(resp, "config.layers") == (double)layers &&
                          kvd_json_num(resp, "config.heads") == (double)heads &&
                          kvd_json_num(resp, "config.kv_heads") == (double)kv_heads &&
                          kvd_json_num(resp, "config.head_dim") == (double)head_dim,
                      "%s: resolved shape differs from the create body", what);
        cJSON_Delete(resp);
        free(body);
    }
}

static void tg_free(tgroup *tg)
{
    for (size_t s = 0; s < tg->n; s++)
        free(tg->ids[s]);
    ref_tensor_free(tg->ref);
    memset(tg, 0, sizeof *tg);
}

/* What one entry of a request does; the data is drawn by tg_request. */
typedef struct tentry {
    long layer;
    size_t m, m_q;
    const char *mask; /* NULL: the server's default */
} tentry;

typedef struct tdata {
    tensor_step_spec spec;
    float *k1, *k2, *v1, *v2, *q;
    double *want;        /* [m_q][heads][head_dim] */
    size_t tokens_after; /* the stream's count right after this entry (before a window drop) */
} tdata;

static void tdata_free(tdata *t)
{
    free(t->k1);
    free(t->k2);
    free(t->v1);
    free(t->v2);
    free(t->q);
    free(t->want);
}

static ref_mask mask_of(const tentry *e)
{
    if (!e->mask)
        return ref_default_mask(e->m, e->m_q);
    return strcmp(e->mask, "block") == 0 ? REF_MASK_BLOCK : REF_MASK_CAUSAL;
}

/* Draws data for n entries and applies them (and the request's end) to the
 * reference; returns the body. k1, k2, v1, v2 uniform in [-1, 1), q in
 * [-2, 2) so the pair softmax is neither flat nor one-hot. */
static char *tg_prepare(tgroup *tg, const tentry *e, size_t n, bool multi, bool b64_in, const char *encoding,
                        tdata *d)
{
    ck_assert_msg(n >= 1 && n <= MAX_ENTRIES && (multi || n == 1), "test bug: %zu entries", n);
    tensor_step_spec specs[MAX_ENTRIES];
    for (size_t i = 0; i < n; i++) {
        tdata *t = &d[i];
        memset(t, 0, sizeof *t);
        const size_t kv = e[i].m * tg->kv_row, qn = e[i].m_q * tg->q_row;
        t->k1 = rng_tensor(&tg->r, kv, -1, 1);
        t->k2 = rng_tensor(&tg->r, kv, -1, 1);
        t->v1 = rng_tensor(&tg->r, kv, -1, 1);
        t->v2 = rng_tensor(&tg->r, kv, -1, 1);
        t->q = rng_tensor(&tg->r, qn, -2, 2);
        t->want = malloc((qn ? qn : 1) * sizeof *t->want);
        ck_assert_ptr_nonnull(t->want);
        ck_assert_int_eq(ref_tensor_step(tg->ref, (size_t)e[i].layer, t->k1, t->k2, t->v1, t->v2, e[i].m, t->q,
                                         e[i].m_q, mask_of(&e[i]), t->want),
                         0);
        t->tokens_after = ref_tensor_tokens(tg->ref, (size_t)e[i].layer);
        t->spec = (tensor_step_spec){.layer = e[i].layer, .k1 = t->k1, .k2 = t->k2, .v1 = t->v1, .v2 = t->v2,
                                     .m = e[i].m, .q = t->q, .m_q = e[i].m_q, .mask = e[i].mask, .b64 = b64_in};
        specs[i] = t->spec;
    }
    ref_tensor_end_request(tg->ref);
    return multi ? tensor_steps_body(specs, n, tg->kv_row, tg->q_row, encoding)
                 : tensor_step_body(specs, tg->kv_row, tg->q_row, encoding);
}

/* The result object of entry i (the body itself in the single form). */
static const cJSON *entry_result(const cJSON *resp, bool multi, size_t n, size_t i, const char *what)
{
    if (!multi)
        return resp;
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(resp, "steps");
    ck_assert_msg(cJSON_IsArray(steps) && (size_t)cJSON_GetArraySize(steps) == n,
                  "%s: a \"steps\" request must answer {\"steps\": [%zu results]}", what, n);
    return cJSON_GetArrayItem(steps, (int)i);
}

/* One request with fresh random data to every session of the group; checks
 * every "o" against the reference and the sessions' outputs against each
 * other, and each entry's "tokens". */
static void tg_request(tgroup *tg, const tentry *e, size_t n, bool multi, bool b64_in, const char *encoding,
                       const char *what)
{
    tdata d[MAX_ENTRIES];
    char *body = tg_prepare(tg, e, n, multi, b64_in, encoding, d);
    const bool b64_out = encoding && strcmp(encoding, "b64") == 0;
    float *first[MAX_ENTRIES] = {NULL};
    char label[256];
    for (size_t s = 0; s < tg->n; s++) {
        cJSON *resp = kvd_step_ok(tg->port, tg->ids[s], body);
        for (size_t i = 0; i < n; i++) {
            snprintf(label, sizeof label, "%s [%s cache, entry %zu: layer %ld m=%zu m_q=%zu %s]", what,
                     tg->two[s] ? "two" : "four", i, e[i].layer, e[i].m, e[i].m_q, e[i].mask ? e[i].mask : "default");
            const cJSON *r = entry_result(resp, multi, n, i, label);
            ck_assert_msg(cJSON_IsObject(r) && !cJSON_GetObjectItemCaseSensitive(r, "error"),
                          "%s: result is not a success object", label);
            const cJSON *o = cJSON_GetObjectItemCaseSensitive(r, "o");
            if (b64_out && e[i].m_q > 0)
                ck_assert_msg(cJSON_IsString(o) && strncmp(o->valuestring, "b64:", 4) == 0,
                              "%s: encoding b64 but \"o\" is not a \"b64:\" string", label);
            else if (!b64_out)
                ck_assert_msg(cJSON_IsArray(o), "%s: \"o\" is not a JSON array", label);
            const size_t n_out = e[i].m_q * tg->q_row;
            double err = kvd_check_tensor(o, d[i].want, n_out, OUTPUT_TOL, label);
            if (err > tg->worst)
                tg->worst = err;
            float *got = NULL;
            size_t count = 0;
            ck_assert_int_eq(tensor_from_json(o, &got, &count), 0);
            if (s == 0) {
                first[i] = got;
            } else {
                for (size_t k = 0; k < n_out; k++) {
                    double diff = fabs((double)got[k] - (double)first[i][k]);
                    ck_assert_msg(diff <= OUTPUT_TOL, "%s: o[%zu] = %.9g, the %s cache gave %.9g", label, k,
                                  (double)got[k], tg->two[0] ? "two" : "four", (double)first[i][k]);
                    if (diff > tg->worst_cross)
                        tg->worst_cross = diff;
                }
                free(got);
            }
            /* The stream's count after the entry, after the window's drop
             * (the server drops tokens older than the window at the end of
             * each entry; the reference at the end of the request, which
             * gives the same outputs because a query only sees the last W). */
            double tokens = kvd_json_num(r, "tokens");
            const size_t after = d[i].tokens_after;
            const size_t kept = tg->window && after > tg->window ? tg->window : after;
            ck_assert_msg(tokens == (double)kept, "%s: \"tokens\" %g, expected %zu (%zu before the window's drop)",
                          label, tokens, kept, after);
        }
        cJSON_Delete(resp);
    }
    for (size_t i = 0; i < n; i++) {
        free(first[i]);
        tdata_free(&d[i]);
    }
    free(body);
}

/* One entry, single form. */
static void tg_step(tgroup *tg, long layer, size_t m, size_t m_q, const char *mask, bool b64_in,
                    const char *encoding, const char *what)
{
    tentry e = {layer, m, m_q, mask};
    tg_request(tg, &e, 1, false, b64_in, encoding, what);
}

/* The same (m, m_q, mask) on every layer in one "steps" request. */
static void tg_all_layers(tgroup *tg, size_t m, size_t m_q, const char *mask, bool b64_in, const char *encoding,
                          const char *what)
{
    tentry e[MAX_ENTRIES];
    ck_assert_msg(tg->layers <= MAX_ENTRIES, "test bug: too many layers");
    for (size_t l = 0; l < tg->layers; l++)
        e[l] = (tentry){(long)l, m, m_q, mask};
    tg_request(tg, e, tg->layers, true, b64_in, encoding, what);
}

/* Pages a session of the group holds by the layout: per stream, k1/v1 and
 * k2/v2 of n tokens, and for the two-cache n^2 pair rows. */
static size_t tg_expected_pages(const tgroup *tg, bool two)
{
    const size_t spp = slots_per_page(tg->page_bytes, tg->head_dim);
    size_t pages = 0;
    for (size_t l = 0; l < tg->layers; l++) {
        const size_t n = ref_tensor_tokens(tg->ref, l);
        pages += tg->kv_heads * (2 * ceil_div(n, spp) + (two ? ceil_div(n * n, spp) : 0));
    }
    return pages;
}

/* Stats of session s against the reference: tokens (summed over streams and
 * per layer per kv head), appended, memory_scaling, pair_rows (two only),
 * bytes = pages x page size and the exact page count. Returns the stats. */
static cJSON *tg_check_stats(tgroup *tg, size_t s, const char *what)
{
    const char *cache = tg->two[s] ? "two" : "four";
    cJSON *st = kvd_session_stats(tg->port, tg->ids[s]);
    const double tokens = (double)ref_tensor_total_tokens(tg->ref);
    ck_assert_msg(kvd_json_num(st, "tokens") == tokens, "%s (%s): stats tokens %g, expected %g", what, cache,
                  kvd_json_num(st, "tokens"), tokens);
    ck_assert_msg(kvd_json_num(st, "appended") == (double)ref_tensor_total_appended(tg->ref),
                  "%s (%s): stats appended %g, expected %zu", what, cache, kvd_json_num(st, "appended"),
                  ref_tensor_total_appended(tg->ref));
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(st, "layers");
    ck_assert_msg(cJSON_IsArray(layers) && (size_t)cJSON_GetArraySize(layers) == tg->layers,
                  "%s (%s): stats \"layers\" is not an array of %zu", what, cache, tg->layers);
    for (size_t l = 0; l < tg->layers; l++) {
        const cJSON *tok = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(layers, (int)l), "tokens");
        ck_assert_msg(cJSON_IsArray(tok) && (size_t)cJSON_GetArraySize(tok) == tg->kv_heads,
                      "%s (%s): layers[%zu].tokens is not an array of %zu", what, cache, l, tg->kv_heads);
        for (size_t g = 0; g < tg->kv_heads; g++) {
            const cJSON *t = cJSON_GetArrayItem(tok, (int)g);
            ck_assert_msg(cJSON_IsNumber(t) && t->valuedouble == (double)ref_tensor_tokens(tg->ref, l),
                          "%s (%s): layers[%zu].tokens[%zu] = %g, expected %zu", what, cache, l, g,
                          cJSON_IsNumber(t) ? t->valuedouble : -1.0, ref_tensor_tokens(tg->ref, l));
        }
    }
    const char *ms = kvd_json_str(st, "memory_scaling");
    const char *want_ms = tg->two[s] ? "n^2*d" : "n*d";
    ck_assert_msg(ms && strcmp(ms, want_ms) == 0, "%s (%s): memory_scaling %s, expected %s", what, cache,
                  ms ? ms : "(none)", want_ms);
    if (tg->two[s])
        ck_assert_msg(kvd_json_num(st, "pair_rows") == (double)ref_tensor_pair_rows(tg->ref),
                      "%s (two): pair_rows %g, expected %zu (n^2 per stream)", what, kvd_json_num(st, "pair_rows"),
                      ref_tensor_pair_rows(tg->ref));
    else
        ck_assert_msg(kvd_json_at(st, "pair_rows") == NULL, "%s (four): a four-cache reports no pair_rows", what);
    const double pages = kvd_json_num(st, "pages"), bytes = kvd_json_num(st, "bytes");
    ck_assert_msg(bytes == pages * (double)tg->page_bytes, "%s (%s): bytes %g != pages %g x %zu", what, cache,
                  bytes, pages, tg->page_bytes);
    const size_t want_pages = tg_expected_pages(tg, tg->two[s]);
    ck_assert_msg(pages == (double)want_pages, "%s (%s): pages %g, the layout gives %zu", what, cache, pages,
                  want_pages);
    return st;
}

static void tg_check_all_stats(tgroup *tg, const char *what)
{
    for (size_t s = 0; s < tg->n; s++)
        cJSON_Delete(tg_check_stats(tg, s, what));
}

/* ---- 1. four == two == reference ------------------------------------------ */

typedef struct match_case {
    size_t head_dim;
    const char *page_bytes;
    double scale; /* <= 0: default */
} match_case;

static const match_case match_cases[] = {
    {8, "1024", 0},   /* 14 slots a page: 40 tokens span 3 pages, 1600 pair rows 115 */
    {16, "4096", 0.3}, /* 30 slots a page, an explicit scale */
};

START_TEST(four_two_reference)
{
    const match_case *c = &match_cases[_i];
    const char *const args[] = {"--page-bytes", c->page_bytes, "--memory", "16MiB", "--threads", "2", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    int port = kvd_proc_port(p);
    tgroup tg;
    tg_create(&tg, port, "both", 2, 4, 2, c->head_dim, 0, c->scale, (size_t)atol(c->page_bytes), 9000 + _i);
    tg_check_all_stats(&tg, "new session");

    /* Prefill: causal by default (m_q == m) per layer, JSON; then named
     * causal, b64 both ways. */
    tg_step(&tg, 0, 5, 5, NULL, false, NULL, "prefill layer 0 (json)");
    tg_step(&tg, 1, 5, 5, "causal", true, "b64", "prefill layer 1 (b64 both ways)");
    tg_check_all_stats(&tg, "after prefill");

    char what[128];
    for (int t = 0; t < 30; t++) {
        snprintf(what, sizeof what, "decode %d", t);
        switch (t % 3) {
        case 0: /* one request per layer, JSON both ways */
            for (long l = 0; l < 2; l++)
                tg_step(&tg, l, 1, 1, NULL, false, NULL, what);
            break;
        case 1: /* "steps", JSON in, b64 out */
            tg_all_layers(&tg, 1, 1, NULL, false, "b64", what);
            break;
        default: /* "steps", b64 in, JSON out (named) */
            tg_all_layers(&tg, 1, 1, "causal", true, "json", what);
            break;
        }
        if (t % 10 == 9)
            tg_check_all_stats(&tg, what);
    }
    /* One VAR scale: 4 new tokens whose 4 queries see each other (block). */
    tg_all_layers(&tg, 4, 4, "block", false, NULL, "block m=4 m_q=4");
    /* Causal with fewer queries than new tokens: the last m_q. */
    tg_all_layers(&tg, 3, 2, "causal", true, "b64", "causal m=3 m_q=2");
    /* Pure queries against the cache: block by default and named. */
    tg_all_layers(&tg, 0, 2, NULL, false, NULL, "pure query m=0 m_q=2 (default)");
    tg_step(&tg, 1, 0, 1, "block", true, "b64", "pure query m=0 m_q=1 (block, b64)");
    /* Append only: an empty "o". */
    tg_all_layers(&tg, 1, 0, "block", false, NULL, "append only m=1 m_q=0");
    /* Layers in reverse order, and a layer twice in one request. */
    {
        tentry e[3] = {{1, 1, 1, NULL}, {0, 1, 1, NULL}, {0, 0, 2, "block"}};
        tg_request(&tg, e, 3, true, false, NULL, "steps: layer 1, layer 0, layer 0 again");
        tg_step(&tg, 1, 0, 2, NULL, false, NULL, "pure query on layer 1");
    }
    ck_assert_uint_ge(ref_tensor_tokens(tg.ref, 0), 40);
    tg_check_all_stats(&tg, "final");
    printf("  head_dim %zu, %zu tokens: max |o - ref| %.2e, max |four - two| %.2e\n", c->head_dim,
           ref_tensor_tokens(tg.ref, 0), tg.worst, tg.worst_cross);
    for (size_t s = 0; s < tg.n; s++)
        kvd_delete_session(port, tg.ids[s]);
    ck_assert_msg(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\"") == 0,
                  "pool pages used after deleting both sessions");
    tg_free(&tg);
    kvd_proc_stop_ck(p);
}
END_TEST

/* ---- 2. windows ------------------------------------------------------------ */

static const size_t windows[] = {1, 3, 8};

START_TEST(four_cache_window)
{
    const size_t W = windows[_i];
    const char *const args[] = {"--page-bytes", "1024", "--memory", "16MiB", "--threads", "2", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    int port = kvd_proc_port(p);
    tgroup tg;
    tg_create(&tg, port, "four", 2, 4, 2, 8, W, 0, 1024, 7000 + W);
    char what[128];
    /* Every request is followed by a stats check: tokens per stream =
     * min(W, appended), never more than W, and pages to match. */
#define CHECKED(call, name)                                                                                        \
    do {                                                                                                           \
        call;                                                                                                      \
        snprintf(what, sizeof what, "W=%zu: %s", W, name);                                                        \
        cJSON *st_ = tg_check_stats(&tg, 0, what);                                                                \
        ck_assert_msg(kvd_json_num(st_, "tokens") <= (double)(W * tg.layers * tg.kv_heads),                       \
                      "%s: %g tokens over the window", what, kvd_json_num(st_, "tokens"));                         \
        cJSON_Delete(st_);                                                                                         \
    } while (0)
    CHECKED(tg_step(&tg, 0, 5, 5, NULL, false, NULL, "prefill layer 0 m=5"), "prefill layer 0");
    CHECKED(tg_step(&tg, 1, 2, 2, "causal", true, "b64", "prefill layer 1 m=2"), "prefill layer 1");
    for (int t = 0; t < 6; t++)
        CHECKED(tg_all_layers(&tg, 1, 1, NULL, t % 2 == 1, t % 2 ? "b64" : NULL, "decode m=1"), "decode");
    CHECKED(tg_all_layers(&tg, 4, 4, "block", false, NULL, "block m=4 m_q=4"), "block");
    CHECKED(tg_all_layers(&tg, 3, 2, NULL, true, NULL, "default block m=3 m_q=2"), "block m_q < m");
    CHECKED(tg_all_layers(&tg, 6, 3, "causal", false, "b64", "causal m=6 m_q=3"), "causal m_q < m");
    CHECKED(tg_all_layers(&tg, 0, 2, NULL, false, NULL, "pure query m=0 m_q=2"), "pure query");
    CHECKED(tg_step(&tg, 1, 10, 10, NULL, false, NULL, "prefill-sized step m=10 on layer 1"), "m=10");
    {
        /* The same layer three times: the drop comes at the end of the request. */
        tentry e[3] = {{0, 2, 2, NULL}, {0, 3, 1, "causal"}, {0, 0, 2, "block"}};
        CHECKED(tg_request(&tg, e, 3, true, true, "b64", "layer 0 three times"), "same layer thrice");
    }
    for (int t = 0; t < 3; t++)
        CHECKED(tg_all_layers(&tg, 1, 1, NULL, false, NULL, "decode after"), "decode after");
#undef CHECKED
    ck_assert_uint_eq(ref_tensor_tokens(tg.ref, 0), W);
    printf("  window %zu: max |o - ref| %.2e\n", W, tg.worst);
    tg_free(&tg);
    kvd_proc_stop_ck(p);
}
END_TEST

/* ---- 3. memory: n*d versus n^2*d ------------------------------------------ */

START_TEST(memory_scaling)
{
    /* head_dim 16 in 1 KiB pages: 7 slots a page, so 32 and 64 tokens fill
     * whole pages (5 and 10 per k/v stream) and pair rows waste < 1%. */
    const char *const args[] = {"--page-bytes", "1024", "--memory", "16MiB", "--threads", "2", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    int port = kvd_proc_port(p);
    tgroup tg;
    tg_create(&tg, port, "both", 2, 4, 2, 16, 0, 0, 1024, 31337);
    ck_assert_uint_eq(slots_per_page(1024, 16), 7);
    double bytes32[MAX_SESSIONS], bytes64[MAX_SESSIONS];
    tg_all_layers(&tg, 32, 2, "causal", true, "b64", "fill to n=32");
    for (size_t s = 0; s < tg.n; s++) {
        cJSON *st = tg_check_stats(&tg, s, "n=32");
        bytes32[s] = kvd_json_num(st, "bytes");
        if (tg.two[s])
            ck_assert_msg(kvd_json_num(st, "pair_rows") == 2.0 * 2 * 32 * 32, "pair_rows at n=32: %g",
                          kvd_json_num(st, "pair_rows"));
        cJSON_Delete(st);
    }
    tg_all_layers(&tg, 32, 1, NULL, false, NULL, "fill to n=64");
    for (size_t s = 0; s < tg.n; s++) {
        cJSON *st = tg_check_stats(&tg, s, "n=64");
        bytes64[s] = kvd_json_num(st, "bytes");
        if (tg.two[s])
            ck_assert_msg(kvd_json_num(st, "pair_rows") == 2.0 * 2 * 64 * 64, "pair_rows at n=64: %g",
                          kvd_json_num(st, "pair_rows"));
        cJSON_Delete(st);
    }
    for (size_t s = 0; s < tg.n; s++) {
        double ratio = bytes64[s] / bytes32[s];
        double lo = tg.two[s] ? TWO_RATIO_LO : FOUR_RATIO_LO, hi = tg.two[s] ? TWO_RATIO_HI : FOUR_RATIO_HI;
        printf("  %s cache: %.0f bytes at n=32, %.0f at n=64 (x%.2f)\n", tg.two[s] ? "two " : "four", bytes32[s],
               bytes64[s], ratio);
        ck_assert_msg(ratio >= lo && ratio <= hi, "%s cache: bytes grew x%.3f from n=32 to n=64, expected %.1f..%.1f",
                      tg.two[s] ? "two" : "four", ratio, lo, hi);
    }
    /* Queries after the growth still agree. */
    tg_all_layers(&tg, 0, 2, NULL, true, "b64", "pure query at n=64");
    tg_free(&tg);
    kvd_proc_stop_ck(p);
}
END_TEST

/* ---- 4. bad input ---------------------------------------------------------- */

#define INVALID "invalid_argument"
#define NYS "not yet supported"

static void bad_create(int port, const char *body, const char *field, const char *msg_part, const char *what)
{
    http_response *r = http_request(port, "POST", "/v1/sessions", KVD_JSON, body);
    kvd_expect_error(r, 400, INVALID, field, msg_part, what);
    http_response_free(r);
}

static void bad_step(int port, const char *id, const char *body, const char *field, const char *what)
{
    http_response *r = kvd_step(port, id, body);
    kvd_expect_error(r, 400, INVALID, field, NULL, what);
    http_response_free(r);
}

/* The counters a refused request must leave alone. */
typedef struct snapshot {
    double tokens, appended, steps, pair_rows, bytes, pages;
} snapshot;

static snapshot take_snapshot(int port, const char *id)
{
    cJSON *st = kvd_session_stats(port, id);
    snapshot s = {kvd_json_num(st, "tokens"), kvd_json_num(st, "appended"), kvd_json_num(st, "steps"),
                  kvd_json_num(st, "pair_rows"), kvd_json_num(st, "bytes"), kvd_json_num(st, "pages")};
    cJSON_Delete(st);
    return s;
}

/* NAN-aware equality (pair_rows is absent, NAN, for a four-cache). */
static bool same(double a, double b)
{
    return a == b || (isnan(a) && isnan(b));
}

static void assert_unchanged(int port, const char *id, const snapshot *before, const char *what)
{
    snapshot now = take_snapshot(port, id);
    ck_assert_msg(same(now.tokens, before->tokens) && same(now.appended, before->appended) &&
                      same(now.steps, before->steps) && same(now.pair_rows, before->pair_rows) &&
                      same(now.bytes, before->bytes) && same(now.pages, before->pages),
                  "%s changed the session: tokens %g->%g appended %g->%g steps %g->%g pair_rows %g->%g "
                  "bytes %g->%g pages %g->%g",
                  what, before->tokens, now.tokens, before->appended, now.appended, before->steps, now.steps,
                  before->pair_rows, now.pair_rows, before->bytes, now.bytes, before->pages, now.pages);
}

/* A body with the named tensors of a [m] x kv_row step (values 0.5) plus q. */
static char *fields_body(const char *const *names, size_t n_names, const size_t *rows, size_t kv_row, size_t q_row,
                         const char *extra)
{
    sbuf b;
    sb_init(&b);
    sb_puts(&b, "{\"layer\":0");
    for (size_t i = 0; i < n_names; i++) {
        size_t n = rows[i] * kv_row;
        float *x = calloc(n ? n : 1, sizeof *x);
        ck_assert_ptr_nonnull(x);
        for (size_t k = 0; k < n; k++)
            x[k] = 0.5f;
        sb_printf(&b, ",\"%s\":", names[i]);
        sb_floats_json(&b, x, n);
        free(x);
    }
    float q[64];
    ck_assert_uint_le(q_row, 64);
    for (size_t k = 0; k < q_row; k++)
        q[k] = 0.25f;
    sb_puts(&b, ",\"q\":");
    sb_floats_json(&b, q, q_row);
    if (extra)
        sb_puts(&b, extra);
    sb_puts(&b, "}");
    return sb_take(&b);
}

/* A copy of s with the first `from` replaced by `to` (which must occur). */
static char *replace_first(const char *s, const char *from, const char *to)
{
    const char *at = strstr(s, from);
    ck_assert_msg(at != NULL, "test bug: '%s' not in the body", from);
    sbuf b;
    sb_init(&b);
    sb_putn(&b, s, (size_t)(at - s));
    sb_puts(&b, to);
    sb_puts(&b, at + strlen(from));
    return sb_take(&b);
}

START_TEST(bad_input)
{
    const char *const args[] = {"--page-bytes", "1024", "--memory", "4MiB", "--threads", "2", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    int port = kvd_proc_port(p);
    const char *T = "\"attention\":\"tensor\",\"heads\":2,\"kv_heads\":1,\"head_dim\":8";
    char body[512];

    /* Create: what tensor sessions cannot do yet, and window elsewhere. */
    snprintf(body, sizeof body, "{%s,\"window\":4,\"cache\":{\"dtype\":\"kivi4\"}}", T);
    bad_create(port, body, "window", NYS, "kivi tensor cache with a window");
    snprintf(body, sizeof body, "{%s,\"window\":8,\"cache\":{\"eviction\":\"recency\",\"budget\":64}}", T);
    bad_create(port, body, "cache.eviction", NYS, "tensor with a window and eviction");
    snprintf(body, sizeof body, "{%s,\"tensor_cache\":\"two\",\"window\":4}", T);
    bad_create(port, body, "window", NYS, "two-cache with a window");
    bad_create(port, "{\"heads\":2,\"head_dim\":8,\"window\":4}", "window", "only used with attention \"tensor\"",
               "window on standard attention");
    bad_create(port, "{\"heads\":2,\"head_dim\":8,\"attention\":\"standard\",\"window\":1}", "window",
               "only used with attention \"tensor\"", "window 1 on explicit standard attention");
    snprintf(body, sizeof body, "{%s,\"tensor_cache\":\"three\"}", T);
    bad_create(port, body, "tensor_cache", NULL, "tensor_cache three");
    cJSON *list = kvd_get_json(port, "/v1/sessions", 200);
    ck_assert_msg(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(list, "sessions")) == 0,
                  "a refused create left a session behind");
    cJSON_Delete(list);

    /* A working four-cache session and a standard one beside it. */
    tgroup tg;
    tg_create(&tg, port, "four", 1, 2, 1, 8, 0, 0, 1024, 4242);
    const char *id = tg.ids[0];
    tg_step(&tg, 0, 3, 3, NULL, false, NULL, "prefill before the bad steps");
    char *std_id = kvd_create_session(port, "{\"heads\":2,\"kv_heads\":1,\"head_dim\":8}", NULL);

    /* (Forks of tensor sessions work: tests/integration/test_fork.c.) */

    snapshot before = take_snapshot(port, id);
    const size_t kv_row = 8, q_row = 16;
    char *b;
    /* "k"/"v" on a tensor session. */
    {
        const char *names[] = {"k", "v"};
        size_t rows[] = {1, 1};
        b = fields_body(names, 2, rows, kv_row, q_row, NULL);
        bad_step(port, id, b, "k", "k and v on a tensor session");
        free(b);
        b = fields_body(names + 1, 1, rows, kv_row, q_row, NULL);
        bad_step(port, id, b, "v", "v alone on a tensor session");
        free(b);
        const char *mixed[] = {"k1", "k2", "v1", "v2", "k"};
        size_t rows5[] = {1, 1, 1, 1, 1};
        b = fields_body(mixed, 5, rows5, kv_row, q_row, NULL);
        bad_step(port, id, b, "k", "k1..v2 plus k on a tensor session");
        free(b);
    }
    /* All four or none. */
    {
        const char *names[] = {"k1", "k2", "v1"};
        size_t rows[] = {1, 1, 1};
        b = fields_body(names, 3, rows, kv_row, q_row, NULL);
        bad_step(port, id, b, "v2", "v2 missing");
        free(b);
        const char *only[] = {"k2"};
        b = fields_body(only, 1, rows, kv_row, q_row, NULL);
        bad_step(port, id, b, "k1|v1|v2", "k2 alone");
        free(b);
    }
    /* Token counts must agree; sizes must be whole rows. */
    {
        const char *names[] = {"k1", "k2", "v1", "v2"};
        size_t rows[] = {2, 3, 2, 2};
        b = fields_body(names, 4, rows, kv_row, q_row, NULL);
        bad_step(port, id, b, "k2", "k2 with 3 tokens, the others 2");
        free(b);
        b = fields_body(names, 4, (size_t[]){1, 1, 1, 1}, kv_row, q_row, NULL);
        char *c = replace_first(b, "\"v2\":[0.5,", "\"v2\":["); /* one number too few */
        bad_step(port, id, c, "v2", "v2 with 7 numbers");
        free(c);
        c = replace_first(b, "\"v1\":[0.5,", "\"v1\":[1e39,"); /* beyond f32 */
        bad_step(port, id, c, "v1", "v1 out of f32 range");
        free(c);
        free(b);
    }
    /* The "steps" form names the entry. */
    {
        const char *names[] = {"k", "v"};
        size_t rows[] = {1, 1};
        char *one = fields_body(names, 2, rows, kv_row, q_row, NULL);
        const char *good[] = {"k1", "k2", "v1", "v2"};
        char *ok = fields_body(good, 4, (size_t[]){1, 1, 1, 1}, kv_row, q_row, NULL);
        size_t len = strlen(one) + strlen(ok) + 32;
        b = malloc(len);
        snprintf(b, len, "{\"steps\":[%s,%s]}", ok, one);
        bad_step(port, id, b, "steps[1].k", "steps[1] with k on a tensor session");
        free(b);
        free(one);
        free(ok);
    }
    assert_unchanged(port, id, &before, "refused tensor steps");

    /* "k1" on a standard session. */
    {
        snapshot sb = take_snapshot(port, std_id);
        const char *names[] = {"k", "v", "k1"};
        size_t rows[] = {1, 1, 1};
        b = fields_body(names, 3, rows, kv_row, q_row, NULL);
        bad_step(port, std_id, b, "k1", "k1 on a standard session");
        free(b);
        const char *t4[] = {"k1", "k2", "v1", "v2"};
        b = fields_body(t4, 4, (size_t[]){1, 1, 1, 1}, kv_row, q_row, NULL);
        bad_step(port, std_id, b, "k1|k2|v1|v2", "k1..v2 on a standard session");
        free(b);
        assert_unchanged(port, std_id, &sb, "refused standard steps");
    }

    /* The tensor session still answers correctly. */
    tg_step(&tg, 0, 1, 1, NULL, true, "b64", "decode after the bad steps");
    tg_step(&tg, 0, 0, 1, NULL, false, NULL, "pure query after the bad steps");
    tg_check_all_stats(&tg, "after the bad steps");
    kvd_assert_healthy(port);
    free(std_id);
    tg_free(&tg);
    kvd_proc_stop_ck(p);
}
END_TEST

/* A 503 answer of a full pool: status, code, Retry-After. */
static void expect_exhausted(http_response *r, const char *what)
{
    kvd_expect_error(r, 503, "resource_exhausted", NULL, NULL, what);
    const char *ra = http_header_get(r, "Retry-After");
    ck_assert_msg(ra != NULL, "%s: 503 without Retry-After", what);
    char *end;
    long secs = strtol(ra, &end, 10);
    ck_assert_msg(end != ra && *end == '\0' && secs > 0, "%s: Retry-After '%s' is not a positive integer", what, ra);
}

/* Sends a request drawn from tg's rng WITHOUT touching the reference (the
 * server must refuse it); expects a 503. */
static void tg_expect_full(tgroup *tg, const tentry *e, size_t n, const char *what)
{
    /* Draw into a scratch reference so the real one stays as the server's
     * session must stay. */
    ref_tensor *saved = tg->ref;
    tg->ref = ref_tensor_new(tg->layers, tg->heads, tg->kv_heads, tg->head_dim, 0, tg->window);
    tdata d[MAX_ENTRIES];
    char *body = tg_prepare(tg, e, n, n > 1, true, NULL, d);
    ref_tensor_free(tg->ref);
    tg->ref = saved;
    snapshot before = take_snapshot(tg->port, tg->ids[0]);
    http_response *r = kvd_step(tg->port, tg->ids[0], body);
    expect_exhausted(r, what);
    http_response_free(r);
    assert_unchanged(tg->port, tg->ids[0], &before, what);
    for (size_t i = 0; i < n; i++)
        tdata_free(&d[i]);
    free(body);
}

/* Like tg_expect_full for a step over the whole pool: 413, the pool's page
 * count in the message, no Retry-After. */
static void tg_expect_too_big(tgroup *tg, const tentry *e, size_t n, const char *what)
{
    ref_tensor *saved = tg->ref;
    tg->ref = ref_tensor_new(tg->layers, tg->heads, tg->kv_heads, tg->head_dim, 0, tg->window);
    tdata d[MAX_ENTRIES];
    char *body = tg_prepare(tg, e, n, n > 1, true, NULL, d);
    ref_tensor_free(tg->ref);
    tg->ref = saved;
    snapshot before = take_snapshot(tg->port, tg->ids[0]);
    http_response *r = kvd_step(tg->port, tg->ids[0], body);
    kvd_expect_error(r, 413, "payload_too_large", NULL, "the 64 pages the whole pool has", what);
    ck_assert_msg(http_header_get(r, "Retry-After") == NULL, "%s: a 413 with Retry-After", what);
    http_response_free(r);
    assert_unchanged(tg->port, tg->ids[0], &before, what);
    for (size_t i = 0; i < n; i++)
        tdata_free(&d[i]);
    free(body);
}

START_TEST(two_cache_pool_full)
{
    /* 64 pages of 4 KiB; head_dim 8 gives 56 slots a page. One stream (one
     * layer, one kv head): at n tokens the session holds 2*ceil(n/56) +
     * ceil(n^2/56) pages — 31 at n = 40, 67 at n = 60 (more than is free),
     * 2*2 + 115 at n = 80 (more than the whole pool), 39 at n = 45. */
    const char *const args[] = {"--page-bytes", "4096", "--memory", "256KiB", "--threads", "2", NULL};
    kvd_proc *p = kvd_proc_start_ck(args);
    int port = kvd_proc_port(p);
    ck_assert_uint_eq(slots_per_page(4096, 8), 56);
    tgroup tg;
    tg_create(&tg, port, "two", 1, 2, 1, 8, 0, 0, 4096, 555);
    tg_step(&tg, 0, 40, 2, "causal", true, NULL, "prefill n=40");
    tg_check_all_stats(&tg, "n=40");
    ck_assert_msg(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\"") == 31, "pool pages used %g, expected 31",
                  kvd_metric_now(port, "kvd_pool_pages", "state=\"used\""));

    const tentry grow20 = {0, 20, 1, NULL};
    tg_expect_full(&tg, &grow20, 1, "m=20: pair rows for n=60 need 38 pages, 33 free");
    /* More than the whole pool: 413 naming the counts, no Retry-After
     * (issue 10, bug 5). */
    const tentry grow40 = {0, 40, 40, NULL};
    tg_expect_too_big(&tg, &grow40, 1, "m=40: n=80 needs more pages than the pool has");
    const tentry two_entries[2] = {{0, 2, 1, NULL}, {0, 18, 1, NULL}};
    tg_expect_full(&tg, two_entries, 2, "steps m=2 (fits) then m=18 (does not): refused whole");
    tg_check_all_stats(&tg, "after the refusals");
    kvd_assert_healthy(port);

    /* A smaller step still fits and answers correctly. */
    tg_step(&tg, 0, 5, 5, NULL, false, "b64", "m=5 to n=45 fits");
    tg_step(&tg, 0, 0, 2, NULL, true, NULL, "pure query at n=45");
    tg_check_all_stats(&tg, "n=45");
    ck_assert_msg(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\"") == 39, "pool pages used %g, expected 39",
                  kvd_metric_now(port, "kvd_pool_pages", "state=\"used\""));
    kvd_delete_session(port, tg.ids[0]);
    ck_assert_msg(kvd_metric_now(port, "kvd_pool_pages", "state=\"used\"") == 0, "pages left after DELETE");
    tg_free(&tg);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *tensor_suite(void)
{
    Suite *s = suite_create("integration_tensor");
    TCase *tc = tcase_create("tensor");
    tcase_set_timeout(tc, CASE_TIMEOUT_S);
    tcase_add_loop_test(tc, four_two_reference, 0, (int)(sizeof match_cases / sizeof match_cases[0]));
    tcase_add_loop_test(tc, four_cache_window, 0, (int)(sizeof windows / sizeof windows[0]));
    tcase_add_test(tc, memory_scaling);
    tcase_add_test(tc, bad_input);
    tcase_add_test(tc, two_cache_pool_full);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(tensor_suite)
