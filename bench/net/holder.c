/* bench/net/holder.c: holds N idle keep-alive connections open (suite B).
 *
 *   holder PORT N MAXSECONDS
 *
 * For each of the N connections, one after the other: connect to 127.0.0.1:PORT, send one full
 * request, read the complete response and compare it byte for byte with the expected one. So
 * when the holder says "held N", the server has accepted every connection, served one request on
 * it and is waiting for the next request on all N of them (each is then an idle keep-alive
 * connection in the server's read set). Then the holder sends nothing more and sleeps until
 * killed, or at most MAXSECONDS (alarm), so it can never outlive a crashed driver for long.
 *
 * Every read has a 10 s timeout (SO_RCVTIMEO). On any failure it prints
 * "FAIL at connection I/N: reason" and exits 1 (the connections made so far close with it). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static const char REQUEST[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 13\r\n"
    "Connection: keep-alive\r\n"
    "\r\n"
    "Hello, World!";

int main(int argc, char **argv) {
  if (argc < 4) { fprintf(stderr, "usage: holder PORT N MAXSECONDS\n"); return 2; }
  int port = atoi(argv[1]), n = atoi(argv[2]), maxs = atoi(argv[3]);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct timeval tv = {.tv_sec = 10};
  size_t rlen = sizeof(RESPONSE) - 1;
  char buf[sizeof(RESPONSE) + 64];
  alarm((unsigned)maxs); /* SIGALRM terminates the holder */
  for (int i = 1; i <= n; i++) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) { printf("FAIL at connection %d/%d: socket: %s\n", i, n, strerror(errno)); return 1; }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
      printf("FAIL at connection %d/%d: connect: %s\n", i, n, strerror(errno));
      return 1;
    }
    if (send(fd, REQUEST, sizeof(REQUEST) - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof(REQUEST) - 1)) {
      printf("FAIL at connection %d/%d: send: %s\n", i, n, strerror(errno));
      return 1;
    }
    size_t got = 0;
    while (got < rlen) {
      ssize_t r = recv(fd, buf + got, rlen - got, 0);
      if (r <= 0) {
        printf("FAIL at connection %d/%d: response: %s after %zu bytes\n", i, n,
               r == 0 ? "closed by the server" : strerror(errno), got);
        return 1;
      }
      got += (size_t)r;
    }
    if (memcmp(buf, RESPONSE, rlen) != 0) {
      printf("FAIL at connection %d/%d: wrong response\n", i, n);
      return 1;
    }
  }
  printf("held %d\n", n);
  fflush(stdout);
  for (;;) pause();
}
