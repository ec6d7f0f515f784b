/* cache/reclaim.h — what a full pool may take back from an idle session
 * (--on-full evict, DESIGN.md §4 "Memory pressure"): tokens its eviction
 * policy would give up anyway, each stream down to its protected sink and
 * recent tokens. Which sessions, and in which order (least recently used
 * first), is the caller's choice. */
#ifndef KVD_CACHE_RECLAIM_H
#define KVD_CACHE_RECLAIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/pool.h"
#include "cache/session.h"

/* True when reclaiming from s would free at least one page, i.e. exactly
 * when kvd_session_reclaimable_pages(s) > 0: it has a policy, no page
 * shared with a fork (evicting from shared pages would need copies, i.e.
 * the very pages the pool is short of), is not a KIVI tensor two-cache
 * (rebuilding its pair rows appends them anew: pages again), is not subgen
 * (its streams hold only protected tokens; sketching takes pages), and
 * evicting some stream's unprotected tokens gives back a page of its own,
 * of its k2/v2 mirror or of its pair rows. Every kind it accepts stays
 * consistent: a tensor session's k2/v2 follow k1/v1's slot moves, and a
 * two-cache's pair rows are rebuilt in place (no page needed). */
bool kvd_session_reclaimable(const kvd_session *s);

/* Evicts s's streams one after another down to their protected tokens until
 * the pool has at least `want_free` free pages or s has nothing more to give;
 * a two-cache's pair rows are rebuilt for each stream that evicted (scratch
 * of 2 * tokens * head_dim f32 twice, malloc'd: if that fails nothing is
 * evicted). Returns the tokens evicted. Call only when
 * kvd_session_reclaimable(s) (so no copy-on-write page is needed) and no
 * step of s is running. */
uint64_t kvd_session_reclaim(kvd_session *s, kvd_pool *pool, size_t want_free);

/* Exactly the pages kvd_session_reclaim(s, pool, SIZE_MAX) would give back
 * to the pool now (its pair-row scratch malloc aside: if that fails it gives
 * none), computed without touching s: per stream, the pages its tokens
 * still need once every evictable token is gone (slot compaction keeps the
 * survivors in slots 0..n'-1; a partly filled last page stays), the same for
 * a tensor session's k2/v2 mirror, a two-cache's pair rows (n'^2 of them)
 * and a KIVI stream's residual and quantized parts. Meaningful when
 * kvd_session_reclaimable(s) (nothing shared, so every page a stream lets go
 * returns to the pool); 0 for a session reclaim would not touch. The pool
 * is not read: pages are private, so no refcount decides. */
size_t kvd_session_reclaimable_pages(const kvd_session *s);

#endif
