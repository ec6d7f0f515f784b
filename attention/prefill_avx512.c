/* attention/prefill_avx512.c — kvd__attend_prefill_avx512: the tiled prefill
 * body (prefill_simd.h) over the AVX-512F (+ F16C) vector layer. Only this
 * file's functions are compiled for AVX-512 (target attribute); prefill.c
 * calls it only when the CPU has the features. */
#if defined(__x86_64__)

#include "attention/simd_avx512.h"
#include "attention/prefill_simd.h"

#else
typedef int kvd_prefill_avx512_unused; /* arm64: the scalar tier only */
#endif
