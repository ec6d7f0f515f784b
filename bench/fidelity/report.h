/* bench/fidelity/report.h — the fidelity results as a markdown table and as
 * the plot of error against bytes (one series per family). */
#ifndef KVD_BENCH_FIDELITY_REPORT_H
#define KVD_BENCH_FIDELITY_REPORT_H

#include <stddef.h>
#include <stdio.h>

#include "bench/fidelity/harness.h"

/* The heading lines (model, context, page size, the measured shape of the
 * exact run when prof is given) and one row per result. */
void fid_report_markdown(FILE *f, const fid_setup *setup, const fid_profile *prof, const fid_result *res,
                         size_t n);

/* Mean KL against KV payload bytes per context token, log-log, one series
 * per family (the exact row, KL 0, is left out: a log axis has no 0).
 * Returns 0 or -1. */
int fid_report_svg(FILE *f, const fid_setup *setup, const fid_result *res, size_t n);

#endif
