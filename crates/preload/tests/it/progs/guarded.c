/* Guarded-mode scenarios for the ukasan preload tests: ./guarded <scenario>. Run with
 * UKASAN_OPTIONS=mode=guarded:sample_rate=1 so every small allocation is guarded. Every bad
 * access goes through a volatile pointer so the compiler keeps it; each access function
 * prints what it read, so a run that survives shows the access completed. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
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

__attribute__((noinline)) int peek(char *p, long off) {
  int v = ((volatile char *)p)[off];
  __asm__ volatile("" ::: "memory");
  return v;
}

__attribute__((noinline)) void poke(char *p, long off, char v) {
  ((volatile char *)p)[off] = v;
  __asm__ volatile("" ::: "memory");
}

static void *free_in_thread(void *arg) {
  printf("free_tid=%ld\n", tid());
  do_free(arg);
  return NULL;
}

static volatile int depth_sink;
__attribute__((noinline)) int recurse(int n) {
  volatile char pad[1024];
  pad[0] = (char)n;
  depth_sink += pad[0];
  return recurse(n + 1) + pad[0];
}

static char *own_page;
static struct sigaction old_action;

/* A well-behaved handler installed after the detector's: handles faults on own_page and
 * passes the others to the handler it replaced. */
static void late_handler(int sig, siginfo_t *si, void *uc) {
  if ((char *)si->si_addr >= own_page && (char *)si->si_addr < own_page + 8192) {
    write(1, "late handler ran\n", 17);
    mprotect(own_page, 8192, PROT_READ | PROT_WRITE);
    return;
  }
  if (old_action.sa_flags & SA_SIGINFO)
    old_action.sa_sigaction(sig, si, uc);
  else if (old_action.sa_handler != SIG_DFL && old_action.sa_handler != SIG_IGN)
    old_action.sa_handler(sig);
  else
    signal(sig, SIG_DFL);
}

/* Allocates, checks and frees objects of many sizes; returns 1 if a byte changed. */
static void *churn_thread(void *arg) {
  unsigned seed = (unsigned)(size_t)arg;
  char *live[32] = {0};
  for (int i = 0; i < 20000; i++) {
    int k = (seed = seed * 1103515245u + 12345u) % 32;
    if (live[k]) {
      size_t n = malloc_usable_size(live[k]);
      for (size_t j = 0; j < n; j++)
        if (live[k][j] != (char)k)
          return (void *)1;
      if (i % 3 == 0) {
        live[k] = realloc(live[k], n + 100);
        memset(live[k], k, n + 100);
        continue;
      }
      free(live[k]);
      live[k] = NULL;
    } else {
      size_t n = 1 + (seed >> 8) % 3000;
      live[k] = malloc(n);
      memset(live[k], k, n);
    }
  }
  for (int k = 0; k < 32; k++)
    free(live[k]);
  return NULL;
}

/* A thread that overflows its stack (after a guarded allocation, so it has the detector's
 * alternate signal stack). */
static void *overflow_thread(void *arg) {
  (void)arg;
  do_free(do_alloc(16));
  printf("%d\n", recurse(0));
  return NULL;
}

/* A thread with an alternate signal stack of its own that is just big enough for the
 * kernel's signal frame (AT_MINSIGSTKSZ, 3376 bytes with AVX-512) plus 2 KiB, over a guard
 * page: a heap fault there must still be reported (the report runs on a stack of its own). */
static void *tiny_altstack_thread(void *arg) {
  size_t min = getauxval(AT_MINSIGSTKSZ);
  size_t size = (min > 2048 ? min : 2048) + 2048;
  char *m = mmap(NULL, 4096 + size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  mprotect(m, 4096, PROT_NONE);
  stack_t st = {.ss_sp = m + 4096, .ss_flags = 0, .ss_size = size};
  sigaltstack(&st, NULL);
  printf("read=%d\n", peek(arg, 32));
  return NULL;
}

/* Recurses until less than 1.5 KiB of the thread's stack is left, then reads one byte past
 * a guarded object: too little stack for the kernel's signal frame (AT_MINSIGSTKSZ), so
 * the fault can only be delivered on an alternate stack. */
static char *deep_obj;
static char *deep_floor;
__attribute__((noinline)) int go_deep(int n) {
  volatile char pad[512];
  pad[0] = (char)n;
  if ((char *)pad - deep_floor < 1536 + 512)
    return peek(deep_obj, 32) + pad[0];
  return go_deep(n + 1) + pad[0];
}
static void *deep_thread(void *arg) {
  (void)arg;
  pthread_attr_t a;
  void *lo;
  size_t size;
  pthread_getattr_np(pthread_self(), &a);
  pthread_attr_getstack(&a, &lo, &size);
  pthread_attr_destroy(&a);
  deep_floor = (char *)lo;
  do_free(do_alloc(8)); /* this thread's first allocation: it gets an alternate stack */
  printf("read=%d\n", go_deep(0));
  return NULL;
}

/* Frees and allocates guarded objects (small and large) until the process exits; every
 * live one is reachable from `churn_live`. */
static char *volatile churn_live[64];
static volatile int churn_started;
static void *exit_churn_thread(void *arg) {
  (void)arg;
  for (unsigned i = 0;; i++) {
    unsigned k = i % 64;
    char *old = churn_live[k];
    churn_live[k] = NULL;
    free(old);
    size_t n = k % 4 == 0 ? 20000 + k * 1000 : 16 + k * 8;
    char *p = malloc(n);
    memset(p, 0, n);
    churn_live[k] = p;
    if (i == 64)
      churn_started = 1;
  }
  return NULL;
}

struct node {
  struct node *next;
  char pad[40];
};

int main(int argc, char **argv) {
  const char *s = argc > 1 ? argv[1] : "";
  printf("main_tid=%ld\n", tid());
  fflush(stdout);
  if (!strcmp(s, "overflow-read")) {
    char *p = do_alloc(32);
    printf("read=%d\n", peek(p, 32));
  } else if (!strcmp(s, "overflow-write")) {
    char *p = do_alloc(48);
    poke(p, 48, 7);
    printf("wrote\n");
  } else if (!strcmp(s, "uaf-read")) {
    char *p = do_alloc(64);
    do_free(p);
    printf("read=%d\n", peek(p, 5));
  } else if (!strcmp(s, "uaf-write")) {
    char *p = do_alloc(64);
    do_free(p);
    poke(p, 9, 3);
    printf("wrote\n");
  } else if (!strcmp(s, "uaf-thread")) {
    char *p = do_alloc(80);
    pthread_t t;
    pthread_create(&t, NULL, free_in_thread, p);
    pthread_join(t, NULL);
    printf("read=%d\n", peek(p, 0));
  } else if (!strcmp(s, "slack-write")) {
    /* 13 bytes at 16-byte alignment: 3 bytes of slack before the guard page. */
    char *p = do_alloc(13);
    poke(p, 13, 'x');
    poke(p, -4, 'y');
    do_free(p);
    printf("freed\n");
  } else if (!strcmp(s, "double-free")) {
    char *p = do_alloc(24);
    do_free(p);
    do_free(p);
    printf("freed twice\n");
  } else if (!strcmp(s, "halt")) {
    char *p = do_alloc(32);
    printf("read=%d\n", peek(p, 32));
    printf("after\n");
  } else if (!strcmp(s, "own-handler")) {
    /* libguarded_own.so's constructor installed a SIGSEGV handler before the detector's
     * (see own_handler.c): faults outside the pool must still reach it. */
    own_page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    *(char **)dlsym(RTLD_DEFAULT, "own_handler_page") = own_page;
    own_page[10] = 5;
    printf("own fault handled=%d\n", own_page[10]);
    char *p = do_alloc(32);
    printf("read=%d\n", peek(p, 32));
  } else if (!strcmp(s, "own-handler-late")) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = late_handler;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, &old_action);
    own_page = mmap(NULL, 8192, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    own_page[1] = 1;
    /* The next guarded allocation puts the detector's handler back in front of ours. */
    char *p = do_alloc(32);
    mprotect(own_page, 8192, PROT_NONE);
    own_page[4097] = 2;
    printf("own faults handled=%d%d\n", own_page[1], own_page[4097]);
    printf("read=%d\n", peek(p, 32));
    fflush(stdout);
    /* A fault nobody owns: detector -> late_handler -> detector again: the default action,
     * not an endless loop. */
    *(volatile int *)16 = 1;
    printf("survived a wild write\n");
  } else if (!strcmp(s, "underflow-read")) {
    char *p = do_alloc(32);
    printf("read=%d\n", peek(p, -1));
  } else if (!strcmp(s, "underflow-write")) {
    char *p = do_alloc(40);
    poke(p, -1, 7);
    printf("wrote\n");
  } else if (!strcmp(s, "underflow-read-page")) {
    char *p = do_alloc(24);
    printf("read=%d\n", peek(p, -4096));
  } else if (!strcmp(s, "underflow-write-page")) {
    char *p = do_alloc(56);
    poke(p, -4096, 7);
    printf("wrote\n");
  } else if (!strcmp(s, "shared-guard")) {
    /* Random placement: find slots k-1 (object against its right guard page) and k (object
     * against its left one) that share a guard page, twice; fault in each shared page once,
     * near the one object and then near the other. */
    char *objs[200];
    size_t sizes[200];
    int found = 0;
    for (int i = 0; i < 200 && found < 2; i++) {
      sizes[i] = 16 * (3 + i);
      objs[i] = do_alloc(sizes[i]);
      if (i == 0)
        continue;
      char *a = objs[i - 1], *b = objs[i];
      if (((size_t)(a + sizes[i - 1]) & 4095) == 0 && ((size_t)b & 4095) == 0 &&
          a + sizes[i - 1] + 4096 == b) {
        if (found == 0) {
          printf("expect=10 bytes to the right of %zu-byte region\n", sizes[i - 1]);
          fflush(stdout);
          peek(a, sizes[i - 1] + 10);
        } else {
          printf("expect=10 bytes to the left of %zu-byte region\n", sizes[i]);
          fflush(stdout);
          poke(b, -10, 1);
        }
        found++;
      }
    }
    printf("pairs=%d\n", found);
  } else if (!strcmp(s, "large-overflow")) {
    char *p = do_alloc(100000);
    printf("read=%d\n", peek(p, 100000));
  } else if (!strcmp(s, "large-underflow")) {
    char *p = do_alloc(70000);
    poke(p, -1, 7);
    printf("wrote\n");
  } else if (!strcmp(s, "large-uaf")) {
    char *p = do_alloc(200000);
    memset(p, 1, 200000);
    do_free(p);
    printf("read=%d\n", peek(p, 150000));
  } else if (!strcmp(s, "large-churn")) {
    /* More large objects than large slots, freed and reused: contents intact, calloc zero. */
    for (int round = 0; round < 40; round++) {
      size_t n = 17000 + round * 9000;
      char *a = calloc(1, n);
      for (size_t k = 0; k < n; k++)
        if (a[k]) {
          printf("calloc not zero at %zu\n", k);
          return 6;
        }
      memset(a, round, n);
      char *b = realloc(a, n + 5000);
      for (size_t k = 0; k < n; k++)
        if (b[k] != (char)round) {
          printf("realloc lost byte %zu\n", k);
          return 7;
        }
      free(b);
    }
    printf("large ok\n");
  } else if (!strcmp(s, "thread-stack-overflow")) {
    pthread_t t;
    pthread_create(&t, NULL, overflow_thread, NULL);
    pthread_join(t, NULL);
  } else if (!strcmp(s, "tiny-altstack")) {
    char *p = do_alloc(32);
    pthread_t t;
    pthread_create(&t, NULL, tiny_altstack_thread, p);
    pthread_join(t, NULL);
  } else if (!strcmp(s, "deep-thread")) {
    deep_obj = do_alloc(32);
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 128 << 10);
    pthread_t t;
    pthread_create(&t, &a, deep_thread, NULL);
    pthread_join(t, NULL);
  } else if (!strcmp(s, "exit-race")) {
    pthread_t t;
    pthread_create(&t, NULL, exit_churn_thread, NULL);
    while (!churn_started)
      ;
    printf("exiting\n");
    fflush(stdout);
    exit(0);
  } else if (!strcmp(s, "stack-overflow")) {
    printf("%d\n", recurse(0));
  } else if (!strcmp(s, "threads")) {
    pthread_t t[8];
    for (long i = 0; i < 8; i++)
      pthread_create(&t[i], NULL, churn_thread, (void *)(i + 1));
    int bad = 0;
    for (int i = 0; i < 8; i++) {
      void *r;
      pthread_join(t[i], &r);
      bad |= r != NULL;
    }
    printf("threads %s\n", bad ? "saw corruption" : "ok");
  } else if (!strcmp(s, "clean")) {
    /* Many objects, more than the pool holds, through every entry point. */
    char *keep[600];
    for (int i = 0; i < 600; i++) {
      keep[i] = do_alloc(1 + (i * 37) % 5000);
      memset(keep[i], i, 1 + (i * 37) % 5000);
    }
    for (int i = 0; i < 600; i += 2) {
      size_t n = 1 + (i * 37) % 5000;
      if (malloc_usable_size(keep[i]) != n) {
        printf("usable_size(%d)=%zu, want %zu\n", i, malloc_usable_size(keep[i]), n);
        return 2;
      }
      char *q = realloc(keep[i], n * 3 + 20000);
      for (size_t k = 0; k < n; k++)
        if (q[k] != (char)i) {
          printf("realloc lost byte %zu of %d\n", k, i);
          return 3;
        }
      keep[i] = realloc(q, 7);
    }
    for (int i = 0; i < 600; i++)
      free(keep[i]);
    for (int round = 0; round < 20; round++) {
      char *z = calloc(100, 3);
      for (int k = 0; k < 300; k++)
        if (z[k]) {
          printf("calloc not zero\n");
          return 4;
        }
      memset(z, 0xff, 300);
      free(z);
      void *a = NULL;
      posix_memalign(&a, 256, 1000);
      if ((size_t)a % 256) {
        printf("misaligned\n");
        return 5;
      }
      free(a);
    }
    /* A list whose only roots are guarded objects: not leaks. */
    static struct node *head;
    for (int i = 0; i < 300; i++) {
      struct node *n = malloc(sizeof *n);
      n->next = head;
      head = n;
    }
    printf("clean done\n");
  }
  printf("end\n");
  return 0;
}
