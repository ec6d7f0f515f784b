/* attention/prefill_scalar.c — kvd__attend_prefill_scalar: the tiled prefill
 * body (prefill_simd.h) over the portable vector layer (simd_scalar.h), the
 * tier of CPUs without AVX2 and of arm64. Tested like the others against
 * kvd_attend_lse_ref (tests/attention/test_prefill.c). */
#include "attention/simd_scalar.h"
#include "attention/prefill_simd.h"
