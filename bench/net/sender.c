/* bench/net/sender.c: the sending side of suite D.
 *
 *   sender PORT BYTES
 *
 * Connects to 127.0.0.1:PORT, writes exactly BYTES bytes and closes. The data is a fixed
 * pattern: the byte at stream offset o is o % 251, so a receiver can check any chunk from its
 * offset alone (receiver.lua and native_recv.c check the first and the last byte of every chunk
 * they get, plus the total count). The pattern is written from a 1 MB buffer whose length is a
 * multiple of 251. Prints "sent BYTES seconds" on success; exits 1 on any error. */
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

#define BUFLEN (251 * 4096)

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: sender PORT BYTES\n"); return 2; }
  int port = atoi(argv[1]);
  long long total = atoll(argv[2]);
  static unsigned char buf[BUFLEN];
  for (int i = 0; i < BUFLEN; i++) buf[i] = (unsigned char)(i % 251);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    printf("FAIL connect: %s\n", strerror(errno));
    return 1;
  }
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  long long sent = 0;
  while (sent < total) {
    size_t off = (size_t)(sent % BUFLEN);
    size_t len = BUFLEN - off;
    if ((long long)len > total - sent) len = (size_t)(total - sent);
    ssize_t w = send(fd, buf + off, len, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      printf("FAIL send after %lld bytes: %s\n", sent, strerror(errno));
      return 1;
    }
    sent += w;
  }
  if (close(fd) < 0) { printf("FAIL close: %s\n", strerror(errno)); return 1; }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  printf("sent %lld %.6f\n", sent, (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
  return 0;
}
