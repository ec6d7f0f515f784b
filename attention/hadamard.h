/* attention/hadamard.h — the fast Walsh–Hadamard transform, in place, O(d log d):
 * the mixing step of a rotated cache (cache/rotate.h, QuaRot, arXiv 2404.00456).
 * Scalar only: it runs once per key, value, query and output row of a step, a
 * few hundred adds next to the attention over the whole cache. */
#ifndef KVD_ATTENTION_HADAMARD_H
#define KVD_ATTENTION_HADAMARD_H

#include <stdbool.h>
#include <stddef.h>

/* True when d is a power of two (1, 2, 4, ...): the sizes the transform takes. */
static inline bool kvd_hadamard_size_ok(size_t d)
{
    return d > 0 && (d & (d - 1)) == 0;
}

/* x <- W x with W the Sylvester Hadamard matrix of order d (entries +-1,
 * W[i][j] = (-1)^popcount(i & j)), d a power of two: the unnormalized
 * butterfly, log2(d) passes of (a, b) -> (a + b, a - b) over pairs h apart,
 * h = 1, 2, 4, ... W is symmetric and W W = d I, so W / sqrt(d) is
 * orthonormal and its own inverse. */
void kvd_hadamard(float *x, size_t d);

/* The same in double (the tests' and the benchmark's exact reference). */
void kvd_hadamard_f64(double *x, size_t d);

#endif
