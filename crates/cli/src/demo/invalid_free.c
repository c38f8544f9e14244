/* ukasan demo: invalid-free. free() of a pointer into the middle of an object. */
#include <stdlib.h>

__attribute__((noinline)) static char *make_table(void) { return calloc(16, 4); }

__attribute__((noinline)) static void drop_table(char *p) { free(p); }

int main(void) {
    char *table = make_table();
    drop_table(table + 8); /* BUG: not the start of the object */
    drop_table(table);
    return 0;
}
