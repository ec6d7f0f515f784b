/* server/state.c — --state-dir's files (server/state.h): writing each
 * session atomically at shutdown and restoring them at start. The bytes are
 * cache/snapshot.c's format (checksummed), so a file cut short by a crash
 * or damaged on disk is refused whole; the temporary names never match the
 * restore's pattern, so a half-written file is never even read. */
#include "server/state.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int kvd_state_prepare(const char *dir, char *err, size_t err_len)
{
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, err_len, "kvd: --state-dir %s: cannot create: %s", dir, strerror(errno));
        return -1;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(dir, W_OK | X_OK) != 0) {
        snprintf(err, err_len, "kvd: --state-dir %s: not a writable directory", dir);
        return -1;
    }
    return 0;
}

static bool is_state_file(const char *name)
{
    const size_t n = strlen(name), k = strlen(KVD_STATE_SUFFIX);
    return name[0] != '.' && n > k && strcmp(name + n - k, KVD_STATE_SUFFIX) == 0;
}

static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* The whole file, or NULL. */
static void *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return NULL;
    struct stat st;
    void *buf = NULL;
    if (fstat(fd, &st) == 0 && st.st_size >= 0 && (buf = malloc(st.st_size ? (size_t)st.st_size : 1))) {
        size_t got = 0;
        while (got < (size_t)st.st_size) {
            ssize_t r = read(fd, (char *)buf + got, (size_t)st.st_size - got);
            if (r <= 0)
                break;
            got += (size_t)r;
        }
        *len = got;
    }
    close(fd);
    return buf;
}

size_t kvd_state_restore(kvd_api *api, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    size_t restored = 0, skipped = 0;
    bool removed = false;
    char path[4096], id[128], why[512];
    for (struct dirent *e; (e = readdir(d));) {
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (e->d_name[0] == '.' && strstr(e->d_name, KVD_STATE_SUFFIX ".tmp")) {
            /* An interrupted write: never read, and gone for the next time. */
            fprintf(stderr, "kvd: state: removing the unfinished %s\n", path);
            removed |= unlink(path) == 0;
            continue;
        }
        if (!is_state_file(e->d_name))
            continue;
        size_t len = 0;
        void *bytes = read_file(path, &len);
        if (!bytes) {
            fprintf(stderr, "kvd: state: skipping %s: cannot read it: %s\n", path, strerror(errno));
            skipped++;
            continue;
        }
        const int rc = kvd_api_restore(api, bytes, len, id, sizeof id, why, sizeof why);
        free(bytes);
        if (rc != 0) {
            fprintf(stderr, "kvd: state: skipping %s (left in place): %s\n", path, why);
            skipped++;
            continue;
        }
        /* Deleted once restored: the directory then holds only what the
         * next shutdown writes, and a crash before it can never bring back
         * this older state silently (the session is gone, a 404, instead). */
        removed |= unlink(path) == 0;
        restored++;
    }
    closedir(d);
    if (removed)
        fsync_dir(dir);
    fprintf(stderr, "kvd: state: restored %zu session%s from %s (%zu skipped)\n", restored,
            restored == 1 ? "" : "s", dir, skipped);
    return restored;
}

typedef struct save_ctx {
    const char *dir;
    unsigned pause_ms;
    size_t written, failed;
} save_ctx;

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int save_one(void *arg, const char *id, const void *bytes, size_t len)
{
    save_ctx *c = arg;
    if (!bytes) {
        fprintf(stderr, "kvd: state: cannot snapshot session %s (out of memory, or a kind the format "
                "cannot hold yet): not saved\n", id);
        c->failed++;
        return -1;
    }
    char tmp[4096], final[4096];
    snprintf(tmp, sizeof tmp, "%s/.%s" KVD_STATE_SUFFIX ".tmp", c->dir, id);
    snprintf(final, sizeof final, "%s/%s" KVD_STATE_SUFFIX, c->dir, id);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int rc = fd < 0 ? -1 : 0;
    const size_t half = len / 2;
    if (rc == 0)
        rc = write_all(fd, bytes, half);
    /* Logged once the temp file exists and holds its first half, so whoever
     * watches the log (the SIGKILL test) knows a half-written file is there. */
    fprintf(stderr, "kvd: state: writing %s\n", final);
    if (rc == 0 && c->pause_ms) {
        struct timespec ts = {c->pause_ms / 1000, (long)(c->pause_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (rc == 0)
        rc = write_all(fd, (const char *)bytes + half, len - half);
    if (rc == 0)
        rc = fsync(fd);
    if (fd >= 0 && close(fd) != 0)
        rc = -1;
    if (rc == 0)
        rc = rename(tmp, final);
    if (rc != 0) {
        fprintf(stderr, "kvd: state: cannot write %s: %s\n", final, strerror(errno));
        unlink(tmp);
        c->failed++;
        return -1;
    }
    c->written++;
    return 0;
}

size_t kvd_state_save(kvd_api *api, const char *dir)
{
    save_ctx c = {.dir = dir};
    const char *pause = getenv("KVD_TEST_STATE_PAUSE_MS");
    if (pause)
        c.pause_ms = (unsigned)strtoul(pause, NULL, 10);
    kvd_api_snapshot_each(api, save_one, &c);
    fsync_dir(dir); /* the renames themselves are durable only after this */
    fprintf(stderr, "kvd: state: wrote %zu session%s to %s (%zu failed)\n", c.written,
            c.written == 1 ? "" : "s", dir, c.failed);
    return c.failed;
}
