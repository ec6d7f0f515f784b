/* tests/bench/test_fidelity.c — the fidelity harness (bench/fidelity) in its
 * tiny setup: the exact configuration reproduces its own reference exactly,
 * f16 beats int4 on every measure, an evicting row holds its budget, the
 * model has the shape docs/fidelity.md claims, and the markdown table and the
 * SVG it writes are well formed (parsed back, row by row, point by point). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <check.h>

#include "bench/fidelity/harness.h"
#include "bench/fidelity/report.h"
#include "tests/support/check_main.h"

static fid_harness *tiny(void)
{
    openblas_set_num_threads(1); /* two cores, shared: ctest -j2 runs another test beside this one */
    const fid_setup s = fid_default_setup(1);
    fid_harness *h = NULL;
    ck_assert_int_eq(fid_harness_create(&s, &h), 0);
    return h;
}

/* The row of the default table with this name. */
static const fid_config *row(const char *name)
{
    size_t n;
    const fid_config *c = fid_default_configs(&n);
    for (size_t i = 0; i < n; i++) {
        char buf[48];
        fid_config_name(&c[i], buf, sizeof buf);
        if (strcmp(buf, name) == 0)
            return &c[i];
    }
    ck_abort_msg("no row %s", name);
    return NULL;
}

START_TEST(exact_config_reproduces_reference)
{
    fid_harness *h = tiny();
    const fid_model_params *p = &fid_harness_setup(h)->model;
    fid_result r;
    ck_assert_int_eq(fid_harness_run(h, row("f32"), &r), 0);
    ck_assert(r.kl_mean == 0.0);
    ck_assert(r.top1 == 1.0);
    for (uint32_t l = 0; l < p->layers; l++)
        ck_assert_msg(r.err_mean[l] == 0.0 && r.err_max[l] == 0.0, "layer %u: %g", l, r.err_max[l]);
    ck_assert(r.bits_per_coordinate == 32.0);
    /* f32: every token of every stream, k and v, 4 bytes a number. */
    ck_assert_double_eq(r.kv_bytes_per_token, (double)p->layers * p->kv_heads * p->head_dim * 2 * 4);
    /* The sampled sequence starts with the sink and stays in the vocabulary. */
    const uint32_t *tok = fid_harness_tokens(h);
    ck_assert_uint_eq(tok[0], 0);
    for (size_t t = 0; t < fid_harness_setup(h)->context; t++)
        ck_assert_uint_lt(tok[t], p->vocab);
    fid_harness_destroy(h);
}
END_TEST

/* Rotation (cache.rotate "hadamard") spreads the model's outlier key channels
 * over all channels, so per-token int4 scales stop being set by two of them:
 * the attention output of every layer and the next-token KL both improve. */
START_TEST(rotation_helps_int4_on_outlier_keys)
{
    fid_harness *h = tiny();
    const uint32_t layers = fid_harness_setup(h)->model.layers;
    fid_result plain, rotated;
    ck_assert_int_eq(fid_harness_run(h, row("int4"), &plain), 0);
    ck_assert_int_eq(fid_harness_run(h, row("int4 +hadamard"), &rotated), 0);
    ck_assert(rotated.bits_per_coordinate == plain.bits_per_coordinate);
    for (uint32_t l = 0; l < layers; l++)
        ck_assert_msg(rotated.err_mean[l] < plain.err_mean[l] / 1.3, "layer %u: rotated %g plain %g", l,
                      rotated.err_mean[l], plain.err_mean[l]);
    ck_assert_msg(rotated.kl_mean < plain.kl_mean, "KL rotated %g plain %g", rotated.kl_mean, plain.kl_mean);
    fid_harness_destroy(h);
}
END_TEST

START_TEST(f16_closer_than_int4)
{
    fid_harness *h = tiny();
    const uint32_t layers = fid_harness_setup(h)->model.layers;
    fid_result f16, int8, int4;
    ck_assert_int_eq(fid_harness_run(h, row("f16"), &f16), 0);
    ck_assert_int_eq(fid_harness_run(h, row("int8"), &int8), 0);
    ck_assert_int_eq(fid_harness_run(h, row("int4"), &int4), 0);
    ck_assert(f16.kl_mean > 0.0 && f16.kl_mean < int8.kl_mean && int8.kl_mean < int4.kl_mean);
    ck_assert(f16.top1 >= int4.top1 && f16.top1 >= 0.95);
    for (uint32_t l = 0; l < layers; l++) {
        ck_assert(f16.err_mean[l] > 0.0 && f16.err_mean[l] < 1e-2);
        ck_assert_msg(f16.err_mean[l] < int4.err_mean[l] / 10, "layer %u: f16 %g int4 %g", l, f16.err_mean[l],
                      int4.err_mean[l]);
        ck_assert(f16.err_max[l] >= f16.err_mean[l]);
    }
    /* Bits per number: f16 2 bytes; int8 a byte plus an f32 scale per 64;
     * int4 half a byte plus an f32 scale per 32-channel group. */
    ck_assert_double_eq(f16.bits_per_coordinate, 16.0);
    ck_assert_double_eq(int8.bits_per_coordinate, 8.5);
    ck_assert_double_eq(int4.bits_per_coordinate, 5.0);
    ck_assert(int4.kv_bytes_per_token < int8.kv_bytes_per_token && int8.kv_bytes_per_token < f16.kv_bytes_per_token);
    fid_harness_destroy(h);
}
END_TEST

START_TEST(eviction_holds_its_budget)
{
    fid_harness *h = tiny();
    const fid_setup *s = fid_harness_setup(h);
    fid_result f32, rec;
    ck_assert_int_eq(fid_harness_run(h, row("f32"), &f32), 0);
    ck_assert_int_eq(fid_harness_run(h, row("recency 1/8"), &rec), 0);
    ck_assert_uint_eq(rec.budget, s->context / 8);
    /* At the end every stream holds exactly the budget. */
    ck_assert_double_eq_tol(rec.kv_bytes_per_token, f32.kv_bytes_per_token * rec.budget / (double)s->context, 1e-9);
    ck_assert(rec.kl_mean > 0.0 && rec.top1 < 1.0);
    fid_harness_destroy(h);
}
END_TEST

/* head_dim 128 (2 query heads sharing 1 kv head): the same guarantees. */
START_TEST(head_dim_128)
{
    openblas_set_num_threads(1);
    fid_setup s = fid_default_setup(1);
    s.model = fid_model_default_params(2, 256, 128, 512);
    ck_assert_uint_eq(s.model.heads, 2);
    fid_harness *h = NULL;
    ck_assert_int_eq(fid_harness_create(&s, &h), 0);
    fid_result f32, int4;
    ck_assert_int_eq(fid_harness_run(h, row("f32"), &f32), 0);
    ck_assert_int_eq(fid_harness_run(h, row("int4"), &int4), 0);
    ck_assert(f32.kl_mean == 0.0 && f32.top1 == 1.0);
    ck_assert_double_eq(f32.kv_bytes_per_token, 2.0 * 1 * 128 * 2 * 4);
    ck_assert_double_eq(int4.bits_per_coordinate, 5.0);
    ck_assert(int4.kl_mean > 0.0 && int4.err_mean[0] > 0.0);
    fid_harness_destroy(h);
}
END_TEST

/* docs/fidelity.md's claims about the model, measured on the exact run. */
START_TEST(model_has_its_shape)
{
    fid_harness *h = tiny();
    const fid_profile *p = fid_harness_profile(h);
    ck_assert_msg(p->outlier_ratio > 10.0 && p->outlier_ratio < 30.0, "outlier ratio %g", p->outlier_ratio);
    ck_assert_msg(p->sink_mass[1] > 0.3, "content heads' weight on token 0: %g", p->sink_mass[1]);
    ck_assert_msg(p->recent_mass[0] > 2 * p->recent_mass[1], "recent mass local %g content %g", p->recent_mass[0],
                  p->recent_mass[1]);
    ck_assert_msg(p->mean_distance[1] > p->mean_distance[0], "distance local %g content %g", p->mean_distance[0],
                  p->mean_distance[1]);
    ck_assert(p->entropy > 0.5 && p->top1_prob > 0.2 && p->top1_prob < 0.9);
    fid_harness_destroy(h);
}
END_TEST

/* Splits a markdown table row into cells (trimmed); returns the count. */
static size_t cells(char *line, char **out, size_t max)
{
    size_t n = 0;
    if (line[0] != '|')
        return 0;
    char *c = line + 1;
    for (char *bar; (bar = strchr(c, '|')) != NULL; c = bar + 1) {
        *bar = 0;
        while (*c == ' ')
            c++;
        for (char *e = bar - 1; e >= c && *e == ' '; e--)
            *e = 0;
        if (n < max)
            out[n] = c;
        n++;
    }
    return n;
}

static int is_number(const char *s)
{
    char *end;
    strtod(s, &end);
    return end != s && *end == 0;
}

static size_t count(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* Every element closed, in order (a tag stack over the document); text has
 * no stray '<'. Returns the number of elements, or -1 with *why set. */
static long xml_balanced(const char *doc, const char **why)
{
    const char *stack[64];
    size_t len[64], depth = 0;
    long elements = 0;
    for (const char *p = strchr(doc, '<'); p; p = strchr(p, '<')) {
        const char *end = strchr(p, '>');
        if (!end)
            return *why = "unterminated tag", -1;
        if (p[1] == '?') {
            p = end + 1;
            continue;
        }
        if (p[1] == '/') {
            const size_t n = strcspn(p + 2, " >");
            if (depth == 0 || len[depth - 1] != n || strncmp(stack[depth - 1], p + 2, n) != 0)
                return *why = "closing tag does not match", -1;
            depth--;
        } else {
            const size_t n = strcspn(p + 1, " />");
            if (n == 0)
                return *why = "empty tag name", -1;
            elements++;
            if (end[-1] != '/') {
                if (depth == 64)
                    return *why = "too deep", -1;
                stack[depth] = p + 1, len[depth] = n, depth++;
            }
        }
        p = end + 1;
    }
    if (depth != 0)
        return *why = "unclosed element", -1;
    return elements;
}

START_TEST(table_and_svg_are_well_formed)
{
    fid_harness *h = tiny();
    const fid_setup *s = fid_harness_setup(h);
    size_t n;
    const fid_config *cfg = fid_default_configs(&n);
    fid_result *res = calloc(n, sizeof *res);
    for (size_t i = 0; i < n; i++)
        ck_assert_int_eq(fid_harness_run(h, &cfg[i], &res[i]), 0);

    char *md = NULL;
    size_t md_len = 0;
    FILE *f = open_memstream(&md, &md_len);
    fid_report_markdown(f, s, fid_harness_profile(h), res, n);
    fclose(f);
    /* Header, separator, then exactly one row per result, in order. */
    char *save, *line = strtok_r(md, "\n", &save);
    while (line && strncmp(line, "| config |", 10) != 0)
        line = strtok_r(NULL, "\n", &save);
    ck_assert_ptr_nonnull(line);
    char *c[16];
    const size_t width = cells(line, c, 16);
    ck_assert_uint_eq(width, 10);
    line = strtok_r(NULL, "\n", &save);
    ck_assert_uint_eq(cells(line, c, 16), width);
    for (size_t i = 0; i < width; i++)
        ck_assert_msg(strspn(c[i], "-:") == strlen(c[i]) && strlen(c[i]) >= 3, "separator cell %s", c[i]);
    size_t rows = 0;
    while ((line = strtok_r(NULL, "\n", &save)) != NULL) {
        ck_assert_uint_lt(rows, n);
        ck_assert_uint_eq(cells(line, c, 16), width);
        ck_assert_str_eq(c[0], res[rows].name);
        ck_assert_str_eq(c[1], res[rows].cfg->rotate);
        ck_assert(is_number(c[2]) || strcmp(c[2], "all") == 0);
        for (int k = 3; k <= 5; k++)
            ck_assert_msg(is_number(c[k]), "row %zu cell %d: %s", rows, k, c[k]);
        ck_assert_uint_eq(count(c[6], "/"), s->model.layers - 1);
        ck_assert(is_number(c[8]));
        const size_t len = strlen(c[9]);
        ck_assert(len > 1 && c[9][len - 1] == '%');
        c[9][len - 1] = 0;
        ck_assert_double_eq_tol(strtod(c[9], NULL), 100.0 * res[rows].top1, 0.051);
        rows++;
    }
    ck_assert_uint_eq(rows, n);
    free(md);

    char *svg = NULL;
    size_t svg_len = 0;
    f = open_memstream(&svg, &svg_len);
    ck_assert_int_eq(fid_report_svg(f, s, res, n), 0);
    fclose(f);
    ck_assert(strncmp(svg, "<?xml", 5) == 0);
    ck_assert_ptr_nonnull(strstr(svg, "<svg xmlns=\"http://www.w3.org/2000/svg\""));
    ck_assert(svg_len > 7 && strcmp(svg + svg_len - 7, "</svg>\n") == 0);
    ck_assert_uint_eq(count(svg, "<svg"), 1);
    const char *why = "";
    ck_assert_msg(xml_balanced(svg, &why) > 0, "svg: %s", why);
    ck_assert_ptr_nonnull(strstr(svg, "bytes per context token"));
    ck_assert_ptr_nonnull(strstr(svg, "KL"));
    /* One series per family with a plottable point, each in the legend; one
     * marker per point with KL > 0, plus one legend marker per series. */
    size_t points = 0, series = 0;
    for (size_t i = 0; i < n; i++) {
        if (res[i].kl_mean > 0)
            points++;
        size_t j = 0;
        while (j < i && (strcmp(cfg[j].family, cfg[i].family) != 0 || res[j].kl_mean <= 0))
            j++;
        if (j == i && res[i].kl_mean > 0) {
            series++;
            char want[80];
            snprintf(want, sizeof want, "data-name=\"%s\"", cfg[i].family);
            ck_assert_msg(strstr(svg, want) != NULL, "no series %s", cfg[i].family);
        }
    }
    ck_assert_uint_eq(count(svg, "<g class=\"series\""), series);
    ck_assert_uint_eq(count(svg, "<circle"), points + series);
    ck_assert_uint_eq(count(svg, "class=\"pareto\""), 1);
    for (const char *p = strstr(svg, "<circle cx=\""); p; p = strstr(p + 1, "<circle cx=\"")) {
        double x, y;
        ck_assert_int_eq(sscanf(p, "<circle cx=\"%lf\" cy=\"%lf\"", &x, &y), 2);
        ck_assert(x >= 0 && x <= 860 && y >= 0 && y <= 540);
    }
    free(svg);
    free(res);
    fid_harness_destroy(h);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("fidelity");
    TCase *tc = tcase_create("tiny");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, exact_config_reproduces_reference);
    tcase_add_test(tc, f16_closer_than_int4);
    tcase_add_test(tc, rotation_helps_int4_on_outlier_keys);
    tcase_add_test(tc, eviction_holds_its_budget);
    tcase_add_test(tc, head_dim_128);
    tcase_add_test(tc, model_has_its_shape);
    tcase_add_test(tc, table_and_svg_are_well_formed);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
