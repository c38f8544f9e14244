// C++ scenarios: ./mismatch <scenario>. Built with -fsized-deallocation (the default since
// C++14, made explicit): `delete` of a complete object passes its size.
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

// No virtual destructor: `delete` through a Base* passes sizeof(Base), not sizeof(Derived).
struct Base { int a; };
struct Derived : Base { long more[2]; };

__attribute__((noinline)) Base *make_derived() { return new Derived(); }
__attribute__((noinline)) void release_base(Base *p) { delete p; }
__attribute__((noinline)) void *make_raw(size_t n) {
  void *p = ::operator new(n);
  __asm__ volatile("" : : "r"(p) : "memory");
  return p;
}
__attribute__((noinline)) void release_sized(void *p, size_t n) { ::operator delete(p, n); }
__attribute__((noinline)) void *make_aligned(size_t n, size_t a) {
  void *p = ::operator new(n, std::align_val_t(a));
  __asm__ volatile("" : : "r"(p) : "memory");
  return p;
}
__attribute__((noinline)) void release_aligned(void *p, size_t a) {
  ::operator delete(p, std::align_val_t(a));
}

int main(int argc, char **argv) {
  const char *s = argc > 1 ? argv[1] : "";
  if (!strcmp(s, "new-free")) {
    release_free(make_new());
  } else if (!strcmp(s, "array-delete")) {
    release_delete(make_array());
  } else if (!strcmp(s, "malloc-delete")) {
    release_delete((int *)make_malloc());
  } else if (!strcmp(s, "sized-delete")) {
    release_sized(make_raw(16), 8);
  } else if (!strcmp(s, "base-delete")) {
    release_base(make_derived());
  } else if (!strcmp(s, "aligned-delete")) {
    release_aligned(make_aligned(64, 64), 32);
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
    release_sized(make_raw(24), 24);
    release_aligned(make_aligned(64, 64), 64);
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
