/* Stress for the preload: ./stress SECONDS LIBPATH
 * 8 threads do random malloc/calloc/realloc/free of random sizes, checking every object's
 * contents; the main thread forks every 20 ms (children allocate on two threads, exit with
 * exit(): the runtime's exit checks run in a child whose parent had 8 threads in the
 * allocator); a ninth thread dlopens a library that allocates in its constructor, in calls
 * and in its destructor, then dlcloses it; a tenth sends SIGUSR1 to the workers, whose handler
 * allocates and frees (only when the interrupted code is not itself in malloc: glibc's own
 * allocator is not reentrant either). Each worker also double-frees, now and then, an object
 * allocated at a random recursion depth: one report per distinct depth is expected, as JSON
 * Lines on stderr, each whole. Prints counts on stdout. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define THREADS 8
#define SLOTS 128
#define DEPTHS 24

struct obj { unsigned char *p; size_t n; unsigned char tag; };
static struct obj slots[THREADS][SLOTS]; /* globals: every live object stays reachable */
static atomic_int stop;
static atomic_uint depths_used;
static atomic_long ops, forks, dlopens, sig_allocs, sig_skipped;
static pthread_t workers[THREADS];
static const char *lib_path;
static __thread volatile int in_malloc;
static int with_bugs = 1; /* STRESS_NO_BUGS=1: no deliberate double frees (to run plain) */

static uint64_t rng(uint64_t *s) {
  *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
  return *s;
}

static void fill(struct obj *o) { if (o->n) memset(o->p, o->tag, o->n); }

static void check(const struct obj *o) {
  for (size_t i = 0; i < o->n; i++)
    if (o->p[i] != o->tag) {
      fprintf(stdout, "CORRUPT object %p byte %zu\n", (void *)o->p, i);
      abort();
    }
}

static size_t pick_size(uint64_t *s) {
  uint64_t r = rng(s);
  if (r % 100 == 0) return r % (256 << 10);
  if (r % 10 == 0) return r % 8192;
  return r % 300;
}

__attribute__((noinline)) void *alloc_at_depth(int depth, size_t n) {
  if (depth == 0) return malloc(n);
  void *p = alloc_at_depth(depth - 1, n);
  __asm__ volatile("" ::: "memory");
  return p;
}

__attribute__((noinline)) void deliberate_double_free(void *p) {
  free(p);
  __asm__ volatile("" ::: "memory");
  free(p);
}

static void on_usr1(int sig) {
  (void)sig;
  if (in_malloc) {
    sig_skipped++;
    return;
  }
  char *p = malloc(64 + (sig_allocs & 255));
  if (p) {
    memset(p, 0x5a, 64);
    p = realloc(p, 200);
    free(p);
  }
  sig_allocs++;
}

static void *worker(void *arg) {
  int t = (int)(intptr_t)arg;
  uint64_t s = 0x9e3779b97f4a7c15ull * (t + 1);
  struct obj *mine = slots[t];
  while (!stop) {
    struct obj *o = &mine[rng(&s) % SLOTS];
    uint64_t op = rng(&s) % 100;
    in_malloc = 1;
    if (o->p == NULL) {
      o->n = pick_size(&s);
      o->tag = (unsigned char)rng(&s);
      o->p = (op < 20) ? calloc(1, o->n ? o->n : 1) : malloc(o->n);
      in_malloc = 0;
      if (!o->p) abort();
      if (op < 20)
        for (size_t i = 0; i < o->n; i++)
          if (o->p[i]) abort();
      fill(o);
    } else if (op < 30) {
      in_malloc = 0;
      check(o);
      size_t n = pick_size(&s);
      in_malloc = 1;
      unsigned char *q = realloc(o->p, n ? n : 1);
      in_malloc = 0;
      if (!q) abort();
      size_t keep = n < o->n ? n : o->n;
      for (size_t i = 0; i < keep; i++)
        if (q[i] != o->tag) abort();
      o->p = q;
      o->n = n;
      fill(o);
    } else {
      in_malloc = 0;
      check(o);
      in_malloc = 1;
      free(o->p);
      in_malloc = 0;
      o->p = NULL;
    }
    in_malloc = 0;
    if (with_bugs && rng(&s) % 4000 == 0) {
      int d = (int)(rng(&s) % DEPTHS);
      in_malloc = 1;
      void *p = alloc_at_depth(d, 32);
      deliberate_double_free(p);
      in_malloc = 0;
      depths_used |= 1u << d;
    }
    ops++;
  }
  for (int i = 0; i < SLOTS; i++) {
    if (mine[i].p) {
      check(&mine[i]);
      in_malloc = 1;
      free(mine[i].p);
      in_malloc = 0;
      mine[i].p = NULL;
    }
  }
  return NULL;
}

static void *child_thread(void *arg) {
  (void)arg;
  for (int i = 0; i < 200; i++) free(malloc(i * 13));
  return NULL;
}

/* Held around each dlopen..dlclose and across each fork: a child forked while another
 * thread is inside dlopen/dlclose inherits the loader's and exit handlers' locks held and
 * deadlocks in exit() (plain glibc too; POSIX allows only async-signal-safe calls there). */
static pthread_mutex_t dl_mu = PTHREAD_MUTEX_INITIALIZER;

static void *dl_loop(void *arg) {
  (void)arg;
  while (!stop) {
    pthread_mutex_lock(&dl_mu);
    void *h = dlopen(lib_path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      printf("dlopen failed: %s\n", dlerror());
      abort();
    }
    char *(*make)(int) = (char *(*)(int))dlsym(h, "stresslib_make");
    for (int i = 0; i < 20; i++) free(make(i));
    dlclose(h);
    pthread_mutex_unlock(&dl_mu);
    dlopens++;
  }
  return NULL;
}

static void *signaller(void *arg) {
  (void)arg;
  uint64_t s = 77;
  struct timespec ts = {0, 200000};
  while (!stop) {
    pthread_kill(workers[rng(&s) % THREADS], SIGUSR1);
    nanosleep(&ts, NULL);
  }
  return NULL;
}

int main(int argc, char **argv) {
  double secs = argc > 1 ? atof(argv[1]) : 2;
  lib_path = argc > 2 ? argv[2] : "./libstresslib.so";
  with_bugs = getenv("STRESS_NO_BUGS") == NULL;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGUSR1, &sa, NULL);
  for (int t = 0; t < THREADS; t++) pthread_create(&workers[t], NULL, worker, (void *)(intptr_t)t);
  pthread_t dl, sg;
  pthread_create(&dl, NULL, dl_loop, NULL);
  pthread_create(&sg, NULL, signaller, NULL);
  struct timespec t0, now, tick = {0, 20000000};
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int bad_children = 0, last_child_status = -1;
  double max_fork_ms = 0, max_child_ms = 0;
  for (;;) {
    nanosleep(&tick, NULL);
    clock_gettime(CLOCK_MONOTONIC, &now);
    if ((now.tv_sec - t0.tv_sec) + (now.tv_nsec - t0.tv_nsec) / 1e9 > secs) break;
    struct timespec f0, f1, f2;
    clock_gettime(CLOCK_MONOTONIC, &f0);
    pthread_mutex_lock(&dl_mu);
    pid_t c = fork();
    if (c == 0) {
      pthread_t ct;
      pthread_create(&ct, NULL, child_thread, NULL);
      for (int i = 0; i < 300; i++) free(realloc(malloc(i), i * 7 + 1));
      pthread_join(ct, NULL);
      exit(0);
    }
    pthread_mutex_unlock(&dl_mu);
    clock_gettime(CLOCK_MONOTONIC, &f1);
    int st;
    if (waitpid(c, &st, 0) != c || !WIFEXITED(st)) bad_children++;
    else last_child_status = WEXITSTATUS(st);
    clock_gettime(CLOCK_MONOTONIC, &f2);
    double fms = (f1.tv_sec - f0.tv_sec) * 1e3 + (f1.tv_nsec - f0.tv_nsec) / 1e6;
    double cms = (f2.tv_sec - f1.tv_sec) * 1e3 + (f2.tv_nsec - f1.tv_nsec) / 1e6;
    if (fms > max_fork_ms) max_fork_ms = fms;
    if (cms > max_child_ms) max_child_ms = cms;
    forks++;
  }
  stop = 1;
  for (int t = 0; t < THREADS; t++) pthread_join(workers[t], NULL);
  pthread_join(dl, NULL);
  pthread_join(sg, NULL);
  printf("ops=%ld\nforks=%ld\nbad_children=%d\ndlopens=%ld\nsig_allocs=%ld\nsig_skipped=%ld\n",
         (long)ops, (long)forks, bad_children, (long)dlopens, (long)sig_allocs,
         (long)sig_skipped);
  printf("depths=%d\n", __builtin_popcount(depths_used));
  printf("last_child_status=%d\nmax_fork_ms=%.0f\nmax_child_ms=%.0f\n", last_child_status,
         max_fork_ms, max_child_ms);
  printf("end\n");
  return 0;
}
