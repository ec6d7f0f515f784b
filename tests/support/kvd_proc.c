/* tests/support/kvd_proc.c — fork/exec of the kvd binary with its stderr on a
 * pipe, a drain thread that owns the read end for the server's whole life,
 * and SIGTERM/waitpid stops with a SIGKILL fallback; and kvd_proc_run, one
 * kvd run to its end with its output captured. */
#define _GNU_SOURCE
#include "tests/support/kvd_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <check.h>

#define LISTEN_PREFIX "kvd: listening on http://"
#define MAX_ARGS 64

struct kvd_proc {
    pid_t pid;
    int port;
    int err_fd;             /* read end of the child's stderr */
    pthread_t drain;
    bool drain_running;
    bool reaped;
    int status;             /* waitpid status once reaped */
    bool echo;              /* KVD_TEST_VERBOSE: copy stderr to ours too */

    pthread_mutex_t mu;     /* guards the fields below */
    pthread_cond_t cv;      /* signalled on new stderr data and on EOF */
    char *buf;              /* everything read so far, NUL-terminated */
    size_t len, cap;
    bool eof;
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void *drain_main(void *arg)
{
    kvd_proc *p = arg;
    char chunk[4096];
    for (;;) {
        ssize_t n = read(p->err_fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        pthread_mutex_lock(&p->mu);
        if (n <= 0) {
            p->eof = true;
            pthread_cond_broadcast(&p->cv);
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        if (p->len + (size_t)n + 1 > p->cap) {
            size_t cap = p->cap ? p->cap : 8192;
            while (p->len + (size_t)n + 1 > cap)
                cap *= 2;
            char *nb = realloc(p->buf, cap);
            if (!nb) { /* keep draining even if we cannot keep the text */
                pthread_mutex_unlock(&p->mu);
                continue;
            }
            p->buf = nb;
            p->cap = cap;
        }
        memcpy(p->buf + p->len, chunk, (size_t)n);
        p->len += (size_t)n;
        p->buf[p->len] = '\0';
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        if (p->echo) {
            ssize_t w = write(STDERR_FILENO, chunk, (size_t)n);
            (void)w;
        }
    }
}

/* Port from the listening line, or 0 if it is not (completely) there yet. */
static int find_port(const char *text)
{
    const char *s = strstr(text, LISTEN_PREFIX);
    if (!s)
        return 0;
    const char *eol = strchr(s, '\n');
    if (!eol)
        return 0;
    const char *colon = NULL;
    for (const char *c = s + strlen(LISTEN_PREFIX); c < eol; c++)
        if (*c == ':')
            colon = c;
    if (!colon)
        return -1;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || port <= 0 || port > 65535)
        return -1;
    return (int)port;
}

kvd_proc *kvd_proc_start(const char *const *extra)
{
    const char *bin = getenv("KVD_BINARY");
    if (!bin || !*bin) {
        fprintf(stderr, "kvd_proc: KVD_BINARY is not set (ctest sets it)\n");
        return NULL;
    }
    if (access(bin, X_OK) != 0) {
        fprintf(stderr, "kvd_proc: %s is not executable: %s\n", bin, strerror(errno));
        return NULL;
    }
    const char *argv[MAX_ARGS];
    size_t argc = 0;
    argv[argc++] = bin;
    argv[argc++] = "--host";
    argv[argc++] = "127.0.0.1";
    argv[argc++] = "--port";
    argv[argc++] = "0";
    for (size_t i = 0; extra && extra[i]; i++) {
        if (argc + 1 >= MAX_ARGS) {
            fprintf(stderr, "kvd_proc: too many arguments\n");
            return NULL;
        }
        argv[argc++] = extra[i];
    }
    argv[argc] = NULL;

    kvd_proc *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->pid = -1;
    p->err_fd = -1;
    p->echo = getenv("KVD_TEST_VERBOSE") != NULL;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);

    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        fprintf(stderr, "kvd_proc: pipe: %s\n", strerror(errno));
        kvd_proc_free(p);
        return NULL;
    }
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "kvd_proc: fork: %s\n", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        kvd_proc_free(p);
        return NULL;
    }
    if (pid == 0) {
        /* Child: only async-signal-safe calls until exec. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(126);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) {
            dup2(devnull, STDIN_FILENO);
            close(devnull);
        }
        dup2(fds[1], STDERR_FILENO);
        execv(bin, (char *const *)argv);
        static const char msg[] = "kvd_proc: exec failed\n";
        ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)w;
        _exit(127);
    }
    close(fds[1]);
    p->pid = pid;
    p->err_fd = fds[0];
    if (pthread_create(&p->drain, NULL, drain_main, p) != 0) {
        fprintf(stderr, "kvd_proc: cannot start the stderr drain thread\n");
        kvd_proc_free(p);
        return NULL;
    }
    p->drain_running = true;

    long long deadline = now_ms() + KVD_PROC_START_TIMEOUT_MS;
    int port = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        port = p->buf ? find_port(p->buf) : 0;
        if (port != 0 || p->eof)
            break;
        long long left = deadline - now_ms();
        if (left <= 0)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        long long wait_ms = left < 100 ? left : 100;
        ts.tv_sec += (time_t)(wait_ms / 1000);
        ts.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    pthread_mutex_unlock(&p->mu);
    if (port <= 0) {
        char *text = kvd_proc_stderr(p);
        fprintf(stderr, "kvd_proc: %s did not report a listening port (%s); its stderr:\n%s\n", bin,
                port < 0 ? "unparsable line" : "timeout or exit", text);
        free(text);
        kvd_proc_free(p);
        return NULL;
    }
    p->port = port;
    return p;
}

kvd_proc *kvd_proc_start_ck(const char *const *extra)
{
    kvd_proc *p = kvd_proc_start(extra);
    ck_assert_msg(p != NULL, "cannot start kvd (see stderr)");
    return p;
}

int kvd_proc_port(const kvd_proc *p) { return p->port; }
pid_t kvd_proc_pid(const kvd_proc *p) { return p->pid; }

void kvd_proc_signal(kvd_proc *p, int sig)
{
    if (p && p->pid > 0 && !p->reaped)
        kill(p->pid, sig);
}

static void join_drain(kvd_proc *p)
{
    if (p->drain_running) {
        pthread_join(p->drain, NULL); /* EOF follows the child's exit */
        p->drain_running = false;
    }
}

bool kvd_proc_wait(kvd_proc *p, int timeout_ms, int *status)
{
    if (p->pid <= 0)
        return false;
    long long deadline = now_ms() + timeout_ms;
    while (!p->reaped) {
        int st;
        pid_t r = waitpid(p->pid, &st, WNOHANG);
        if (r == p->pid) {
            p->reaped = true;
            p->status = st;
            break;
        }
        if (r < 0 && errno != EINTR)
            return false;
        if (now_ms() >= deadline)
            return false;
        sleep_ms(5);
    }
    /* What it wrote last (a shutdown message) may still be in the pipe: the
     * reader ends at EOF, which follows the exit. */
    join_drain(p);
    if (status)
        *status = p->status;
    return true;
}

int kvd_proc_stop(kvd_proc *p, int timeout_ms)
{
    if (!p || p->pid <= 0)
        return -1;
    if (!p->reaped) {
        kill(p->pid, SIGTERM);
        int st;
        if (!kvd_proc_wait(p, timeout_ms, &st)) {
            fprintf(stderr, "kvd_proc: pid %d ignored SIGTERM for %d ms; SIGKILL\n", (int)p->pid, timeout_ms);
            kill(p->pid, SIGKILL);
            while (waitpid(p->pid, &st, 0) < 0 && errno == EINTR) {
            }
            p->reaped = true;
            p->status = st;
        }
    }
    join_drain(p);
    return p->status;
}

void kvd_proc_stop_ck(kvd_proc *p)
{
    int st = kvd_proc_stop(p, KVD_PROC_STOP_TIMEOUT_MS);
    bool clean = st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (!clean) {
        char *text = kvd_proc_stderr(p);
        size_t len = strlen(text);
        const size_t tail = 6000;
        fprintf(stderr, "kvd stderr (last %zu bytes):\n%s\n", len < tail ? len : tail,
                len < tail ? text : text + len - tail);
        free(text);
    }
    ck_assert_msg(clean, "kvd did not exit cleanly: %s %d",
                  st == -1 ? "status" : WIFEXITED(st) ? "exit status" : "signal",
                  st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    kvd_proc_free(p);
}

char *kvd_proc_stderr(kvd_proc *p)
{
    pthread_mutex_lock(&p->mu);
    char *s = strdup(p->buf ? p->buf : "");
    pthread_mutex_unlock(&p->mu);
    if (!s)
        abort();
    return s;
}

void kvd_proc_free(kvd_proc *p)
{
    if (!p)
        return;
    if (p->pid > 0 && !p->reaped) {
        kill(p->pid, SIGKILL);
        int st;
        while (waitpid(p->pid, &st, 0) < 0 && errno == EINTR) {
        }
        p->reaped = true;
        p->status = st;
    }
    join_drain(p);
    if (p->err_fd >= 0)
        close(p->err_fd);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->buf);
    free(p);
}

int kvd_proc_run(const char *const *args, const kvd_proc_run_opts *opt, char **out)
{
    const char *bin = getenv("KVD_BINARY");
    ck_assert_msg(bin && *bin, "KVD_BINARY is not set (ctest sets it)");
    const char *argv[32] = {bin};
    size_t n = 1;
    for (size_t i = 0; args[i]; i++) {
        ck_assert_msg(n < 31, "kvd_proc_run: too many arguments");
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives a failed test */
        if (opt->stdout_too)
            dup2(fds[1], STDOUT_FILENO);
        dup2(fds[1], STDERR_FILENO);
        close(fds[0]);
        close(fds[1]);
        if (opt->env_name && opt->env_value)
            setenv(opt->env_name, opt->env_value, 1);
        else if (opt->env_name)
            unsetenv(opt->env_name);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0, cap = 65536;
    char *buf = calloc(1, cap);
    ck_assert_ptr_nonnull(buf);
    bool stopped = false;
    const long long deadline = now_ms() + opt->deadline_ms;
    for (;;) {
        if (now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            close(fds[0]);
            ck_abort_msg("kvd %s did not exit within %d ms:\n%s", args[0] ? args[0] : "", opt->deadline_ms, buf);
        }
        struct pollfd pf = {.fd = fds[0], .events = POLLIN};
        if (poll(&pf, 1, 100) <= 0)
            continue;
        if (len + 1 == cap) { /* keep reading to EOF, keeping what fits */
            char sink[4096];
            if (read(fds[0], sink, sizeof sink) <= 0)
                break;
            continue;
        }
        ssize_t got = read(fds[0], buf + len, cap - 1 - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        len += (size_t)got;
        if (opt->stop_if_listening && !stopped && strstr(buf, "kvd: listening on")) {
            kill(pid, SIGTERM);
            stopped = true;
        }
    }
    close(fds[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    *out = buf;
    return stopped ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
