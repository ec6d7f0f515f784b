/* attention/standard_avx512.c — kvd__attend_avx512: the attend kernel body
 * (standard_simd.h) over the AVX-512F (+ F16C) vector layer
 * (simd_avx512.h). Only this file's functions are compiled for AVX-512
 * (target attribute); dispatch.c calls it only when the CPU has avx512f and
 * f16c. */
#if defined(__x86_64__)

#include "attention/simd_avx512.h"
#include "attention/standard_simd.h"

#else
typedef int kvd_standard_avx512_unused; /* arm64: the scalar tier only */
#endif
