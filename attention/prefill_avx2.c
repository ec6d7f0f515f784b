/* attention/prefill_avx2.c — kvd__attend_prefill_avx2: the tiled prefill
 * body (prefill_simd.h) over the AVX2 + FMA + F16C vector layer. Only this
 * file's functions are compiled for AVX2 (target attribute); prefill.c calls
 * it only when the CPU has the features. */
#if defined(__x86_64__)

#include "attention/simd_avx2.h"
#include "attention/prefill_simd.h"

#else
typedef int kvd_prefill_avx2_unused; /* arm64: the scalar tier only */
#endif
