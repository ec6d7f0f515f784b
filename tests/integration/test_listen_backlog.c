/* tests/integration/test_listen_backlog.c — a burst of connections larger than
 * the old fixed listen backlog (511) is held by the kernel while kvd cannot
 * accept, and every one is answered once it can: kvd is stopped (SIGSTOP),
 * BURST clients connect and send a request, kvd continues, all get 200. With
 * the 511 backlog the soak (tests/load) saw the surplus fail with EOF. */
#include <check.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "tests/support/check_main.h"
#include "tests/support/kvd_proc.h"

#define CASE_TIMEOUT_S 120
/* More than the old 511 and below the default --max-connections (1024). */
#define BURST 700
/* How long the answers may take once kvd runs again (a hang guard only). */
#define ANSWER_DEADLINE_S 60

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

START_TEST(burst_beyond_511_is_answered)
{
    struct rlimit rl;
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < BURST + 64) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= BURST + 64 ? BURST + 64 : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    ck_assert_msg(rl.rlim_cur >= BURST + 64, "need %d descriptors, the hard limit allows %llu", BURST + 64,
                  (unsigned long long)rl.rlim_max);

    kvd_proc *p = kvd_proc_start_ck(NULL);
    const int port = kvd_proc_port(p);
    kvd_proc_signal(p, SIGSTOP);

    static int fd[BURST];
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < BURST; i++) {
        fd[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        ck_assert_int_ge(fd[i], 0);
        int rc = connect(fd[i], (struct sockaddr *)&a, sizeof a);
        ck_assert_msg(rc == 0 || errno == EINPROGRESS, "connect %d: %s", i, strerror(errno));
    }
    sleep_ms(500); /* handshakes done by the kernel */
    static const char req[] = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    for (int i = 0; i < BURST; i++)
        (void)!send(fd[i], req, sizeof req - 1, MSG_NOSIGNAL);
    sleep_ms(500);
    kvd_proc_signal(p, SIGCONT);

    int answered = 0, failed = 0;
    static bool done[BURST];
    time_t until = time(NULL) + ANSWER_DEADLINE_S;
    while (answered + failed < BURST && time(NULL) < until) {
        for (int i = 0; i < BURST; i++) {
            if (done[i])
                continue;
            struct pollfd pf = {.fd = fd[i], .events = POLLIN};
            if (poll(&pf, 1, 0) != 1)
                continue;
            char buf[64] = {0};
            ssize_t n = recv(fd[i], buf, sizeof buf - 1, 0);
            if (n < 0 && errno == EAGAIN)
                continue;
            done[i] = true;
            if (n > 0 && strncmp(buf, "HTTP/1.1 200", 12) == 0)
                answered++;
            else
                failed++;
        }
        sleep_ms(20);
    }
    for (int i = 0; i < BURST; i++)
        close(fd[i]);
    ck_assert_msg(answered == BURST, "%d of %d connections answered 200, %d failed, %d silent", answered, BURST,
                  failed, BURST - answered - failed);
    kvd_proc_stop_ck(p);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("listen_backlog");
    TCase *tc = tcase_create("listen_backlog");
    tcase_set_timeout(tc, CASE_TIMEOUT_S);
    tcase_add_test(tc, burst_beyond_511_is_answered);
    suite_add_tcase(s, tc);
    return s;
}

KVD_TEST_MAIN(make_suite)
