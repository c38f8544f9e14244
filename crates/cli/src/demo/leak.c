/* ukasan demo: memory-leak. Ten objects allocated at one place and never freed, reported at
 * exit grouped by allocation stack. */
#include <stdlib.h>
#include <string.h>

static void *volatile sink;

__attribute__((noinline)) static void remember(const char *s) {
    char *copy = malloc(strlen(s) + 1);
    strcpy(copy, s);
    sink = copy; /* BUG: the previous copy is lost */
}

int main(void) {
    for (int i = 0; i < 10; i++)
        remember("a line that nobody frees");
    sink = NULL;
    return 0;
}
