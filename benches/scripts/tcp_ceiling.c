// What the kernel's TCP loopback allows two processes on this machine, with no
// library in between: the ceiling that braid and Open MPI are measured
// against in docs/performance.md (issue 3's bandwidth target).
//
//   oneway S:   process A writes S bytes, process B reads them (a broadcast
//               of S at N = 2 moves exactly this);
//   exchange S: both write S bytes to the other and read S bytes at once,
//               non-blocking (an all-gather of 2S at N = 2; an all-reduce of
//               2S moves two of these, plus its reduction).
//
// Each sample starts both processes at an agreed moment of the shared
// monotonic clock and ends when the last byte is read on both sides, so no
// acknowledgement's latency is counted. Sockets as braid sets them: 32 MiB
// buffers, TCP_NODELAY; A runs on CPU 0 and B on CPU 1.
//
// Build: gcc -O2 -o tcp_ceiling tcp_ceiling.c
// Usage: tcp_ceiling oneway|exchange BYTES SAMPLES
// Prints: mode bytes samples best_us median_us (of the slower side).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof set, &set);  // best effort: fewer CPUs is fine
}

static void tune(int fd) {
  int one = 1, buf = 32 << 20;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void full(int fd, void *p, size_t n, int out) {
  char *c = p;
  while (n > 0) {
    ssize_t k = out ? write(fd, c, n) : read(fd, c, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) die(out ? "write" : "read");
    c += k;
    n -= (size_t)k;
  }
}

// Moves `send` bytes out and `recv` bytes in on a non-blocking socket,
// spinning (each process has a core of its own; sleeping in poll only adds
// wake-ups).
static void transfer(int fd, char *out, size_t send, char *in, size_t recv) {
  size_t sent = 0, got = 0;
  int64_t deadline = now_ns() + 10000000000LL;
  while (sent < send || got < recv) {
    if (sent < send) {
      ssize_t k = write(fd, out + sent, send - sent);
      if (k > 0) sent += (size_t)k;
      else if (k < 0 && errno != EAGAIN && errno != EINTR) die("write");
    }
    if (got < recv) {
      ssize_t k = read(fd, in + got, recv - got);
      if (k > 0) got += (size_t)k;
      else if (k == 0) die("peer closed");
      else if (errno != EAGAIN && errno != EINTR) die("read");
    }
    if (now_ns() > deadline) die("transfer took over 10 s");
  }
}

static int cmp(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc != 4 || (strcmp(argv[1], "oneway") && strcmp(argv[1], "exchange"))) {
    fprintf(stderr, "usage: %s oneway|exchange BYTES SAMPLES\n", argv[0]);
    return 2;
  }
  int exchange = strcmp(argv[1], "exchange") == 0;
  size_t bytes = strtoull(argv[2], 0, 10);
  int samples = atoi(argv[3]);
  if (bytes == 0 || samples <= 0) return 2;

  int listener = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof addr;
  if (bind(listener, (void *)&addr, len) || listen(listener, 1) ||
      getsockname(listener, (void *)&addr, &len))
    die("listen");
  pid_t child = fork();
  int is_a = child != 0, fd;
  if (is_a) {
    fd = accept(listener, 0, 0);
  } else {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    tune(fd);
    if (connect(fd, (void *)&addr, len)) die("connect");
  }
  tune(fd);
  pin(is_a ? 0 : 1);
  char *out = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
  char *in = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
  memset(out, is_a ? 1 : 2, bytes);
  memset(in, 0, bytes);
  int64_t *times = calloc((size_t)samples + 1, sizeof *times);
  for (int s = -1; s < samples; s++) {  // sample -1 warms up
    // A names the start, 200 µs ahead; B answers with when it finished.
    int64_t start;
    if (is_a) {
      start = now_ns() + 200000;
      full(fd, &start, sizeof start, 1);
    } else {
      full(fd, &start, sizeof start, 0);
    }
    // The last step's reply was read before the start: the socket is idle.
    if (fcntl(fd, F_SETFL, O_NONBLOCK) < 0) die("fcntl");
    while (now_ns() < start) {
    }
    if (exchange) transfer(fd, out, bytes, in, bytes);
    else if (is_a) transfer(fd, out, bytes, in, 0);
    else transfer(fd, out, 0, in, bytes);
    int64_t done = now_ns();
    if (fcntl(fd, F_SETFL, 0) < 0) die("fcntl");
    if (is_a) {
      int64_t other;
      full(fd, &other, sizeof other, 0);
      if (s >= 0) times[s] = (other > done ? other : done) - start;
    } else {
      full(fd, &done, sizeof done, 1);
    }
  }
  if (!is_a) return 0;
  int status;
  waitpid(child, &status, 0);
  qsort(times, (size_t)samples, sizeof *times, cmp);
  printf("%s %zu %d %.1f %.1f\n", argv[1], bytes, samples, times[0] / 1e3,
         times[samples / 2] / 1e3);
  return 0;
}
