/* attention/weights_scalar.c — kvd__attention_weights_scalar: the h2o weights
 * body (weights_simd.h) over the portable vector layer (simd_scalar.h), the
 * tier of CPUs without AVX2 and of arm64 and the scalar twin the SIMD tiers
 * are tested against. The attend and prefill bodies come in as helpers only
 * (their kernels are built by standard_scalar.c and prefill_scalar.c); the
 * helpers this kernel does not call are unused here, hence the pragma. */
#pragma GCC diagnostic ignored "-Wunused-function"
#define KVD_SIMD_HELPERS_ONLY
#include "attention/simd_scalar.h"
#include "attention/standard_simd.h"
#include "attention/prefill_simd.h"
#include "attention/weights_simd.h"
