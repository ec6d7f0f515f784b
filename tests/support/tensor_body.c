/* tests/support/tensor_body.c — see tensor_body.h. */
#include "tests/support/tensor_body.h"

static void sb_tensor_field(sbuf *b, const char *name, const float *x, size_t n, bool b64)
{
    sb_printf(b, ",\"%s\":", name);
    if (b64 && n > 0)
        sb_floats_b64(b, x, n);
    else
        sb_floats_json(b, x, n);
}

void sb_tensor_step_object(sbuf *b, const tensor_step_spec *s, size_t kv_row, size_t q_row)
{
    sb_printf(b, "{\"layer\":%ld", s->layer);
    if (s->m > 0) {
        sb_tensor_field(b, "k1", s->k1, s->m * kv_row, s->b64);
        sb_tensor_field(b, "k2", s->k2, s->m * kv_row, s->b64);
        sb_tensor_field(b, "v1", s->v1, s->m * kv_row, s->b64);
        sb_tensor_field(b, "v2", s->v2, s->m * kv_row, s->b64);
    }
    sb_tensor_field(b, "q", s->q, s->m_q * q_row, s->b64);
    if (s->mask)
        sb_printf(b, ",\"mask\":\"%s\"", s->mask);
    sb_puts(b, "}");
}

static void write_tensor_step(sbuf *b, const void *spec, size_t kv_row, size_t q_row)
{
    sb_tensor_step_object(b, spec, kv_row, q_row);
}

char *tensor_step_body(const tensor_step_spec *s, size_t kv_row, size_t q_row, const char *encoding)
{
    return body_one(write_tensor_step, s, kv_row, q_row, encoding);
}

char *tensor_steps_body(const tensor_step_spec *s, size_t n, size_t kv_row, size_t q_row, const char *encoding)
{
    return body_many(write_tensor_step, s, sizeof *s, n, kv_row, q_row, encoding);
}
