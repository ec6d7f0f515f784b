/* attention/weights_avx2.c — kvd__attention_weights_avx2: the h2o weights body
 * (weights_simd.h) over the AVX2 + FMA + F16C vector layer. Only this file's
 * functions are compiled for AVX2 (target attribute); weights.c calls it only
 * when the CPU has the features. The attend and prefill bodies come in as
 * helpers only (their kernels are built by standard_avx2.c and
 * prefill_avx2.c); the helpers this kernel does not call are unused here,
 * hence the pragma. */
#if defined(__x86_64__)

#pragma GCC diagnostic ignored "-Wunused-function"
#define KVD_SIMD_HELPERS_ONLY
#include "attention/simd_avx2.h"
#include "attention/standard_simd.h"
#include "attention/prefill_simd.h"
#include "attention/weights_simd.h"

#else
typedef int kvd_weights_avx2_unused; /* arm64: the scalar tier only */
#endif
