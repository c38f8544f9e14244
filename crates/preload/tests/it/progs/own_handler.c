/* libguarded_own.so: installs a SIGSEGV handler from its constructor. Preloaded after
 * libukasan.so, it is initialized first, so the detector finds this handler installed and
 * must chain to it for faults outside its pool. */
#define _GNU_SOURCE
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

char *own_handler_page;

static void handler(int sig, siginfo_t *si, void *uc) {
  (void)sig;
  (void)uc;
  if (own_handler_page && (char *)si->si_addr >= own_handler_page &&
      (char *)si->si_addr < own_handler_page + 4096) {
    write(1, "own handler ran\n", 16);
    mprotect(own_handler_page, 4096, PROT_READ | PROT_WRITE);
    return;
  }
  write(1, "own handler: foreign fault\n", 27);
  _exit(98);
}

__attribute__((constructor)) static void install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = handler;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &sa, NULL);
}
