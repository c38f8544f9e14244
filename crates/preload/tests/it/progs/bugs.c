/* Bug scenarios for the ukasan preload tests: ./bugs <scenario>. Built with -rdynamic so
 * dladdr names the functions in reports. Every bad access goes through a volatile pointer
 * so the compiler keeps it. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static long tid(void) { return syscall(SYS_gettid); }

__attribute__((noinline)) char *do_alloc(size_t n) {
  char *p = malloc(n);
  __asm__ volatile("" ::: "memory");
  return p;
}

__attribute__((noinline)) void do_free(char *p) {
  free(p);
  __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void poke(char *p, long off, char v) {
  ((volatile char *)p)[off] = v;
}

void *free_in_thread(void *arg) {
  printf("free_tid=%ld\n", tid());
  do_free(arg);
  return NULL;
}

/* Allocates and frees 3 MiB in 64 KiB pieces: pushes older objects out of a 1 MiB quarantine.
 * Calls free itself, so reports of what it evicts can tell it from do_free. */
__attribute__((noinline)) void churn(void) {
  for (int i = 0; i < 48; i++) {
    free(do_alloc(64 << 10));
    __asm__ volatile("" ::: "memory");
  }
}

char *keep; /* a global root: what it points to is not a leak */

/* 2^level distinct call paths: each level calls down from one of two call sites. */
static volatile int sink_a, sink_b;
__attribute__((noinline)) void walk(unsigned bits, int level) {
  if (level == 0) {
    do_free(do_alloc(8));
    return;
  }
  if (bits & 1) {
    walk(bits >> 1, level - 1);
    sink_a++;
  } else {
    walk(bits >> 1, level - 1);
    sink_b++;
  }
}

int main(int argc, char **argv) {
  const char *s = argc > 1 ? argv[1] : "";
  printf("main_tid=%ld\n", tid());
  fflush(stdout);
  if (!strcmp(s, "double-free")) {
    char *p = do_alloc(64);
    pthread_t t;
    pthread_create(&t, NULL, free_in_thread, p);
    pthread_join(t, NULL);
    fflush(stdout);
    do_free(p);
  } else if (!strcmp(s, "invalid-free-stack")) {
    char local[64];
    do_free(local + 16);
  } else if (!strcmp(s, "invalid-free-interior")) {
    char *p = do_alloc(64);
    do_free(p + 8);
    do_free(p);
  } else if (!strcmp(s, "overflow-at-free")) {
    char *p = do_alloc(13);
    poke(p, 13, 'x');
    do_free(p);
  } else if (!strcmp(s, "underflow-at-free")) {
    char *p = do_alloc(40);
    poke(p, -2, 'x');
    do_free(p);
  } else if (!strcmp(s, "overflow-at-exit")) {
    keep = do_alloc(24);
    poke(keep, 30, 'x');
  } else if (!strcmp(s, "uaf-at-eviction")) {
    char *p = do_alloc(32);
    do_free(p);
    poke(p, 5, 7);
    churn();
    printf("churned\n");
  } else if (!strcmp(s, "overflow-at-eviction")) {
    /* A write past the end after the free lands in the redzone: out-of-bounds. */
    char *p = do_alloc(32);
    do_free(p);
    poke(p, 33, 7);
    churn();
    printf("churned\n");
  } else if (!strcmp(s, "uaf-at-exit")) {
    char *p = do_alloc(48);
    do_free(p);
    poke(p, 40, 7);
  } else if (!strcmp(s, "leak")) {
    keep = do_alloc(1000);
    for (int i = 0; i < 3; i++) {
      char *p = do_alloc(40);
      poke(p, 0, 1);
    }
  } else if (!strcmp(s, "double-free-loop")) {
    /* The same bug three times: one report (deduplicated by signature). */
    for (int i = 0; i < 3; i++) {
      char *p = do_alloc(16);
      do_free(p);
      do_free(p);
    }
  } else if (!strcmp(s, "many-stacks")) {
    /* 2 x 16384 distinct stacks of ~20 frames: about 5 MiB of depot records. */
    for (unsigned i = 0; i < (1u << 14); i++) walk(i, 14);
  } else if (!strcmp(s, "clean")) {
    char *p = do_alloc(100);
    memset(p, 1, 100);
    do_free(p);
  } else {
    fprintf(stderr, "unknown scenario %s\n", s);
    return 2;
  }
  printf("end\n");
  return 0;
}
