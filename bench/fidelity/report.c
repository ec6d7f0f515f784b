/* bench/fidelity/report.c — writes fid_result rows: the markdown table (one
 * row per configuration, per-layer errors as "L0/L1/..." lists) and the
 * Pareto plot (svg.c) with a series per family in table order. */
#include "bench/fidelity/report.h"

#include <string.h>

#include "bench/fidelity/svg.h"

#define MAX_SERIES 12

void fid_report_markdown(FILE *f, const fid_setup *s, const fid_profile *prof, const fid_result *res, size_t n)
{
    const fid_model_params *p = &s->model;
    fprintf(f, "Model: %u layers, d_model %u, %u query / %u kv heads, head_dim %u, ffn %u, vocab %u, "
               "key outliers x%g, sink bonus %g, seed %llu. Context %zu tokens (prompt %zu, %zu sampled), "
               "pages %zu B. Errors over the %zu generated positions, teacher-forced.\n\n",
            p->layers, p->d_model, p->heads, p->kv_heads, p->head_dim, p->ffn, p->vocab, (double)p->outlier_scale,
            (double)p->sink_bonus, (unsigned long long)p->seed, s->context, s->prompt, s->context - s->prompt,
            s->page_bytes, s->context - s->prompt);
    if (prof)
        fprintf(f, "Exact run, measured: next-token entropy %.2f nats (argmax p %.2f); keys' outlier channels "
                   "%.1fx the others' mean |k|; weight on token 0 %.0f%% (local heads) / %.0f%% (content heads); "
                   "on the last 16 tokens %.0f%% / %.0f%%; mean distance of the rest %.0f / %.0f tokens.\n\n",
                prof->entropy, prof->top1_prob, prof->outlier_ratio, 100.0 * prof->sink_mass[0],
                100.0 * prof->sink_mass[1], 100.0 * prof->recent_mass[0], 100.0 * prof->recent_mass[1],
                prof->mean_distance[0], prof->mean_distance[1]);
    fprintf(f, "| config | rotate | budget | KV B/ctx token | stats B/token | bits/coord | attn err mean "
               "(per layer) | attn err max (per layer) | KL mean (nats) | top-1 |\n");
    fprintf(f, "|---|---|---:|---:|---:|---:|---|---|---:|---:|\n");
    for (size_t i = 0; i < n; i++) {
        const fid_result *r = &res[i];
        fprintf(f, "| %s | %s | ", r->name, r->cfg->rotate);
        if (r->budget)
            fprintf(f, "%u", r->budget);
        else
            fprintf(f, "all");
        fprintf(f, " | %.0f | %.1f | %.2f | ", r->kv_bytes_per_token, r->stats_bytes_per_token,
                r->bits_per_coordinate);
        for (uint32_t l = 0; l < p->layers; l++)
            fprintf(f, "%s%.2g", l ? "/" : "", r->err_mean[l]);
        fprintf(f, " | ");
        for (uint32_t l = 0; l < p->layers; l++)
            fprintf(f, "%s%.2g", l ? "/" : "", r->err_max[l]);
        fprintf(f, " | %.3g | %.1f%% |\n", r->kl_mean, 100.0 * r->top1);
    }
}

int fid_report_svg(FILE *f, const fid_setup *s, const fid_result *res, size_t n)
{
    fid_series series[MAX_SERIES];
    size_t ns = 0;
    memset(series, 0, sizeof series);
    for (size_t i = 0; i < n; i++) {
        const fid_result *r = &res[i];
        if (r->kl_mean <= 0.0)
            continue;
        size_t k = 0;
        while (k < ns && strcmp(series[k].name, r->cfg->family) != 0)
            k++;
        if (k == ns) {
            if (ns == MAX_SERIES)
                continue;
            series[ns].markers_only = r->cfg->eviction == KVD_EVICT_NONE;
            series[ns++].name = r->cfg->family;
        }
        fid_series *se = &series[k];
        if (se->n == FID_PLOT_MAX_POINTS)
            continue;
        se->x[se->n] = r->kv_bytes_per_token;
        se->y[se->n] = r->kl_mean;
        se->label[se->n] = r->label;
        se->n++;
    }
    char title[160], note[200];
    snprintf(title, sizeof title, "KV cache fidelity: %u-layer decoder, head_dim %u, %zu tokens",
             s->model.layers, s->model.head_dim, s->context);
    snprintf(note, sizeof note, "teacher-forced against exact f32 attention (KL 0, not shown); "
                                "bytes: cache payload at the end of the run / context tokens");
    const fid_plot pl = {.title = title,
                         .xlabel = "KV payload bytes per context token (all layers and kv heads, log)",
                         .ylabel = "mean KL(exact || config), nats per token (log)",
                         .note = note,
                         .series = series,
                         .n_series = ns};
    return fid_svg_write(f, &pl);
}
