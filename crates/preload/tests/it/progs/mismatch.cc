// C++ scenarios: ./mismatch <scenario>.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

__attribute__((noinline)) int *make_new() { return new int(5); }
__attribute__((noinline)) int *make_array() { return new int[10]; }
__attribute__((noinline)) void *make_malloc() { return malloc(16); }
__attribute__((noinline)) void release_free(void *p) { free(p); }
__attribute__((noinline)) void release_delete(int *p) { delete p; }
__attribute__((noinline)) void release_delete_array(int *p) { delete[] p; }

struct alignas(256) Big { char b[300]; };

int main(int argc, char **argv) {
  const char *s = argc > 1 ? argv[1] : "";
  if (!strcmp(s, "new-free")) {
    release_free(make_new());
  } else if (!strcmp(s, "array-delete")) {
    release_delete(make_array());
  } else if (!strcmp(s, "malloc-delete")) {
    release_delete((int *)make_malloc());
  } else if (!strcmp(s, "clean")) {
    release_delete(make_new());
    release_delete_array(make_array());
    Big *b = new Big;
    if ((reinterpret_cast<unsigned long>(b) & 255) != 0) return 4;
    delete b;
    Big *bs = new Big[3];
    delete[] bs;
    int *n = new (std::nothrow) int[4];
    delete[] n;
    try {
      volatile size_t huge = (size_t)1 << 60;
      char *x = new char[huge];
      std::printf("no throw %p\n", (void *)x);
      return 5;
    } catch (const std::bad_alloc &) {
      std::printf("bad_alloc caught\n");
    }
  } else {
    return 2;
  }
  std::printf("end\n");
  return 0;
}
