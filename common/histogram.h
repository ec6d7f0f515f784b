/* common/histogram.h — a fixed-bucket latency histogram updated with relaxed
 * atomics from any thread and rendered by server/metrics.c. Buckets are the
 * upper bounds in seconds (Prometheus "le"), cumulative only when rendered. */
#ifndef KVD_COMMON_HISTOGRAM_H
#define KVD_COMMON_HISTOGRAM_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Latency bounds, 50 us .. 10 s: a decode step is tens of microseconds to a
 * few milliseconds; prefill of long prompts reaches seconds. */
#define KVD_HISTOGRAM_BUCKETS 14
extern const double kvd_histogram_bounds[KVD_HISTOGRAM_BUCKETS];
/* Shadow relative output error, 1e-6 .. 2: f16 sits near 1e-4, int4 near
 * 1e-2, heavy eviction can pass 0.5. */
extern const double kvd_shadow_error_bounds[KVD_HISTOGRAM_BUCKETS];

typedef struct kvd_histogram {
    atomic_uint_fast64_t bucket[KVD_HISTOGRAM_BUCKETS + 1]; /* last = +Inf */
    atomic_uint_fast64_t count;
    atomic_uint_fast64_t sum_ns;  /* sum of values x 1e9, so the sum stays an integer */
} kvd_histogram;

/* Counts `value` against the given bucket bounds (non-negative values). */
static inline void kvd_histogram_observe_value(kvd_histogram *h, const double *bounds, double value)
{
    size_t i = 0;
    while (i < KVD_HISTOGRAM_BUCKETS && !(value <= bounds[i]))
        i++; /* NaN or +inf lands in +Inf */
    atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    if (value < 1e9) /* keeps the scaled sum inside 64 bits */
        atomic_fetch_add_explicit(&h->sum_ns, (uint_fast64_t)(value * 1e9), memory_order_relaxed);
}

static inline void kvd_histogram_observe(kvd_histogram *h, double seconds)
{
    kvd_histogram_observe_value(h, kvd_histogram_bounds, seconds);
}

#endif
