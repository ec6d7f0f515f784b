/* tests/fuzz/fuzz_create.c — create bodies (POST /v1/sessions): the input as
 * JSON text through kvd_json_parse_object and kvd_session_config_parse. An
 * accepted body must give a config whose JSON (kvd_session_config_to_json)
 * parses back to the same config, and a session (and shadow copy) that
 * kvd_session_create makes with exactly kvd_session_heap_bytes_new bytes of
 * heap and no page; destroying it leaves the pool untouched. A refusal must
 * be a 400 with a message. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "api/create_body.h"
#include "api/json.h"
#include "api/limits.h"
#include "cache/pool.h"
#include "cache/session.h"
#include "tests/fuzz/support.h"

#define PAGE_BYTES 4096u
/* The API refuses a create needing more heap than --max-session-heap
 * (KVD_MIN_SESSION_HEAP at least); bigger sessions are not made here. */
#define HEAP_MAX ((size_t)64 << 20)

static kvd_pool *pool;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    kvd_fuzz_quiet();
    KVD_FUZZ_CHECK(kvd_pool_create(16 * PAGE_BYTES, PAGE_BYTES, &pool) == 0, "pool");
    return 0;
}

static void same_config(const kvd_session_config *a, const kvd_session_config *b)
{
    KVD_FUZZ_CHECK(a->layers == b->layers && a->heads == b->heads && a->kv_heads == b->kv_heads &&
                       a->head_dim == b->head_dim,
                   "shape changed");
    KVD_FUZZ_CHECK(a->attention == b->attention && a->window == b->window, "attention changed");
    KVD_FUZZ_CHECK(a->attention != KVD_ATTN_TENSOR || a->tensor_cache == b->tensor_cache,
                   "tensor_cache changed");
    KVD_FUZZ_CHECK(memcmp(&a->scale, &b->scale, sizeof a->scale) == 0, "scale %.9g -> %.9g",
                   (double)a->scale, (double)b->scale);
    KVD_FUZZ_CHECK(a->cache.dtype == b->cache.dtype && a->cache.budget == b->cache.budget &&
                       a->cache.eviction == b->cache.eviction && a->cache.sink == b->cache.sink &&
                       a->cache.recent == b->cache.recent && a->cache.group == b->cache.group &&
                       a->cache.residual == b->cache.residual,
                   "cache changed");
    KVD_FUZZ_CHECK(a->shadow == b->shadow && a->seed == b->seed, "shadow or seed changed");
    KVD_FUZZ_CHECK(a->ttl_seconds == b->ttl_seconds, "ttl %.17g -> %.17g", a->ttl_seconds,
                   b->ttl_seconds);
}

/* Parses text (len bytes, NUL after them); 0 with cfg, or -1 with err. */
static int parse(const char *text, size_t len, const kvd_api_limits *lim, kvd_session_config *cfg,
                 kvd_api_error *err)
{
    cJSON *body = kvd_json_parse_object(text, len, err);
    if (!body)
        return -1;
    int rc = kvd_session_config_parse(body, lim, cfg, err);
    cJSON_Delete(body);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kvd_fuzz_reset();
    char *text = malloc(size + 1);
    KVD_FUZZ_CHECK(text != NULL, "out of memory");
    memcpy(text, data, size);
    text[size] = '\0';
    kvd_api_limits lim;
    kvd_api_limits_default(&lim, PAGE_BYTES);
    kvd_session_config cfg;
    kvd_api_error err;
    if (parse(text, size, &lim, &cfg, &err) != 0) {
        KVD_FUZZ_CHECK(err.status == 400 && err.message[0], "refused with %d: %s", err.status,
                       err.message);
        free(text);
        return 0;
    }
    free(text);

    /* The resolved config is itself a create body for the same config. */
    cJSON *j = kvd_session_config_to_json(&cfg);
    KVD_FUZZ_CHECK(j != NULL, "config to json");
    char *again = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    KVD_FUZZ_CHECK(again != NULL, "print");
    kvd_session_config cfg2;
    KVD_FUZZ_CHECK(parse(again, strlen(again), &lim, &cfg2, &err) == 0, "%s refused: %s", again,
                   err.message);
    same_config(&cfg, &cfg2);
    free(again);

    const kvd_session_config exact = kvd_session_shadow_config(&cfg);
    const size_t need = kvd_session_heap_bytes_new(&cfg);
    const size_t need_shadow = cfg.shadow ? kvd_session_heap_bytes_new(&exact) : 0;
    if (need + need_shadow > HEAP_MAX)
        return 0;
    kvd_session *s = NULL, *shadow = NULL;
    KVD_FUZZ_CHECK(kvd_session_create(&cfg, PAGE_BYTES, &s) == 0, "an accepted config was not created");
    KVD_FUZZ_CHECK(kvd_session_heap_bytes(s) == need, "heap %zu, predicted %zu",
                   kvd_session_heap_bytes(s), need);
    if (cfg.shadow) {
        KVD_FUZZ_CHECK(kvd_session_create(&exact, PAGE_BYTES, &shadow) == 0, "shadow not created");
        KVD_FUZZ_CHECK(kvd_session_heap_bytes(shadow) == need_shadow, "shadow heap");
    }
    KVD_FUZZ_CHECK(kvd_session_pages(s) == 0 && kvd_pool_pages_used(pool) == 0, "pages at create");
    kvd_session_destroy(s, pool);
    kvd_session_destroy(shadow, pool);
    KVD_FUZZ_CHECK(kvd_pool_pages_used(pool) == 0, "pages after destroy");
    return 0;
}
