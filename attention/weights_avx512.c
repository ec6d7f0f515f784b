/* attention/weights_avx512.c — kvd__attention_weights_avx512: the h2o weights
 * body (weights_simd.h) over the AVX-512F (+ F16C) layer (target attribute;
 * weights.c calls it only on such CPUs). The attend and prefill bodies come in
 * as helpers only; the ones it does not call are unused, hence the pragma. */
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
