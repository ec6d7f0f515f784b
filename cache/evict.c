/* cache/evict.c — the eviction mechanism (DESIGN.md §4): an index per stream
 * that knows which tokens are protected (sinks, the recent ring) and keeps
 * every other token in a binary heap ordered by the policy's key; evicting
 * moves the last slot into the victim's hole, copies a page shared with a
 * fork before writing into it, and gives an emptied tail page back to the
 * pool at once. Which token goes first is the policies' business (policy_*.c). */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cache/evict.h"
#include "cache/internal.h"
#include "cache/policy.h"
#include "cache/quant.h"

/* Slots an index holds at first; it grows geometrically in evict_reserve. */
#define INITIAL_CAP 16

/* ---- the heap: min by (key, position), with slot -> heap index pointers ---- */

static bool before(const kvd__evict_entry *a, const kvd__evict_entry *b)
{
    if (a->key != b->key)
        return a->key < b->key;
    return a->position < b->position;
}

static void heap_set(kvd_evict_index *ix, size_t i, kvd__evict_entry e)
{
    ix->heap[i] = e;
    ix->heap_pos[e.slot] = i;
}

static void sift_up(kvd_evict_index *ix, size_t i)
{
    const kvd__evict_entry e = ix->heap[i];
    while (i > 0) {
        const size_t parent = (i - 1) / 2;
        if (!before(&e, &ix->heap[parent]))
            break;
        heap_set(ix, i, ix->heap[parent]);
        i = parent;
    }
    heap_set(ix, i, e);
}

static void sift_down(kvd_evict_index *ix, size_t i)
{
    const kvd__evict_entry e = ix->heap[i];
    const size_t n = ix->n_heap;
    for (;;) {
        size_t child = 2 * i + 1; /* < n_heap <= cap: 2i + 2 cannot overflow */
        if (child >= n)
            break;
        if (child + 1 < n && before(&ix->heap[child + 1], &ix->heap[child]))
            child++;
        if (!before(&ix->heap[child], &e))
            break;
        heap_set(ix, i, ix->heap[child]);
        i = child;
    }
    heap_set(ix, i, e);
}

void kvd__evict_heapify(kvd_evict_index *ix)
{
    for (size_t i = ix->n_heap / 2; i-- > 0;)
        sift_down(ix, i);
}

/* Recency inserts in increasing position order, so sift_up stops at once:
 * O(1) there, O(log n) for the other policies. */
static void heap_insert(kvd_evict_index *ix, size_t slot, int64_t position)
{
    const kvd__evict_entry e = {
        .key = ix->policy->key(ix, slot),
        .position = position,
        .slot = slot,
    };
    const size_t i = ix->n_heap++;
    heap_set(ix, i, e);
    sift_up(ix, i);
}

static void heap_pop(kvd_evict_index *ix)
{
    ix->heap_pos[ix->heap[0].slot] = KVD__NOT_IN_HEAP;
    if (--ix->n_heap > 0) {
        heap_set(ix, 0, ix->heap[ix->n_heap]);
        sift_down(ix, 0);
    }
}

/* ---- the index: create, grow, copy, free ---------------------------------- */

static const kvd__policy *policy_of(kvd_eviction e)
{
    switch (e) {
    case KVD_EVICT_RECENCY: return &kvd__policy_recency;
    case KVD_EVICT_L2NORM: return &kvd__policy_l2norm;
    case KVD_EVICT_H2O: return &kvd__policy_h2o;
    case KVD_EVICT_NONE:
    case KVD_EVICT_SUBGEN: /* randomized sketch, not a per-token ranking: not here */
        break;
    }
    return NULL;
}

void kvd__evict_free(kvd_evict_index *ix)
{
    if (ix == NULL)
        return;
    free(ix->heap_pos);
    free(ix->score);
    free(ix->heap);
    free(ix->ring);
    free(ix);
}

/* Per-slot arrays of `cap` entries and a ring of ring_cap; NULL on -ENOMEM. */
static kvd_evict_index *index_alloc(const kvd__policy *policy, uint32_t sink, uint32_t recent,
                                    size_t cap)
{
    kvd_evict_index *ix = calloc(1, sizeof *ix);
    if (ix == NULL)
        return NULL;
    ix->policy = policy;
    ix->sink = sink;
    ix->recent = recent;
    ix->cap = cap;
    ix->ring_cap = recent < cap ? recent : cap;
    /* calloc checks count * size for overflow */
    ix->heap_pos = calloc(cap, sizeof *ix->heap_pos);
    ix->heap = calloc(cap, sizeof *ix->heap);
    const bool scores = policy->scores != KVD__SCORE_NONE;
    ix->score = scores ? calloc(cap, sizeof *ix->score) : NULL;
    ix->ring = ix->ring_cap > 0 ? calloc(ix->ring_cap, sizeof *ix->ring) : NULL;
    if (ix->heap_pos == NULL || ix->heap == NULL || (scores && ix->score == NULL) ||
        (ix->ring_cap > 0 && ix->ring == NULL)) {
        kvd__evict_free(ix);
        return NULL;
    }
    return ix;
}

/* Heap an index of `cap` slots and a ring of ring_cap holds: the struct,
 * its per-slot arrays (heap entry, heap_pos and, with scores, a score per
 * slot) and the ring. */
static size_t index_bytes(size_t cap, size_t ring_cap, bool scores)
{
    const size_t per_slot = sizeof(kvd__evict_entry) + sizeof(size_t) + (scores ? sizeof(double) : 0);
    return sizeof(kvd_evict_index) + cap * per_slot + ring_cap * sizeof(size_t);
}

/* At capacity, not use: the arrays grow by doubling and never shrink. */
size_t kvd__evict_heap_bytes(const kvd_evict_index *ix)
{
    return ix == NULL ? 0 : index_bytes(ix->cap, ix->ring_cap, ix->score != NULL);
}

size_t kvd__evict_heap_bytes_new(kvd_eviction policy, uint32_t recent)
{
    const kvd__policy *p = policy_of(policy);
    if (p == NULL)
        return 0; /* no index */
    return index_bytes(INITIAL_CAP, recent < INITIAL_CAP ? recent : INITIAL_CAP,
                       p->scores != KVD__SCORE_NONE); /* as index_alloc on an empty stream */
}

static bool is_protected(const kvd_evict_index *ix, uint64_t appended, int64_t position)
{
    const uint64_t p = (uint64_t)position;
    /* p >= appended - recent, written without the unsigned wrap when
     * appended < recent (then every token is recent). */
    return p < ix->sink || p + ix->recent >= appended;
}

/* l2norm on a populated stream: the norm of each stored key, read back
 * through the reference dequantizer (exact for f32; for a quantized dtype
 * the stored key's norm, since the one as received is gone). 0 or -ENOMEM. */
static int index_norms(kvd_evict_index *ix, const kvd_stream *s)
{
    if (ix->policy->scores != KVD__SCORE_NORM || s->n_tokens == 0)
        return 0;
    const size_t d = s->head_dim;
    float *row = malloc(d * sizeof *row); /* d <= page bytes / 4: no overflow */
    if (row == NULL)
        return -ENOMEM;
    for (size_t j = 0; j < s->n_tokens; j++) {
        kvd__stream_key_f32(s, j, row); /* KIVI: block token or residual row */
        double sq = 0.0;
        for (size_t i = 0; i < d; i++)
            sq += (double)row[i] * row[i];
        ix->score[j] = sqrt(sq);
    }
    free(row);
    return 0;
}

int kvd_stream_evict_init(kvd_stream *s, const kvd_evict_config *cfg)
{
    /* KIVI streams evict too: moving the last token into a victim's hole
     * re-quantizes the hole's key block (kvd__stream_kivi_move_rows says how
     * and what it costs in error). The index numbers slots across the
     * quantized part and the residual; l2norm keys are norms of the f32 keys
     * at append, unaffected by quantization. (Forks of KIVI streams stay
     * -ENOTSUP: cache/stream.c.) */
    if (cfg->policy == KVD_EVICT_NONE) {
        kvd__evict_free(s->evict);
        s->evict = NULL;
        return 0;
    }
    const kvd__policy *policy = policy_of(cfg->policy);
    if (policy == NULL)
        return -EINVAL;
    kvd_evict_index *ix = index_alloc(policy, cfg->sink, cfg->recent,
                                      s->n_tokens > INITIAL_CAP ? s->n_tokens : INITIAL_CAP);
    if (ix == NULL || index_norms(ix, s) != 0) {
        kvd__evict_free(ix);
        return -ENOMEM;
    }

    /* Index the tokens already there. A stream without an index has never
     * evicted, so every one of the newest min(recent, appended) positions is
     * present and lands in its place in the ring. */
    const uint64_t window = cfg->recent < s->appended ? cfg->recent : s->appended;
    const uint64_t first_recent = s->appended - window;
    ix->ring_n = (size_t)window;
    size_t placed = 0;
    for (size_t j = 0; j < s->n_tokens; j++) {
        const kvd_slot_meta *meta = kvd_stream_meta(s, j);
        ix->heap_pos[j] = KVD__NOT_IN_HEAP;
        if ((uint64_t)meta->position >= first_recent) {
            ix->ring[(size_t)((uint64_t)meta->position - first_recent)] = j;
            placed++;
        } else if (!is_protected(ix, s->appended, meta->position)) {
            const size_t i = ix->n_heap++;
            heap_set(ix, i, (kvd__evict_entry){
                .key = policy->key(ix, j), .position = meta->position, .slot = j});
        }
    }
    assert(placed == ix->ring_n && "evict_init on a stream that lost recent tokens");
    (void)placed;
    kvd__evict_heapify(ix);
    kvd__evict_free(s->evict);
    s->evict = ix;
    return 0;
}

int kvd_stream_evict_reserve(kvd_stream *s, size_t extra)
{
    kvd_evict_index *ix = s->evict;
    if (ix == NULL)
        return 0;
    size_t need;
    if (__builtin_add_overflow(s->n_tokens, extra, &need))
        return -ENOMEM;
    if (need <= ix->cap)
        return 0;
    /* Geometric growth: amortized O(1) per appended token. */
    size_t cap = ix->cap;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    const size_t ring_cap = ix->recent < cap ? ix->recent : cap;

    /* Every allocation first; the index changes only once all succeeded. A
     * realloc that succeeded before a later failure leaves an array longer
     * than `cap` says: harmless, and nothing a reader can see. */
    size_t slot_bytes, entry_bytes;
    if (__builtin_mul_overflow(cap, sizeof *ix->heap, &entry_bytes) ||
        __builtin_mul_overflow(cap, sizeof *ix->heap_pos, &slot_bytes))
        return -ENOMEM; /* sizeof *score == sizeof *heap_pos: covered too */
    size_t *ring = NULL;
    if (ring_cap > ix->ring_cap && (ring = malloc(ring_cap * sizeof *ring)) == NULL)
        return -ENOMEM; /* ring_cap <= cap: no overflow */
    size_t *heap_pos = realloc(ix->heap_pos, slot_bytes);
    if (heap_pos == NULL)
        goto fail;
    ix->heap_pos = heap_pos;
    kvd__evict_entry *heap = realloc(ix->heap, entry_bytes);
    if (heap == NULL)
        goto fail;
    ix->heap = heap;
    if (ix->score != NULL) {
        double *score = realloc(ix->score, cap * sizeof *score);
        if (score == NULL)
            goto fail;
        ix->score = score;
    }
    if (ring != NULL) { /* unroll the circular buffer: oldest at 0 */
        for (size_t i = 0; i < ix->ring_n; i++)
            ring[i] = ix->ring[(ix->ring_head + i) % ix->ring_cap];
        free(ix->ring);
        ix->ring = ring;
        ix->ring_head = 0;
        ix->ring_cap = ring_cap;
    }
    ix->cap = cap;
    return 0;

fail:
    free(ring);
    return -ENOMEM;
}

int kvd__evict_clone(const kvd_evict_index *src, size_t n_tokens, kvd_evict_index **out)
{
    *out = NULL;
    kvd_evict_index *ix = index_alloc(src->policy, src->sink, src->recent, src->cap);
    if (ix == NULL)
        return -ENOMEM;
    /* Slots past n_tokens hold nothing worth copying. */
    memcpy(ix->heap_pos, src->heap_pos, n_tokens * sizeof *ix->heap_pos);
    memcpy(ix->heap, src->heap, src->n_heap * sizeof *ix->heap);
    if (src->score != NULL)
        memcpy(ix->score, src->score, n_tokens * sizeof *ix->score);
    if (src->ring_cap > 0)
        memcpy(ix->ring, src->ring, src->ring_cap * sizeof *ix->ring);
    ix->n_heap = src->n_heap;
    ix->ring_head = src->ring_head;
    ix->ring_n = src->ring_n;
    ix->stale = src->stale;
    *out = ix;
    return 0;
}

/* ---- appending and evicting ---------------------------------------------- */

bool kvd__evict_wants_norm(const kvd_evict_index *ix)
{
    return ix->policy->scores == KVD__SCORE_NORM;
}

void kvd__evict_on_append(kvd_stream *s, size_t slot, int64_t position, double key_norm)
{
    kvd_evict_index *ix = s->evict;
    assert(slot < ix->cap && "kvd_stream_evict_reserve before append");
    ix->heap_pos[slot] = KVD__NOT_IN_HEAP;
    if (ix->score != NULL)
        ix->score[slot] = ix->policy->scores == KVD__SCORE_NORM ? key_norm : 0.0;
    if (ix->recent == 0) {
        if ((uint64_t)position >= ix->sink)
            heap_insert(ix, slot, position);
        return;
    }
    /* The ring holds positions position - ring_n .. position - 1. With a
     * full window the oldest of them leaves it now and, unless it is also a
     * sink, becomes a candidate. */
    if (ix->ring_n == ix->recent) {
        const size_t old = ix->ring[ix->ring_head];
        const int64_t old_pos = position - (int64_t)ix->recent;
        ix->ring_head = (ix->ring_head + 1) % ix->ring_cap;
        ix->ring_n--;
        if ((uint64_t)old_pos >= ix->sink)
            heap_insert(ix, old, old_pos);
    }
    assert(ix->ring_n < ix->ring_cap);
    ix->ring[(ix->ring_head + ix->ring_n) % ix->ring_cap] = slot;
    ix->ring_n++;
}

/* Moves the token in slot `from` (the last) to slot `to`: its stored rows
 * byte for byte (any per-token dtype: a quantized row carries its own
 * scales, so it means the same in any slot), metadata and every index
 * reference to it. Page of `to` is private by now. */
static void move_slot(kvd_stream *s, size_t from, size_t to)
{
    kvd_evict_index *ix = s->evict;
    if (kvd__stream_is_kivi(s)) {
        kvd__stream_kivi_move_rows(s, from, to); /* key blocks re-quantized there */
    } else {
        memcpy(kvd__stream_key(s, to), kvd__stream_key(s, from), s->k_row_bytes);
        memcpy(kvd__stream_value(s, to), kvd__stream_value(s, from), s->v_row_bytes);
    }
    const kvd_slot_meta meta = *kvd_stream_meta(s, from);
    *kvd_stream_meta(s, to) = meta;

    const size_t hp = ix->heap_pos[from];
    ix->heap_pos[to] = hp;
    ix->heap_pos[from] = KVD__NOT_IN_HEAP;
    if (hp != KVD__NOT_IN_HEAP)
        ix->heap[hp].slot = to; /* order is by (key, position): unchanged */
    if (ix->score != NULL)
        ix->score[to] = ix->score[from];
    const uint64_t first_recent = s->appended - ix->ring_n;
    if ((uint64_t)meta.position >= first_recent)
        ix->ring[(ix->ring_head + (size_t)((uint64_t)meta.position - first_recent)) %
                 ix->ring_cap] = to;
}

/* The mirror (tensor k2/v2) repeats a move of slot `from` (its last) into
 * `to`, then drops its last slot and an emptied tail page, exactly as the
 * stream it follows did. */
static void mirror_move(kvd_stream *m, kvd_pool *pool, size_t from, size_t to)
{
    const bool kivi = kvd__stream_is_kivi(m);
    if (from != to) {
        if (kivi) {
            kvd__stream_kivi_move_rows(m, from, to); /* same block re-quantization as k1/v1 */
        } else {
            memcpy(kvd__stream_key(m, to), kvd__stream_key(m, from), m->k_row_bytes);
            memcpy(kvd__stream_value(m, to), kvd__stream_value(m, from), m->v_row_bytes);
        }
        *kvd_stream_meta(m, to) = *kvd_stream_meta(m, from);
    }
    if (kivi)
        kvd__stream_kivi_drop_last(m, pool);
    else
        kvd__stream_truncate(m, pool, m->n_tokens - 1);
    m->evicted++;
}

void kvd__stream_scale_key_norms(kvd_stream *s, size_t first, size_t m, const double *factor)
{
    kvd_evict_index *ix = s->evict;
    if (ix == NULL || ix->score == NULL || ix->policy->scores != KVD__SCORE_NORM)
        return;
    for (size_t i = 0; i < m; i++) {
        const size_t slot = first + i;
        ix->score[slot] *= factor[i];
        const size_t hp = ix->heap_pos[slot];
        if (hp == KVD__NOT_IN_HEAP)
            continue; /* protected now; its key is read when it leaves the window */
        kvd__evict_entry e = ix->heap[hp];
        e.key = ix->policy->key(ix, slot);
        heap_set(ix, hp, e);
        sift_up(ix, hp);
        sift_down(ix, ix->heap_pos[slot]);
    }
}

size_t kvd_stream_evict_pages_bound(const kvd_stream *s, size_t count)
{
    /* One hole per eviction, each in one page, and each shared page is copied
     * at most once (its flag is cleared): min(shared pages, evictions). */
    return s->n_shared < count ? s->n_shared : count;
}

size_t kvd_stream_evict(kvd_stream *s, kvd_pool *pool, size_t target, void *const *spare,
                        size_t n_spare, size_t *spare_used)
{
    kvd_evict_index *ix = s->evict;
    if (ix == NULL || s->n_tokens <= target || ix->n_heap == 0)
        return 0;
    if (ix->policy->prepare != NULL)
        ix->policy->prepare(ix);

    const size_t spp = s->slots_per_page;
    size_t evicted = 0, used = 0;
    while (s->n_tokens > target && ix->n_heap > 0) {
        const size_t victim = ix->heap[0].slot, last = s->n_tokens - 1;
        if (victim != last) {
            /* The hole is written: make its page private first. */
            const size_t pg = victim / spp;
            if (s->n_shared > 0 && s->shared[pg]) {
                const int r = kvd__stream_unshare(s, pool, pg, used < n_spare ? spare[used] : NULL);
                if (r < 0)
                    break; /* out of spare pages: fewer than asked, nothing torn */
                used += (size_t)r;
            }
        }
        heap_pop(ix);
        if (victim != last)
            move_slot(s, last, victim);
        if (s->mirror)
            mirror_move(s->mirror, pool, last, victim);
        evicted++;
        if (kvd__stream_is_kivi(s)) {
            /* Residual or quantized tail pages that came free go back at
             * once (KIVI streams are never shared: forks are refused). */
            kvd__stream_kivi_drop_last(s, pool);
            continue;
        }
        s->n_tokens--;
        /* Slot `last` was the first of its page: that page is empty now and
         * goes back at once, so n_pages stays ceil(n_tokens / spp). */
        if (s->n_tokens % spp == 0 && s->n_pages > s->n_tokens / spp) {
            const size_t pg = --s->n_pages;
            kvd_pool_release(pool, &s->pages[pg], 1);
            if (s->shared[pg]) {
                s->shared[pg] = 0;
                s->n_shared--;
            }
        }
    }
    s->evicted += evicted;
    *spare_used += used;
    return evicted;
}

size_t kvd_stream_evictable(const kvd_stream *s)
{
    return s->evict != NULL ? s->evict->n_heap : 0;
}
