/* cache/snapshot.h — a whole session as bytes and back (DESIGN.md §3
 * snapshot/restore, §7 --state-dir): config, every stream's slots in their
 * stored dtype byte for byte (pages, KIVI key blocks and f32 residual,
 * tensor k2/v2 and pair rows, positions), each eviction index as it is kept,
 * each SubGen sketch (version 3 on), the shadow copy, counters and the caller's metadata; versioned and
 * checksummed (CRC-32C). The format is the README's "Snapshot format". */
#ifndef KVD_CACHE_SNAPSHOT_H
#define KVD_CACHE_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/pool.h"
#include "cache/session.h"

#define KVD_SNAPSHOT_MAGIC "KVDSNAP1"  /* 8 bytes, no NUL */
#define KVD_SNAPSHOT_VERSION 4u        /* format version this build writes (and the newest it reads) */
#define KVD_SNAPSHOT_VERSION_MIN 1u    /* oldest it reads: version 1 lacks cache.rotate (= "none");
                                          versions 1 and 2 hold no subgen session (no sketch record);
                                          version 3's subgen config lacks max_clusters (= 0, no cap) */
#define KVD_SNAPSHOT_HEADER_BYTES 64u
#define KVD_SNAPSHOT_ID_MAX 64u        /* longest session id a snapshot carries */

/* What the layer above keeps about a session beside its cache, carried
 * through unchanged (cache/ gives it no meaning). */
typedef struct kvd_snapshot_meta {
    char id[KVD_SNAPSHOT_ID_MAX + 1];     /* NUL-terminated, 1..64 bytes of [0-9a-z_-] */
    uint8_t owner_digest[32];             /* SHA-256 of the owner's key; zero: none */
    double created_at, last_used_at;      /* unix seconds */
    uint64_t steps;                       /* layer entries run */
    uint64_t shadow_steps;                /* shadow stats (zero without shadow) */
    double shadow_last_rel, shadow_sum_rel, shadow_max_abs;
} kvd_snapshot_meta;

/* Errors of kvd_session_restore (negative), each a distinct cause the API
 * turns into its answer. */
#define KVD_SNAPSHOT_ETRUNC   (-1)  /* shorter or longer than its header says */
#define KVD_SNAPSHOT_EMAGIC   (-2)  /* not a kvd snapshot */
#define KVD_SNAPSHOT_EVERSION (-3)  /* a format version this build does not read */
#define KVD_SNAPSHOT_ECHECK   (-4)  /* checksum mismatch */
#define KVD_SNAPSHOT_EFORMAT  (-5)  /* a field or structure out of range */
#define KVD_SNAPSHOT_EKIND    (-6)  /* an eviction kind, dtype or layout not supported */
#define KVD_SNAPSHOT_ENOSPC   (-7)  /* the pool has fewer free pages than it needs */
#define KVD_SNAPSHOT_ENOMEM   (-8)  /* heap allocation failed */
#define KVD_SNAPSHOT_EPAGE    (-9)  /* one slot of its config does not fit this pool's page */

/* A short English reason for a KVD_SNAPSHOT_* code. */
const char *kvd_snapshot_strerror(int code);

/* Serializes s (and its shadow copy, or NULL) with meta. Returns 0 and a
 * malloc'd buffer (*out, caller frees) of *out_len bytes, -ENOMEM, or
 * -ENOTSUP for a session the format cannot hold (an eviction kind it has no
 * record for; none today). page_bytes is the session's page size, recorded.
 * Reads the session only: the caller must keep every writer away (run it as
 * the session's job). O(bytes of the session). */
int kvd_session_snapshot(const kvd_session *s, const kvd_session *shadow, const kvd_snapshot_meta *meta,
                         size_t page_bytes, void **out, size_t *out_len);

/* Checks and reads the header, metadata and config only: length, magic,
 * version and checksum over everything, then the config. For a caller that
 * must decide (id in use, limits) before pages are taken. 0 or a
 * KVD_SNAPSHOT_* code; meta and cfg may be NULL. */
int kvd_snapshot_peek(const void *bytes, size_t len, kvd_snapshot_meta *meta, kvd_session_config *cfg);

/* Rebuilds a session from bytes, in pages of `pool` (any page size: slots
 * are copied into new pages, so a snapshot taken with another --page-bytes
 * restores too). Every field is checked before anything is taken; the pages
 * are taken all at once; on any failure nothing is left allocated and the
 * pool is as it was. On success *out (and *shadow_out when the snapshot has
 * a shadow copy, else NULL) are new sessions the caller owns; meta (may be
 * NULL) gets the metadata. Safe on arbitrary bytes (a fuzz target). */
int kvd_session_restore(const void *bytes, size_t len, kvd_pool *pool, kvd_snapshot_meta *meta,
                        kvd_session **out, kvd_session **shadow_out);

/* CRC-32C (Castagnoli) of n bytes, continuing from crc (0 to start). */
uint32_t kvd_crc32c(uint32_t crc, const void *data, size_t n);

#endif
