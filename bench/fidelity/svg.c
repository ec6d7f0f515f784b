/* bench/fidelity/svg.c — writes a fid_plot as a standalone SVG: a frame,
 * decade grid lines on both log axes, one polyline and circle markers per
 * series in a fixed palette, small per-point labels, and a legend to the
 * right. No library: the format needs only a few element kinds. */
#include "bench/fidelity/svg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define W 860
#define H 540
#define LEFT 80
#define RIGHT 210
#define TOP 50
#define BOTTOM 60

static const char *const palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                      "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};

static void text_escaped(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        if (*s == '<')
            fputs("&lt;", f);
        else if (*s == '>')
            fputs("&gt;", f);
        else if (*s == '&')
            fputs("&amp;", f);
        else
            fputc(*s, f);
    }
}

typedef struct axis {
    double lo, hi; /* decades: log10 range */
    double p0, p1; /* pixels */
} axis;

static double place(const axis *a, double v)
{
    return a->p0 + (log10(v) - a->lo) / (a->hi - a->lo) * (a->p1 - a->p0);
}

static int usable(double x, double y)
{
    return x > 0 && y > 0 && isfinite(x) && isfinite(y);
}

typedef struct order {
    double x;
    size_t i;
} order;

static int by_x(const void *a, const void *b)
{
    const double x = ((const order *)a)->x, y = ((const order *)b)->x;
    return (x > y) - (x < y);
}

int fid_svg_write(FILE *f, const fid_plot *pl)
{
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    for (size_t s = 0; s < pl->n_series; s++)
        for (size_t i = 0; i < pl->series[s].n; i++) {
            const double x = pl->series[s].x[i], y = pl->series[s].y[i];
            if (!usable(x, y))
                continue;
            xmin = fmin(xmin, x), xmax = fmax(xmax, x);
            ymin = fmin(ymin, y), ymax = fmax(ymax, y);
        }
    if (!(xmin <= xmax))
        return -1;
    axis ax = {floor(log10(xmin)), ceil(log10(xmax)), LEFT, W - RIGHT};
    axis ay = {floor(log10(ymin)), ceil(log10(ymax)), H - BOTTOM, TOP};
    if (ax.hi <= ax.lo)
        ax.hi = ax.lo + 1;
    if (ay.hi <= ay.lo)
        ay.hi = ay.lo + 1;

    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n", W, H, W, H);
    fprintf(f, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H);
    fprintf(f, "<text x=\"%d\" y=\"24\" font-size=\"15\" font-weight=\"bold\">", LEFT);
    text_escaped(f, pl->title);
    fprintf(f, "</text>\n");
    /* Grid: a line per decade (solid) and at 2 and 5 (dotted), labels at decades. */
    for (double d = ax.lo; d <= ax.hi + 1e-9; d++)
        for (int m = 1; m <= 5; m += (m == 1 ? 1 : 3)) {
            const double v = (double)m * pow(10.0, d);
            if (log10(v) > ax.hi + 1e-9)
                break;
            const double px = place(&ax, v);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"%s/>\n", px, TOP, px,
                    H - BOTTOM, m == 1 ? "" : " stroke-dasharray=\"2,3\"");
            if (m == 1)
                fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>\n", px, H - BOTTOM + 16, v);
        }
    for (double d = ay.lo; d <= ay.hi + 1e-9; d++)
        for (int m = 1; m <= 5; m += (m == 1 ? 1 : 3)) {
            const double v = (double)m * pow(10.0, d);
            if (log10(v) > ay.hi + 1e-9)
                break;
            const double py = place(&ay, v);
            fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"%s/>\n", LEFT, py,
                    W - RIGHT, py, m == 1 ? "" : " stroke-dasharray=\"2,3\"");
            if (m == 1)
                fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", LEFT - 6, py + 4, v);
        }
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"black\"/>\n", LEFT, TOP,
            W - RIGHT - LEFT, H - BOTTOM - TOP);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">", (LEFT + W - RIGHT) / 2, H - 18);
    text_escaped(f, pl->xlabel);
    fprintf(f, "</text>\n<text x=\"18\" y=\"%d\" text-anchor=\"middle\" transform=\"rotate(-90 18 %d)\">",
            (TOP + H - BOTTOM) / 2, (TOP + H - BOTTOM) / 2);
    text_escaped(f, pl->ylabel);
    fprintf(f, "</text>\n");

    for (size_t s = 0; s < pl->n_series; s++) {
        const fid_series *se = &pl->series[s];
        const char *col = palette[s % (sizeof palette / sizeof *palette)];
        order o[FID_PLOT_MAX_POINTS];
        size_t k = 0;
        for (size_t i = 0; i < se->n && i < FID_PLOT_MAX_POINTS; i++)
            if (usable(se->x[i], se->y[i]))
                o[k++] = (order){se->x[i], i};
        qsort(o, k, sizeof *o, by_x);
        fprintf(f, "<g class=\"series\" data-name=\"");
        text_escaped(f, se->name);
        fprintf(f, "\">\n");
        if (k > 1 && !se->markers_only) {
            fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", col);
            for (size_t j = 0; j < k; j++)
                fprintf(f, "%s%.1f,%.1f", j ? " " : "", place(&ax, se->x[o[j].i]), place(&ay, se->y[o[j].i]));
            fprintf(f, "\"/>\n");
        }
        for (size_t j = 0; j < k; j++) {
            const double px = place(&ax, se->x[o[j].i]), py = place(&ay, se->y[o[j].i]);
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"/>\n", px, py, col);
            if (se->label[o[j].i]) {
                fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" fill=\"%s\">", px + 6, py - 5, col);
                text_escaped(f, se->label[o[j].i]);
                fprintf(f, "</text>\n");
            }
        }
        fprintf(f, "</g>\n");
        const int ly = TOP + 10 + 20 * (int)s;
        fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"1.5\"/>"
                   "<circle cx=\"%d\" cy=\"%d\" r=\"4\" fill=\"%s\"/>\n",
                W - RIGHT + 14, ly, W - RIGHT + 40, ly, col, W - RIGHT + 27, ly, col);
        fprintf(f, "<text x=\"%d\" y=\"%d\">", W - RIGHT + 46, ly + 4);
        text_escaped(f, se->name);
        fprintf(f, "</text>\n");
    }
    /* The Pareto front: in x order, each point lower than every point left of it. */
    order all[64];
    size_t na = 0;
    for (size_t s = 0; s < pl->n_series; s++)
        for (size_t i = 0; i < pl->series[s].n && na < 64; i++)
            if (usable(pl->series[s].x[i], pl->series[s].y[i]))
                all[na++] = (order){pl->series[s].x[i], s * FID_PLOT_MAX_POINTS + i};
    qsort(all, na, sizeof *all, by_x);
    fprintf(f, "<polyline class=\"pareto\" fill=\"none\" stroke=\"#444\" stroke-width=\"2\" "
               "stroke-dasharray=\"6,4\" opacity=\"0.6\" points=\"");
    double best = INFINITY;
    int first = 1;
    for (size_t j = 0; j < na; j++) {
        const fid_series *se = &pl->series[all[j].i / FID_PLOT_MAX_POINTS];
        const double y = se->y[all[j].i % FID_PLOT_MAX_POINTS];
        if (y >= best)
            continue;
        best = y;
        fprintf(f, "%s%.1f,%.1f", first ? "" : " ", place(&ax, all[j].x), place(&ay, y));
        first = 0;
    }
    fprintf(f, "\"/>\n");
    const int ly = TOP + 10 + 20 * (int)pl->n_series;
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#444\" stroke-width=\"2\" "
               "stroke-dasharray=\"6,4\" opacity=\"0.6\"/><text x=\"%d\" y=\"%d\">Pareto front</text>\n",
            W - RIGHT + 14, ly, W - RIGHT + 40, ly, W - RIGHT + 46, ly + 4);
    if (pl->note) {
        fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"10\" fill=\"#555\">", LEFT, H - 4);
        text_escaped(f, pl->note);
        fprintf(f, "</text>\n");
    }
    fprintf(f, "</svg>\n");
    return ferror(f) ? -1 : 0;
}
