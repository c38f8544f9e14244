/* ukasan demo: out-of-bounds write. One byte past the end lands in the right redzone and is
 * found when the object is freed. */
#include <stdlib.h>

__attribute__((noinline)) static char *make_buffer(size_t n) { return malloc(n); }

__attribute__((noinline)) static void fill(volatile char *p, size_t n) {
    for (size_t i = 0; i <= n; i++) /* BUG: <= writes p[n] */
        p[i] = 'x';
}

int main(void) {
    char *buf = make_buffer(40);
    fill(buf, 40);
    free(buf);
    return 0;
}
