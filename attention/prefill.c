/* attention/prefill.c — picks the tiled prefill kernel's tier for the running
 * CPU (the same levels as the attend kernels, attention/dispatch.c) and hands
 * tests and benchmarks a given tier. The kernel body is prefill_simd.h. */
#include "attention/prefill.h"

#include "attention/kernels.h"

static const kvd__prefill_fn tiers[] = {
    kvd__attend_prefill_scalar,
#if defined(__x86_64__)
    kvd__attend_prefill_avx2,
    kvd__attend_prefill_avx512,
#endif
};

static const kvd__prefill_decode_fn decoders[] = {
    kvd__prefill_decode_scalar,
#if defined(__x86_64__)
    kvd__prefill_decode_avx2,
    kvd__prefill_decode_avx512,
#endif
};

kvd__prefill_decode_fn kvd__prefill_decode_tier(size_t level)
{
    return level < kvd__simd_levels() && level < sizeof decoders / sizeof *decoders
               ? decoders[level]
               : NULL;
}

kvd__prefill_fn kvd__attend_prefill_tier(size_t level)
{
    return level < kvd__simd_levels() && level < sizeof tiers / sizeof *tiers ? tiers[level] : NULL;
}

void kvd_attend_prefill(const kvd_kv_segment *seg, size_t n_seg, const float *q, size_t m_q,
                        size_t n_q, size_t q_stride, kvd_prefill_mask mask, float scale, float *o,
                        float *lse, size_t lse_stride)
{
    tiers[kvd__simd_levels() - 1](seg, n_seg, q, m_q, n_q, q_stride, mask, scale, o, lse,
                                  lse_stride);
}
