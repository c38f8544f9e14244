/* longjmp and siglongjmp out of frames patched by malloc's captures: ./shadow_jump.
 * `down` recurses, allocating at every level (a capture patches the frames above), and at
 * the bottom leaves by longjmp, by a signal whose handler allocates and siglongjmps, or by
 * a signal whose handler allocates and returns. Fresh recursions after each jump return
 * through the trampoline past the stale entries. Prints `patched=` (slots that held the
 * trampoline at the bottom), `jumps=` and `ok`. */
#define _GNU_SOURCE
#include <alloca.h>
#include <dlfcn.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { LONGJMP, SIGLONGJMP, SIGRETURN, RETURN };

static jmp_buf jb;
static sigjmp_buf sjb;
static void *held[512];
static void **slots[512];
static void *volatile sink; /* keeps malloc/free pairs from being optimized out */
static int patched_max, jumps, handled, failures;

static int in_preload(void *a) {
  Dl_info i;
  return dladdr(a, &i) && i.dli_fname && strstr(i.dli_fname, "libukasan");
}

static void count_patched(int depth) {
  int n = 0;
  for (int i = 0; i <= depth; i++)
    if (slots[i] && in_preload(*slots[i])) n++;
  if (n > patched_max) patched_max = n;
}

static void release(int depth) {
  for (int i = 0; i <= depth; i++) {
    free(held[i]);
    held[i] = NULL;
  }
}

static void on_signal(int sig) {
  /* A capture inside the handler: it never patches across the signal frame. */
  sink = malloc(100);
  memset(sink, sig, 100);
  free(sink);
  handled++;
  if (sig == SIGUSR1) siglongjmp(sjb, 7);
}

__attribute__((noinline)) long down(int level, int depth, int mode) {
  volatile char *pad = alloca(16 + (level & 7));
  pad[0] = (char)(level & 0x7f);
  slots[level] = (void **)__builtin_frame_address(0) + 1;
  held[level] = malloc(32 + level);
  sink = malloc(8);
  free(sink);
  if (level == depth) {
    count_patched(depth);
    if (mode == LONGJMP) longjmp(jb, level);
    if (mode == SIGLONGJMP) raise(SIGUSR1);
    if (mode == SIGRETURN) raise(SIGUSR2);
    return 1;
  }
  long r = down(level + 1, depth, mode);
  return r + pad[0] - (level & 0x7f) + 1;
}

static void check(const char *what, long got, long want) {
  if (got != want) {
    printf("FAIL %s: got %ld want %ld\n", what, got, want);
    failures++;
  }
}

int main(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGUSR1, &sa, NULL);
  sigaction(SIGUSR2, &sa, NULL);
  const int depths[] = {10, 50, 200};
  for (int k = 0; k < 3; k++) {
    int d = depths[k];
    for (int round = 0; round < 4; round++) {
      volatile int v = setjmp(jb);
      if (v == 0) {
        down(0, d, LONGJMP);
        check("longjmp returned", 1, 0);
      } else {
        check("longjmp value", v, d);
        jumps++;
      }
      release(d);
      check("after longjmp", down(0, d / 2, RETURN), d / 2 + 1);
      release(d / 2);
      if (sigsetjmp(sjb, 1) == 0) {
        down(0, d, SIGLONGJMP);
        check("siglongjmp returned", 1, 0);
      } else {
        jumps++;
      }
      release(d);
      check("after siglongjmp", down(0, d + 3, RETURN), d + 4);
      release(d + 3);
      check("signal returned", down(0, d, SIGRETURN), d + 1);
      release(d);
    }
  }
  check("handled", handled, 24);
  printf("patched=%d\njumps=%d\n%s\n", patched_max, jumps, failures ? "failed" : "ok");
  return failures ? 4 : 0;
}
