/* server/metrics.h — the Prometheus registry: HTTP request counters
 * (answered and received) and latency histograms that the server observes,
 * plus rendering of everything (API counters, pool gauges, process_*
 * metrics) in text format 0.0.4. */
#ifndef KVD_SERVER_METRICS_H
#define KVD_SERVER_METRICS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct kvd_api kvd_api; /* api/api.h */

/* kvd__ names are for the server's own files (access log, router). */

/* Thread-safe; cheap (atomics). route_label from kvd_route_label. */
void kvd__metrics_observe_http(const char *route_label, int status, double seconds);

/* A request was read in full and routed (before it is answered): the sign a
 * client (or a test) can wait for that the server has the request. */
void kvd__metrics_observe_received(const char *route_label);

/* Renders the exposition text; malloc'd, caller frees; NULL on failure.
 * ready is what /readyz would answer now (true = 200), exported as kvd_ready. */
char *kvd__metrics_render(const kvd_api *api, bool ready, size_t *len);

/* Records the process start time (call once from main). */
void kvd_metrics_init(void);

#endif
