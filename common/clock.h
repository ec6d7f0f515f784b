/* common/clock.h — the two clocks kvd reads, in seconds as double: wall time
 * (unix epoch; what created_at and TTLs are stated in) and a monotonic clock
 * (durations, never set back). Header-only; any module may include it. */
#ifndef KVD_COMMON_CLOCK_H
#define KVD_COMMON_CLOCK_H

#include <time.h>

/* Seconds since the unix epoch (CLOCK_REALTIME). */
static inline double kvd_clock_unix(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Seconds on CLOCK_MONOTONIC: only differences mean anything. */
static inline double kvd_clock_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A clock a caller can replace (tests inject a fake one): returns seconds
 * on the unix epoch; ctx is the caller's. */
typedef double (*kvd_clock_fn)(void *ctx);

#endif
