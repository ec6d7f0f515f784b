/* attention/weights_avx512.c — kvd__attention_weights_avx512: the h2o weights
 * body (weights_simd.h) over the AVX-512F (+ F16C) vector layer. Only this
 * file's functions are compiled for AVX-512 (target attribute); weights.c
 * calls it only when the CPU has the features. The attend and prefill bodies
 * come in as helpers only (their kernels are built by standard_avx512.c and
 * prefill_avx512.c); the helpers this kernel does not call are unused here,
 * hence the pragma. */
#if defined(__x86_64__)

#pragma GCC diagnostic ignored "-Wunused-function"
#define KVD_SIMD_HELPERS_ONLY
#include "attention/simd_avx512.h"
#include "attention/standard_simd.h"
#include "attention/prefill_simd.h"
#include "attention/weights_simd.h"

#else
typedef int kvd_weights_avx512_unused; /* arm64: the scalar tier only */
#endif
