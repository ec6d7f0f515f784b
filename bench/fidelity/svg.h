/* bench/fidelity/svg.h — a small scatter-and-line plot written as SVG by
 * hand: log-scaled x and y axes with decade ticks, one coloured series per
 * family (points joined in x order), the Pareto front over every point (a
 * dashed line: the points no other point beats on both axes), a legend,
 * axis labels and a title. */
#ifndef KVD_BENCH_FIDELITY_SVG_H
#define KVD_BENCH_FIDELITY_SVG_H

#include <stddef.h>
#include <stdio.h>

#define FID_PLOT_MAX_POINTS 16

typedef struct fid_series {
    const char *name;
    size_t n;
    double x[FID_PLOT_MAX_POINTS], y[FID_PLOT_MAX_POINTS];
    const char *label[FID_PLOT_MAX_POINTS]; /* per point (NULL: none) */
    int markers_only; /* no line through the points (a family that is not a sweep) */
} fid_series;

typedef struct fid_plot {
    const char *title, *xlabel, *ylabel, *note;
    const fid_series *series;
    size_t n_series;
} fid_plot;

/* Writes the plot to f (points with x or y <= 0 are left out). Returns 0, or
 * -1 when nothing is plottable or the write failed. */
int fid_svg_write(FILE *f, const fid_plot *plot);

#endif
