/* cache/quant.h — writing K/V rows in the cache dtypes' byte layouts
 * (attention/formats.h defines them; the kernels read them). Formulas are
 * DESIGN.md §4's: int8 symmetric per token; int4 and KIVI values asymmetric
 * per group of `group` channels; KIVI keys asymmetric per channel over a
 * block of `group` tokens. Scales and minimums are stored as f16; they are
 * rounded so that every value of the group stays representable (the minimum
 * rounds down, the scale up), which keeps the error within half a step. */
#ifndef KVD_CACHE_QUANT_H
#define KVD_CACHE_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "attention/formats.h"
#include "cache/types.h"

/* Writes x[0..d) into one row of per-token format f (kvd_row_bytes bytes at
 * dst). Not for the KIVI key formats. */
void kvd_quant_row(kvd_row_format f, const float *x, size_t head_dim, uint32_t group,
                   unsigned char *dst);

/* KIVI keys: quantizes `count` (1..group) key rows, row t at x + t * stride,
 * per channel over those rows, into one block at dst (kvd_row_bytes bytes). */
void kvd_quant_key_block(kvd_row_format f, const float *x, size_t stride, size_t count,
                         size_t head_dim, uint32_t group, unsigned char *dst);

/* The row formats a cache dtype uses for keys and values. KIVI keys are
 * blocks (kvd_row_is_block); every other dtype stores one row per token. */
kvd_row_format kvd_dtype_key_format(kvd_dtype d);
kvd_row_format kvd_dtype_value_format(kvd_dtype d);

#endif
