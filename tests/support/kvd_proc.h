/* tests/support/kvd_proc.h — runs the kvd binary ($KVD_BINARY) for one test:
 * starts it on an ephemeral loopback port, learns the port from its
 * "kvd: listening on http://HOST:PORT" line, keeps draining its stderr into a
 * buffer (so a chatty access log never blocks the server on a full pipe), and
 * stops it with SIGTERM, reporting the exit status; or runs it to its end
 * capturing what it says (kvd_proc_run: start-up errors, --probe). */
#ifndef KVD_TEST_PROC_H
#define KVD_TEST_PROC_H

#include <stdbool.h>
#include <sys/types.h>

/* How long a start may take before it is a failure (ASan builds start slower
 * than plain ones, but well within this). */
#define KVD_PROC_START_TIMEOUT_MS 10000
/* How long a graceful stop may take before SIGKILL. */
#define KVD_PROC_STOP_TIMEOUT_MS 20000

typedef struct kvd_proc kvd_proc;

/* Starts `$KVD_BINARY --host 127.0.0.1 --port 0 <extra...>`; extra is a
 * NULL-terminated list (or NULL). The child dies with the calling process
 * (PR_SET_PDEATHSIG), so a test that fails half-way leaves no server behind.
 * Returns NULL and prints why (with the captured stderr) on failure. */
kvd_proc *kvd_proc_start(const char *const *extra);

/* kvd_proc_start, failing the current Check test if it cannot start. */
kvd_proc *kvd_proc_start_ck(const char *const *extra);

int kvd_proc_port(const kvd_proc *p);
pid_t kvd_proc_pid(const kvd_proc *p);

/* Sends sig to the server (if it is still running). */
void kvd_proc_signal(kvd_proc *p, int sig);

/* Sends SIGTERM and waits up to timeout_ms for the exit, then SIGKILLs.
 * Returns the waitpid status, or -1 if already stopped. Idempotent. */
int kvd_proc_stop(kvd_proc *p, int timeout_ms);

/* Stops the server and fails the Check test unless it exited with status 0
 * (which, under ASan, also means no leak or error report), then frees p. */
void kvd_proc_stop_ck(kvd_proc *p);

/* Waits up to timeout_ms for the server to exit on its own. Returns true
 * with *status (waitpid status) if it did; kvd_proc_stderr then holds all
 * it wrote. */
bool kvd_proc_wait(kvd_proc *p, int timeout_ms, int *status);

/* A copy of everything the server wrote to stderr so far (malloc'd, caller
 * frees; never NULL). */
char *kvd_proc_stderr(kvd_proc *p);

/* Kills the server if still running (SIGKILL), reaps it and frees p. */
void kvd_proc_free(kvd_proc *p);

/* ---- kvd run to its end (start-up errors, --probe) ---- */

typedef struct kvd_proc_run_opts {
    const char *env_name;     /* an environment variable the child gets (NULL: none) */
    const char *env_value;    /* ... with this value; NULL: unset in the child */
    bool stdout_too;          /* capture stdout with stderr (else stdout is ours) */
    bool stop_if_listening;   /* a kvd that prints its listening line is sent SIGTERM */
    int deadline_ms;          /* still running after this: SIGKILL, and the Check test fails */
} kvd_proc_run_opts;

/* Runs `$KVD_BINARY <args...>` (NULL-terminated; at most 30) until it exits,
 * capturing its stderr (and stdout if asked) into *out (malloc'd, caller
 * frees). Returns its exit status, 128 + the signal if one killed it, or -1
 * if it was stopped for listening (stop_if_listening). Check assertions:
 * call from a Check test only. */
int kvd_proc_run(const char *const *args, const kvd_proc_run_opts *opt, char **out);

#endif
