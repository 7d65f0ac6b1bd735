/* c_epoll_echo: the floor for the side-by-side benchmark. A plain edge-triggered
 * epoll echo server in C, written the way a careful C programmer would: one
 * thread, one 64 KiB read buffer shared by all connections, a write-back buffer
 * per connection only while the socket is full, read until a short read or
 * EAGAIN, no timers, no statistics, no allocation per message.
 *
 *   c_epoll_echo [--listen 127.0.0.1:0]
 *
 * Prints `listening on IP:PORT`; SIGINT/SIGTERM exit 0. IPv4 only. It exists to
 * show how much of a server's user-mode CPU per message any server pays (the
 * system-call boundary) and how much is the event loop's own.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF (64 * 1024)
#define MAX_FD 65536

struct conn {
    char *pending; /* bytes the socket did not take yet, or NULL */
    size_t off, len;
    int read_eof;
};

static struct conn conns[MAX_FD];
static char buf[BUF];
static volatile sig_atomic_t stop;

static void on_signal(int s) { (void)s; stop = 1; }

static void drop_conn(int fd) {
    free(conns[fd].pending);
    memset(&conns[fd], 0, sizeof conns[fd]);
    close(fd);
}

/* Sends what is pending; 1 when nothing is left, 0 when the socket is full, -1 on
 * error. */
static int flush_pending(int fd) {
    struct conn *c = &conns[fd];
    while (c->pending && c->off < c->len) {
        ssize_t k = send(fd, c->pending + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (k < 0) return errno == EAGAIN ? 0 : -1;
        c->off += (size_t)k;
    }
    free(c->pending);
    c->pending = NULL;
    c->off = c->len = 0;
    return 1;
}

/* Echoes `n` bytes of buf, keeping what the socket does not take. */
static int echo(int fd, size_t n) {
    size_t w = 0;
    while (w < n) {
        ssize_t k = send(fd, buf + w, n - w, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno != EAGAIN) return -1;
            struct conn *c = &conns[fd];
            c->pending = malloc(n - w);
            if (!c->pending) return -1;
            memcpy(c->pending, buf + w, n - w);
            c->off = 0;
            c->len = n - w;
            return 0;
        }
        w += (size_t)k;
    }
    return 1;
}

static void handle(int fd, unsigned events) {
    struct conn *c = &conns[fd];
    if (c->pending) {
        int r = flush_pending(fd);
        if (r < 0) { drop_conn(fd); return; }
        if (r == 0) return; /* still full: wait for EPOLLOUT, read nothing meanwhile */
        /* Drained: data that came while we did not read made its edge already. */
    } else if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
        return; /* writable only, nothing pending: the next data makes an edge */
    }
    while (!c->read_eof) {
        ssize_t r = read(fd, buf, BUF);
        if (r > 0) {
            int e = echo(fd, (size_t)r);
            if (e < 0) { drop_conn(fd); return; }
            if (e == 0) return;       /* socket full: resume on EPOLLOUT */
            if (r < BUF) break;       /* short read: the socket is empty */
            continue;
        }
        if (r == 0) { c->read_eof = 1; break; }
        if (errno == EAGAIN) break;
        if (errno == EINTR) continue;
        drop_conn(fd);
        return;
    }
    if (c->read_eof && !c->pending) {
        shutdown(fd, SHUT_WR);
        drop_conn(fd);
    }
}

int main(int argc, char **argv) {
    const char *listen_at = "127.0.0.1:0";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) listen_at = argv[++i];
        else { fprintf(stderr, "usage: %s [--listen IP:PORT]\n", argv[0]); return 2; }
    }
    char host[64];
    const char *colon = strrchr(listen_at, ':');
    if (!colon || (size_t)(colon - listen_at) >= sizeof host) {
        fprintf(stderr, "c_epoll_echo: bad --listen %s\n", listen_at);
        return 2;
    }
    memcpy(host, listen_at, (size_t)(colon - listen_at));
    host[colon - listen_at] = 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "c_epoll_echo: bad address %s (IPv4 only)\n", host);
        return 2;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    int one = 1;
    int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1024) < 0) {
        perror("c_epoll_echo: listen");
        return 1;
    }
    socklen_t al = sizeof a;
    getsockname(l, (struct sockaddr *)&a, &al);
    printf("listening on %s:%d\n", host, ntohs(a.sin_port));
    fflush(stdout);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    struct epoll_event evs[1024];
    while (!stop) {
        int n = epoll_wait(ep, evs, 1024, 200);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd != l) { handle(fd, evs[i].events); continue; }
            for (;;) {
                int c = accept4(l, NULL, NULL, SOCK_NONBLOCK);
                if (c < 0) break; /* EAGAIN, or EMFILE: the next connection retries */
                if (c >= MAX_FD) { close(c); continue; }
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                struct epoll_event e = {.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP,
                                        .data.fd = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
            }
        }
    }
    return 0;
}
