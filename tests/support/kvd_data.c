/* tests/support/kvd_data.c — PRNG, string buffer, base64 and step bodies for
 * the integration tests. */
#include "tests/support/kvd_data.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void rng_seed(rng *r, uint64_t seed)
{
    r->state = seed;
}

uint64_t rng_next(rng *r)
{
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

double rng_uniform(rng *r, double lo, double hi)
{
    return lo + (hi - lo) * ((double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0));
}

void rng_fill(rng *r, float *x, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = (float)rng_uniform(r, lo, hi);
}

float *rng_tensor(rng *r, size_t n, float lo, float hi)
{
    float *x = malloc((n ? n : 1) * sizeof *x);
    if (!x)
        abort();
    rng_fill(r, x, n, lo, hi);
    return x;
}

void sb_init(sbuf *b)
{
    b->s = NULL;
    b->len = b->cap = 0;
}

static void sb_reserve(sbuf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (b->len + extra + 1 > cap)
        cap *= 2;
    char *ns = realloc(b->s, cap);
    if (!ns)
        abort();
    b->s = ns;
    b->cap = cap;
}

void sb_putn(sbuf *b, const char *s, size_t n)
{
    sb_reserve(b, n);
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

void sb_puts(sbuf *b, const char *s)
{
    sb_putn(b, s, strlen(s));
}

void sb_printf(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    sb_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

char *sb_take(sbuf *b)
{
    if (!b->s) {
        sb_reserve(b, 0);
        b->s[0] = '\0';
    }
    char *s = b->s;
    sb_init(b);
    return s;
}

void sb_free(sbuf *b)
{
    free(b->s);
    sb_init(b);
}

void sb_floats_json(sbuf *b, const float *x, size_t n)
{
    sb_reserve(b, n * 17 + 2);
    sb_putn(b, "[", 1);
    for (size_t i = 0; i < n; i++)
        sb_printf(b, i ? ",%.9g" : "%.9g", (double)x[i]);
    sb_putn(b, "]", 1);
}

static const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *b64_encode(const void *data, size_t len)
{
    const unsigned char *p = data;
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    if (!out)
        abort();
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = b64_alphabet[v >> 18 & 63];
        out[o++] = b64_alphabet[v >> 12 & 63];
        out[o++] = b64_alphabet[v >> 6 & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = b64_alphabet[v >> 18 & 63];
        out[o++] = b64_alphabet[v >> 12 & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = b64_alphabet[v >> 18 & 63];
        out[o++] = b64_alphabet[v >> 12 & 63];
        out[o++] = b64_alphabet[v >> 6 & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return out;
}

static int b64_value(char c)
{
    const char *p = c ? strchr(b64_alphabet, c) : NULL;
    return p ? (int)(p - b64_alphabet) : -1;
}

unsigned char *b64_decode(const char *text, size_t text_len, size_t *len)
{
    if (text_len % 4 != 0)
        return NULL;
    unsigned char *out = malloc(text_len / 4 * 3 + 1);
    if (!out)
        abort();
    size_t o = 0;
    for (size_t i = 0; i < text_len; i += 4) {
        int v[4];
        int pad = 0;
        for (int j = 0; j < 4; j++) {
            char c = text[i + (size_t)j];
            if (c == '=' && i + 4 == text_len && j >= 2) {
                v[j] = 0;
                pad++;
            } else if (pad || (v[j] = b64_value(c)) < 0) {
                free(out);
                return NULL;
            }
        }
        uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[o++] = (unsigned char)(x >> 16);
        if (pad < 2)
            out[o++] = (unsigned char)(x >> 8);
        if (pad < 1)
            out[o++] = (unsigned char)x;
    }
    *len = o;
    return out;
}

void sb_floats_b64(sbuf *b, const float *x, size_t n)
{
    unsigned char *bytes = malloc(n * 4 + 1);
    if (!bytes)
        abort();
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        bytes[4 * i] = (unsigned char)u;
        bytes[4 * i + 1] = (unsigned char)(u >> 8);
        bytes[4 * i + 2] = (unsigned char)(u >> 16);
        bytes[4 * i + 3] = (unsigned char)(u >> 24);
    }
    char *text = b64_encode(bytes, n * 4);
    sb_puts(b, "\"b64:");
    sb_puts(b, text);
    sb_puts(b, "\"");
    free(text);
    free(bytes);
}

static void sb_tensor(sbuf *b, const float *x, size_t n, bool b64)
{
    if (b64 && n > 0)
        sb_floats_b64(b, x, n);
    else
        sb_floats_json(b, x, n);
}

void sb_step_object(sbuf *b, const step_spec *s, size_t kv_row, size_t q_row)
{
    sb_printf(b, "{\"layer\":%ld,\"k\":", s->layer);
    sb_tensor(b, s->k, s->m * kv_row, s->b64);
    sb_puts(b, ",\"v\":");
    sb_tensor(b, s->v, s->m * kv_row, s->b64);
    sb_puts(b, ",\"q\":");
    sb_tensor(b, s->q, s->m_q * q_row, s->b64);
    if (s->mask)
        sb_printf(b, ",\"mask\":\"%s\"", s->mask);
    sb_puts(b, "}");
}

char *body_one(step_writer w, const void *spec, size_t kv_row, size_t q_row, const char *encoding)
{
    sbuf b;
    sb_init(&b);
    w(&b, spec, kv_row, q_row);
    if (encoding) { /* reopen the object to add the field */
        b.len--;
        sb_printf(&b, ",\"encoding\":\"%s\"}", encoding);
    }
    return sb_take(&b);
}

char *body_many(step_writer w, const void *specs, size_t spec_size, size_t n, size_t kv_row, size_t q_row,
                const char *encoding)
{
    sbuf b;
    sb_init(&b);
    sb_puts(&b, "{\"steps\":[");
    for (size_t i = 0; i < n; i++) {
        if (i)
            sb_puts(&b, ",");
        w(&b, (const char *)specs + i * spec_size, kv_row, q_row);
    }
    sb_puts(&b, "]");
    if (encoding)
        sb_printf(&b, ",\"encoding\":\"%s\"", encoding);
    sb_puts(&b, "}");
    return sb_take(&b);
}

static void write_step(sbuf *b, const void *spec, size_t kv_row, size_t q_row)
{
    sb_step_object(b, spec, kv_row, q_row);
}

char *step_body(const step_spec *s, size_t kv_row, size_t q_row, const char *encoding)
{
    return body_one(write_step, s, kv_row, q_row, encoding);
}

char *steps_body(const step_spec *s, size_t n, size_t kv_row, size_t q_row, const char *encoding)
{
    return body_many(write_step, s, sizeof *s, n, kv_row, q_row, encoding);
}

int tensor_from_json(const cJSON *item, float **out, size_t *n)
{
    if (cJSON_IsArray(item)) {
        size_t count = (size_t)cJSON_GetArraySize(item);
        float *x = malloc((count ? count : 1) * sizeof *x);
        if (!x)
            abort();
        size_t i = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, item)
        {
            if (!cJSON_IsNumber(e)) {
                free(x);
                return -1;
            }
            x[i++] = (float)e->valuedouble;
        }
        *out = x;
        *n = count;
        return 0;
    }
    if (cJSON_IsString(item) && strncmp(item->valuestring, "b64:", 4) == 0) {
        size_t len;
        const char *text = item->valuestring + 4;
        unsigned char *bytes = b64_decode(text, strlen(text), &len);
        if (!bytes || len % 4 != 0) {
            free(bytes);
            return -1;
        }
        size_t count = len / 4;
        float *x = malloc((count ? count : 1) * sizeof *x);
        if (!x)
            abort();
        for (size_t i = 0; i < count; i++) {
            uint32_t u = (uint32_t)bytes[4 * i] | (uint32_t)bytes[4 * i + 1] << 8 |
                         (uint32_t)bytes[4 * i + 2] << 16 | (uint32_t)bytes[4 * i + 3] << 24;
            memcpy(&x[i], &u, 4);
        }
        free(bytes);
        *out = x;
        *n = count;
        return 0;
    }
    return -1;
}
