/* A double free of a block allocated at recursion depth 10, after allocations at every
 * level have patched the frames above (under stacks=shadow): ./shadow_df. The report's
 * stacks must be the same as with stacks=fp. Prints `patched=` and `end`. */
#define _GNU_SOURCE
#include <alloca.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *volatile sink; /* keeps malloc/free pairs from being optimized out */
static void **slots[16];
static char *victim;

static int in_preload(void *a) {
  Dl_info i;
  return dladdr(a, &i) && i.dli_fname && strstr(i.dli_fname, "libukasan");
}

__attribute__((noinline)) char *df_alloc(size_t n) {
  char *p = malloc(n);
  __asm__ volatile("" ::: "memory");
  return p;
}

__attribute__((noinline)) void df_free(char *p) {
  free(p);
  __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) int df_level(int level) {
  volatile char *pad = alloca(16);
  pad[0] = 1;
  slots[level] = (void **)__builtin_frame_address(0) + 1;
  sink = malloc(32 + level);
  free(sink);
  if (level == 10) {
    victim = df_alloc(48);
    int patched = 0;
    for (int i = 0; i <= level; i++) patched += in_preload(*slots[i]);
    printf("patched=%d\n", patched);
    df_free(victim);
    return 1;
  }
  return df_level(level + 1) + pad[0];
}

__attribute__((noinline)) void df_outer(void) {
  df_level(0);
  df_free(victim);
}

int main(void) {
  df_outer();
  printf("end\n");
  return 0;
}
