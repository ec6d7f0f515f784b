/* cache/internal.h — private to cache/: the eviction index's hooks into
 * append and fork, which evict.c defines and stream.c calls. A leaf on
 * purpose (it names the stream and the index without including their
 * headers), so that stream.c reaches the index through it and stream.c and
 * evict.c do not include each other. */
#ifndef KVD_CACHE_INTERNAL_H
#define KVD_CACHE_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kvd_stream kvd_stream;           /* cache/stream.h */
typedef struct kvd_evict_index kvd_evict_index; /* cache/policy.h */

/* evict.c: true when the index ranks by key norm (l2norm), so append must
 * compute the norm of each key it stores (others pass 0). */
bool kvd__evict_wants_norm(const kvd_evict_index *ix);
/* evict.c: indexes the token just written into `slot` (position `position`
 * = appended before it; key_norm = L2 norm of its f32 key as received,
 * summed in double, before any quantization); the index must have room
 * (kvd_stream_evict_reserve). */
void kvd__evict_on_append(kvd_stream *s, size_t slot, int64_t position, double key_norm);
/* evict.c: deep copy of the index of a stream of n_tokens (0 or -ENOMEM,
 * *out NULL) and free (NULL is a no-op). */
int kvd__evict_clone(const kvd_evict_index *src, size_t n_tokens, kvd_evict_index **out);
void kvd__evict_free(kvd_evict_index *ix);
/* evict.c: heap bytes the index holds at its capacity (0 for NULL). */
size_t kvd__evict_heap_bytes(const kvd_evict_index *ix);

#endif
