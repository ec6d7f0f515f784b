/* bench/prefill.c — causal prefill attention against OpenBLAS sgemm FLOP/s.
 * m new tokens (default 2,048) after n cached ones (default 0 and 8,192), 32
 * query / 8 kv heads, d = 128, f32, one thread, cache in kvd's pool pages:
 * the tiled prefill kernel (attention/prefill.h, every SIMD tier this CPU
 * runs) and m decode-kernel calls (what a prefill ran as before it), in
 * FLOP/s as a fraction of OpenBLAS sgemm (one thread) on the attention's own
 * two products (Q K^T: m x (n+m) x d, P V: m x d x (n+m)), measured in the
 * same run. FLOPs counted as 4 * d * heads * sum_i visible(i) (two
 * multiply-adds per visible key and channel, per query head: the usual count;
 * softmax not counted), visible(i) = n + i + 1.
 * KVD_BENCH_DTYPE=f16|bf16|int8|int4|kivi4|kivi2 runs a quantized cache
 * instead (group 32, KIVI residual 32; keys and values dequantized once per
 * block into an f32 tile; the decode calls score keys from their codes);
 * sgemm stays f32.
 * KVD_BENCH_TIER=avx2 (or scalar, avx512) times that tier only, decode calls
 * included; with OPENBLAS_CORETYPE=Haswell OpenBLAS runs its AVX2 kernels,
 * which compares AVX2 with AVX2 on an AVX-512 machine.
 * KVD_BENCH_H2O=1 also times the h2o weight pass such a step adds, the old
 * scalar pass (kvd_attention_weights_ref per query) against the new kernel
 * (kvd_attention_weights from the attention's lse, every tier), for the
 * prefill and for a decode step over the same cache, each as a share of a
 * step with h2o; KVD_BENCH_H2O=new times the new pass only. The decode case
 * also times, per tier in the same run, that recomputing pass against the
 * fused one the step runs (the kernel stores its scores, the weights come
 * from them: attend_lse_scores + kvd_attention_weights_from_scores).
 * Usage: bench_prefill [m [n ...]] */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention/attention.h"
#include "attention/kernels.h"
#include "attention/prefill.h"
#include "attention/weights.h"
#include "cache/pool.h"
#include "cache/stream.h"

#include "bench/bench.h"

#define HEADS 32
#define KV_HEADS 8
#define GROUP (HEADS / KV_HEADS)
#define HEAD_DIM 128
#define PAGE_BYTES (16 * 1024)
#define ROUNDS 3 /* odd: the median is one round */
#define APPEND_CHUNK 256
#define KIVI_RESIDUAL 32

static float frand(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*s >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

/* OpenBLAS sgemm FLOP/s on the prefill's two products for one query head:
 * S[m][t] = Q[m][d] K[t][d]^T, then O[m][d] = P[m][t] V[t][d], t = n + m. */
static double sgemm_flops(size_t m, size_t t, int reps)
{
    float *a = malloc(m * HEAD_DIM * sizeof(float)), *b = malloc(t * HEAD_DIM * sizeof(float));
    float *s = malloc(m * t * sizeof(float)), *o = malloc(m * HEAD_DIM * sizeof(float));
    if (!a || !b || !s || !o) {
        fprintf(stderr, "bench: out of memory\n");
        exit(1);
    }
    uint64_t seed = 7;
    for (size_t i = 0; i < m * HEAD_DIM; i++)
        a[i] = frand(&seed);
    for (size_t i = 0; i < t * HEAD_DIM; i++)
        b[i] = frand(&seed);
    for (size_t i = 0; i < m * t; i++)
        s[i] = frand(&seed) * 0.01f;
    double tm[16];
    reps = reps < 16 ? reps : 16;
    for (int r = 0; r < reps; r++) {
        const double t0 = bench_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)t, HEAD_DIM, 1.0f, a,
                    HEAD_DIM, b, HEAD_DIM, 0.0f, s, (int)t);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, HEAD_DIM, (int)t, 1.0f, s,
                    (int)t, b, HEAD_DIM, 0.0f, o, HEAD_DIM);
        tm[r] = bench_now() - t0;
    }
    const double sec = bench_median(tm, reps);
    free(a);
    free(b);
    free(s);
    free(o);
    return 4.0 * (double)m * (double)t * HEAD_DIM / sec;
}

/* The old weight pass (kvd_attention_weights_ref) over kv head g's
 * streams for the m causal queries after n cached tokens, into w. */
static void h2o_old(kvd_stream *st, const float *q, size_t m, size_t n, float scale, float *scratch,
                    float *w)
{
    for (int g = 0; g < KV_HEADS; g++)
        for (size_t i = 0; i < m; i++) {
            const size_t off = (i * HEADS + (size_t)g * GROUP) * HEAD_DIM;
            kvd_kv_segment seg[2];
            const size_t n_seg = kvd_stream_segments(&st[g], n + i + 1, seg);
            kvd_attention_weights_ref(seg, n_seg, q + off, GROUP, scale, scratch,
                                      w + (size_t)g * (n + m));
        }
}

/* The new one: one call per kv head with the lse of the attention call. */
static void h2o_new(kvd__weights_fn fn, kvd_stream *st, const float *q, const float *lse, size_t m,
                    size_t n, float scale, float *w)
{
    for (int g = 0; g < KV_HEADS; g++) {
        kvd_kv_segment seg[2];
        const size_t n_seg = kvd_stream_segments(&st[g], n + m, seg);
        fn(seg, n_seg, q + (size_t)g * GROUP * HEAD_DIM, m, GROUP, HEADS * HEAD_DIM,
           (kvd_prefill_mask){.n0 = n + 1, .step = m > 1 ? 1 : 0}, scale, lse + (size_t)g * GROUP,
           HEADS, w + (size_t)g * (n + m));
    }
}

static kvd_stream_format bench_fmt; /* KVD_BENCH_DTYPE, f32 by default */
static int bench_tier = -1;         /* KVD_BENCH_TIER level, -1: all */

/* A decode step with h2o, per tier, the two ways cache/step.c could run
 * it, timed interleaved (REPS rounds, each part timed on its own):
 * recompute = attend_lse, then kvd_attention_weights from its lse (a second
 * read of the keys and a second dot product); fused = attend_lse_scores
 * (the kernel stores the scores its softmax used) then
 * kvd_attention_weights_from_scores (what the step runs since). The share
 * is the weights' part of a step with h2o: recompute w / (att + w), fused
 * from_scores / (att_scores + from_scores), and with the stores counted
 * (att_scores - att + from_scores) / (att_scores + from_scores). Medians of
 * the rounds (the machine is shared). */
static void h2o_decode_fused(kvd_stream *st, const float *qd, float *o, float *lse, size_t total,
                             float scale, float *w)
{
    enum { REPS = 20 };
    static const char *const names[] = {"scalar", "avx2", "avx512"};
    float *sc = malloc(GROUP * total * sizeof *sc), *w2 = calloc(KV_HEADS * total, sizeof *w2);
    if (!sc || !w2) {
        fprintf(stderr, "bench: out of memory\n");
        exit(1);
    }
    size_t n_k;
    const kvd_attention_kernels *all = kvd_attention_kernels_all(&n_k);
    printf("  h2o decode per tier (median of %d interleaved rounds; scores buffer %zu KiB per "
           "running piece = %d heads x %zu slots x 4 B):\n",
           REPS, GROUP * total * sizeof *sc / 1024, GROUP, total);
    for (size_t lv = 0; lv < n_k; lv++) {
        if (bench_tier >= 0 && (size_t)bench_tier != lv)
            continue;
        const kvd_attention_kernels *k = &all[lv];
        const kvd__weights_fn re = kvd__attention_weights_tier(lv);
        const kvd__weights_scores_fn fs = kvd__attention_weights_scores_tier(lv);
        double t_att[REPS], t_rec[REPS], t_sc[REPS], t_from[REPS];
        memset(w, 0, KV_HEADS * total * sizeof *w);
        memset(w2, 0, KV_HEADS * total * sizeof *w2);
        for (int r = 0; r < REPS; r++) {
            t_att[r] = t_rec[r] = t_sc[r] = t_from[r] = 0;
            for (int g = 0; g < KV_HEADS; g++) {
                kvd_kv_segment seg[2];
                const size_t n_seg = kvd_stream_segments(&st[g], total, seg);
                const float *qg = qd + (size_t)g * GROUP * HEAD_DIM;
                float *og = o + (size_t)g * GROUP * HEAD_DIM, *lg = lse + (size_t)g * GROUP;
                /* the two ways in turns, each first every other round (the
                 * one that runs second finds the keys warmer) */
                for (int way = 0; way < 2; way++) {
                    const double t0 = bench_now();
                    if ((way + r) % 2 == 0) {
                        k->attend_lse(seg, n_seg, qg, GROUP, scale, og, lg);
                        const double t1 = bench_now();
                        re(seg, n_seg, qg, 1, GROUP, GROUP * HEAD_DIM,
                           (kvd_prefill_mask){.n0 = total, .step = 0}, scale, lg, GROUP,
                           w + (size_t)g * total);
                        t_att[r] += t1 - t0;
                        t_rec[r] += bench_now() - t1;
                    } else {
                        k->attend_lse_scores(seg, n_seg, qg, GROUP, scale, og, lg, sc, total);
                        const double t1 = bench_now();
                        fs(sc, total, total, GROUP, lg, w2 + (size_t)g * total);
                        t_sc[r] += t1 - t0;
                        t_from[r] += bench_now() - t1;
                    }
                }
            }
        }
        const double att = bench_median(t_att, REPS), rec = bench_median(t_rec, REPS);
        const double att_sc = bench_median(t_sc, REPS), from = bench_median(t_from, REPS);
        double dmax = 0;
        for (size_t j = 0; j < KV_HEADS * total; j++)
            dmax = fmax(dmax, fabs((double)w[j] - w2[j]));
        const double fused = att_sc + from;
        printf("    %-6s attend_lse %.3f ms + recompute pass %.3f ms (%4.1f%% of the step) | "
               "attend_lse_scores %.3f ms (%.2fx attend_lse) + from scores %.4f ms (%4.1f%%; "
               "with the stores %4.1f%%) | step %.2fx faster; max |w diff| %.2g\n",
               names[lv], att * 1e3, rec * 1e3, 100.0 * rec / (att + rec), att_sc * 1e3,
               att_sc / att, from * 1e3, 100.0 * from / fused, 100.0 * (fused - att) / fused,
               (att + rec) / fused, dmax);
    }
    free(sc);
    free(w2);
}

/* The h2o weight pass of a step, old against new (every tier), for the
 * prefill (m queries, the tiled call) and for a decode step (one query
 * after the n + m - 1 tokens before it, the decode kernel's attend_lse). */
static void h2o_pass(kvd_stream *st, const float *q, float *o, size_t m, size_t n, float scale,
                     double tiled_sec, int old)
{
    const size_t total = n + m;
    float *lse = malloc(m * HEADS * sizeof *lse), *scratch = malloc(total * sizeof *scratch);
    float *w_old = calloc(KV_HEADS * total, sizeof *w_old), *w = calloc(KV_HEADS * total, sizeof *w);
    if (!lse || !scratch || !w_old || !w) {
        fprintf(stderr, "bench: out of memory\n");
        exit(1);
    }
    /* the attention a step with h2o runs: the tiled call with lse */
    double t0 = bench_now();
    for (int g = 0; g < KV_HEADS; g++) {
        kvd_kv_segment seg[2];
        const size_t n_seg = kvd_stream_segments(&st[g], total, seg);
        kvd_attend_prefill(seg, n_seg, q + (size_t)g * GROUP * HEAD_DIM, m, GROUP, HEADS * HEAD_DIM,
                           (kvd_prefill_mask){.n0 = n + 1, .step = 1}, scale,
                           o + (size_t)g * GROUP * HEAD_DIM, lse + (size_t)g * GROUP, HEADS);
    }
    const double att = bench_now() - t0;
    printf("  h2o, prefill: tiled call with lse %.1f ms (without: %.1f ms)\n", att * 1e3,
           tiled_sec * 1e3);
    double old_sec = 0;
    if (old) {
        t0 = bench_now();
        h2o_old(st, q, m, n, scale, scratch, w_old);
        old_sec = bench_now() - t0;
        printf("  %-34s %8.1f ms = %5.2fx the attention: %4.1f%% of a step with h2o\n",
               "old weight pass (scalar, 3 passes)", old_sec * 1e3, old_sec / att,
               100.0 * old_sec / (old_sec + att));
    }
    static const char *const names[] = {"scalar", "avx2", "avx512"};
    for (size_t lv = 0; lv < kvd__simd_levels(); lv++) {
        if (bench_tier >= 0 && (size_t)bench_tier != lv)
            continue;
        double tm[ROUNDS];
        for (int r = 0; r < ROUNDS; r++) {
            memset(w, 0, KV_HEADS * total * sizeof *w);
            t0 = bench_now();
            h2o_new(kvd__attention_weights_tier(lv), st, q, lse, m, n, scale, w);
            tm[r] = bench_now() - t0;
        }
        const double sec = bench_median(tm, ROUNDS);
        double dmax = 0, wmax = 0;
        for (size_t j = 0; old && j < KV_HEADS * total; j++) {
            dmax = fmax(dmax, fabs((double)w[j] - w_old[j]));
            wmax = fmax(wmax, fabs((double)w_old[j]));
        }
        char label[64];
        snprintf(label, sizeof label, "new weight pass (%s)", names[lv]);
        printf("  %-34s %8.1f ms = %5.2fx the attention: %4.1f%% of a step with h2o", label,
               sec * 1e3, sec / att, 100.0 * sec / (sec + att));
        if (old)
            printf("; %.1fx faster than old, max |diff| %.2g (max w %.2g)", old_sec / sec, dmax,
                   wmax);
        printf("\n");
    }

    /* decode: one query per kv head group over every slot, REPS times */
    enum { REPS = 20 };
    const kvd_attention_kernels *kern = kvd_attention_kernels_get();
    const float *qd = q + (m - 1) * HEADS * HEAD_DIM; /* the last query: sees them all */
    t0 = bench_now();
    for (int r = 0; r < REPS; r++)
        for (int g = 0; g < KV_HEADS; g++) {
            kvd_kv_segment seg[2];
            const size_t n_seg = kvd_stream_segments(&st[g], total, seg);
            kern->attend_lse(seg, n_seg, qd + (size_t)g * GROUP * HEAD_DIM, GROUP, scale,
                             o + (size_t)g * GROUP * HEAD_DIM, lse + (size_t)g * GROUP);
        }
    const double datt = (bench_now() - t0) / REPS;
    printf("  h2o, decode of 1 query over %zu slots: attend_lse %s %.3f ms\n", total, kern->name,
           datt * 1e3);
    double dold = 0;
    if (old) {
        t0 = bench_now();
        for (int r = 0; r < REPS; r++)
            for (int g = 0; g < KV_HEADS; g++) {
                kvd_kv_segment seg[2];
                const size_t n_seg = kvd_stream_segments(&st[g], total, seg);
                kvd_attention_weights_ref(seg, n_seg, qd + (size_t)g * GROUP * HEAD_DIM, GROUP, scale,
                                          scratch, w_old + (size_t)g * total);
            }
        dold = (bench_now() - t0) / REPS;
        printf("  %-34s %8.3f ms = %5.2fx the attention: %4.1f%% of a step with h2o\n",
               "old weight pass (scalar, 3 passes)", dold * 1e3, dold / datt,
               100.0 * dold / (dold + datt));
    }
    h2o_decode_fused(st, qd, o, lse, total, scale, w);
    free(lse);
    free(scratch);
    free(w_old);
    free(w);
}

static void run(size_t m, size_t n)
{
    const size_t total = n + m;
    const size_t spp = kvd_stream_slots_per_page_format(PAGE_BYTES, HEAD_DIM, &bench_fmt);
    /* pages per stream: its own, plus (KIVI) the f32 residual's and one
     * append chunk's slack */
    const size_t spp_f32 = kvd_stream_slots_per_page(PAGE_BYTES, HEAD_DIM);
    const size_t pages_per_stream = (total + spp - 1) / spp + 2 * (APPEND_CHUNK / spp_f32 + 2);
    kvd_pool *pool;
    if (kvd_pool_create((pages_per_stream * KV_HEADS + 8) * PAGE_BYTES, PAGE_BYTES, &pool)) {
        fprintf(stderr, "bench: no memory for the pool\n");
        exit(1);
    }
    kvd_stream streams[KV_HEADS];
    float *k = malloc(total * HEAD_DIM * sizeof(float)), *v = malloc(total * HEAD_DIM * sizeof(float));
    float *q = malloc(m * HEADS * HEAD_DIM * sizeof(float));
    float *o = malloc(m * HEADS * HEAD_DIM * sizeof(float));
    float *o2 = malloc(m * HEADS * HEAD_DIM * sizeof(float));
    void **pages = malloc(pages_per_stream * sizeof *pages);
    if (!k || !v || !q || !o || !o2 || !pages) {
        fprintf(stderr, "bench: out of memory\n");
        exit(1);
    }
    uint64_t seed = 42;
    for (size_t i = 0; i < m * HEADS * HEAD_DIM; i++)
        q[i] = frand(&seed);
    for (int g = 0; g < KV_HEADS; g++) {
        for (size_t i = 0; i < total * HEAD_DIM; i++) {
            k[i] = frand(&seed);
            v[i] = frand(&seed);
        }
        if (kvd_stream_init_format(&streams[g], PAGE_BYTES, HEAD_DIM, &bench_fmt) != 0) {
            fprintf(stderr, "bench: stream init failed\n");
            exit(1);
        }
        /* in chunks, KIVI settling after each as a step does: key blocks
         * quantized, the newest tokens left in the f32 residual */
        for (size_t j0 = 0; j0 < total; j0 += APPEND_CHUNK) {
            const size_t c = total - j0 < APPEND_CHUNK ? total - j0 : APPEND_CHUNK;
            const size_t need = kvd_stream_pages_needed(&streams[g], c);
            if (need > pages_per_stream || kvd_stream_reserve_table(&streams[g], need) ||
                kvd_pool_alloc(pool, need, pages)) {
                fprintf(stderr, "bench: pool too small\n");
                exit(1);
            }
            kvd_stream_append(&streams[g], pool, c, k + j0 * HEAD_DIM, v + j0 * HEAD_DIM,
                              HEAD_DIM, pages);
            size_t used = 0;
            kvd_stream_settle(&streams[g], pool, NULL, 0, &used);
        }
    }
    const float scale = 1.0f / sqrtf(HEAD_DIM);
    double visible = 0; /* sum over queries of the slots each sees */
    for (size_t i = 0; i < m; i++)
        visible += (double)(n + i + 1);
    const double flops = 4.0 * HEAD_DIM * HEADS * visible;

    printf("m=%zu new tokens after n=%zu cached, causal, %d q / %d kv heads, d=%d, %s, one thread\n",
           m, n, HEADS, KV_HEADS, HEAD_DIM, kvd_dtype_name(bench_fmt.dtype));
    /* The machine is shared: every kernel timing sits between two sgemm
     * timings, and its fraction is taken against their mean; the median of
     * ROUNDS such fractions is printed. */
    double blas_all[2 * ROUNDS * 4], frac[ROUNDS];
    size_t nb_all = 0;

    /* the tiled kernel, every SIMD tier (scalar only where it is all) */
    const size_t levels = kvd__simd_levels();
    double tiled_sec = 0; /* the last tier timed */
    static const char *const names[] = {"scalar", "avx2", "avx512"};
    for (size_t lv = levels > 1 ? 1 : 0; lv < levels; lv++) {
        if (bench_tier >= 0 && (size_t)bench_tier != lv)
            continue;
        const kvd__prefill_fn fn = kvd__attend_prefill_tier(lv);
        double tm[ROUNDS];
        for (int r = 0; r < ROUNDS; r++) {
            const double b0 = sgemm_flops(m, total, 1);
            const double t0 = bench_now();
            for (int g = 0; g < KV_HEADS; g++) {
                kvd_kv_segment seg[2];
                const size_t n_seg = kvd_stream_segments(&streams[g], total, seg);
                fn(seg, n_seg, q + (size_t)g * GROUP * HEAD_DIM, m, GROUP, HEADS * HEAD_DIM,
                   (kvd_prefill_mask){.n0 = n + 1, .step = 1}, scale, o + (size_t)g * GROUP * HEAD_DIM,
                   NULL, 0);
            }
            tm[r] = bench_now() - t0;
            const double b1 = sgemm_flops(m, total, 1);
            blas_all[nb_all++] = b0;
            blas_all[nb_all++] = b1;
            frac[r] = flops / tm[r] / (0.5 * (b0 + b1));
        }
        const double sec = bench_median(tm, ROUNDS);
        tiled_sec = sec;
        char label[64];
        snprintf(label, sizeof label, "kvd tiled %s", names[lv]);
        printf("  %-30s %7.1f GFLOP/s  %.2f of sgemm   (%.1f ms)\n", label, flops / sec / 1e9,
               bench_median(frac, ROUNDS), sec * 1e3);
    }

    /* before: one decode-kernel call per query and kv head */
    size_t n_all;
    const kvd_attention_kernels *kern = kvd_attention_kernels_get();
    if (bench_tier >= 0 && (size_t)bench_tier < levels)
        kern = &kvd_attention_kernels_all(&n_all)[bench_tier];
    const double b0 = sgemm_flops(m, total, 1);
    const double t0 = bench_now();
    for (int g = 0; g < KV_HEADS; g++)
        for (size_t i = 0; i < m; i++) {
            const size_t off = (i * HEADS + (size_t)g * GROUP) * HEAD_DIM;
            kvd_kv_segment seg[2];
            const size_t n_seg = kvd_stream_segments(&streams[g], n + i + 1, seg);
            kern->attend(seg, n_seg, q + off, GROUP, scale, o2 + off);
        }
    const double sec = bench_now() - t0;
    const double b1 = sgemm_flops(m, total, 1);
    blas_all[nb_all++] = b0;
    blas_all[nb_all++] = b1;
    char label[64];
    snprintf(label, sizeof label, "kvd m decode calls %s", kern->name);
    printf("  %-30s %7.1f GFLOP/s  %.2f of sgemm   (%.1f ms, one round)\n", label,
           flops / sec / 1e9, flops / sec / (0.5 * (b0 + b1)), sec * 1e3);
    const double blas = bench_median(blas_all, (int)nb_all);
    printf("  %-30s %7.1f GFLOP/s  (median of the %zu sgemm timings: Q K^T %zux%zux%d + P V)\n",
           "openblas sgemm", blas / 1e9, nb_all, m, total, HEAD_DIM);
    double err = 0, ref = 0;
    for (size_t i = 0; i < m * HEADS * HEAD_DIM; i++) {
        err = fmax(err, fabs((double)o[i] - o2[i]));
        ref = fmax(ref, fabs((double)o2[i]));
    }
    printf("  tiled vs decode calls: max |diff| %.2g (max |o| %.2g)\n", err, ref);

    /* KVD_BENCH_H2O=1: the h2o weight pass a step adds (cache/step.c), the
     * old scalar pass (kvd_attention_weights_ref per query and kv head,
     * three passes) against the new one (kvd_attention_weights: one call
     * per kv head from the tiled call's lse), in the same run, each as a
     * share of a step with h2o (attention + weights). KVD_BENCH_H2O=new
     * skips the old pass (it takes minutes at n = 8k). */
    const char *h2o = getenv("KVD_BENCH_H2O");
    if (h2o && *h2o && *h2o != '0')
        h2o_pass(streams, q, o, m, n, scale, tiled_sec, strcmp(h2o, "new") != 0);
    for (int g = 0; g < KV_HEADS; g++)
        kvd_stream_release(&streams[g], pool);
    kvd_pool_destroy(pool);
    free(k);
    free(v);
    free(q);
    free(o);
    free(o2);
    free(pages);
}

int main(int argc, char **argv)
{
    openblas_set_num_threads(1); /* one thread, like one kvd worker */
    char cpu[128];
    bench_cpu_model(cpu, sizeof cpu);
    printf("CPU: %s; kernel tier %s\n", cpu, kvd_attention_kernels_get()->name);
    const char *dt = getenv("KVD_BENCH_DTYPE");
    for (int d = KVD_DTYPE_F32; dt && *dt && d <= KVD_DTYPE_KIVI4; d++)
        if (strcmp(kvd_dtype_name((kvd_dtype)d), dt) == 0)
            bench_fmt = (kvd_stream_format){
                .dtype = (kvd_dtype)d, .group = 32,
                .residual = d == KVD_DTYPE_KIVI2 || d == KVD_DTYPE_KIVI4 ? KIVI_RESIDUAL : 0};
    if (dt && *dt && strcmp(kvd_dtype_name(bench_fmt.dtype), dt) != 0) {
        fprintf(stderr, "bench: KVD_BENCH_DTYPE must be f32, f16, bf16, int8, int4, kivi2 or kivi4\n");
        return 2;
    }
    const char *tier = getenv("KVD_BENCH_TIER");
    static const char *const tiers[] = {"scalar", "avx2", "avx512"};
    for (int i = 0; tier && *tier && i < 3; i++)
        if (strcmp(tiers[i], tier) == 0)
            bench_tier = i < (int)kvd__simd_levels() ? i : -1;
    if (tier && *tier && bench_tier < 0) {
        fprintf(stderr, "bench: this CPU has no tier %s\n", tier);
        return 2;
    }
    const size_t m = argc > 1 ? (size_t)strtoull(argv[1], NULL, 10) : 2048;
    if (argc <= 2) {
        run(m, 0);
        run(m, 8192);
        return 0;
    }
    for (int i = 2; i < argc; i++)
        run(m, (size_t)strtoull(argv[i], NULL, 10));
    return 0;
}
