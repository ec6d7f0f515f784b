/* api/auth.c — the API key set (digests only: the keys themselves are
 * dropped once hashed), key-file parsing, the constant-time match of an
 * Authorization header, and the 401 answer. Loaded once at start-up; read
 * only afterwards, so any thread may match against it. */
#include "api/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/auth.h"

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

int kvd_auth_keys_add(kvd_auth_keys *keys, const char *key, size_t len, char *err, size_t err_len)
{
    if (len == 0 || len > KVD_AUTH_KEY_MAX) {
        snprintf(err, err_len, "an API key must be 1..%u characters, got %zu", KVD_AUTH_KEY_MAX, len);
        return -1;
    }
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)key[i] < 0x21 || (unsigned char)key[i] > 0x7e) {
            snprintf(err, err_len,
                     "an API key may hold only visible ASCII characters (no space, control or "
                     "non-ASCII byte; character %zu is not)", i + 1);
            return -1;
        }
    uint8_t d[KVD_SHA256_BYTES];
    kvd_sha256(key, len, d);
    for (size_t i = 0; i < keys->n; i++)
        if (memcmp(keys->digest[i], d, sizeof d) == 0) /* start-up only: no secret timing */
            return 0;
    if (keys->n >= KVD_AUTH_KEYS_MAX) {
        snprintf(err, err_len, "more than %u API keys", KVD_AUTH_KEYS_MAX);
        return -1;
    }
    void *p = realloc(keys->digest, (keys->n + 1) * sizeof *keys->digest);
    if (!p) {
        snprintf(err, err_len, "out of memory reading API keys");
        return -1;
    }
    keys->digest = p;
    memcpy(keys->digest[keys->n++], d, sizeof d);
    return 0;
}

int kvd_auth_keys_parse(kvd_auth_keys *keys, const char *text, size_t len, const char *source,
                        char *err, size_t err_len)
{
    int found = 0;
    size_t line = 0;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        size_t a = pos, b = end;
        line++;
        pos = end + 1;
        while (a < b && is_blank(text[a]))
            a++;
        while (b > a && is_blank(text[b - 1]))
            b--;
        if (a == b || text[a] == '#')
            continue;
        char why[160];
        if (kvd_auth_keys_add(keys, text + a, b - a, why, sizeof why) != 0) {
            snprintf(err, err_len, "%s, line %zu: %s", source, line, why);
            return -1;
        }
        found++;
    }
    return found;
}

int kvd_auth_keys_load_file(kvd_auth_keys *keys, const char *path, char *err, size_t err_len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, err_len, "cannot read --api-key-file %s: %s", path, strerror(errno));
        return -1;
    }
    setvbuf(f, NULL, _IONBF, 0); /* no stdio buffer keeps a copy of the keys */
    /* Bounded: KVD_AUTH_KEYS_MAX keys of KVD_AUTH_KEY_MAX bytes plus comments
     * fit far below this; a bigger file is the wrong file. */
    const size_t cap = (size_t)16 << 20;
    size_t len = 0, alloc = 4096;
    char *text = malloc(alloc);
    int rc = -1;
    if (!text) {
        snprintf(err, err_len, "out of memory reading --api-key-file %s", path);
        goto out;
    }
    for (;;) {
        if (len == alloc) {
            char *p = alloc < cap ? realloc(text, alloc * 2) : NULL;
            if (!p) {
                snprintf(err, err_len, "--api-key-file %s: larger than %zu bytes", path, cap);
                goto out;
            }
            text = p;
            alloc *= 2;
        }
        size_t got = fread(text + len, 1, alloc - len, f);
        len += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        snprintf(err, err_len, "cannot read --api-key-file %s: %s", path, strerror(errno));
        goto out;
    }
    rc = kvd_auth_keys_parse(keys, text, len, path, err, err_len);
    if (rc == 0) {
        snprintf(err, err_len, "--api-key-file %s holds no key (blank and '#' lines are skipped)", path);
        rc = -1;
    }
out:
    if (text)
        explicit_bzero(text, alloc); /* the keys live on only as digests */
    free(text);
    fclose(f);
    return rc;
}

void kvd_auth_keys_free(kvd_auth_keys *keys)
{
    if (!keys)
        return;
    free(keys->digest);
    keys->digest = NULL;
    keys->n = 0;
}

uint32_t kvd_auth_owner(const kvd_auth_keys *keys, const char *authorization)
{
    if (!keys || keys->n == 0)
        return KVD_OWNER_ANON;
    if (!authorization)
        return KVD_OWNER_DENIED;
    /* RFC 6750 §2.1 / RFC 9110 §11.4: the scheme is case-insensitive, one or
     * more spaces separate it from the token. */
    const char *p = authorization;
    while (*p == ' ' || *p == '\t')
        p++;
    if (strncasecmp(p, "Bearer", 6) != 0 || (p[6] != ' ' && p[6] != '\t'))
        return KVD_OWNER_DENIED;
    p += 6;
    while (*p == ' ' || *p == '\t')
        p++;
    size_t len = strlen(p);
    while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
        len--;
    if (len == 0 || len > KVD_AUTH_KEY_MAX)
        return KVD_OWNER_DENIED;
    uint8_t d[KVD_SHA256_BYTES];
    kvd_sha256(p, len, d);
    /* Every digest is compared and the match selected by a mask, so neither
     * which key matched nor where a digest differs shows in the time. The
     * digests are distinct, so at most one mask is all ones. */
    uint32_t owner = 0;
    for (size_t i = 0; i < keys->n; i++) {
        uint32_t eq = (uint32_t)kvd_ct_memeq(d, keys->digest[i], sizeof d);
        owner |= (0u - eq) & (uint32_t)(i + 1);
    }
    return owner ? owner : KVD_OWNER_DENIED;
}

bool kvd_api_auth_enabled(const kvd_api *api)
{
    return api->opt.keys && api->opt.keys->n > 0;
}

uint32_t kvd_api_owner(const kvd_api *api, const char *authorization)
{
    return kvd_auth_owner(api->opt.keys, authorization);
}

void kvd_api_respond_unauthenticated(kvd_response *resp, const char *authorization)
{
    kvd__api_respond_error(resp, 401, KVD_ERR_UNAUTHORIZED, NULL,
                           authorization ? "invalid API key"
                                         : "missing API key: send Authorization: Bearer <key>");
}
