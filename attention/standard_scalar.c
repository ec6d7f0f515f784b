/* attention/standard_scalar.c — kvd__attend_scalar: the attend kernel body
 * (standard_simd.h) over the portable vector layer (simd_scalar.h), the
 * production kernel of CPUs without AVX2 and of arm64. Same blocked
 * algorithm and exp polynomial as the SIMD tiers; tested like them against
 * the independent oracle kvd_attend_ref (standard.c). */
#include "attention/simd_scalar.h"
#include "attention/standard_simd.h"
