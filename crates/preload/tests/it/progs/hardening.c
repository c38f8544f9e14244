/* Hard situations for the preload: ./hardening <scenario> [arg]. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((noinline)) char *do_alloc(size_t n) {
  char *p = malloc(n);
  __asm__ volatile("" ::: "memory");
  return p;
}

__attribute__((noinline)) void do_free(char *p) {
  free(p);
  __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void double_free(void) {
  char *p = do_alloc(24);
  do_free(p);
  do_free(p);
}

/* Allocations made before any shared object's constructor, libukasan's included
 * (.preinit_array runs first), used and freed after it. */
static char *early[4];
static void *early_aligned;
static void before_everything(void) {
  early[0] = malloc(100);
  strcpy(early[0], "made in preinit");
  early[1] = calloc(10, 10);
  early[2] = realloc(malloc(8), 4000);
  memset(early[2], 'r', 4000);
  early[3] = strdup("strdup in preinit");
  free(malloc(33));
  if (posix_memalign(&early_aligned, 256, 64) != 0) abort();
}
__attribute__((section(".preinit_array"), used)) static void (*preinit)(void) = before_everything;

/* Threads still running at exit, each holding the only pointer to an object: on its stack,
 * in its static TLS, or (masked) on the stack of a thread that blocks every signal. */
static atomic_int holders_ready;
static __thread char *volatile tls_held;
/* Parks for good with the only pointer to an object of `n` bytes on its stack. */
static void *park_holding(size_t n) {
  char *volatile held = do_alloc(n);
  atomic_fetch_add(&holders_ready, 1);
  for (;;) pause();
  return (void *)held;
}
static void *hold_on_stack(void *arg) {
  (void)arg;
  return park_holding(48);
}
static void *hold_in_tls(void *arg) {
  (void)arg;
  tls_held = do_alloc(56);
  atomic_fetch_add(&holders_ready, 1);
  for (;;) pause();
  return NULL;
}
static void *hold_masked(void *arg) {
  (void)arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  return park_holding(64);
}
static void *spin_holding(void *arg) {
  (void)arg;
  char *volatile held = do_alloc(72);
  atomic_fetch_add(&holders_ready, 1);
  for (;;) __asm__ volatile("" ::: "memory");
  return (void *)held;
}
static void start_holders(int masked) {
  pthread_t t;
  int want = 3;
  pthread_create(&t, NULL, hold_on_stack, NULL);
  pthread_create(&t, NULL, hold_in_tls, NULL);
  pthread_create(&t, NULL, spin_holding, NULL);
  if (masked) {
    pthread_create(&t, NULL, hold_masked, NULL);
    want++;
  }
  while (atomic_load(&holders_ready) < want) usleep(1000);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  printf("pid=%d\n", (int)getpid());
  const char *s = argc > 1 ? argv[1] : "";
  if (!strcmp(s, "close-stderr")) {
    /* A daemon's move: fd 2 closed, then the number reused for a data file. */
    close(2);
    int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    printf("data_fd=%d\n", fd);
    if (write(fd, "data before\n", 12) != 12) return 3;
    double_free();
    if (write(fd, "data after\n", 11) != 11) return 3;
    close(fd);
  } else if (!strcmp(s, "stderr-closed")) {
    close(2);
    double_free();
  } else if (!strcmp(s, "fork-report")) {
    pid_t c = fork();
    if (c == 0) {
      double_free();
      exit(0);
    }
    int st;
    waitpid(c, &st, 0);
    printf("child_pid=%d\nchild_status=%d\n", (int)c, WEXITSTATUS(st));
    double_free();
  } else if (!strcmp(s, "report-then-fork")) {
    /* A child of a process that reported, finding nothing itself. */
    double_free();
    pid_t c = fork();
    if (c == 0) {
      free(malloc(10));
      exit(0);
    }
    int st;
    waitpid(c, &st, 0);
    printf("child_status=%d\n", WEXITSTATUS(st));
  } else if (!strcmp(s, "preinit")) {
    printf("early0=%s\nearly3=%s\n", early[0], early[3]);
    for (int i = 0; i < 100; i++)
      if (early[1][i] != 0) return 4;
    for (int i = 0; i < 4000; i++)
      if (early[2][i] != 'r') return 5;
    early[0] = realloc(early[0], 5000); /* an early chunk grown after initialization */
    printf("grown=%s\n", early[0]);
    for (int i = 0; i < 4; i++) free(early[i]);
    free(early_aligned);
  } else if (!strcmp(s, "double-free")) {
    double_free();
  } else if (!strcmp(s, "leak")) {
    static char *volatile lost;
    lost = do_alloc(40);
    lost = NULL;
  } else if (!strcmp(s, "held-by-threads") || !strcmp(s, "held-by-masked-thread")) {
    start_holders(!strcmp(s, "held-by-masked-thread"));
    static char *volatile lost;
    lost = do_alloc(40); /* the one real leak: the scan then stops the other threads */
    lost = NULL;
  } else if (!strcmp(s, "leak-and-double-free")) {
    static char *volatile lost;
    lost = do_alloc(40);
    lost = NULL;
    double_free();
  }
  printf("end\n");
  return 0;
}
