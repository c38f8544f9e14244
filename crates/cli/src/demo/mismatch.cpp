// ukasan demo: alloc-dealloc-mismatch. Memory from new[] released with delete.
#include <cstdio>

__attribute__((noinline)) static int *make_array() { return new int[8](); }

__attribute__((noinline)) static void drop_one(int *p) { delete p; } // BUG: should be delete[]

int main() {
    int *a = make_array();
    drop_one(a);
    return 0;
}
