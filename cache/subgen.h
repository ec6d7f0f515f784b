/* cache/subgen.h — the SubGen sketch of one stream (Zandieh et al. 2024,
 * arXiv 2402.06082; DESIGN.md §4 "subgen"): the tokens that left a stream's
 * protected window (sink + recent), replaced by keys clustered online with a
 * count and a uniform reservoir per cluster (softmax denominator) and
 * value_samples l2 samplers of (k, v) (numerator). All of it in pool pages;
 * the bookkeeping (page tables, counters, RNG state) on the heap.
 * Not thread-safe: one step of a session at a time, like its streams. */
#ifndef KVD_CACHE_SUBGEN_H
#define KVD_CACHE_SUBGEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/pool.h"

/* A flat array of fixed-size rows in pool pages: row i is in page
 * i / rows_per_page. Rows only ever get appended (a sketch never shrinks). */
typedef struct kvd__subgen_rows {
    void **pages;            /* block table: n_pages pool pages */
    size_t n_pages, cap_pages;
    size_t n_rows;
    uint32_t row_bytes, rows_per_page;
} kvd__subgen_rows;

typedef struct kvd_subgen {
    uint32_t head_dim;
    uint32_t t;              /* cluster_samples: reservoir size per cluster */
    uint32_t s;              /* value_samples: independent l2 samplers */
    /* max_clusters: 0 = no cap; else once n_clusters reaches it, a key with
     * no centre within the radius joins the nearest cluster instead of
     * opening one (docs/subgen.md "The cluster cap"). */
    uint32_t max_clusters;
    /* Cluster radius on raw keys: delta is a distance between keys after
     * `scale` (||scale*k - scale*c|| <= delta), i.e. ||k - c||^2 <= radius_sq
     * with radius_sq = (delta / scale)^2. */
    double radius_sq;
    uint64_t rng;            /* splitmix64 state, from the session seed and stream */
    double f;                /* F = sum of ||v||^2 over every sketched token */
    uint64_t items;          /* tokens sketched */
    size_t n_clusters;
    kvd__subgen_rows centres;   /* [n_clusters][head_dim] f32 */
    kvd__subgen_rows counts;    /* [n_clusters] uint64_t n_c */
    kvd__subgen_rows reservoir; /* [n_clusters][t][head_dim] f32; min(n_c, t) rows used */
    kvd__subgen_rows samples;   /* [s][2][head_dim] f32 (k then v); 0 rows before the first token */
} kvd_subgen;

/* An empty sketch (no page). `stream` (the stream's index in its session)
 * and seed give each stream its own reproducible random sequence. */
void kvd_subgen_init(kvd_subgen *g, uint32_t head_dim, size_t page_bytes, double delta, float scale,
                     uint32_t cluster_samples, uint32_t value_samples, uint32_t max_clusters, uint64_t seed,
                     size_t stream);

/* Pages `clusters` more clusters take (a centre, a count and t reservoir
 * rows each) plus, in an empty sketch, the s sample rows the first token
 * lays out (the first token always opens a cluster). `clusters` is first
 * cut to the room the cap leaves (max_clusters - n_clusters), so it is a
 * bound for `items` tokens when called with clusters = items (each may open
 * one), and exact when called with the clusters they will open
 * (kvd_subgen_assign). */
size_t kvd_subgen_pages_bound(const kvd_subgen *g, size_t clusters);

/* Grows the page tables for kvd_subgen_pages_bound(g, clusters) more pages
 * (the same cut to the cap's room).
 * 0 or -ENOMEM, with nothing a reader can see changed. */
int kvd_subgen_reserve(kvd_subgen *g, size_t clusters);

/* The cluster k joins: the first (in opening order) whose centre is within
 * the radius; else n_clusters (k opens a new one) while the cap allows;
 * else, with n_clusters == max_clusters, the nearest centre (the first of
 * equals). O(n_clusters * head_dim), at most max_clusters * head_dim. */
size_t kvd_subgen_find(const kvd_subgen *g, const float *k);
/* The same choice with `n_fresh` clusters opened after the sketch's own
 * but not laid out yet (a step's dry run), fresh[f] the centre of cluster
 * n_clusters + f: it returns n_clusters + n_fresh when k opens one, which
 * the cap allows only below max_clusters clusters in all. */
size_t kvd_subgen_assign(const kvd_subgen *g, const float *k, const float *const *fresh, size_t n_fresh);
/* Whether k is within the radius of centre (the test kvd_subgen_find makes;
 * a step's plan uses it on centres not opened yet). */
bool kvd_subgen_near(const kvd_subgen *g, const float *centre, const float *k);

/* Sketches one token (key k, value v, head_dim f32 each): the first cluster
 * (in opening order) whose centre is within the radius counts it and offers
 * it to its reservoir (Algorithm R), else a new cluster opens with centre k;
 * then each of the s samplers takes (k, v) with probability ||v||^2 / F.
 * Pages come from spare[*used ..) (tables reserved by kvd_subgen_reserve).
 * Cannot fail given kvd_subgen_pages_bound pages. */
void kvd_subgen_insert(kvd_subgen *g, const float *k, const float *v, void *const *spare, size_t n_spare,
                       size_t *used);
/* kvd_subgen_insert into cluster c, found before by kvd_subgen_find (or by
 * a plan that ran it over the same keys in the same order): c <= n_clusters,
 * n_clusters opens one. The scan is not repeated. */
void kvd_subgen_insert_at(kvd_subgen *g, size_t c, const float *k, const float *v, void *const *spare,
                          size_t n_spare, size_t *used);

/* One query's softmax terms in double with one running max: every term
 * w * exp(x) is held as w * exp(x - max) (den) and likewise for the
 * numerator vector, so nothing overflows. num: [head_dim]. */
typedef struct kvd_subgen_acc {
    double max, den;
    double *num;
    size_t d;
} kvd_subgen_acc;

void kvd_subgen_acc_reset(kvd_subgen_acc *a, double *num, size_t d);
/* An exact token: adds exp(x) to den and exp(x) * v to num. */
void kvd_subgen_acc_exact(kvd_subgen_acc *a, double x, const float *v);
/* An exact pair of tensor attention: exp(x) to den, exp(x) * (v1 (.) v2) to num. */
void kvd_subgen_acc_exact2(kvd_subgen_acc *a, double x, const float *v1, const float *v2);
/* Adds the sketch's terms for query q (head_dim f32):
 *   den += sum_c (n_c / |R_c|) sum_{k in R_c} exp(scale <q, k>)
 *   num += (F / s) sum_i exp(scale <q, k_i>) v_i / ||v_i||^2. */
void kvd_subgen_attend(const kvd_subgen *g, const float *q, float scale, kvd_subgen_acc *a);
/* The same terms with the denominator's scaled by w_den and the
 * numerator's by w_num (0 leaves that part out), each sampled value
 * multiplied elementwise by vmul (head_dim f32, or NULL). Tensor attention
 * uses it with q (.) k of one side as the query. */
void kvd_subgen_terms(const kvd_subgen *g, const float *q, float scale, double w_den, double w_num,
                      const float *vmul, kvd_subgen_acc *a);
/* SubGen4Cache's sketched x sketched pairs (tensor attention, scores
 * scale <q, k1_j (.) k2_k>), from the k1 sketch g1 and the k2 sketch g2:
 *   den += sum_{c1,c2} (n_c1 n_c2 / (|R_c1| |R_c2|)) sum_{a in R_c1, b in R_c2} exp(scale <q (.) a, b>)
 *   num += (F1 F2 / (s1 s2)) sum_{i,l} exp(scale <q (.) k1_i, k2_l>) (v1_i (.) v2_l) / (||v1_i||^2 ||v2_l||^2)
 * over every pair of the two independent samplers. qk: [head_dim] scratch. */
void kvd_subgen_attend_pairs(const kvd_subgen *g1, const kvd_subgen *g2, const float *q, float scale,
                             float *qk, kvd_subgen_acc *a);
/* o = num / den as f32, or zeros when there was no term. */
void kvd_subgen_acc_finish(const kvd_subgen_acc *a, float *o);

/* Pages held, payload bytes in use (centres, counts, used reservoir rows,
 * sample rows), heap beyond the struct (page tables). */
size_t kvd_subgen_pages(const kvd_subgen *g);
size_t kvd_subgen_payload_bytes(const kvd_subgen *g);
size_t kvd_subgen_heap_bytes(const kvd_subgen *g);

/* Most cluster_samples and value_samples a sketch takes (the create body's
 * limit, checked again by a snapshot's restore). */
#define KVD_SUBGEN_SAMPLES_MAX 65536u
/* Most max_clusters a create takes (0 = no cap): at 2^20 clusters one
 * stream's sketch is already 2^20 (t + 1) head_dim floats (132 MiB at t = 32
 * and head_dim 1, 17 GiB at head_dim 128), past any pool a cap still
 * guards. The default bounds one stream's sketch by 1,024 clusters
 * (docs/subgen.md "The cluster cap" says why that number). */
#define KVD_SUBGEN_CLUSTERS_MAX (1u << 20)
#define KVD_SUBGEN_CLUSTERS_DEFAULT 1024u

/* ---- Private to cache/ (snapshot and restore, cache/snapshot.c). ---- */

/* Row i of a row array (i < n_rows). */
void *kvd__subgen_row(const kvd__subgen_rows *r, size_t i);

/* An empty sketch laid out for a restore: n_clusters clusters (centres,
 * counts, t reservoir rows each) and, when n_clusters > 0, the s sample
 * rows, all zeroed, in pages from spare[*used ..) — exactly
 * kvd_subgen_pages_bound(g, n_clusters) of them, tables grown by
 * kvd_subgen_reserve(g, n_clusters). The caller fills the rows and sets
 * items, f and rng. */
void kvd__subgen_layout(kvd_subgen *g, size_t n_clusters, void *const *spare, size_t n_spare, size_t *used);

/* A fork copies a sketch eagerly (its rows are rewritten in place by every
 * insert: reservoirs, samplers, counts), in phases so a session forks whole
 * or not at all: prepare makes dst the same sketch (random state included)
 * with tables for src's kvd_subgen_pages but no page yet (0 or -ENOMEM, dst
 * empty then); commit copies each of src's pages whole into spare[*used ..)
 * (cannot fail); abort frees what prepare allocated. */
int kvd__subgen_fork_prepare(const kvd_subgen *src, kvd_subgen *dst);
void kvd__subgen_fork_commit(const kvd_subgen *src, kvd_subgen *dst, size_t page_bytes, void *const *spare,
                             size_t *used);
void kvd__subgen_fork_abort(kvd_subgen *dst);

/* Gives every page back and frees the tables; the sketch is empty after. */
void kvd_subgen_release(kvd_subgen *g, kvd_pool *pool);

#endif
