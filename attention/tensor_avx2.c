/* attention/tensor_avx2.c — kvd__tensor_four_avx2: the four-cache tensor
 * kernel body (tensor_simd.h) over the AVX2 + FMA + F16C vector layer
 * (simd_avx2.h), 8 virtual queries per tile. Built with a target attribute;
 * tensor.c calls it only on a CPU with avx2, fma and f16c. */
#if defined(__x86_64__)

#include "attention/simd_avx2.h"
#include "attention/tensor_simd.h"

#else
typedef int kvd_tensor_avx2_unused; /* ISO C forbids an empty translation unit */
#endif
