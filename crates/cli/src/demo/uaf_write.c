/* ukasan demo: use-after-free write. The freed object sits poisoned in the quarantine; the
 * changed poison is found at eviction or at exit. */
#include <stdlib.h>

struct node { struct node *next; long value; };

__attribute__((noinline)) static struct node *make_node(long v) {
    struct node *n = malloc(sizeof *n);
    n->next = NULL;
    n->value = v;
    return n;
}

__attribute__((noinline)) static void drop_node(struct node *n) { free(n); }

__attribute__((noinline)) static void bump(volatile struct node *n) { n->value++; }

int main(void) {
    struct node *n = make_node(41);
    drop_node(n);
    bump(n); /* BUG: written after free */
    return 0;
}
