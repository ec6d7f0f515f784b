/* tests/fuzz/fuzz_step.c — step bodies: the text path of
 * kvd_step_request_parse_text (api/json_text.c's pre-pass that decodes arrays
 * before cJSON, then api/step_body.c) against one of several fixed session
 * configs chosen by the first byte (f32 GQA, int4 + h2o, KIVI + recency,
 * tensor four, tensor four with a window, shadow f16 + l2norm, int8 tensor two +
 * recency, bf16 + recency), then the decoded entries through the step engine
 * (cache/step.h) twice on a fresh session in a small pool. Checks: a refusal
 * is a 400 (a 500 means the pre-pass and cJSON disagreed); a failed step
 * changes nothing; the pool's pages match the session's after each step and
 * are all free after destroy. Input: [config byte] then the body. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "api/create_body.h"
#include "api/json.h"
#include "api/limits.h"
#include "api/step_body.h"
#include "cache/pool.h"
#include "cache/session.h"
#include "cache/step.h"
#include "tests/fuzz/support.h"

#define PAGE_BYTES 1024u
#define POOL_PAGES 96u

static const char *const config_text[] = {
    "{\"layers\":2,\"heads\":4,\"kv_heads\":2,\"head_dim\":8,\"seed\":1}",
    "{\"layers\":1,\"heads\":2,\"kv_heads\":1,\"head_dim\":8,\"seed\":1,"
    "\"cache\":{\"dtype\":\"int4\",\"group\":4,\"eviction\":\"h2o\",\"budget\":6,\"sink\":1,\"recent\":1}}",
    "{\"layers\":1,\"heads\":2,\"kv_heads\":2,\"head_dim\":8,\"seed\":1,"
    "\"cache\":{\"dtype\":\"kivi2\",\"group\":4,\"residual\":4,\"eviction\":\"recency\",\"budget\":10,\"sink\":2}}",
    "{\"layers\":1,\"heads\":2,\"kv_heads\":1,\"head_dim\":4,\"seed\":1,\"attention\":\"tensor\","
    "\"tensor_cache\":\"four\"}",
    "{\"layers\":1,\"heads\":2,\"kv_heads\":1,\"head_dim\":4,\"seed\":1,\"attention\":\"tensor\","
    "\"tensor_cache\":\"four\",\"window\":4}",
    "{\"layers\":1,\"heads\":2,\"kv_heads\":1,\"head_dim\":8,\"seed\":1,\"shadow\":true,"
    "\"cache\":{\"dtype\":\"f16\",\"eviction\":\"l2norm\",\"budget\":5,\"sink\":1}}",
    "{\"layers\":1,\"heads\":1,\"kv_heads\":1,\"head_dim\":4,\"seed\":1,\"attention\":\"tensor\","
    "\"tensor_cache\":\"two\",\"cache\":{\"dtype\":\"int8\",\"eviction\":\"recency\",\"budget\":4,\"sink\":1}}",
    "{\"layers\":1,\"heads\":4,\"kv_heads\":1,\"head_dim\":8,\"seed\":1,"
    "\"cache\":{\"dtype\":\"bf16\",\"eviction\":\"recency\",\"budget\":3,\"sink\":1,\"recent\":1}}",
};
#define N_CONFIGS (sizeof config_text / sizeof config_text[0])

static kvd_session_config configs[N_CONFIGS];
static kvd_api_limits lim;
static kvd_pool *pool;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    kvd_fuzz_quiet();
    kvd_api_limits_default(&lim, PAGE_BYTES);
    for (size_t i = 0; i < N_CONFIGS; i++) {
        kvd_api_error err;
        cJSON *j = kvd_json_parse_object(config_text[i], strlen(config_text[i]), &err);
        KVD_FUZZ_CHECK(j && kvd_session_config_parse(j, &lim, &configs[i], &err) == 0,
                       "config %zu: %s", i, err.message);
        cJSON_Delete(j);
    }
    KVD_FUZZ_CHECK(kvd_pool_create((size_t)POOL_PAGES * PAGE_BYTES, PAGE_BYTES, &pool) == 0, "pool");
    return 0;
}

static void check_pages(kvd_session *s, kvd_session *shadow)
{
    kvd_session *both[2] = {s, shadow};
    kvd_fuzz_check_pages(pool, both, 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const kvd_session_config *cfg = &configs[data[0] % N_CONFIGS];
    data++;
    size--;
    char *text = malloc(size + 1);
    KVD_FUZZ_CHECK(text != NULL, "out of memory");
    memcpy(text, data, size);
    text[size] = '\0';
    kvd_step_request req;
    bool multi;
    kvd_api_error err;
    int rc = kvd_step_request_parse_text(text, size, cfg, &lim, &req, &multi, &err);
    free(text);
    if (rc != 0) {
        KVD_FUZZ_CHECK(err.status == 400 && err.message[0], "refused with %d: %s", err.status,
                       err.message);
        return 0;
    }
    KVD_FUZZ_CHECK(req.n_entries >= 1 && (multi || req.n_entries == 1), "%zu entries",
                   req.n_entries);

    kvd_session *s = NULL, *shadow = NULL;
    KVD_FUZZ_CHECK(kvd_session_create(cfg, PAGE_BYTES, &s) == 0, "session");
    if (cfg->shadow) {
        const kvd_session_config exact = kvd_session_shadow_config(cfg);
        KVD_FUZZ_CHECK(kvd_session_create(&exact, PAGE_BYTES, &shadow) == 0, "shadow");
    }
    for (int round = 0; round < 2; round++) {
        const size_t tokens = kvd_session_tokens(s), pages = kvd_pool_pages_used(pool);
        const uint64_t appended = kvd_session_appended(s);
        kvd_step_output out;
        rc = kvd_step_run(s, shadow, pool, req.entries, req.n_entries, &out);
        check_pages(s, shadow);
        if (rc != KVD_STEP_OK) {
            KVD_FUZZ_CHECK(rc == KVD_STEP_POOL_FULL || rc == KVD_STEP_TOO_BIG, "step rc %d", rc);
            KVD_FUZZ_CHECK(out.results == NULL, "results on failure");
            KVD_FUZZ_CHECK(kvd_session_tokens(s) == tokens && kvd_session_appended(s) == appended &&
                               kvd_pool_pages_used(pool) == pages,
                           "a failed step changed the session");
            break;
        }
        KVD_FUZZ_CHECK(out.n_results == req.n_entries, "%zu results for %zu entries",
                       out.n_results, req.n_entries);
        for (size_t i = 0; i < out.n_results; i++)
            KVD_FUZZ_CHECK((out.results[i].o != NULL) == (req.entries[i].m_q > 0),
                           "entry %zu: output present iff queries", i);
        kvd_step_output_free(&out);
    }
    kvd_session_destroy(s, pool);
    kvd_session_destroy(shadow, pool);
    KVD_FUZZ_CHECK(kvd_pool_pages_used(pool) == 0, "%zu pages used after destroy",
                   kvd_pool_pages_used(pool));
    kvd_step_request_free(&req);
    return 0;
}
