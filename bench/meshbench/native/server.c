/* Minimal HTTP/1.1 server for the mesh benchmark: answers every request with 1 KiB.

   One thread, epoll, keep-alive and pipelining; a request body is read by its Content-Length
   and thrown away; "Connection: close" closes after the answer. Small and in C so the server
   costs next to nothing next to the proxies being measured. */

#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSZ 65536

typedef struct {
    int fd;
    char in[BUFSZ];
    size_t len;
    size_t skip; /* body bytes of the current request still to discard */
    char *out;
    size_t out_len, out_pos;
    int close_after;
} conn_t;

static char *response;
static size_t response_len;
static int epfd;

static void drop(conn_t *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->out);
    free(c);
}

static void queue(conn_t *c, const char *data, size_t n) {
    if (c->out_pos == c->out_len) c->out_pos = c->out_len = 0;
    c->out = realloc(c->out, c->out_len + n);
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
}

/* Write what is queued; 1 when all is written, 0 when the socket is full, -1 on error. */
static int flush(conn_t *c) {
    while (c->out_pos < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_pos, c->out_len - c->out_pos, MSG_NOSIGNAL);
        if (n < 0) return errno == EAGAIN ? 0 : -1;
        c->out_pos += (size_t)n;
    }
    return 1;
}

static size_t header_value(const char *head, size_t n, const char *name) {
    size_t k = strlen(name);
    for (size_t i = 0; i + k < n; i++)
        if ((i == 0 || head[i - 1] == '\n') && strncasecmp(head + i, name, k) == 0)
            return i + k;
    return 0;
}

/* Answer every complete request in the buffer; -1 when the input is not HTTP we accept. */
static int serve(conn_t *c) {
    size_t pos = 0;
    for (;;) {
        if (c->skip) {
            size_t take = c->len - pos < c->skip ? c->len - pos : c->skip;
            pos += take;
            c->skip -= take;
            if (c->skip) break;
        }
        char *end = memmem(c->in + pos, c->len - pos, "\r\n\r\n", 4);
        if (!end) {
            if (c->len - pos == BUFSZ) return -1;
            break;
        }
        size_t head = (size_t)(end - (c->in + pos)) + 4;
        size_t at = header_value(c->in + pos, head, "content-length:");
        size_t body = at ? strtoul(c->in + pos + at, NULL, 10) : 0;
        size_t conn = header_value(c->in + pos, head, "connection:");
        if (conn) {
            const char *v = c->in + pos + conn;
            while (*v == ' ') v++;
            if (strncasecmp(v, "close", 5) == 0) c->close_after = 1;
        }
        queue(c, response, response_len);
        pos += head;
        c->skip = body;
        if (c->close_after) { c->skip = 0; pos = c->len; break; }
    }
    memmove(c->in, c->in + pos, c->len - pos);
    c->len -= pos;
    return 0;
}

static void on_readable(conn_t *c) {
    for (;;) {
        ssize_t n = recv(c->fd, c->in + c->len, BUFSZ - c->len, 0);
        if (n < 0 && errno == EAGAIN) break;
        if (n <= 0) { drop(c); return; }
        c->len += (size_t)n;
        if (serve(c) < 0) { drop(c); return; }
    }
    int f = flush(c);
    if (f < 0 || (f == 1 && c->close_after)) { drop(c); return; }
    struct epoll_event ev = {.events = f ? EPOLLIN : (EPOLLIN | EPOLLOUT), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 8080;
    int size = argc > 2 ? atoi(argv[2]) : 1024;
    signal(SIGPIPE, SIG_IGN);
    char head[160];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     "Content-Length: %d\r\n\r\n", size);
    response_len = (size_t)n + (size_t)size;
    response = malloc(response_len);
    memcpy(response, head, (size_t)n);
    memset(response + n, 'y', (size_t)size);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 4096) < 0) {
        perror("bind/listen");
        return 1;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev);
    fprintf(stderr, "serving %d-byte answers on :%d\n", size, port);
    struct epoll_event evs[256];
    for (;;) {
        int k = epoll_wait(epfd, evs, 256, -1);
        for (int i = 0; i < k; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c) {
                if (evs[i].events & EPOLLOUT) {
                    int f = flush(c);
                    if (f < 0 || (f == 1 && c->close_after)) { drop(c); continue; }
                }
                on_readable(c);
                continue;
            }
            for (;;) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) break;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                conn_t *nc = calloc(1, sizeof *nc);
                nc->fd = fd;
                struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
            }
        }
    }
}
