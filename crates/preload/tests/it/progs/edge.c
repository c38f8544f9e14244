/* Allocator edge cases that must work under ukasan without any report. Prints "ok". */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <dlfcn.h>
#include <unistd.h>

#define CHECK(c)                                                       \
  do {                                                                 \
    if (!(c)) {                                                        \
      fprintf(stderr, "CHECK failed line %d: %s\n", __LINE__, #c);     \
      exit(3);                                                         \
    }                                                                  \
  } while (0)

static void *worker(void *arg) {
  (void)arg;
  void *slots[64] = {0};
  for (int i = 0; i < 20000; i++) {
    int k = (i * 7) % 64;
    free(slots[k]);
    slots[k] = malloc((size_t)(i % 300));
    if (slots[k]) memset(slots[k], i, (size_t)(i % 300));
  }
  for (int k = 0; k < 64; k++) free(slots[k]);
  return NULL;
}

int main(void) {
  void *p = malloc(0);
  CHECK(p != NULL);
  CHECK(malloc_usable_size(p) == 0);
  free(p);
  free(NULL);

  p = realloc(NULL, 10);
  CHECK(p != NULL);
  memcpy(p, "abcdefghi", 10);
  p = realloc(p, 1000);
  CHECK(p && !strcmp(p, "abcdefghi"));
  CHECK(malloc_usable_size(p) == 1000);
  p = realloc(p, 3);
  CHECK(p && !memcmp(p, "abc", 3));
  errno = 0;
  CHECK(realloc(p, 0) == NULL);

  errno = 0;
  volatile size_t huge = SIZE_MAX - 4096;
  CHECK(malloc(huge) == NULL && errno == ENOMEM);
  errno = 0;
  CHECK(calloc(huge / 2, 4) == NULL && errno == ENOMEM);
  unsigned char *z = calloc(100, 10);
  for (int i = 0; i < 1000; i++) CHECK(z[i] == 0);
  free(z);
  void *q = reallocarray(NULL, 10, 10);
  CHECK(q != NULL && malloc_usable_size(q) == 100);
  errno = 0;
  CHECK(reallocarray(q, huge / 2, 4) == NULL && errno == ENOMEM);
  free(q);

  void *a = NULL;
  CHECK(posix_memalign(&a, 3, 10) == EINVAL);
  CHECK(posix_memalign(&a, 4, 10) == EINVAL);
  for (size_t al = 8; al <= (1u << 21); al <<= 1) {
    CHECK(posix_memalign(&a, al, 77) == 0);
    CHECK(((uintptr_t)a & (al - 1)) == 0);
    memset(a, 0x5a, 77);
    free(a);
    a = aligned_alloc(al, 3 * al);
    CHECK(a && ((uintptr_t)a & (al - 1)) == 0);
    free(a);
    a = memalign(al, 5);
    CHECK(a && ((uintptr_t)a & (al - 1)) == 0);
    free(a);
  }
  long pg = sysconf(_SC_PAGESIZE);
  a = valloc(10);
  CHECK(a && ((uintptr_t)a % pg) == 0);
  free(a);
  a = pvalloc(10);
  CHECK(a && ((uintptr_t)a % pg) == 0 && malloc_usable_size(a) == (size_t)pg);
  free(a);

  /* Threads allocating while the main thread forks: the child must not inherit a held
   * lock. (No signal-handler test: glibc's malloc, our backing allocator, is not
   * async-signal-safe itself.) */
  pthread_t t[6];
  for (int i = 0; i < 6; i++) pthread_create(&t[i], NULL, worker, NULL);
  for (int k = 0; k < 4; k++) {
    pid_t c = fork();
    if (c == 0) {
      void *x = malloc(50);
      free(x);
      worker(NULL);
      _exit(0);
    }
    int st = 0;
    CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  worker(NULL);
  for (int i = 0; i < 6; i++) pthread_join(t[i], NULL);

  /* dlopen: the loader allocates through us; the library's own allocations are tracked. */
  void *lib = dlopen("libm.so.6", RTLD_NOW);
  CHECK(lib != NULL);
  double (*cosine)(double) = (double (*)(double))dlsym(lib, "cos");
  CHECK(cosine && cosine(0.0) == 1.0);
  dlclose(lib);

  char *s = strdup("hello");
  CHECK(!strcmp(s, "hello"));
  free(s);
  printf("ok\n");
  return 0;
}
