/* glibc backtrace() below frames patched by malloc's captures: ./shadow_bt.
 * bt_outer -> bt_middle -> bt_inner -> bt_level x N; every level allocates, so the frames
 * above are patched by the time the bottom calls backtrace(). Prints `patched=`, then the
 * frames with backtrace_symbols_fd (to stdout), then `end`. Built with -rdynamic. */
#define _GNU_SOURCE
#include <alloca.h>
#include <dlfcn.h>
#include <execinfo.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void **slots[64];
static int nslots;
static void *volatile sink; /* keeps malloc/free pairs from being optimized out */

static int in_preload(void *a) {
  Dl_info i;
  return dladdr(a, &i) && i.dli_fname && strstr(i.dli_fname, "libukasan");
}

#define ENTER()                                                    \
  volatile char *pad = alloca(16);                                 \
  pad[0] = 1;                                                      \
  slots[nslots++] = (void **)__builtin_frame_address(0) + 1;       \
  sink = malloc(16 + nslots);                                      \
  free(sink);                                                      \
  __asm__ volatile("" ::: "memory")

__attribute__((noinline)) int bt_level(int n) {
  ENTER();
  if (n > 0) return bt_level(n - 1) + pad[0];
  /* Once more at the bottom: every frame above is walked and patched now. */
  sink = malloc(64);
  free(sink);
  int patched = 0;
  for (int i = 0; i < nslots; i++) patched += in_preload(*slots[i]);
  printf("patched=%d\n", patched);
  fflush(stdout);
  void *buf[128];
  int got = backtrace(buf, 128);
  backtrace_symbols_fd(buf, got, 1);
  /* A short buffer: the newest frames only (entry 0 is this second call site). */
  void *small[3];
  int k = backtrace(small, 3);
  printf("small=%d\nsmall_same=%d\n", k, k == 3 && got > 3 && !memcmp(small + 1, buf + 1, 2 * sizeof *buf));
  return pad[0];
}

__attribute__((noinline)) int bt_inner(void) {
  ENTER();
  return bt_level(5) + pad[0];
}

__attribute__((noinline)) int bt_middle(void) {
  ENTER();
  return bt_inner() + pad[0];
}

__attribute__((noinline)) int bt_outer(void) {
  ENTER();
  return bt_middle() + pad[0];
}

int main(void) {
  int r = bt_outer();
  printf("end %d\n", r);
  return r == 9 ? 0 : 4;
}
