/* attention/tensor_scalar.c — kvd__tensor_four_scalar: the four-cache
 * tensor kernel body (tensor_simd.h) over the portable vector layer
 * (simd_scalar.h), the production kernel of CPUs without AVX2 and of arm64;
 * tested like the SIMD tiers against the oracle kvd_tensor_four_ref. */
#include "attention/simd_scalar.h"
#include "attention/tensor_simd.h"
