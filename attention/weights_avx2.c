/* attention/weights_avx2.c — kvd__attention_weights_avx2: the h2o weights body
 * (weights_simd.h) over the AVX2 + FMA + F16C layer (target attribute;
 * weights.c calls it only on such CPUs). The attend and prefill bodies come in
 * as helpers only; the ones it does not call are unused, hence the pragma. */
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
