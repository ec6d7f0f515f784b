/* server/auth.c — turns the configuration's key sources into the API's key
 * set at start-up (server/auth.h) and decides the exposure warning. Runs
 * once, before the listener exists; nothing here prints or keeps a key. */
#include "server/auth.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

int kvd__auth_load(const kvd_config *cfg, kvd_auth_keys *keys, char *err, size_t err_len)
{
    char why[384];
    if (cfg->api_key_file && kvd_auth_keys_load_file(keys, cfg->api_key_file, why, sizeof why) < 0) {
        snprintf(err, err_len, "kvd: %s", why);
        return -1;
    }
    if (cfg->api_key) {
        /* Blanks and newlines around it are dropped, as in a key file. */
        const char *k = cfg->api_key;
        size_t n = strlen(k);
        while (n && strchr(" \t\r\n", k[0]))
            k++, n--;
        while (n && strchr(" \t\r\n", k[n - 1]))
            n--;
        if (n == 0) {
            snprintf(err, err_len, "kvd: KVD_API_KEY is set but blank (unset it to run without a key)");
            return -1;
        }
        if (kvd_auth_keys_add(keys, k, n, why, sizeof why) != 0) {
            snprintf(err, err_len, "kvd: KVD_API_KEY: %s", why);
            return -1;
        }
    }
    if (cfg->metrics_auth && keys->n == 0) {
        snprintf(err, err_len, "kvd: --metrics-auth needs API keys (--api-key-file or KVD_API_KEY)");
        return -1;
    }
    return 0;
}

bool kvd__host_is_loopback(const char *host)
{
    unsigned char a[16];
    if (inet_pton(AF_INET, host, a) == 1)
        return a[0] == 127;
    if (inet_pton(AF_INET6, host, a) != 1)
        return false; /* not an address we can judge: warn rather than assume */
    static const unsigned char loop6[16] = {[15] = 1};
    static const unsigned char mapped[12] = {[10] = 0xff, [11] = 0xff};
    if (memcmp(a, loop6, 16) == 0)
        return true;
    return memcmp(a, mapped, 12) == 0 && a[12] == 127;
}

const char *kvd__auth_warning(const kvd_config *cfg, const kvd_auth_keys *keys)
{
    if (keys->n > 0 || kvd__host_is_loopback(cfg->host))
        return NULL;
    return "kvd: warning: --host is not a loopback address and no API key is set: anyone who "
           "can reach this port can read, step and delete every session (set --api-key-file "
           "or KVD_API_KEY)";
}
