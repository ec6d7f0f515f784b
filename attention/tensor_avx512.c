/* attention/tensor_avx512.c — kvd__tensor_four_avx512: the four-cache tensor
 * kernel body (tensor_simd.h) over the AVX-512F vector layer
 * (simd_avx512.h), 16 virtual queries per tile. Built with a target
 * attribute; tensor.c calls it only on a CPU with avx512f and f16c. */
#if defined(__x86_64__)

#include "attention/simd_avx512.h"
#include "attention/tensor_simd.h"

#else
typedef int kvd_tensor_avx512_unused; /* ISO C forbids an empty translation unit */
#endif
