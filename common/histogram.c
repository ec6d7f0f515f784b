/* common/histogram.c — the shared bucket bounds of kvd's latency histograms. */
#include "common/histogram.h"

const double kvd_histogram_bounds[KVD_HISTOGRAM_BUCKETS] = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0,
};

const double kvd_shadow_error_bounds[KVD_HISTOGRAM_BUCKETS] = {
    1e-6, 1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01,
    0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
};
