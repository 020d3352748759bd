/* bench/net/native_recv.c: the native receiver of suite D (the reference point).
 *
 *   native_recv PORT [all]
 *
 * Listens on 127.0.0.1:PORT, prints "ready", accepts one connection, reads it with blocking
 * recv() until the peer closes, then prints the same RESULT line as receiver.lua: byte count,
 * whether every chunk matched the sender's pattern (first and last byte of each chunk, the same
 * check as receiver.lua), and the wall time from accept to close.
 *
 * Without "all" it reads into one 8192-byte buffer (the reference for receive(8192)). With "all"
 * it does what receive("*a") must: keeps everything, reading 64 KiB at a time into a buffer
 * that doubles as it fills, and at the end copies it into one fresh allocation of exactly its
 * size (a Lua string is such a copy); fresh memory is what that costs on this machine. */
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
  printf("IMPL native receiver (C, blocking recv, %s)\nready\n",
         argc > 2 && strcmp(argv[2], "all") == 0 ? "all kept, then one copy" : "8192-byte buffer");
  fflush(stdout);
  int c = accept(ls, NULL, NULL);
  if (c < 0) { perror("native_recv: accept"); return 1; }
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  static unsigned char chunk[8192];
  const int all = argc > 2 && strcmp(argv[2], "all") == 0;
  const size_t step = all ? 65536 : sizeof chunk;
  size_t cap = all ? 2 * step : 0;
  unsigned char *kept = all ? malloc(cap) : NULL;
  long long total = 0;
  int ok = 1;
  const char *end = "closed";
  for (;;) {
    if (all && (size_t)total + step > cap) {
      cap *= 2;
      kept = realloc(kept, cap);
      if (kept == NULL) { perror("native_recv: realloc"); return 1; }
    }
    unsigned char *buf = all ? kept + total : chunk;
    ssize_t r = recv(c, buf, step, 0);
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
  if (all) {
    unsigned char *result = malloc(total > 0 ? (size_t)total : 1);
    if (result == NULL) { perror("native_recv: malloc"); return 1; }
    memcpy(result, kept, (size_t)total);
    free(kept);
    if (total > 0 && result[total - 1] != (total - 1) % 251) ok = 0;
    free(result);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  close(c);
  printf("RESULT bytes=%lld pattern=%s wall=%.6f end=%s\n", total, ok ? "ok" : "BAD",
         (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9, end);
  return 0;
}
