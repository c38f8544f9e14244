/* ukasan demo: out-of-bounds read, in guarded mode (mode=guarded:sample_rate=1). The array
 * ends where an inaccessible guard page starts: reading one element past it faults and is
 * reported at once, naming the reading function, with the allocation stack. */
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) static int *make_scores(int n) {
    int *s = malloc(n * sizeof *s);
    for (int i = 0; i < n; i++)
        s[i] = 10 * i;
    return s;
}

__attribute__((noinline)) static long total(volatile int *s, int n) {
    long t = 0;
    for (int i = 0; i <= n; i++) /* BUG: reads s[n], one past the end */
        t += s[i];
    return t;
}

int main(void) {
    int *s = make_scores(8);
    printf("total: %ld\n", total(s, 8));
    free(s);
    return 0;
}
