/* api/random.c — the kernel's CSPRNG for session ids and random seeds: one
 * getrandom loop, retried on EINTR and short reads. */
#include "api/random.h"

#include <errno.h>
#include <sys/random.h>
#include <sys/types.h>

int kvd__api_random_bytes(void *buf, size_t n)
{
    unsigned char *p = buf;
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(p + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        got += (size_t)r;
    }
    return 0;
}
