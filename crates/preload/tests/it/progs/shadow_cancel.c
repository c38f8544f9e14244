/* pthread_exit and pthread_cancel with cleanup handlers above frames patched by malloc's
 * captures: ./shadow_cancel. Each thread recurses, pushing a cleanup handler and allocating
 * at every level (a capture patches the frames above); at the bottom it calls pthread_exit,
 * or blocks in a cancellation point until the main thread cancels it. glibc's forced unwind
 * must run every handler (each frees its level's block). Built as C (setjmp-based cleanup
 * buffers) and with -fexceptions (cleanup attributes). Prints `patched=`, `cleanups=` and
 * `ok`. */
#define _GNU_SOURCE
#include <alloca.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define THREADS 6
#define MAXDEPTH 160

struct job {
  int depth;
  int cancel;
  int patched;
  int cleanups;
  void **slots[MAXDEPTH + 1];
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int at_bottom;
  volatile int stop; /* never set: the bottom waits until cancelled */
};

static void *volatile sink; /* keeps malloc/free pairs from being optimized out */

static int in_preload(void *a) {
  Dl_info i;
  return dladdr(a, &i) && i.dli_fname && strstr(i.dli_fname, "libukasan");
}

struct level {
  struct job *job;
  void *block;
};

static void cleanup(void *arg) {
  struct level *l = arg;
  free(l->block);
  l->job->cleanups++;
}

__attribute__((noinline)) void descend(struct job *j, int level) {
  volatile char *pad = alloca(16 + (level & 7));
  pad[0] = 1;
  j->slots[level] = (void **)__builtin_frame_address(0) + 1;
  struct level l = {j, malloc(40 + level)};
  pthread_cleanup_push(cleanup, &l);
  sink = malloc(16);
  free(sink);
  if (level == j->depth) {
    sink = malloc(16);
    free(sink);
    for (int i = 0; i <= level; i++) j->patched += in_preload(*j->slots[i]);
    if (!j->cancel) pthread_exit(j);
    pthread_mutex_lock(&j->mu);
    j->at_bottom = 1;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
    while (!j->stop) pause(); /* a cancellation point */
  } else {
    descend(j, level + 1);
  }
  pthread_cleanup_pop(1);
}

static void *start(void *arg) {
  pthread_setcanceltype(PTHREAD_CANCEL_DEFERRED, NULL);
  descend(arg, 0);
  return NULL; /* wrong: the thread had to exit or be cancelled at the bottom */
}

int main(void) {
  static struct job jobs[THREADS];
  pthread_t t[THREADS];
  const int depths[THREADS] = {8, 30, MAXDEPTH, 12, 40, MAXDEPTH};
  for (int i = 0; i < THREADS; i++) {
    jobs[i].depth = depths[i];
    jobs[i].cancel = i >= THREADS / 2;
    pthread_mutex_init(&jobs[i].mu, NULL);
    pthread_cond_init(&jobs[i].cv, NULL);
    pthread_create(&t[i], NULL, start, &jobs[i]);
  }
  int failures = 0, patched = 0, cleanups = 0;
  for (int i = 0; i < THREADS; i++) {
    if (jobs[i].cancel) {
      pthread_mutex_lock(&jobs[i].mu);
      while (!jobs[i].at_bottom) pthread_cond_wait(&jobs[i].cv, &jobs[i].mu);
      pthread_mutex_unlock(&jobs[i].mu);
      pthread_cancel(t[i]);
    }
    void *ret;
    pthread_join(t[i], &ret);
    if (ret != (jobs[i].cancel ? PTHREAD_CANCELED : (void *)&jobs[i])) {
      printf("FAIL thread %d returned %p\n", i, ret);
      failures++;
    }
    if (jobs[i].cleanups != jobs[i].depth + 1) {
      printf("FAIL thread %d ran %d cleanups, want %d\n", i, jobs[i].cleanups, jobs[i].depth + 1);
      failures++;
    }
    patched += jobs[i].patched;
    cleanups += jobs[i].cleanups;
  }
  printf("patched=%d\ncleanups=%d\n%s\n", patched, cleanups, failures ? "failed" : "ok");
  return failures ? 4 : 0;
}
