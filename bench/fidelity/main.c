/* bench/fidelity/main.c — bench_fidelity: the fidelity table and plot (README
 * "Fidelity"): runs every row of fid_default_configs, prints the markdown
 * table (also to --table FILE) and writes the plot to --svg FILE. Flags are in
 * usage() and docs/fidelity.md (the X flags override model.h's shape). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "attention/attention.h"
#include "bench/bench.h"
#include "bench/fidelity/harness.h"
#include "bench/fidelity/report.h"

static int usage(void)
{
    fprintf(stderr, "usage: bench_fidelity [--tiny] [--layers N] [--d-model N] [--head-dim N] [--vocab N]\n"
                    "       [--context N] [--prompt N] [--only SUBSTRING] [--table FILE] [--svg FILE]\n"
                    "       [--outlier X] [--sink X] [--local X] [--content X] [--logit-scale X]\n");
    return 2;
}

int main(int argc, char **argv)
{
    fid_setup s = fid_default_setup(0);
    unsigned layers = s.model.layers, d_model = s.model.d_model, head_dim = s.model.head_dim, vocab = s.model.vocab;
    size_t context = s.context, prompt = s.prompt;
    const char *table = NULL, *svg = NULL, *only = NULL;
    double outlier = 0, sink = 0, local = 0, logit = 0, corr = 0; /* 0: the model's default */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--tiny") == 0) {
            s = fid_default_setup(1);
            layers = s.model.layers, d_model = s.model.d_model, head_dim = s.model.head_dim;
            vocab = s.model.vocab, context = s.context, prompt = s.prompt;
            continue;
        }
        if (!v)
            return usage();
        if (strcmp(a, "--layers") == 0)
            layers = (unsigned)strtoul(v, NULL, 10);
        else if (strcmp(a, "--d-model") == 0)
            d_model = (unsigned)strtoul(v, NULL, 10);
        else if (strcmp(a, "--head-dim") == 0)
            head_dim = (unsigned)strtoul(v, NULL, 10);
        else if (strcmp(a, "--vocab") == 0)
            vocab = (unsigned)strtoul(v, NULL, 10);
        else if (strcmp(a, "--context") == 0)
            context = strtoul(v, NULL, 10);
        else if (strcmp(a, "--prompt") == 0)
            prompt = strtoul(v, NULL, 10);
        else if (strcmp(a, "--outlier") == 0)
            outlier = strtod(v, NULL);
        else if (strcmp(a, "--sink") == 0)
            sink = strtod(v, NULL);
        else if (strcmp(a, "--local") == 0)
            local = strtod(v, NULL);
        else if (strcmp(a, "--content") == 0)
            corr = strtod(v, NULL);
        else if (strcmp(a, "--logit-scale") == 0)
            logit = strtod(v, NULL);
        else if (strcmp(a, "--only") == 0)
            only = v;
        else if (strcmp(a, "--table") == 0)
            table = v;
        else if (strcmp(a, "--svg") == 0)
            svg = v;
        else
            return usage();
        i++;
    }
    openblas_set_num_threads(1);
    s.model = fid_model_default_params(layers, d_model, head_dim, vocab);
    s.prompt = prompt;
    s.context = context;
    if (outlier > 0)
        s.model.outlier_scale = (float)outlier;
    if (sink > 0)
        s.model.sink_bonus = (float)sink;
    if (local > 0)
        s.model.local_bonus = (float)local;
    if (corr > 0)
        s.model.content_corr = (float)corr;
    if (logit > 0)
        s.model.logit_scale = (float)logit;
    char cpu[256];
    bench_cpu_model(cpu, sizeof cpu);
    fprintf(stderr, "fidelity: %s, attention kernels %s; sampling %zu tokens exactly...\n", cpu,
            kvd_attention_kernels_get()->name, context - prompt);
    fid_harness *h;
    if (fid_harness_create(&s, &h) != 0)
        return 1;
    size_t n_cfg;
    const fid_config *cfg = fid_default_configs(&n_cfg);
    fid_result *res = calloc(n_cfg, sizeof *res);
    size_t n = 0;
    double total = 0.0;
    for (size_t i = 0; res && i < n_cfg; i++) {
        char name[48];
        fid_config_name(&cfg[i], name, sizeof name);
        if (only && i > 0 && !strstr(name, only))
            continue;
        if (fid_harness_run(h, &cfg[i], &res[n]) != 0) {
            fid_harness_destroy(h);
            free(res);
            return 1;
        }
        total += res[n].seconds;
        fprintf(stderr, "  %-22s %6.2f s  KL %.3g  top-1 %.1f%%\n", res[n].name, res[n].seconds, res[n].kl_mean,
                100.0 * res[n].top1);
        n++;
    }
    printf("kvd fidelity: %s, attention kernels %s, OpenBLAS 1 thread; %zu configurations in %.1f s\n\n", cpu,
           kvd_attention_kernels_get()->name, n, total);
    fid_report_markdown(stdout, &s, fid_harness_profile(h), res, n);
    int rc = 0;
    if (table) {
        FILE *f = fopen(table, "w");
        if (!f) {
            perror(table);
            rc = 1;
        } else {
            fid_report_markdown(f, &s, fid_harness_profile(h), res, n);
            rc |= fclose(f) != 0;
        }
    }
    if (svg) {
        FILE *f = fopen(svg, "w");
        if (!f || fid_report_svg(f, &s, res, n) != 0) {
            fprintf(stderr, "fidelity: could not write %s\n", svg);
            rc = 1;
        }
        if (f)
            rc |= fclose(f) != 0;
    }
    fid_harness_destroy(h);
    free(res);
    return rc;
}
