/* bench/net/native_recv.c: the native receiver of suite D (the reference point).
 *
 *   native_recv PORT
 *
 * Listens on 127.0.0.1:PORT, prints "ready", accepts one connection, reads it with blocking
 * recv() into an 8192-byte buffer until the peer closes, then prints the same RESULT line as
 * receiver.lua: byte count, whether every chunk matched the sender's pattern (first and last
 * byte of each chunk, the same check as receiver.lua), and the wall time from accept to close. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: native_recv PORT\n"); return 2; }
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[1]))};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 16) < 0) {
    perror("native_recv: bind/listen");
    return 1;
  }
  printf("IMPL native receiver (C, blocking recv, 8192-byte buffer)\nready\n");
  fflush(stdout);
  int c = accept(ls, NULL, NULL);
  if (c < 0) { perror("native_recv: accept"); return 1; }
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  static unsigned char buf[8192];
  long long total = 0;
  int ok = 1;
  const char *end = "closed";
  for (;;) {
    ssize_t r = recv(c, buf, sizeof buf, 0);
    if (r == 0) break;
    if (r < 0) {
      if (errno == EINTR) continue;
      end = "error";
      perror("native_recv: recv");
      break;
    }
    if (buf[0] != total % 251 || buf[r - 1] != (total + r - 1) % 251) ok = 0;
    total += r;
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  close(c);
  printf("RESULT bytes=%lld pattern=%s wall=%.6f end=%s\n", total, ok ? "ok" : "BAD",
         (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9, end);
  return 0;
}
