/* tests/fuzz/fuzz_restore.c — snapshot bytes (POST /v1/sessions/restore)
 * through kvd_session_restore. The first input byte chooses whether the
 * CRC-32C trailer is recomputed over the rest before restoring: a random
 * change almost always fails the checksum, and a forged checksum must still
 * be stopped by the structure checks, so half the inputs go past it. A
 * refusal must leave the pool as it was; an accepted snapshot must give a
 * session whose pages the pool accounts for exactly, which snapshots again
 * and restores again, and which frees every page when destroyed. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cache/pool.h"
#include "cache/session.h"
#include "cache/snapshot.h"
#include "tests/fuzz/support.h"

#define PAGE_BYTES 4096u

static kvd_pool *pool;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    kvd_fuzz_quiet();
    KVD_FUZZ_CHECK(kvd_pool_create(1024 * PAGE_BYTES, PAGE_BYTES, &pool) == 0, "pool");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kvd_fuzz_reset();
    if (size < 1)
        return 0;
    const bool forge = data[0] & 1;
    size_t len = size - 1;
    unsigned char *bytes = malloc(len ? len : 1);
    KVD_FUZZ_CHECK(bytes != NULL, "out of memory");
    memcpy(bytes, data + 1, len);
    if (forge && len >= 4) { /* little-endian trailer over everything before it */
        const uint32_t crc = kvd_crc32c(0, bytes, len - 4);
        for (int i = 0; i < 4; i++)
            bytes[len - 4 + i] = (unsigned char)(crc >> (8 * i));
    }
    kvd_snapshot_meta meta;
    kvd_session *s = NULL, *shadow = NULL;
    const int rc = kvd_session_restore(bytes, len, pool, &meta, &s, &shadow);
    free(bytes);
    if (rc != 0) {
        KVD_FUZZ_CHECK(rc < 0 && s == NULL && shadow == NULL, "refused with %d but made a session", rc);
        KVD_FUZZ_CHECK(kvd_pool_pages_used(pool) == 0, "a refused restore kept %zu pages",
                       kvd_pool_pages_used(pool));
        return 0;
    }
    kvd_session *both[2] = {s, shadow};
    kvd_fuzz_check_pages(pool, both, shadow ? 2 : 1);

    /* What was accepted snapshots and restores again. */
    void *again = NULL;
    size_t again_len = 0;
    KVD_FUZZ_CHECK(kvd_session_snapshot(s, shadow, &meta, PAGE_BYTES, &again, &again_len) == 0,
                   "a restored session does not snapshot");
    kvd_session_destroy(s, pool);
    kvd_session_destroy(shadow, pool);
    KVD_FUZZ_CHECK(kvd_pool_pages_used(pool) == 0, "pages after destroy");
    s = shadow = NULL;
    KVD_FUZZ_CHECK(kvd_session_restore(again, again_len, pool, &meta, &s, &shadow) == 0,
                   "its own snapshot does not restore");
    free(again);
    kvd_session_destroy(s, pool);
    kvd_session_destroy(shadow, pool);
    KVD_FUZZ_CHECK(kvd_pool_pages_used(pool) == 0, "pages after the second destroy");
    return 0;
}
