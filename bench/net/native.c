/* bench/net/native.c: the reference point for suite A and B, a minimal single-threaded
 * epoll HTTP responder (level-triggered, non-blocking, keep-alive).
 *
 *   native PORT
 *
 * Listens on 127.0.0.1:PORT (backlog 8192), prints "ready", then for every connection reads
 * until "\r\n\r\n" (the end of a request head; bodies are not expected) and answers each request
 * with the same fixed response as server.lua. A connection is closed when the peer closes it or
 * on an error. Runs until killed. Partial writes are kept per connection (EPOLLOUT). Socket
 * options are left at their defaults, as LuaSocket leaves them (no TCP_NODELAY). */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 13\r\n"
    "Connection: keep-alive\r\n"
    "\r\n"
    "Hello, World!";
#define RLEN (sizeof(RESPONSE) - 1)

struct conn {
  unsigned char match;   /* how much of "\r\n\r\n" has been seen */
  unsigned char wantout; /* EPOLLOUT registered */
  unsigned int pending;  /* responses not yet fully written */
  unsigned int off;      /* bytes of the first pending response already written */
};

static struct conn *conns;
static int nconns;
static int ep;

static void drop(int fd) {
  epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
  close(fd);
}

/* write as many pending responses as the socket takes; 0 ok, -1 closed */
static int flush_out(int fd) {
  struct conn *c = &conns[fd];
  static char buf[64 * RLEN];
  while (c->pending > 0) {
    unsigned int n = c->pending < 64 ? c->pending : 64;
    size_t len = 0;
    for (unsigned int i = 0; i < n; i++) {
      memcpy(buf + len, RESPONSE, RLEN);
      len += RLEN;
    }
    ssize_t w = send(fd, buf + c->off, len - c->off, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return -1;
    }
    size_t done = c->off + (size_t)w;
    c->pending -= (unsigned int)(done / RLEN);
    c->off = (unsigned int)(done % RLEN);
  }
  int want = c->pending > 0;
  if (want != c->wantout) {
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    c->wantout = (unsigned char)want;
  }
  return 0;
}

static void on_readable(int fd) {
  struct conn *c = &conns[fd];
  char buf[16384];
  for (;;) {
    ssize_t r = recv(fd, buf, sizeof buf, 0);
    if (r == 0) { drop(fd); return; }
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      drop(fd);
      return;
    }
    for (ssize_t i = 0; i < r; i++) {
      char ch = buf[i];
      switch (c->match) {
        case 0: c->match = ch == '\r'; break;
        case 1: c->match = ch == '\n' ? 2 : ch == '\r'; break;
        case 2: c->match = ch == '\r' ? 3 : 0; break;
        case 3:
          if (ch == '\n') { c->pending++; c->match = 0; }
          else c->match = ch == '\r';
          break;
      }
    }
    if ((size_t)r < sizeof buf) break; /* drained (level-triggered: more will be reported) */
  }
  if (c->pending > 0 && !c->wantout && flush_out(fd) < 0) drop(fd);
}

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: native PORT\n"); return 2; }
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  nconns = (int)(rl.rlim_cur > 1000000 ? 1000000 : rl.rlim_cur) + 16;
  conns = calloc((size_t)nconns, sizeof *conns);

  int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 8192) < 0) {
    perror("native: bind/listen");
    return 1;
  }
  ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  printf("IMPL native epoll responder (C, level-triggered)\nready\n");
  fflush(stdout);

  struct epoll_event evs[512];
  for (;;) {
    int n = epoll_wait(ep, evs, 512, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("native: epoll_wait");
      return 1;
    }
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == ls) {
        for (;;) {
          int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
          if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) perror("native: accept");
            break;
          }
          if (c >= nconns) { close(c); continue; }
          memset(&conns[c], 0, sizeof conns[c]);
          struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
        }
        continue;
      }
      uint32_t e = evs[i].events;
      if (e & EPOLLOUT) {
        if (flush_out(fd) < 0) { drop(fd); continue; }
      }
      if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(fd);
    }
  }
}
