/* ukasan demo: double-free. The second free() of the same pointer is reported at the call. */
#include <stdlib.h>
#include <string.h>

__attribute__((noinline)) static char *make_name(void) {
    char *p = malloc(32);
    strcpy(p, "ukasan");
    return p;
}

__attribute__((noinline)) static void drop_name(char *p) { free(p); }

int main(void) {
    char *p = make_name();
    drop_name(p);
    drop_name(p); /* BUG: freed twice */
    return 0;
}
