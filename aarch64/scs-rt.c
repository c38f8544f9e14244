/* Shadow-call-stack runtime for aarch64 Linux (glibc), linked into every SCS test binary by
 * aarch64/check.sh. Built with -ffixed-x18: this file never touches x18 except to set it.
 *
 * - Before any Rust code runs (.init_array.00000, ahead of std's initialisers; not
 *   .preinit_array, where a later libgcc_s constructor would overwrite x18), the main thread
 *   gets a shadow call stack and x18 points at it.
 * - Every thread created through pthread_create (-Wl,--wrap=pthread_create) gets its own
 *   before its start routine runs.
 * - Each shadow stack is 64 KiB with a guard page above; its slot 0 holds its own address: the
 *   base marker that ukasan's SCS reader (shadow::scs) walks down to. A return address can
 *   never equal the address of the non-executable slot holding it.
 * - Stands aside when ukasan's own SCS runtime (crates/ukasan/src/scs.rs, which defines
 *   ukasan_scs_runtime) is linked too: then that one sets x18 up, and the wrapper below passes
 *   straight on to ukasan's pthread_create (which __real_pthread_create then names).
 */
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>

#define SCS_SIZE (64 * 1024)

extern const char ukasan_scs_runtime __attribute__((weak));

/* Initial x18 of the main thread (the first entry slot), for tests. */
unsigned long ukasan_scs_main_base;

static unsigned long new_scs(void) {
    char *p = mmap(0, SCS_SIZE + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        abort();
    if (mprotect(p + SCS_SIZE, 4096, PROT_NONE) != 0) /* overflow faults */
        abort();
    *(unsigned long *)p = (unsigned long)p; /* base marker */
    return (unsigned long)p + 8;
}

static void scs_init_main(void) {
    if (&ukasan_scs_runtime)
        return;
    unsigned long base = new_scs();
    ukasan_scs_main_base = base;
    __asm__ volatile("mov x18, %0" ::"r"(base));
}

__attribute__((used, section(".init_array.00000"))) static void (*scs_init_ptr)(void) = scs_init_main;

struct start {
    void *(*f)(void *);
    void *arg;
};

static void *scs_thread_trampoline(void *p) {
    struct start s = *(struct start *)p;
    free(p);
    /* Leaked on exit: TLS destructors still run on it after f returns. */
    unsigned long base = new_scs();
    __asm__ volatile("mov x18, %0" ::"r"(base));
    return s.f(s.arg);
}

int __real_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*f)(void *), void *arg);

int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*f)(void *), void *arg) {
    if (&ukasan_scs_runtime)
        return __real_pthread_create(t, a, f, arg);
    struct start *s = malloc(sizeof *s);
    if (!s)
        return 11; /* EAGAIN */
    s->f = f;
    s->arg = arg;
    int r = __real_pthread_create(t, a, scs_thread_trampoline, s);
    if (r != 0)
        free(s);
    return r;
}
