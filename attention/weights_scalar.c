/* attention/weights_scalar.c — kvd__attention_weights_scalar: the h2o weights
 * body (weights_simd.h) over the portable layer (simd_scalar.h): CPUs without
 * AVX2, arm64, and the twin the SIMD tiers are tested against. The attend and
 * prefill bodies come in as helpers only; the ones it does not call are
 * unused, hence the pragma. */
#pragma GCC diagnostic ignored "-Wunused-function"
#define KVD_SIMD_HELPERS_ONLY
#include "attention/simd_scalar.h"
#include "attention/standard_simd.h"
#include "attention/prefill_simd.h"
#include "attention/weights_simd.h"
