/* Open-loop HTTP/1.1 load generator for the mesh benchmark.

   Requests are scheduled at a fixed rate; each one's latency runs from its SCHEDULED send time,
   so a stalled connection or a late loop shows up as latency instead of hiding (no coordinated
   omission). One thread, epoll, a timerfd armed at the next scheduled time.

   Modes: keepalive (a fixed pool of connections, a due request takes the idle connection that
   waited longest, or queues until one is free) and newconn (a fresh connection per request,
   "Connection: close").

   Latencies go into the log-linear histogram of nodemesh/histogram.py (same bucket indices), and
   the result is one JSON object on stdout. Also reported: the generator's own scheduling lag
   (timer fired -> request due) and its CPU time, so its overhead is visible in the results. */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define SUB_BITS 6
#define SUB 64
#define EXACT_BELOW 128
#define NBUCKETS 2304
#define MAX_VALUE_US ((1ULL << 40) - 1)
#define BUFSZ 16384
#define MAX_NEWCONN 8192

typedef struct {
    uint64_t counts[NBUCKETS];
    uint64_t total, sum_us, max_us;
} hist_t;

static int bucket_index(uint64_t v) {
    if (v > MAX_VALUE_US) v = MAX_VALUE_US;
    if (v < EXACT_BELOW) return (int)v;
    int bits = 64 - __builtin_clzll(v);
    int shift = bits - (SUB_BITS + 1);
    uint64_t mantissa = v >> shift;
    return SUB * (shift + 1) + (int)(mantissa - SUB);
}

static void hist_record(hist_t *h, uint64_t us) {
    h->counts[bucket_index(us)]++;
    h->total++;
    h->sum_us += us;
    if (us > h->max_us) h->max_us = us;
}

static void hist_print(const char *name, const hist_t *h) {
    printf("\"%s\": {\"buckets\": [", name);
    int first = 1;
    for (int i = 0; i < NBUCKETS; i++)
        if (h->counts[i]) { printf("%s%d", first ? "" : ",", i); first = 0; }
    printf("], \"counts\": [");
    first = 1;
    for (int i = 0; i < NBUCKETS; i++)
        if (h->counts[i]) { printf("%s%llu", first ? "" : ",", (unsigned long long)h->counts[i]); first = 0; }
    printf("], \"total\": %llu, \"sum_us\": %llu, \"max_us\": %llu}", (unsigned long long)h->total,
           (unsigned long long)h->sum_us, (unsigned long long)h->max_us);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

enum { C_CONNECTING, C_IDLE, C_BUSY, C_DEAD };

typedef struct conn {
    int fd, state;
    uint64_t sched;   /* scheduled time of the request in flight */
    int measured;     /* the request in flight counts (scheduled after the warm-up) */
    size_t wpos;      /* bytes of the request written so far */
    char buf[BUFSZ];
    size_t len, need; /* bytes read; bytes the response needs (0 until its header is complete) */
    int status;
    int in_idle;      /* listed in the idle ring */
} conn_t;

/* --- settings and counters --------------------------------------------------------------- */
static struct sockaddr_in target;
static double rate = 100, duration = 5, warmup = 1, drain_timeout = 3;
static int nconns = 32, newconn = 0, body_size = 1024;
static char *request;
static size_t request_len;
static hist_t latency, lag;
static uint64_t completed, status_errors, conn_errors, timeouts, dropped, scheduled_measured;
static int epfd;
static size_t newconn_open;
static uint64_t t_start, t_measure, t_end;
static conn_t **pool; /* keep-alive connections, to account for requests still in flight */

static void die(const char *what) {
    printf("{\"fatal\": \"%s: %s\"}\n", what, strerror(errno));
    exit(2);
}

static void build_request(void) {
    const char *hdr = newconn ? "POST / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                              : "POST / HTTP/1.1\r\nHost: bench\r\nContent-Length: %d\r\n\r\n";
    char head[256];
    int n = snprintf(head, sizeof head, hdr, body_size);
    request_len = (size_t)n + (size_t)body_size;
    request = malloc(request_len);
    memcpy(request, head, (size_t)n);
    memset(request + n, 'x', (size_t)body_size);
}

static int open_socket(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static void watch(conn_t *c, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, op, c->fd, &ev) < 0) die("epoll_ctl");
}

/* --- the queue of due requests and the idle connections (keep-alive mode) ----------------- */
static uint64_t *pending;
static size_t pend_head, pend_tail, pend_cap;
static conn_t **idle;
static size_t idle_head, idle_tail; /* ring of nconns+1 */

static void pend_push(uint64_t t) {
    if (pend_tail - pend_head == pend_cap) { if (t >= t_measure) dropped++; return; }
    pending[pend_tail++ % pend_cap] = t;
}

static void idle_push(conn_t *c) {
    if (c->in_idle) return;
    c->in_idle = 1;
    idle[idle_tail++ % (size_t)(nconns + 1)] = c;
}

static int try_write(conn_t *c) {
    while (c->wpos < request_len) {
        ssize_t n = send(c->fd, request + c->wpos, request_len - c->wpos, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) return 0;
            return -1;
        }
        c->wpos += (size_t)n;
    }
    return 1;
}

static void fail_conn(conn_t *c);

static void start_request(conn_t *c, uint64_t sched) {
    c->state = C_BUSY;
    c->sched = sched;
    c->measured = sched >= t_measure;
    c->wpos = 0;
    c->len = c->need = 0;
    int w = try_write(c);
    if (w < 0) { fail_conn(c); return; }
    watch(c, w ? EPOLLIN : (EPOLLIN | EPOLLOUT), EPOLL_CTL_MOD);
}

static void dispatch(void) {
    while (pend_head < pend_tail && idle_head < idle_tail) {
        conn_t *c = idle[idle_head++ % (size_t)(nconns + 1)];
        c->in_idle = 0;
        if (c->state != C_IDLE) continue; /* it failed while idle; it re-lists when reconnected */
        start_request(c, pending[pend_head++ % pend_cap]);
    }
}

static conn_t *new_conn(void) {
    conn_t *c = calloc(1, sizeof *c);
    c->fd = open_socket();
    if (c->fd < 0) { free(c); return NULL; }
    c->state = C_CONNECTING;
    watch(c, EPOLLOUT, EPOLL_CTL_ADD);
    return c;
}

static uint64_t consecutive_failures;

static void fail_conn(conn_t *c) {
    if (c->state == C_BUSY && c->measured) conn_errors++;
    else if (c->state == C_CONNECTING && newconn && c->measured) conn_errors++;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (++consecutive_failures > 10000) { errno = ECONNREFUSED; die("too many connection failures"); }
    if (newconn) { newconn_open--; free(c); return; }
    /* Keep the pool at its size: reconnect in place. */
    c->fd = open_socket();
    if (c->fd < 0) { c->state = C_DEAD; return; }
    c->state = C_CONNECTING;
    watch(c, EPOLLOUT, EPOLL_CTL_ADD);
}

/* Parse what has been read; return 1 when the response is complete. */
static int response_done(conn_t *c) {
    if (!c->need) {
        char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
        if (!end) {
            if (c->len == BUFSZ) return -1;
            return 0;
        }
        size_t head = (size_t)(end - c->buf) + 4;
        c->status = (c->len > 12) ? atoi(c->buf + 9) : 0;
        size_t clen = 0;
        for (char *p = c->buf; p < end; p++) {
            if ((p == c->buf || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0) {
                clen = (size_t)strtoul(p + 15, NULL, 10);
                break;
            }
        }
        c->need = head + clen;
    }
    if (c->len >= c->need) return 1;
    /* The body does not need keeping: drop what was read of it, remember how much is left. */
    if (c->len == BUFSZ) { c->need -= c->len; c->len = 0; }
    return 0;
}

static void finish(conn_t *c, uint64_t now) {
    consecutive_failures = 0;
    if (c->measured) {
        completed++;
        if (c->status != 200) status_errors++;
        hist_record(&latency, (now - c->sched) / 1000);
    }
}

static void on_event(conn_t *c, uint32_t events) {
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & (EPOLLERR | EPOLLHUP))) { fail_conn(c); return; }
        if (newconn) { start_request(c, c->sched); return; }
        c->state = C_IDLE;
        watch(c, EPOLLIN, EPOLL_CTL_MOD);
        idle_push(c);
        dispatch();
        return;
    }
    if ((events & EPOLLOUT) && c->state == C_BUSY && c->wpos < request_len) {
        int w = try_write(c);
        if (w < 0) { fail_conn(c); return; }
        if (w) watch(c, EPOLLIN, EPOLL_CTL_MOD);
    }
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        for (;;) {
            ssize_t n = recv(c->fd, c->buf + c->len, BUFSZ - c->len, 0);
            if (n < 0 && errno == EAGAIN) return;
            if (n <= 0 || c->state != C_BUSY) { fail_conn(c); return; }
            c->len += (size_t)n;
            int done = response_done(c);
            if (done < 0) { fail_conn(c); return; }
            if (done) {
                finish(c, now_ns());
                if (newconn) {
                    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    free(c);
                    newconn_open--;
                    return;
                }
                c->state = C_IDLE;
                idle_push(c);
                dispatch();
                return;
            }
        }
    }
}

static void arm(int tfd, uint64_t at) {
    struct itimerspec its = {0};
    its.it_value.tv_sec = (time_t)(at / 1000000000ULL);
    its.it_value.tv_nsec = (long)(at % 1000000000ULL);
    if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0) die("timerfd_settime");
}

static double cpu_seconds(int who, int sys) {
    struct rusage ru;
    getrusage(who, &ru);
    struct timeval tv = sys ? ru.ru_stime : ru.ru_utime;
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void usage(void) {
    fprintf(stderr, "usage: loadgen --addr IP --port N --rate RPS --duration S [--warmup S] "
                    "[--conns N] [--newconn] [--body BYTES] [--drain S]\n");
    exit(64);
}

int main(int argc, char **argv) {
    const char *addr = NULL;
    int port = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = (i + 1 < argc) ? argv[i + 1] : NULL;
        if (!strcmp(a, "--newconn")) { newconn = 1; continue; }
        if (!v) usage();
        if (!strcmp(a, "--addr")) addr = v;
        else if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--rate")) rate = atof(v);
        else if (!strcmp(a, "--duration")) duration = atof(v);
        else if (!strcmp(a, "--warmup")) warmup = atof(v);
        else if (!strcmp(a, "--conns")) nconns = atoi(v);
        else if (!strcmp(a, "--body")) body_size = atoi(v);
        else if (!strcmp(a, "--drain")) drain_timeout = atof(v);
        else usage();
        i++;
    }
    if (!addr || port <= 0 || rate <= 0 || duration <= 0 || nconns <= 0 || body_size < 0) usage();
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, addr, &target.sin_addr) != 1) usage();
    /* Timer slack would add up to 50 us to every wake-up: ask for none. */
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    build_request();

    epfd = epoll_create1(EPOLL_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (epfd < 0 || tfd < 0) die("epoll/timerfd");
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);

    pend_cap = 1 << 20;
    pending = malloc(pend_cap * sizeof *pending);
    idle = calloc((size_t)nconns + 1, sizeof *idle);
    if (!newconn) {
        pool = calloc((size_t)nconns, sizeof *pool);
        for (int i = 0; i < nconns; i++)
            if (!(pool[i] = new_conn())) die("connect");
        /* Wait for the pool before the clock starts. */
        uint64_t deadline = now_ns() + 5000000000ULL;
        struct epoll_event evs[256];
        while (idle_tail - idle_head < (size_t)nconns) {
            if (now_ns() > deadline) { errno = ETIMEDOUT; die("connect pool"); }
            int n = epoll_wait(epfd, evs, 256, 100);
            for (int i = 0; i < n; i++)
                if (evs[i].data.ptr) on_event(evs[i].data.ptr, evs[i].events);
        }
    }

    double cpu0 = cpu_seconds(RUSAGE_SELF, 0) + cpu_seconds(RUSAGE_SELF, 1);
    double interval = 1e9 / rate;
    uint64_t total = (uint64_t)((warmup + duration) * rate);
    t_start = now_ns() + 1000000; /* 1 ms from now */
    t_measure = t_start + (uint64_t)(warmup * 1e9);
    t_end = t_start + (uint64_t)((warmup + duration) * 1e9);
    uint64_t i_next = 0;
    uint64_t next_at = t_start;
    arm(tfd, next_at);
    uint64_t drain_deadline = t_end + (uint64_t)(drain_timeout * 1e9);
    struct epoll_event evs[512];
    for (;;) {
        uint64_t now = now_ns();
        int busy = 0;
        if (!newconn) {
            busy = pend_head < pend_tail || idle_tail - idle_head < (size_t)nconns;
        } else {
            busy = newconn_open > 0;
        }
        if (i_next >= total && (!busy || now > drain_deadline)) break;
        int timeout = (i_next >= total) ? 10 : -1;
        int n = epoll_wait(epfd, evs, 512, timeout);
        for (int k = 0; k < n; k++) {
            conn_t *c = evs[k].data.ptr;
            if (c) {
                on_event(c, evs[k].events);
                continue;
            }
            uint64_t expirations;
            if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN) die("timerfd");
            now = now_ns();
            while (i_next < total && next_at <= now) {
                if (next_at >= t_measure) {
                    scheduled_measured++;
                    hist_record(&lag, (now - next_at) / 1000);
                }
                if (newconn) {
                    if (newconn_open >= MAX_NEWCONN) { if (next_at >= t_measure) dropped++; }
                    else {
                        conn_t *nc = new_conn();
                        if (!nc) { if (next_at >= t_measure) conn_errors++; }
                        else {
                            nc->sched = next_at;
                            nc->measured = next_at >= t_measure;
                            newconn_open++;
                        }
                    }
                } else {
                    pend_push(next_at);
                }
                i_next++;
                next_at = t_start + (uint64_t)((double)i_next * interval);
            }
            if (!newconn) dispatch();
            if (i_next < total) arm(tfd, next_at);
        }
    }
    uint64_t t_done = now_ns();
    /* What never finished counts as a timeout, at the latency it had reached. */
    if (!newconn) {
        while (pend_head < pend_tail) {
            uint64_t s = pending[pend_head++ % pend_cap];
            if (s >= t_measure) { timeouts++; hist_record(&latency, (t_done - s) / 1000); }
        }
        for (int i = 0; i < nconns; i++)
            if (pool[i]->state == C_BUSY && pool[i]->measured) {
                timeouts++;
                hist_record(&latency, (t_done - pool[i]->sched) / 1000);
            }
    } else {
        timeouts += newconn_open; /* warm-up ones are long over by now */
    }
    double cpu = cpu_seconds(RUSAGE_SELF, 0) + cpu_seconds(RUSAGE_SELF, 1) - cpu0;

    printf("{\"mode\": \"%s\", \"rate\": %.3f, \"duration_s\": %.3f, \"warmup_s\": %.3f, "
           "\"conns\": %d, \"body_bytes\": %d, \"scheduled\": %llu, \"completed\": %llu, "
           "\"status_errors\": %llu, \"conn_errors\": %llu, \"timeouts\": %llu, \"dropped\": %llu, "
           "\"elapsed_s\": %.3f, \"cpu_s\": %.4f, ",
           newconn ? "newconn" : "keepalive", rate, duration, warmup, newconn ? 0 : nconns,
           body_size, (unsigned long long)scheduled_measured, (unsigned long long)completed,
           (unsigned long long)status_errors, (unsigned long long)conn_errors,
           (unsigned long long)timeouts, (unsigned long long)dropped,
           (double)(t_done - t_start) / 1e9, cpu);
    hist_print("latency", &latency);
    printf(", ");
    hist_print("lag", &lag);
    printf("}\n");
    return 0;
}
