/* attention/standard_avx2.c — kvd__attend_avx2: the attend kernel body
 * (standard_simd.h) over the AVX2 + FMA + F16C vector layer (simd_avx2.h).
 * Only this file's functions are compiled for AVX2 (target attribute), so
 * the binary still runs on any x86-64; dispatch.c calls it only when the
 * CPU has avx2, fma and f16c. */
#if defined(__x86_64__)

#include "attention/simd_avx2.h"
#include "attention/standard_simd.h"

#else
typedef int kvd_standard_avx2_unused; /* arm64: the scalar tier only */
#endif
