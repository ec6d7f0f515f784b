/* attention/formats.h — the byte layouts of cached K/V rows for every cache
 * dtype (DESIGN.md §4). attention/ owns them because its kernels read them
 * in place (dequantizing in registers or a per-block L1 tile, never a copy of
 * the cache); cache/quant.c writes them. All multi-byte fields are little
 * endian; every row size is a multiple of 4 bytes so rows stay 4-aligned.
 *
 * Per-token rows of d = head_dim numbers (one key or one value):
 *   F32   d x f32                                        4d bytes
 *   F16   d x IEEE binary16 (RNE, saturating at +-65504) 2d
 *   BF16  d x bfloat16 (RNE)                             2d
 *   I8    f32 s, then d x int8 q;  x = s*q,  s = max|x|/127          4 + d
 *   U4G   ng = ceil(d/group) x {f16 s, f16 z}, then d 4-bit codes q
 *         (channel c in byte c/2, low nibble for even c); x = z + s*q,
 *         z = min, s = (max-min)/15 over the group            4ng + ceil(d/2)
 *   U2G   as U4G with 2-bit codes (channel c in byte c/4, bits 2(c%4))
 *                                                             4ng + ceil(d/4)
 * KIVI key blocks (Liu et al. 2024): `group` tokens x d channels quantized
 * per channel over the block's tokens, B = 4 or 2 bits:
 *   KIVI4_KEYS / KIVI2_KEYS: d x {f16 s, f16 z} (channel c's scale and min
 *   over the block), then for each token t of the block its d codes packed
 *   as in U4G/U2G (ceil(d*B/8) bytes per token).   4d + group*ceil(dB/8)
 * (each size rounded up to a multiple of 4). A missing token of a partly
 * filled block has no meaning and is never read.
 * Rotated sessions (cache.rotate "hadamard", cache/rotate.h): the same
 * layouts and sizes hold H k and H v instead of k and v (KIVI: its f32
 * residual too). A row as sent is k = H^T r = diag(s) W r / sqrt(d), r the
 * row dequantized as above (f32), W the Sylvester Hadamard matrix, s the
 * +-1 signs of the row's (layer, kv head) from the session seed (defined in
 * cache/rotate.h); values alike. */
#ifndef KVD_ATTENTION_FORMATS_H
#define KVD_ATTENTION_FORMATS_H

#include <stddef.h>
#include <stdint.h>

typedef enum kvd_row_format {
    KVD_ROW_F32 = 0,  /* zero: a view that names no format is f32 */
    KVD_ROW_F16,
    KVD_ROW_BF16,
    KVD_ROW_I8,
    KVD_ROW_U4G,
    KVD_ROW_U2G,
    KVD_ROW_KIVI4_KEYS,
    KVD_ROW_KIVI2_KEYS,
} kvd_row_format;

/* Bytes of one row (per-token formats) or one key block (KIVI keys).
 * group: channels per group (U4G, U2G) or tokens per block (KIVI keys). */
size_t kvd_row_bytes(kvd_row_format f, size_t head_dim, uint32_t group);

/* True for the KIVI key formats, whose unit is a block of `group` tokens. */
static inline int kvd_row_is_block(kvd_row_format f)
{
    return f == KVD_ROW_KIVI4_KEYS || f == KVD_ROW_KIVI2_KEYS;
}

/* IEEE half and bfloat16 conversions (round to nearest even; f32 -> f16
 * saturates to +-65504 instead of overflowing to infinity). */
uint16_t kvd_f32_to_f16(float x);
float kvd_f16_to_f32(uint16_t h);
uint16_t kvd_f32_to_bf16(float x);
float kvd_bf16_to_f32(uint16_t b);

/* Scalar dequantization of row/token `t` of a stored unit into out[0..d):
 * for per-token formats `unit` is the row and t is ignored; for KIVI keys
 * `unit` is the block and t the token within it. Production code (cache/,
 * the kernels' tails) and the definition the kernels' in-register decoders
 * match bit for bit. */
void kvd_dequant_row(kvd_row_format f, const unsigned char *unit, size_t t, size_t head_dim,
                     uint32_t group, float *out);

/* kvd_dequant_row restricted to channels [c0, c1): out[0 .. c1 - c0). The
 * SIMD kernels use it for tails and odd groups. */
void kvd_dequant_range(kvd_row_format f, const unsigned char *unit, size_t t, size_t head_dim, uint32_t group,
                       size_t c0, size_t c1, float *out);

#endif
